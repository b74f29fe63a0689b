"""Gradient-descent inference over relaxed tags for chain energies (SPEN-style inference, fused)."""
from __future__ import annotations

from typing import Optional

import torch

from ._autograd import register_not_differentiable
from torch import Tensor

from ._checks import check_fake_chain, check_int64, check_tensors

_ops = torch.ops.ebm_ext


def chain_relaxed_inference(unary: Tensor, trans: Tensor, lengths: Optional[Tensor] = None,
                            start: Optional[Tensor] = None, end: Optional[Tensor] = None,
                            steps: int = 20, lr: float = 1.0, method: str = "entropic",
                            init: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Minimise the chain energy over relaxed tags by fused gradient descent.

    The relaxed energy of distributions p_t (one per position) is
    E(p) = sum_t p_t . unary_t + sum_(t>=1) p_(t-1)^T trans p_t + start . p_0 + end . p_(L-1);
    every position is updated from the same p, by exponentiated gradient (``'entropic'``:
    p_t <- softmax(log p_t - lr dE/dp_t), mirror descent on the simplex) or by projected
    gradient (``'projected'``: p_t <- project_simplex(p_t - lr dE/dp_t)). E(p) is multilinear,
    so its minimum is a vertex (Viterbi's path); gradient descent finds a local minimum.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
            Positions t >= L are never read.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.
        steps (int): how many steps, >= 0.
        lr (float): the step size, > 0.
        method (str): ``'entropic'`` or ``'projected'``.
        init (Tensor[B, T, K], float, optional): the starting distributions; None: uniform.
            Entries that are 0 stay 0 under the entropic update.

    Returns:
        tuple[Tensor[B, T, K], Tensor[B]]: ``(probs, energy)``, the final distributions (0 at
        t >= L) and their relaxed energy. Not differentiable: an inference routine (train with
        the losses, or an inference network, on its output).

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])   # B=1, T=3, K=2
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> probs, energy = ebm_ext.chain_relaxed_inference(unary, trans, steps=50, lr=0.5)
        >>> probs.argmax(-1), energy.round(decimals=2)
        (tensor([[0, 0, 0]]), tensor([1.]))
    """
    check_tensors("chain_relaxed_inference", ("unary", unary, True), ("trans", trans, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False), ("init", init, False))
    check_int64("chain_relaxed_inference", "steps", steps)
    return _ops.chain_relaxed_inference(unary, trans, lengths, start, end, steps, lr, method, init)


@torch.library.register_fake("ebm_ext::chain_relaxed_inference")
def _chain_relaxed_inference_fake(unary, trans, lengths=None, start=None, end=None, steps=20, lr=1.0,
                                  method="entropic", init=None):
    check_fake_chain("chain_relaxed_inference", unary, trans)
    return torch.empty_like(unary, memory_format=torch.contiguous_format), unary.new_empty(unary.shape[0])

register_not_differentiable(
    "chain_relaxed_inference", "it is an inference routine; differentiate chain_energy at its "
    "output (detached), or unroll ebm_ext.inference.gradient_inference")
