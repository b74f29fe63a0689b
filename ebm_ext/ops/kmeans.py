"""K-means as an energy-based model: F(y) = min_j ||y - W_j||^2, the squared distance to the
nearest centroid (centroids W as rows), and its argmin."""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_tensors

_ops = torch.ops.ebm_ext


def nearest_centroid(y: Tensor, W: Tensor) -> tuple[Tensor, Tensor]:
    """The nearest centroid of every point, fused: the N x k distance matrix is never stored.

    The argmin compares ||W_j||^2 - 2 y . W_j in y's dtype (as faiss and scikit-learn do), so
    centroids closer than the rounding of that form may be swapped; ``dist2`` is then
    recomputed as sum (y - W_j)^2. Ties go to the smallest index. On CUDA, float32 points of up
    to 256 dimensions are compared on the tensor cores (TF32) and the answer is still that
    float32 argmin: a point whose two best centroids are closer than TF32's rounding bound is
    recomputed in float32.

    Args:
        y (Tensor[N, d], float): the points.
        W (Tensor[k, d], float): the centroids, in y's dtype and on its device.

    Returns:
        tuple[Tensor[N], Tensor[N] int64]: ``(dist2, index)``. A point holding NaN gets a NaN
        distance; a centroid holding NaN is never picked. ``dist2`` is differentiable in y and
        W (``kmeans_energy``).

    Raises:
        RuntimeError: shapes, dtypes or devices that do not match, named in the message.

    Example:
        >>> y = torch.tensor([[0., 0.], [4., 1.]])
        >>> W = torch.tensor([[1., 0.], [4., 0.]])
        >>> ebm_ext.nearest_centroid(y, W)
        (tensor([1., 1.]), tensor([0, 1]))
    """
    check_tensors("nearest_centroid", ("y", y, True), ("W", W, True))
    return _ops.nearest_centroid(y, W)


def kmeans_energy(y: Tensor, W: Tensor) -> Tensor:
    """The k-means free energy F(y) = min_j ||y - W_j||^2 of every point.

    F(y) = min_z ||y - W^T z||^2 over one-hot z: inference is the nearest centroid.

    Args:
        y (Tensor[N, d], float): the points.
        W (Tensor[k, d], float): the centroids.

    Returns:
        Tensor[N]: the free energies. Differentiable in y and W: dF/dy = 2 (y - W_j*),
        dF/dW_j* = -2 (y - W_j*); the gradient reaches only each point's nearest centroid.

    Raises:
        RuntimeError: shapes, dtypes or devices that do not match, named in the message.

    Example:
        >>> ebm_ext.kmeans_energy(torch.tensor([[0., 0.], [4., 1.]]), torch.tensor([[1., 0.], [4., 0.]]))
        tensor([1., 1.])
    """
    return nearest_centroid(y, W)[0]


@torch.library.register_fake("ebm_ext::nearest_centroid")
def _nearest_centroid_fake(y, W):
    torch._check(y.dim() == 2, lambda: f"nearest_centroid: y must be a 2-D tensor (N, d), got {y.dim()}-D")
    torch._check(W.dim() == 2, lambda: f"nearest_centroid: W must be a 2-D tensor (k, d), got {W.dim()}-D")
    torch._check(W.dtype == y.dtype, lambda: f"nearest_centroid: W must have the dtype of y ({y.dtype}), got {W.dtype}")
    torch._check(W.shape[1] == y.shape[1], lambda: "nearest_centroid: W must have the d of y")
    return y.new_empty(y.shape[:1]), y.new_empty(y.shape[:1], dtype=torch.long)


def _setup(ctx, inputs, output):
    y, W = inputs
    ctx.save_for_backward(y, W, output[1])


def _backward(ctx, grad_dist2, grad_index):
    y, W, index = ctx.saved_tensors
    residual = 2 * grad_dist2.unsqueeze(1) * (y - W.index_select(0, index))
    grad_y = residual if ctx.needs_input_grad[0] else None
    grad_W = None
    if ctx.needs_input_grad[1]:
        grad_W = torch.zeros_like(W).index_add_(0, index, residual, alpha=-1)
    return grad_y, grad_W


torch.library.register_autograd("ebm_ext::nearest_centroid", _backward, setup_context=_setup)
