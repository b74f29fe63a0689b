"""Ops that have no derivative: their backward raises a clear error instead of leaving the
gradients of their inputs silently None."""
from __future__ import annotations

import torch


def register_not_differentiable(op: str, why: str) -> None:
    """Makes backward through ebm_ext::<op> raise a RuntimeError that names the op and says
    `why` (what to differentiate instead)."""

    def backward(ctx, *grads):
        raise RuntimeError(f"{op} is not differentiable: {why}")

    torch.library.register_autograd(f"ebm_ext::{op}", backward,
                                    setup_context=lambda ctx, inputs, output: None)
