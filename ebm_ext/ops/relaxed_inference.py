"""Gradient-descent inference over relaxed tags for chain energies (SPEN-style inference, fused)."""
from __future__ import annotations

from typing import Optional

import torch

from ._autograd import register_not_differentiable
from torch import Tensor

from ._checks import check_int64, check_tensors

_ops = torch.ops.ebm_ext


def chain_relaxed_inference(unary: Tensor, trans: Tensor, lengths: Optional[Tensor] = None,
                            start: Optional[Tensor] = None, end: Optional[Tensor] = None,
                            steps: int = 20, lr: float = 1.0, method: str = "entropic",
                            init: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Minimise the chain energy over relaxed tags p (B, T, K), one distribution per position,
    by ``steps`` steps of gradient descent from ``init`` (default: uniform):

        E(p) = sum_t p_t . unary_t + sum_{t>=1} p_{t-1}^T trans p_t + start . p_0 + end . p_{L-1}

    every position updated from the same p, with ``method`` 'entropic' (exponentiated
    gradient, p_t <- softmax(log p_t - lr dE/dp_t), mirror descent on the simplex) or
    'projected' (p_t <- project_simplex(p_t - lr dE/dp_t)). Returns ``(probs (B, T, K),
    energy (B,))``: the final distributions (0 at t >= L) and their relaxed energy. Entries of
    ``init`` that are 0 stay 0 under the entropic update. Not differentiable (an inference
    routine: train with the losses, or an inference network, on its output)."""
    check_tensors("chain_relaxed_inference", ("unary", unary, True), ("trans", trans, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False), ("init", init, False))
    check_int64("chain_relaxed_inference", "steps", steps)
    return _ops.chain_relaxed_inference(unary, trans, lengths, start, end, steps, lr, method, init)


@torch.library.register_fake("ebm_ext::chain_relaxed_inference")
def _chain_relaxed_inference_fake(unary, trans, lengths=None, start=None, end=None, steps=20, lr=1.0,
                                  method="entropic", init=None):
    torch._check(unary.dim() == 3, lambda: "chain_relaxed_inference: unary must be a 3-D tensor (B, T, K)")
    K = unary.shape[2]
    torch._check(tuple(trans.shape) == (K, K), lambda: "chain_relaxed_inference: trans must have shape (K, K)")
    return torch.empty_like(unary, memory_format=torch.contiguous_format), unary.new_empty(unary.shape[0])

register_not_differentiable(
    "chain_relaxed_inference", "it is an inference routine; differentiate chain_energy at its "
    "output (detached), or unroll ebm_ext.inference.gradient_inference")
