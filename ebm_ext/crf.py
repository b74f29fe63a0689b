"""A linear-chain CRF layer that is a drop-in for pytorch-crf 0.7.2's ``torchcrf.CRF``, on the
ebm_ext kernels.

pytorch-crf works in scores (higher is better): score(y) = start[y_0] + sum_t emissions[t, y_t] +
sum_t transitions[y_{t-1}, y_t] + end[y_{L-1}]. ebm_ext works in energies (lower is better), so
the layer hands the kernels E = -score: unary = -emissions, trans = -transitions, start =
-start_transitions, end = -end_transitions. Same constructor, parameters (initialised
uniform(-0.1, 0.1)), ``forward`` (the log-likelihood) and ``decode`` (lists), the same
ValueErrors and the same numbers; TorchScript compiles it. As in pytorch-crf, the emissions and
the parameters compute in their promoted dtype (float64 emissions into a float32 layer give
float64), tags may be any integer dtype and masks bool or uint8; other masks (long, float),
which pytorch-crf fails on, and non-float emissions are a ValueError in the layer's terms.

Beyond pytorch-crf:
- ``decode_nbest(emissions, nbest, mask)``: the ``nbest`` best paths per sequence, best first
  (its own method because TorchScript needs one return type per method);
- ``viterbi_tensors(emissions, mask, nbest)``: scores and tags as padded tensors (tags -1 where
  the mask is off), for DataParallel, export and torch.compile;
- ``marginals(emissions, mask)``: p(y_t = k), 0 where the mask is off;
- ``distribution(emissions, mask)``: the layer's p(y | x) as an ``ebm_ext.LinearChainCRF``
  (entropy, sampling, KL, top-k);
- ``CRF(num_tags, batch_first, any_mask=True)``: the mask may be any boolean selection (left
  padding, a skipped [CLS] token, holes); the selected positions of each sequence are scored and
  decoded as one chain, and a sequence may select nothing (log-likelihood 0, an empty path).
  By default the mask must be a right-padded prefix that holds the first timestep, as in
  pytorch-crf (which silently mis-scores other masks; here they are an error that names the
  option).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .distributions import LinearChainCRF



class CRF(nn.Module):
    """Conditional random field over tag sequences, a drop-in for pytorch-crf's ``torchcrf.CRF``.

    The same constructor, parameters (``start_transitions``, ``end_transitions``,
    ``transitions[i, j]`` scoring i -> j), numbers and error messages; the kernels get the
    energies E = -score. See the pytorch-crf guide for what it adds.

    Args:
        num_tags (int): the number of tags.
        batch_first (bool): inputs are (batch, seq, ...) when True, (seq, batch, ...) otherwise.
        any_mask (bool): accept any boolean mask (left padding, holes); the selected positions
            of each sequence are scored and decoded as one chain.
        constraints (tuple of Tensor, optional): energies ``(trans (K, K), start (K,), end
            (K,))`` added to the layer's own, e.g. ``ebm_ext.allowed_transitions('BIO',
            labels)``: +inf forbids, in training and decoding alike. Kept as buffers.

    Example:
        >>> crf = ebm_ext.CRF(3, batch_first=True)
        >>> emissions = torch.randn(2, 4, 3)
        >>> crf(emissions, torch.tensor([[0, 1, 2, 1], [2, 2, 0, 0]])).shape
        torch.Size([])
        >>> [len(path) for path in crf.decode(emissions, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool())]
        [4, 2]
    """

    def __init__(self, num_tags: int, batch_first: bool = False, any_mask: bool = False,
                 constraints: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> None:
        if num_tags <= 0:
            raise ValueError(f"invalid number of tags: {num_tags}")
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.any_mask = any_mask
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        # Buffers only when given: a pytorch-crf state_dict loads into an unconstrained layer.
        for name in ("constraint_transitions", "constraint_start", "constraint_end"):
            self.register_buffer(name, None)
        if constraints is not None:
            self._set_constraints(num_tags, constraints)
        self.reset_parameters()

    @torch.jit.unused
    def _set_constraints(self, num_tags: int, constraints: Tuple[Tensor, Tensor, Tensor]) -> None:
        c_trans, c_start, c_end = constraints
        if (tuple(c_trans.shape) != (num_tags, num_tags) or tuple(c_start.shape) != (num_tags,)
                or tuple(c_end.shape) != (num_tags,)):
            raise ValueError(f"constraints must be (trans ({num_tags}, {num_tags}), start "
                             f"({num_tags},), end ({num_tags},)) energies, got shapes "
                             f"{tuple(c_trans.shape)}, {tuple(c_start.shape)}, {tuple(c_end.shape)}")
        self.register_buffer("constraint_transitions", c_trans.detach().clone().float())
        self.register_buffer("constraint_start", c_start.detach().clone().float())
        self.register_buffer("constraint_end", c_end.detach().clone().float())

    def reset_parameters(self) -> None:
        """Every parameter uniform(-0.1, 0.1), as pytorch-crf."""
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_tags={self.num_tags})"

    # ---- pytorch-crf's API ----------------------------------------------------------------

    def forward(self, emissions: Tensor, tags: Tensor, mask: Optional[Tensor] = None,
                reduction: str = "sum") -> Tensor:
        """The log-likelihood log p(tags | emissions), as pytorch-crf's ``forward``.

        Args:
            emissions (Tensor, float): scores (higher is better), (batch, seq, num_tags) with
                ``batch_first``, else (seq, batch, num_tags).
            tags (Tensor): int64 tags in the emissions' layout without the last dimension; or
                partial labels, a bool tensor of the emissions' shape with the tags allowed at
                each position (the log-likelihood of the set, -inf when no sequence fits it).
            mask (Tensor, bool or uint8, optional): the positions to score, in the layout of the
                emissions' first two dimensions; None: all. Without ``any_mask`` it must be a
                right-padded prefix that includes the first timestep.
            reduction (str): ``'none'``, ``'sum'``, ``'mean'`` (over the batch) or
                ``'token_mean'`` (over the selected tokens).

        Returns:
            Tensor: (batch,) with ``reduction='none'``, else a scalar. Differentiable.

        Raises:
            ValueError: pytorch-crf's errors, word for word, and the mask rules.
        """
        self._validate(emissions, tags, mask)
        if reduction not in ["none", "sum", "mean", "token_mean"]:
            raise ValueError(f"invalid reduction: {reduction}")
        if tags.dtype == torch.bool:
            unary, _, lengths, mask_bf = self._chain(emissions, None, mask)
            restricted = self._chain(emissions.masked_fill(~tags, -math.inf), None, mask)[0]
            trans, start, end = self._energies(unary.dtype)
            llh = (torch.ops.ebm_ext.chain_log_partition(restricted, trans, lengths, start, end)
                   - torch.ops.ebm_ext.chain_log_partition(unary, trans, lengths, start, end))
        else:
            unary, gold, lengths, mask_bf = self._chain(emissions, tags.long(), mask)
            trans, start, end = self._energies(unary.dtype)
            energy = torch.ops.ebm_ext.chain_energy(unary, trans, gold, lengths, start, end)
            log_z = torch.ops.ebm_ext.chain_log_partition(unary, trans, lengths, start, end)
            llh = -(energy + log_z)
        if reduction == "none":
            return llh
        if reduction == "sum":
            return llh.sum()
        if reduction == "mean":
            return llh.mean()
        return llh.sum() / mask_bf.to(llh.dtype).sum()

    @torch.jit.export
    def decode(self, emissions: Tensor, mask: Optional[Tensor] = None,
               allowed: Optional[Tensor] = None) -> List[List[int]]:
        """The best tag sequence of each batch entry, as lists over the selected positions.

        Args:
            emissions (Tensor, float): scores (higher is better), (batch, seq, num_tags) with
                ``batch_first``, else (seq, batch, num_tags).
            mask (Tensor, bool or uint8, optional): the positions to score, in the layout of the
                emissions' first two dimensions; None: all. Without ``any_mask`` it must be a
                right-padded prefix that includes the first timestep.
            allowed (Tensor, bool, optional): the emissions' shape; the best among the
                sequences whose tags are all allowed (restricted Viterbi).

        Returns:
            list[list[int]]: one list per batch entry.
        """
        self._validate(emissions, allowed, mask)
        if allowed is not None:
            emissions = emissions.masked_fill(~allowed, -math.inf)
        unary, _, lengths, _ = self._chain(emissions, None, mask)
        trans, start, end = self._energies(unary.dtype)
        tags = torch.ops.ebm_ext.viterbi(unary, trans, lengths, start, end)[1]
        return _to_lists(tags.cpu(), lengths.cpu())

    # ---- beyond pytorch-crf ----------------------------------------------------------------

    @torch.jit.export
    def decode_nbest(self, emissions: Tensor, nbest: int,
                     mask: Optional[Tensor] = None) -> List[List[List[int]]]:
        """The ``nbest`` best distinct tag sequences of each batch entry, best first.

        Args:
            emissions (Tensor, float): scores (higher is better), (batch, seq, num_tags) with
                ``batch_first``, else (seq, batch, num_tags).
            nbest (int): how many, >= 1.
            mask (Tensor, bool or uint8, optional): the positions to score, in the layout of the
                emissions' first two dimensions; None: all. Without ``any_mask`` it must be a
                right-padded prefix that includes the first timestep.

        Returns:
            list[list[list[int]]]: per batch entry, up to ``nbest`` paths (fewer when fewer
            exist).
        """
        energy, tags, lengths, _ = self._kbest(emissions, mask, nbest)
        found: List[List[bool]] = torch.isfinite(energy).cpu().tolist()
        rows: List[List[List[int]]] = tags.cpu().tolist()
        sizes: List[int] = lengths.cpu().tolist()
        out: List[List[List[int]]] = []
        for b in range(len(rows)):
            paths: List[List[int]] = []
            for r in range(nbest):
                if found[b][r]:
                    paths.append(rows[b][r][:sizes[b]])
            out.append(paths)
        return out

    @torch.jit.export
    def viterbi_tensors(self, emissions: Tensor, mask: Optional[Tensor] = None,
                        nbest: int = 1) -> Tuple[Tensor, Tensor]:
        """The n best paths as padded tensors, for DataParallel and export.

        Args:
            emissions (Tensor, float): scores (higher is better), (batch, seq, num_tags) with
                ``batch_first``, else (seq, batch, num_tags).
            mask (Tensor, bool or uint8, optional): the positions to score, in the layout of the
                emissions' first two dimensions; None: all. Without ``any_mask`` it must be a
                right-padded prefix that includes the first timestep.
            nbest (int): how many paths, >= 1.

        Returns:
            tuple[Tensor[batch, nbest], Tensor[batch, nbest, seq] int64]: ``(scores, tags)`` on
            the emissions' device: pytorch-crf's scores (higher is better, -inf for a missing
            path); tags in the batch-first layout, -1 where the mask is off.
        """
        energy, tags, _, mask_bf = self._kbest(emissions, mask, nbest)
        if self.any_mask:  # back from the packed selection to the positions it came from
            order = _selection_order(mask_bf)
            placed = torch.full_like(tags, -1)
            tags = placed.scatter(2, order[:, None, :].expand_as(tags), tags)
        return -energy, tags

    @torch.jit.export
    def marginals(self, emissions: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The marginals p(y_t = k).

        Args:
            emissions (Tensor, float): scores (higher is better), (batch, seq, num_tags) with
                ``batch_first``, else (seq, batch, num_tags).
            mask (Tensor, bool or uint8, optional): the positions to score, in the layout of the
                emissions' first two dimensions; None: all. Without ``any_mask`` it must be a
                right-padded prefix that includes the first timestep.

        Returns:
            Tensor: in the layout of ``emissions``; 0 where the mask is off. Differentiable.
        """
        self._validate(emissions, None, mask)
        unary, _, lengths, mask_bf = self._chain(emissions, None, mask)
        trans, start, end = self._energies(unary.dtype)
        marg = torch.ops.ebm_ext.chain_marginals(unary, trans, lengths, start, end)
        if self.any_mask:
            order = _selection_order(mask_bf)
            marg = torch.zeros_like(marg).scatter(1, order[:, :, None].expand_as(marg), marg)
        return marg if self.batch_first else marg.transpose(0, 1)

    @torch.jit.unused
    def distribution(self, emissions: Tensor, mask: Optional[Tensor] = None):
        """p(y | emissions) as an ``ebm_ext.LinearChainCRF``.

        Batch first, energies = minus the layer's scores: entropy, samples, KL, top-k,
        differentiable marginals. With ``any_mask=True`` its positions are the selected ones,
        packed to the left.

        Args:
            emissions (Tensor, float): scores (higher is better), (batch, seq, num_tags) with
                ``batch_first``, else (seq, batch, num_tags).
            mask (Tensor, bool or uint8, optional): the positions to score, in the layout of the
                emissions' first two dimensions; None: all. Without ``any_mask`` it must be a
                right-padded prefix that includes the first timestep.

        Returns:
            LinearChainCRF: the distribution.
        """
        self._validate(emissions, None, mask)
        unary, _, lengths, _ = self._chain(emissions, None, mask)
        trans, start, end = self._energies(unary.dtype)
        return LinearChainCRF(unary, trans, start, end, lengths)

    # ---- shared ----------------------------------------------------------------------------

    def _kbest(self, emissions: Tensor, mask: Optional[Tensor],
               nbest: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(energies (B, nbest), tags (B, nbest, T) over the packed selection, lengths, the
        batch-first mask) of the nbest best paths."""
        self._validate(emissions, None, mask)
        if nbest < 1:
            raise ValueError(f"nbest must be >= 1, got {nbest}")
        unary, _, lengths, mask_bf = self._chain(emissions, None, mask)
        trans, start, end = self._energies(unary.dtype)
        energy, tags = torch.ops.ebm_ext.viterbi_kbest(unary, trans, nbest, lengths, start, end)
        return energy, tags, lengths, mask_bf

    def _energies(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
        """The transition, start and end energies in `dtype` (that of the unary energies: the
        emissions' and the parameters' promoted, as pytorch-crf's arithmetic promotes them)."""
        trans = -self.transitions.to(dtype)
        start, end = -self.start_transitions.to(dtype), -self.end_transitions.to(dtype)
        c_trans, c_start, c_end = self.constraint_transitions, self.constraint_start, self.constraint_end
        if c_trans is not None and c_start is not None and c_end is not None:
            trans, start, end = trans + c_trans.to(dtype), start + c_start.to(dtype), end + c_end.to(dtype)
        return trans, start, end

    def _validate(self, emissions: Tensor, tags: Optional[Tensor], mask: Optional[Tensor]) -> None:
        if emissions.dim() != 3:
            raise ValueError(f"emissions must have dimension of 3, got {emissions.dim()}")
        if not emissions.is_floating_point():
            raise ValueError(f"emissions must be a floating-point tensor, got {emissions.dtype}")
        if tags is not None and (tags.is_floating_point() or tags.is_complex()):
            raise ValueError(f"tags must be an integer tensor of tag indices (or a bool tensor "
                             f"of allowed tags), got {tags.dtype}")
        if mask is not None and mask.dtype != torch.bool and mask.dtype != torch.uint8:
            raise ValueError(f"mask must be a bool (or uint8) tensor, got {mask.dtype}")
        if emissions.size(2) != self.num_tags:
            raise ValueError(f"expected last dimension of emissions is {self.num_tags}, "
                             f"got {emissions.size(2)}")
        if tags is not None and tags.dtype == torch.bool:
            if emissions.shape != tags.shape:
                raise ValueError("allowed tags (bool) must have the shape of emissions, got "
                                 + _shape(emissions.shape) + " and " + _shape(tags.shape))
        elif tags is not None:
            if emissions.shape[:2] != tags.shape:
                raise ValueError("the first two dimensions of emissions and tags must match, "
                                 "got " + _shape(emissions.shape[:2]) + " and " + _shape(tags.shape))
        if mask is not None:
            if emissions.shape[:2] != mask.shape:
                raise ValueError("the first two dimensions of emissions and mask must match, "
                                 "got " + _shape(emissions.shape[:2]) + " and " + _shape(mask.shape))
            if not self.any_mask and not _tracing():
                first = mask[:, 0] if self.batch_first else mask[0]
                if not bool(first.all()):
                    raise ValueError("mask of the first timestep must all be on")

    def _chain(self, emissions: Tensor, tags: Optional[Tensor],
               mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(unary (B, T, K) energies, gold (B, T), lengths (B,), the batch-first mask (B, T)) for
        the kernels; with any_mask, the selected positions packed to the left."""
        if not self.batch_first:
            emissions = emissions.transpose(0, 1)
            if tags is not None:
                tags = tags.transpose(0, 1)
            if mask is not None:
                mask = mask.transpose(0, 1)
        B, T = emissions.size(0), emissions.size(1)
        # The emissions' and the parameters' dtypes promoted, as in pytorch-crf's arithmetic:
        # float64 emissions into a float32 layer compute in float64, and float16/bfloat16
        # emissions (autocast, a half network) meet the parameters' float32.
        emissions = emissions.to(torch.promote_types(emissions.dtype, self.transitions.dtype))
        if mask is None:
            mask_bf = torch.ones(B, T, dtype=torch.bool, device=emissions.device)
        else:
            mask_bf = mask.to(torch.bool)
        lengths = mask_bf.sum(1)
        gold = tags if tags is not None else torch.zeros(B, T, dtype=torch.long,
                                                         device=emissions.device)
        unary = -emissions
        if self.any_mask:
            order = _selection_order(mask_bf)
            unary = unary.gather(1, order[:, :, None].expand(B, T, self.num_tags))
            gold = gold.gather(1, order)
        elif mask is not None and not _tracing():
            prefix = torch.arange(T, device=mask_bf.device)[None, :] < lengths[:, None]
            if not bool((prefix == mask_bf).all()):
                raise ValueError("mask must be a right-padded prefix (on, then off) in each "
                                 "sequence; for any other selection create the CRF with "
                                 "any_mask=True")
        return unary.contiguous(), gold.contiguous(), lengths, mask_bf


def _tracing() -> bool:
    """Whether torch.compile/export is tracing: the mask's value checks read data, which a
    graph cannot; they run in eager mode and under TorchScript."""
    if torch.jit.is_scripting():
        return False
    return _dynamo_compiling()


@torch.jit.unused
def _dynamo_compiling() -> bool:
    return torch.compiler.is_compiling()


def _shape(shape: List[int]) -> str:
    """A shape written as Python writes a tuple, "(3, 2)" or "(3,)" (TorchScript has no tuple())."""
    if len(shape) == 1:
        return "(" + str(shape[0]) + ",)"
    return "(" + ", ".join([str(d) for d in shape]) + ")"


def _selection_order(mask: Tensor) -> Tensor:
    """(B, T) positions with the selected ones first, in order (a stable sort of ~mask)."""
    return torch.sort((~mask).to(torch.int8), dim=1, stable=True)[1]


def _to_lists(tags: Tensor, lengths: Tensor) -> List[List[int]]:
    # One tolist() of the whole batch, then slices of Python lists: a tolist() per row costs
    # more than the decoding itself.
    rows: List[List[int]] = tags.tolist()
    sizes: List[int] = lengths.tolist()
    return [row[:n] for row, n in zip(rows, sizes)]
