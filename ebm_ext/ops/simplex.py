"""Euclidean projection onto the probability simplex (the 'projected' relaxed inference step)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_tensors

_ops = torch.ops.ebm_ext


def project_simplex(v: Tensor) -> Tensor:
    """The Euclidean projection onto the probability simplex, over the last dimension.

    argmin_(p >= 0, sum p = 1) ||p - v||_2, batched over the other dimensions.

    Args:
        v (Tensor[..., K], float): the points to project.

    Returns:
        Tensor[..., K]: the projections, contiguous. Rows holding NaN or +inf give NaN rows;
        -inf entries project to 0. Differentiable: the Jacobian is the projection onto the face
        of the simplex the result lies on.

    Raises:
        RuntimeError: a non-float or 0-dimensional ``v``.

    Example:
        >>> ebm_ext.project_simplex(torch.tensor([[0.5, 0.5, 1.0], [3.0, 0.0, 0.0]]))
        tensor([[0.1667, 0.1667, 0.6667],
                [1.0000, 0.0000, 0.0000]])
    """
    check_tensors("project_simplex", ("v", v, True))
    return _ops.project_simplex(v)


@torch.library.register_fake("ebm_ext::project_simplex")
def _project_simplex_fake(v):
    torch._check(v.dim() >= 1, lambda: "project_simplex: v must have at least one dimension")
    return torch.empty_like(v, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, grad):
    (p,) = ctx.saved_tensors
    support = (p > 0).to(grad.dtype)
    count = support.sum(-1, keepdim=True).clamp_min(1)
    return support * (grad - (grad * support).sum(-1, keepdim=True) / count)


torch.library.register_autograd("ebm_ext::project_simplex", _backward, setup_context=_setup)
