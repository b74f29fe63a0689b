"""torch-struct's linear chain, member for member, on the ebm_ext kernels: switching is one import.

    # before
    from torch_struct import LinearChainCRF
    # after
    from ebm_ext.struct import LinearChainCRF

    dist = LinearChainCRF(log_potentials, lengths=lengths)   # phi (B, N-1, C, C), [to, from]

Every member keeps torch-struct's meaning and shapes: scores (higher is better), edge structures
(B, N-1, C, C) indexed [n, z_(n+1), z_n] for ``marginals``, ``argmax``, ``topk``, ``sample`` and
``log_prob``'s argument, and ``entropy``, ``max``, ``partition``, ``count`` as properties. Behind
them is :class:`ebm_ext.LinearChainCRF` built by ``from_edge_potentials`` (the potentials as they
are: a transition matrix per edge and sequence), so everything is exact and from kernels, with
no autograd through a time loop, and autograd through ``partition`` gives ``marginals``.

What differs, on purpose (docs/guides/from_torch_struct.md lists it): -inf potentials forbid
and the entropy family is the one of the allowed paths (torch-struct's is NaN there);
``sample`` takes any sample shape and draws every sample independently (torch-struct redraws
its noise every 10 samples); ``argmax`` and ``topk`` are one-hot structures without a gradient
(torch-struct's are subgradients through its max semiring). Not offered: ``gumbel_crf``,
``enumerate_support`` and the semiring interface (``_struct``, ``args``: accepted, unused).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.distributions import Distribution, register_kl
from torch.distributions.utils import lazy_property

from .distributions import LinearChainCRF as _EnergyCRF

__all__ = ["LinearChainCRF"]


def _edges(tags: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    """One-hot edges (..., N-1, C, C) [n, to, from] of tag paths (..., N), 0 where a tag is -1."""
    prev, nxt = tags[..., :-1], tags[..., 1:]
    valid = (prev >= 0) & (nxt >= 0)
    cell = (nxt.clamp(min=0) * C + prev.clamp(min=0))
    out = torch.nn.functional.one_hot(cell, C * C).to(dtype) * valid.unsqueeze(-1).to(dtype)
    return out.view(*tags.shape[:-1], tags.shape[-1] - 1, C, C)


class LinearChainCRF(Distribution):
    """torch-struct's ``LinearChainCRF(log_potentials, lengths=None)`` on ebm_ext's kernels.

    Args:
        log_potentials (Tensor[B, N-1, C, C], float): edge scores phi[b, n, z_(n+1), z_n],
            higher is better, -inf forbids.
        lengths (Tensor[B], int64, optional): the numbers of nodes, in [1, N]; None: all N.
        args (dict, optional): torch-struct's semiring options; accepted and unused.
        validate_args (bool, optional): as torch.distributions.

    Example:
        >>> phi = torch.zeros(1, 2, 2, 2)                 # 3 nodes, 2 classes: 8 paths
        >>> dist = ebm_ext.struct.LinearChainCRF(phi)
        >>> dist.partition.exp(), dist.count, dist.marginals.shape
        (tensor([8.]), tensor([8.], dtype=torch.float64), torch.Size([1, 2, 2, 2]))
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, log_potentials: Tensor, lengths: Optional[Tensor] = None,
                 args: Optional[dict] = None, validate_args: Optional[bool] = False) -> None:
        self.log_potentials = log_potentials
        self._crf = _EnergyCRF.from_edge_potentials(log_potentials, lengths)
        self.lengths = self._crf.lengths
        B, E, C, _ = log_potentials.shape
        self._C = C
        super().__init__(batch_shape=torch.Size([B]), event_shape=torch.Size([E, C, C]),
                         validate_args=validate_args)

    def _one_hot(self, tags: Tensor) -> Tensor:
        return _edges(tags, self._C, self.log_potentials.dtype)

    @lazy_property
    def partition(self) -> Tensor:
        """log Z, Tensor[B]."""
        return self._crf.partition

    @lazy_property
    def marginals(self) -> Tensor:
        """Edge marginals p(z_n, z_(n+1)), Tensor[B, N-1, C, C] [n, to, from]; differentiable."""
        return self._crf.edge_marginals.transpose(-1, -2)

    @lazy_property
    def entropy(self) -> Tensor:
        """H[p], Tensor[B], differentiable."""
        return self._crf.entropy()

    def cross_entropy(self, other: "LinearChainCRF") -> Tensor:
        """H[p, q], Tensor[B]."""
        return self._crf.cross_entropy(other._crf)

    def kl(self, other: "LinearChainCRF") -> Tensor:
        """KL[p || q], Tensor[B]."""
        return self._crf.kl(other._crf)

    @lazy_property
    def max(self) -> Tensor:
        """The best path's score, Tensor[B]."""
        return self._crf.max

    @lazy_property
    def argmax(self) -> Tensor:
        """The best path as one-hot edges, Tensor[B, N-1, C, C] (ties: the lexicographically
        smallest tag sequence)."""
        return self._one_hot(self._crf.argmax)

    @lazy_property
    def mode(self) -> Tensor:
        return self.argmax

    def kmax(self, k: int) -> Tensor:
        """The k best paths' scores, Tensor[k, B] (-inf where fewer exist)."""
        return self._crf.kmax(k)

    def topk(self, k: int) -> Tensor:
        """The k best paths as one-hot edges, Tensor[k, B, N-1, C, C] (0 where fewer exist)."""
        return self._one_hot(self._crf.topk(k))

    @lazy_property
    def count(self) -> Tensor:
        """The number of allowed paths, Tensor[B] float64 (exact below 2^53)."""
        return self._crf.count

    def sample(self, sample_shape: Union[int, Sequence[int], torch.Size] = torch.Size()) -> Tensor:
        """Exact samples as one-hot edges, Tensor[sample_shape + (B, N-1, C, C)]."""
        return self._one_hot(self._crf.sample(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(value) of one-hot edge structures, sample_shape + (B, N-1, C, C)."""
        phi = self.log_potentials
        score = torch.where(value != 0, value.to(phi.dtype) * phi, 0).sum((-3, -2, -1))
        return score - self.partition

    @staticmethod
    def to_event(sequence: Tensor, extra: int, lengths: Optional[Tensor] = None) -> Tensor:
        """Tag sequences (B, N) to one-hot edges (B, N-1, C, C) int64, zero past each length
        (torch-struct's ``to_parts``)."""
        tags = sequence.clone()
        if lengths is not None:
            past = torch.arange(tags.shape[-1], device=tags.device) >= lengths.unsqueeze(-1)
            tags = tags.masked_fill(past, -1)
        return _edges(tags, extra, torch.long)

    @staticmethod
    def from_event(event: Tensor) -> tuple[Tensor, int]:
        """One-hot edges (B, N-1, C, C) to tag sequences (B, N) and C (torch-struct's
        ``from_parts``; 0 past the last edge)."""
        B, E, C, _ = event.shape
        tags = torch.zeros(B, E + 1, dtype=torch.long, device=event.device)
        on = event.reshape(B, E, C * C).ne(0)
        has = on.any(-1)
        cell = on.to(torch.uint8).argmax(-1)
        to, frm = cell // C, cell % C
        tags[:, 1:] = torch.where(has, to, 0)
        tags[:, 0] = torch.where(has[:, 0], frm[:, 0], 0)
        return tags, C

    def __repr__(self) -> str:
        B, E, C, _ = self.log_potentials.shape
        return f"ebm_ext.struct.LinearChainCRF(B={B}, N={E + 1}, C={C})"


@register_kl(LinearChainCRF, LinearChainCRF)
def _kl_struct(p: LinearChainCRF, q: LinearChainCRF) -> Tensor:
    return p.kl(q)
