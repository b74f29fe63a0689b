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

        The general chains' kernels run in float64 log space; potentials built from one
        transition matrix, ``phi[b, n] = emission[b, n + 1] + W (+ the first emission)``, are
        faster given to the main constructor as ``unary = -emission, trans = -W.T``.

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
        return dist

    # ---- the distribution --------------------------------------------------------------

    def _energies(self):
        return self.unary, self.trans, self.lengths, self.start, self.end

    @lazy_property
    def partition(self) -> Tensor:
        """log Z per sequence, Tensor[B]; never below ``max`` (the best path's score).

        The general chains' kernels guarantee ``max <= partition`` by construction (log Z by
        the decoder's own recursion with soft minima). For one (K, K) matrix log Z comes from
        the exp-domain kernel and the best score from the decoder in the input's precision,
        which can disagree by rounding where one path holds all the mass: there partition is
        max(log Z, max), one Viterbi pass more (its gradient, split where they tie, is the
        same marginals to rounding).
        """
        log_z = chain_log_partition(*self._energies())
        if self.trans.dim() != 2 or any(p is not None and p.dim() == 2
                                         for p in (self.start, self.end)):
            return log_z
        return torch.maximum(log_z, self.max)

    @lazy_property
    def marginals(self) -> Tensor:
        """p(y_t = k), Tensor[B, T, K], 0 past each length.

        Differentiable: exact gradients of log Z twice over, not autograd through a recursion.
        """
        return chain_marginals(*self._energies())

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
    def count(self) -> Tensor:
        """The number of allowed paths (every energy on the path below +inf), Tensor[B] float64.

        Exact integer arithmetic in float64 (0/1 matrices multiplied step by step) wherever every
        partial count stays below 2^53; NaN where the sequence reads a NaN or -inf energy; 1 for
        a length-0 sequence (the empty path).
        """
        B, T, K = self.unary.shape
        with torch.no_grad():
            def allowed(x):  # 1 allowed, 0 forbidden, NaN not an energy
                x = x.detach().double()
                return torch.where(x == math.inf, 0.0,
                                   torch.where(x > -math.inf, 1.0, math.nan)).double()

            L = (self.lengths if self.lengths is not None
                 else torch.full((B,), T, dtype=torch.long, device=self.unary.device))
            ones = self.unary.new_ones(B, K, dtype=torch.float64)
            first = allowed(self.start).expand(B, K) if self.start is not None else ones
            last = allowed(self.end).expand(B, K) if self.end is not None else ones
            moves = allowed(self.trans)
            c = first * allowed(self.unary[:, 0]) if T > 0 else ones
            out = (L == 0).double()
            for t in range(T):
                if t > 0:
                    M = moves[:, t - 1] if moves.dim() == 4 else moves
                    c = (c.unsqueeze(1) @ M).squeeze(1) * allowed(self.unary[:, t])
                ends = L == t + 1
                out = torch.where(ends, (c * last).sum(1), out)
        return out

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
        return viterbi_kbest(self.unary, self.trans, k, self.lengths, self.start,
                             self.end)[1].permute(1, 0, 2)

    def kmax(self, k: int) -> Tensor:
        """The scores -E of the k most probable distinct sequences, best first.

        Args:
            k (int): how many, >= 1.

        Returns:
            Tensor[k, B]: -inf where fewer than k exist.
        """
        return -viterbi_kbest(self.unary, self.trans, k, self.lengths, self.start,
                              self.end)[0].t()

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
        return chain_entropy(*self._energies())

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
        return chain_cross_entropy(self.unary, self.trans, other.unary, other.trans, self.lengths,
                                   self.start, self.end, other.start, other.end)

    def kl(self, other: "LinearChainCRF") -> Tensor:
        """KL(p || q) per sequence.

        Args:
            other (LinearChainCRF): q, over the same batch and lengths.

        Returns:
            Tensor[B]: the divergences, in nats; differentiable.
        """
        self._check_other(other, "kl")
        return chain_kl(self.unary, self.trans, other.unary, other.trans, self.lengths,
                        self.start, self.end, other.start, other.end)

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
        with torch.no_grad():
            return chain_sample(self.unary, self.trans, sample_shape, self.lengths, self.start,
                                self.end, generator=generator)

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
        n = shape.numel()
        B, T, K = self.unary.shape
        with torch.no_grad():
            u = torch.rand((n, B, T, K), dtype=torch.float64, device=self.unary.device,
                           generator=generator).clamp_(min=1e-300)
            gumbel = -torch.log(-torch.log(u))
            noisy = (self.unary.unsqueeze(0) - gumbel.to(self.unary.dtype)).reshape(n * B, T, K)
            L = None if self.lengths is None else self.lengths.repeat(n)
            trans, start, end = (p if p is None or not _per_sequence(p, self.trans)
                                 else p.repeat(n, *([1] * (p.dim() - 1)))
                                 for p in (self.trans, self.start, self.end))
            tags = viterbi(noisy, trans, L, start, end)[1]
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


def _per_sequence(p: Tensor, trans: Tensor) -> bool:
    """Whether a parameter has a batch dimension (trans per sequence or per move, start/end per
    sequence)."""
    return p.dim() > 2 if p is trans else p.dim() == 2


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
