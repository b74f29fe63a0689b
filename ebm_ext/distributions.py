"""``LinearChainCRF``: the distribution over tag sequences of a chain energy, torch.distributions
style, on the ebm_ext kernels.

    p(y | x) = exp(-E(x, y)) / Z(x),
    E(x, y) = start[y_0] + sum_{t<L} unary[b, t, y_t] + sum_{1<=t<L} trans[y_{t-1}, y_t] + end[y_{L-1}]

Energies (lower is better, +inf forbids), as every ebm_ext op. An event is a tag sequence: int64
(T,), -1 past the sequence's length; the batch shape is (B,).

Everything is exact, from kernels (no autograd through a time loop): ``partition`` (log Z),
``marginals`` (differentiable: the Hessian of log Z through the covariance kernel),
``entropy()``, ``cross_entropy(other)``, ``kl(other)`` (and ``torch.distributions.kl_divergence``),
``sample(shape)`` (forward-filtering backward-sampling), ``argmax`` / ``max`` (Viterbi),
``topk(k)`` / ``kmax(k)`` (k-best), ``log_prob(tags)``.

The transitions may be one (K, K) matrix, one per sequence (B, K, K) or one per move
(B, T-1, K, K), start and end (K,) or (B, K). Coming from torch-struct:
``LinearChainCRF.from_edge_potentials(log_potentials, lengths)`` takes its (B, N-1, C, C) scores
phi[b, n, z_{n+1}, z_n] (note the [to, from] order) as they are (see its docstring).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl
from torch.distributions.utils import lazy_property

from .ops.distribution import _sample_shape
from .ops import (chain_cross_entropy, chain_energy, chain_entropy, chain_kl, chain_log_partition,
                  chain_marginals, chain_sample, viterbi, viterbi_kbest)

__all__ = ["LinearChainCRF"]


class LinearChainCRF(Distribution):
    """The distribution p(y | x) = exp(-E(x, y)) / Z(x) over the tag sequences of a batch of chains.

    A ``torch.distributions.Distribution`` with batch shape (B,) and event shape (T,): an event
    is a tag sequence, int64, -1 past its length. Everything is exact and comes from kernels.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t.
        trans (Tensor[K, K], float): ``trans[i, j]``, the energy of moving from tag i to tag j.
        start (Tensor[K], float, optional): the first tag's energies; None: 0.
        end (Tensor[K], float, optional): the last tag's energies; None: 0.
        lengths (Tensor[B], int64, optional): the lengths; None: all T (or from ``mask``).
        mask (Tensor[B, T], bool, optional): a right-padded prefix per sequence, instead of
            ``lengths``.
        validate_args (bool, optional): as torch.distributions.

    Example:
        >>> dist = ebm_ext.LinearChainCRF(torch.zeros(1, 3, 2), torch.zeros(2, 2))
        >>> dist.partition.exp(), dist.entropy()
        (tensor([8.]), tensor([2.0794]))
        >>> dist.log_prob(torch.tensor([[0, 1, 1]])).exp()
        tensor([0.1250])
    """

    arg_constraints: dict = {}
    support = constraints.integer_interval(-1, 2 ** 62)  # tags, -1 as padding
    has_rsample = False

    def __init__(self, unary: Tensor, trans: Tensor, start: Optional[Tensor] = None,
                 end: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                 mask: Optional[Tensor] = None, validate_args: Optional[bool] = None) -> None:
        if not isinstance(unary, Tensor) or unary.dim() != 3:
            raise ValueError("LinearChainCRF: unary must be a 3-D tensor (B, T, K), got "
                             f"{_describe(unary)}")
        B, T, K = unary.shape
        moves = max(T - 1, 0)
        if not isinstance(trans, Tensor) or tuple(trans.shape) not in ((K, K), (B, K, K),
                                                                         (B, moves, K, K)):
            raise ValueError(f"LinearChainCRF: trans must have shape (K, K) = ({K}, {K}), "
                             f"(B, K, K) = ({B}, {K}, {K}) or (B, T-1, K, K) = ({B}, {moves}, "
                             f"{K}, {K}), got {_describe(trans)}")
        for name, t in (("start", start), ("end", end)):
            if t is not None and (not isinstance(t, Tensor) or tuple(t.shape) not in ((K,), (B, K))):
                raise ValueError(f"LinearChainCRF: {name} must have shape (K,) = ({K},) or "
                                 f"(B, K) = ({B}, {K}), got {_describe(t)}")
        if mask is not None:
            if lengths is not None:
                raise ValueError("LinearChainCRF: give lengths or mask, not both")
            lengths = _prefix_lengths(mask, B, T)
        if lengths is not None and (not isinstance(lengths, Tensor) or lengths.dtype != torch.long
                                    or tuple(lengths.shape) != (B,)):
            raise ValueError(f"LinearChainCRF: lengths must be an int64 tensor of shape (B,) = "
                             f"({B},), got {_describe(lengths)}")
        self.unary, self.trans, self.start, self.end, self.lengths = unary, trans, start, end, lengths
        # The same distribution with one (K, K) matrix, for the members whose kernels take only
        # that form (see _shared_form): itself, or what from_edge_potentials finds.
        general = trans.dim() != 2 or any(t is not None and t.dim() == 2 for t in (start, end))
        self._shared = None if general else self
        super().__init__(batch_shape=torch.Size([B]), event_shape=torch.Size([T]),
                         validate_args=validate_args)

    @classmethod
    def from_edge_potentials(cls, log_potentials: Tensor, lengths: Optional[Tensor] = None,
                             validate_args: Optional[bool] = None) -> "LinearChainCRF":
        """From torch-struct's ``LinearChainCRF(log_potentials, lengths)``, any potentials.

        The energies are the potentials as they are: ``trans[b, n, i, j] = -phi[b, n, j, i]``
        (a matrix per move and sequence; phi is [to, from]) and zero unary energies, so
        autograd through ``partition`` gives torch-struct's edge marginals:
        ``torch.autograd.grad(dist.partition.sum(), phi)`` equals torch-struct's
        ``dist.marginals``. -inf potentials forbid; the non-finite rules are the ops'.

        The members whose kernels take one (K, K) transition matrix so far (``entropy``,
        ``cross_entropy``, ``kl``, ``sample``, ``topk``, ``kmax``, ``perturb_and_map``, and the
        derivative of ``marginals``) run on that form when the potentials have it,
        phi[b, n, j, i] = a[b, n, j] + c[b, n, i] + W[j, i] with -inf entries in the same places
        at every edge (found exactly, its gauge fixed on a spanning forest of the allowed
        entries; autograd flows through the decomposition, which is linear); for other
        potentials they raise a RuntimeError that says so.

        Args:
            log_potentials (Tensor[B, N-1, C, C], float): scores (higher is better)
                ``phi[b, n, z_(n+1), z_n]``.
            lengths (Tensor[B], int64, optional): the numbers of nodes N_b, in [1, N]; None: all N.
            validate_args (bool, optional): as torch.distributions.

        Returns:
            LinearChainCRF: the same distribution, in energies.

        Raises:
            ValueError: potentials that are not (B, N-1, C, C) floating point, or bad lengths.
        """
        phi, lengths = _edge_inputs(log_potentials, lengths)
        B, E, C, _ = phi.shape
        dist = cls(phi.new_zeros(B, E + 1, C), -phi.transpose(-1, -2), lengths=lengths,
                   validate_args=validate_args)
        try:
            unary, trans = _decompose_edges(phi, lengths)
            dist._shared = cls(unary, trans, lengths=lengths, validate_args=validate_args)
        except ValueError:
            dist._shared = None
        return dist

    def _shared_form(self, what: str) -> "LinearChainCRF":
        if self._shared is None:
            raise RuntimeError(
                f"LinearChainCRF.{what}: its kernels take one (K, K) transition matrix with (K,) "
                "start and end so far; this distribution's are per sequence or per move. "
                "partition, marginals, edge_marginals, argmax, max and log_prob take them")
        return self._shared

    # ---- the distribution --------------------------------------------------------------

    def _energies(self):
        return self.unary, self.trans, self.lengths, self.start, self.end

    @lazy_property
    def partition(self) -> Tensor:
        """log Z per sequence, Tensor[B].
        """
        return chain_log_partition(*self._energies())

    @lazy_property
    def marginals(self) -> Tensor:
        """p(y_t = k), Tensor[B, T, K], 0 past each length.

        Differentiable: exact gradients of log Z twice over, not autograd through a recursion
        (for one (K, K) transition matrix; see from_edge_potentials).
        """
        form = self._shared if self._shared is not None else self
        return chain_marginals(*form._energies())

    @lazy_property
    def edge_marginals(self) -> Tensor:
        """p(y_(t-1) = i, y_t = j), Tensor[B, T-1, K, K] (from i, to j), 0 past each length.

        torch-struct's ``marginals`` are these transposed, ``.transpose(-1, -2)`` ([to, from]).
        """
        B, T, K = self.unary.shape
        trans = self.trans
        per_move = (trans if trans.dim() == 4 else
                    trans.unsqueeze(1).expand(B, max(T - 1, 0), K, K) if trans.dim() == 3 else
                    trans.expand(B, max(T - 1, 0), K, K))
        ones = torch.ones(B, dtype=self.unary.dtype, device=self.unary.device)
        return torch.ops.ebm_ext._chain_log_partition_backward(
            -ones, self.unary, per_move, self.lengths, self.start, self.end)[1]

    @lazy_property
    def _viterbi(self):
        return viterbi(*self._energies())

    @lazy_property
    def argmax(self) -> Tensor:
        """The most probable tag sequence, Tensor[B, T] int64, -1 past each length.
        """
        return self._viterbi[1]

    @property
    def mode(self) -> Tensor:
        return self.argmax

    @lazy_property
    def max(self) -> Tensor:
        """The best score -min_y E(y), Tensor[B] (log_prob(argmax) = max - partition).
        """
        return -self._viterbi[0]

    def topk(self, k: int) -> Tensor:
        """The k most probable distinct sequences, best first.

        Args:
            k (int): how many, >= 1.

        Returns:
            Tensor[k, B, T], int64: -1 where fewer than k exist.
        """
        form = self._shared_form("topk")
        return viterbi_kbest(form.unary, form.trans, k, form.lengths, form.start,
                             form.end)[1].permute(1, 0, 2)

    def kmax(self, k: int) -> Tensor:
        """The scores -E of the k most probable distinct sequences, best first.

        Args:
            k (int): how many, >= 1.

        Returns:
            Tensor[k, B]: -inf where fewer than k exist.
        """
        form = self._shared_form("kmax")
        return -viterbi_kbest(form.unary, form.trans, k, form.lengths, form.start,
                              form.end)[0].t()

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(value) of tag sequences.

        Args:
            value (Tensor[..., B, T], int64): tag sequences; positions past a length are not
                read.

        Returns:
            Tensor[..., B]: the log-probabilities.
        """
        B, T = self.unary.shape[0], self.unary.shape[1]
        if not isinstance(value, Tensor) or value.dim() < 2 or tuple(value.shape[-2:]) != (B, T):
            raise ValueError(f"LinearChainCRF.log_prob: value must have shape (*sample_shape, B, T)"
                             f" with (B, T) = ({B}, {T}), got {_describe(value)}")
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"LinearChainCRF.log_prob: value must hold integer tags, got "
                             f"{value.dtype}")
        if self._validate_args:
            self._validate_sample(value)
        prefix = value.shape[:-2]
        flat = value.reshape(-1, B, T).permute(1, 0, 2).contiguous()  # (B, N, T) candidates
        energy = chain_energy(self.unary, self.trans, flat, self.lengths, self.start, self.end)
        return (-energy.t() - self.partition).reshape(*prefix, B)

    def entropy(self) -> Tensor:
        """H(p) per sequence, in nats; exact and differentiable.

        Returns:
            Tensor[B]: the entropies.
        """
        return chain_entropy(*self._shared_form("entropy")._energies())

    def _check_other(self, other, what):
        if not isinstance(other, LinearChainCRF):
            raise TypeError(f"LinearChainCRF.{what}: other must be a LinearChainCRF, got "
                            f"{type(other).__name__}")
        if other.unary.shape != self.unary.shape:
            raise ValueError(f"LinearChainCRF.{what}: other must have the same (B, T, K) = "
                             f"{tuple(self.unary.shape)}, got {tuple(other.unary.shape)}")
        same = (self.lengths is None and other.lengths is None) or (
            self.lengths is not None and other.lengths is not None
            and torch.equal(self.lengths, other.lengths))
        if not same:
            raise ValueError(f"LinearChainCRF.{what}: other must have the same lengths")

    def cross_entropy(self, other: "LinearChainCRF") -> Tensor:
        """H(p, q) = -E_p[log q(y)] per sequence.

        Args:
            other (LinearChainCRF): q, over the same batch and lengths.

        Returns:
            Tensor[B]: the cross entropies, in nats; differentiable.
        """
        self._check_other(other, "cross_entropy")
        p, q = self._shared_form("cross_entropy"), other._shared_form("cross_entropy")
        return chain_cross_entropy(p.unary, p.trans, q.unary, q.trans, p.lengths, p.start, p.end,
                                   q.start, q.end)

    def kl(self, other: "LinearChainCRF") -> Tensor:
        """KL(p || q) per sequence.

        Args:
            other (LinearChainCRF): q, over the same batch and lengths.

        Returns:
            Tensor[B]: the divergences, in nats; differentiable.
        """
        self._check_other(other, "kl")
        p, q = self._shared_form("kl"), other._shared_form("kl")
        return chain_kl(p.unary, p.trans, q.unary, q.trans, p.lengths, p.start, p.end, q.start,
                        q.end)

    def sample(self, sample_shape: Union[int, Sequence[int], torch.Size] = torch.Size(),
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Exact samples (forward-filtering backward-sampling).

        Args:
            sample_shape (int or tuple of int): the samples' leading shape.
            generator (torch.Generator, optional): the randomness; None: torch's default, so
                ``torch.manual_seed`` makes it reproducible.

        Returns:
            Tensor[sample_shape + (B, T)], int64: -1 past each length (and for a sequence with
            no allowed path).
        """
        form = self._shared_form("sample")
        with torch.no_grad():
            return chain_sample(form.unary, form.trans, sample_shape, form.lengths, form.start,
                                form.end, generator=generator)

    def perturb_and_map(self, sample_shape: Union[int, Sequence[int], torch.Size] = torch.Size(),
                        generator: Optional[torch.Generator] = None) -> Tensor:
        """Gumbel perturb-and-MAP (Papandreou and Yuille 2011): Viterbi paths of perturbed energies.

        Cheap, but not a sample of p (the noise is per position, not per path): use ``sample``
        for that.

        Args:
            sample_shape (int or tuple of int): the leading shape.
            generator (torch.Generator, optional): the randomness.

        Returns:
            Tensor[sample_shape + (B, T)], int64: the paths.
        """
        shape = _sample_shape("LinearChainCRF.perturb_and_map", sample_shape)
        form = self._shared_form("perturb_and_map")
        n = shape.numel()
        B, T, K = form.unary.shape
        with torch.no_grad():
            u = torch.rand((n, B, T, K), dtype=torch.float64, device=form.unary.device,
                           generator=generator).clamp_(min=1e-300)
            gumbel = -torch.log(-torch.log(u))
            noisy = (form.unary.unsqueeze(0) - gumbel.to(form.unary.dtype)).reshape(n * B, T, K)
            L = None if form.lengths is None else form.lengths.repeat(n)
            tags = viterbi(noisy, self.trans, L, self.start, self.end)[1]
        return tags.reshape(*shape, B, T)

    def __repr__(self) -> str:
        B, T, K = self.unary.shape
        return f"LinearChainCRF(B={B}, T={T}, K={K})"


@register_kl(LinearChainCRF, LinearChainCRF)
def _kl_linear_chain(p: LinearChainCRF, q: LinearChainCRF) -> Tensor:
    return p.kl(q)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"shape {list(x.shape)} ({x.dtype})"
    return type(x).__name__


def _prefix_lengths(mask: Tensor, B: int, T: int) -> Tensor:
    if not isinstance(mask, Tensor) or tuple(mask.shape) != (B, T) or mask.dtype != torch.bool:
        raise ValueError(f"LinearChainCRF: mask must be a bool tensor of shape (B, T) = ({B}, "
                         f"{T}), got {_describe(mask)}")
    lengths = mask.sum(1)
    prefix = torch.arange(T, device=mask.device)[None] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("LinearChainCRF: mask must be a right-padded prefix per sequence "
                         "(True then False); pack other selections first (ebm_ext.CRF(..., "
                         "any_mask=True) does)")
    return lengths


def _edge_inputs(phi, lengths):
    """torch-struct's potentials and node lengths, checked; lengths filled in."""
    op = "LinearChainCRF.from_edge_potentials"
    if not isinstance(phi, Tensor) or phi.dim() != 4 or phi.shape[2] != phi.shape[3]:
        raise ValueError(f"{op}: log_potentials must be (B, N-1, C, C), got {_describe(phi)}")
    if not phi.is_floating_point():
        raise ValueError(f"{op}: log_potentials must be floating point, got {phi.dtype}")
    B, E = phi.shape[:2]
    N = E + 1
    if lengths is None:
        lengths = torch.full((B,), N, dtype=torch.long, device=phi.device)
    if (not isinstance(lengths, Tensor) or lengths.dtype != torch.long
            or tuple(lengths.shape) != (B,)):
        raise ValueError(f"{op}: lengths must be int64 (B,) = ({B},), got {_describe(lengths)}")
    if bool(((lengths < 1) | (lengths > N)).any()):
        raise ValueError(f"{op}: lengths must be in [1, N={N}] (numbers of nodes), got "
                         f"{lengths.tolist()}")
    return phi, lengths


def _decompose_edges(phi: Tensor, lengths: Tensor):
    """(unary, trans) with -score energies of one (K, K) matrix; ValueError when the checked
    potentials (_edge_inputs) are not of that form (see from_edge_potentials)."""
    op = "LinearChainCRF.from_edge_potentials"
    B, E, C, _ = phi.shape
    N = E + 1
    valid = torch.arange(E, device=phi.device)[None] < (lengths - 1)[:, None]  # (B, E) edges used
    used = phi.double()[valid]  # (M, C, C)
    if used.numel() and (torch.isnan(used).any() or (used == math.inf).any()):
        raise ValueError(f"{op}: log_potentials must be finite or -inf (forbidden), got NaN or "
                         "+inf")
    if used.shape[0] == 0:  # every sequence has one node: no edge carries anything
        return (phi.new_zeros(B, N, C), phi.new_zeros(C, C))
    forbidden = used[0] == -math.inf
    if not bool((used == -math.inf).eq(forbidden).all()):
        raise ValueError(f"{op}: the -inf (forbidden) entries must sit in the same places at "
                         "every position, as one transition matrix's do; forbid tags at "
                         "positions with +inf unary energies in LinearChainCRF(unary, trans, ...)")
    # Row offsets alpha[j] (to-tags) and column offsets beta[i] (from-tags) per edge, fixed on a
    # spanning forest of the allowed entries so that phi - alpha - beta is 0 on the forest.
    # Linear in phi (autograd flows through it).
    M = used.shape[0]
    zero = used.new_zeros(M)
    alpha, beta = [zero] * C, [zero] * C
    allowed = (~forbidden).cpu()
    seen_row, seen_col = [False] * C, [False] * C
    for root in range(C):
        if seen_row[root] or not bool(allowed[root].any()):
            continue
        seen_row[root] = True
        queue = deque([("row", root)])
        while queue:
            kind, k = queue.popleft()
            if kind == "row":
                for i in torch.nonzero(allowed[k]).flatten().tolist():
                    if not seen_col[i]:
                        seen_col[i] = True
                        beta[i] = used[:, k, i] - alpha[k]
                        queue.append(("col", i))
            else:
                for j in torch.nonzero(allowed[:, k]).flatten().tolist():
                    if not seen_row[j]:
                        seen_row[j] = True
                        alpha[j] = used[:, j, k] - beta[k]
                        queue.append(("row", j))
    alpha, beta = torch.stack(alpha, 1), torch.stack(beta, 1)  # (M, C)
    canonical = used - alpha[:, :, None] - beta[:, None, :]
    W = canonical[0]
    finite = ~forbidden
    with torch.no_grad():
        scale = max(1.0, float(used[:, finite].abs().max())) if bool(finite.any()) else 1.0
        tol = 64 * torch.finfo(phi.dtype).eps * scale * C
        worst = float((canonical[:, finite] - W[finite]).abs().max()) if bool(finite.any()) else 0.0
    if worst > tol:
        raise ValueError(f"{op}: the potentials are not one transition matrix plus per-position "
                         f"tag scores (they differ from that form by {worst:.3g}); our kernels "
                         "share one transition matrix across positions")
    # Node scores: beta at the edge's from-node n, alpha at its to-node n + 1.
    a_full = alpha.new_zeros(B, E, C).index_put((valid,), alpha)
    b_full = beta.new_zeros(B, E, C).index_put((valid,), beta)
    pad = alpha.new_zeros(B, 1, C)
    score = torch.cat([b_full, pad], 1) + torch.cat([pad, a_full], 1)
    trans = torch.where(forbidden, math.inf, -W).t()
    return (-score).to(phi.dtype), trans.to(phi.dtype).contiguous()
