"""Log-partition and marginals of the linear-chain energy (see ebm_ext.ops.chain for E).

    log Z = log sum_y exp(-E(x, y)),    p(y) = exp(-E(x, y)) / Z

The backward of log Z is a forward-backward kernel of its own (``_chain_log_partition_backward``):
d log Z / d unary[b, t, k] = -p(y_t = k), d / d trans = -(pair marginals summed over t),
d / d start = -p(y_0), d / d end = -p(y_{L-1}).

Non-finite inputs: +inf energies forbid tags/transitions; a sequence with no allowed path has
log Z = -inf and zero marginals; NaN inputs give NaN, and so does -inf (not an energy).
"""
from __future__ import annotations

from typing import Optional

import torch

from torch import Tensor

from ._checks import check_fake_chain, check_tensors

_ops = torch.ops.ebm_ext


def chain_log_partition(unary: Tensor, trans: Tensor, lengths: Optional[Tensor] = None,
                        start: Optional[Tensor] = None, end: Optional[Tensor] = None) -> Tensor:
    """The log-partition log Z = log sum_y exp(-E(x, y)) of every sequence.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
            Positions t >= L are never read.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.

    Returns:
        Tensor[B]: log Z, 0 for a length-0 sequence and -inf when no path is allowed.
        Differentiable in unary, trans, start and end (the gradient is minus the marginals, from
        a forward-backward kernel), twice (the covariance kernel: gradgradcheck holds).

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> unary = torch.zeros(1, 3, 2)                    # 2^3 paths of energy 0
        >>> ebm_ext.chain_log_partition(unary, torch.zeros(2, 2)).exp()
        tensor([8.])
    """
    check_tensors("chain_log_partition", ("unary", unary, True), ("trans", trans, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False))
    return _ops.chain_log_partition(unary, trans, lengths, start, end)


def chain_marginals(unary: Tensor, trans: Tensor, lengths: Optional[Tensor] = None,
                    start: Optional[Tensor] = None, end: Optional[Tensor] = None) -> Tensor:
    """The marginals p(y_t = k) under p(y) proportional to exp(-E(x, y)).

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
            Positions t >= L are never read.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.

    Returns:
        Tensor[B, T, K]: the marginals; rows t >= L are 0, and all rows of a sequence with no
        allowed path. Differentiable: the backward is the Hessian of log Z applied by the
        covariance kernel, exact, with no time loop in autograd.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> trans = torch.tensor([[0., float("inf")], [0., 0.]])   # 0 -> 1 is forbidden: paths 00, 10, 11
        >>> ebm_ext.chain_marginals(torch.zeros(1, 2, 2), trans)
        tensor([[[0.3333, 0.6667],
                 [0.6667, 0.3333]]])
    """
    check_tensors("chain_marginals", ("unary", unary, True), ("trans", trans, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False))
    return _ops.chain_marginals(unary, trans, lengths, start, end)


def _check_fake(op, unary, trans):
    check_fake_chain(op, unary, trans)


@torch.library.register_fake("ebm_ext::chain_log_partition")
def _chain_log_partition_fake(unary, trans, lengths=None, start=None, end=None):
    _check_fake("chain_log_partition", unary, trans)
    return unary.new_empty(unary.shape[0])


@torch.library.register_fake("ebm_ext::chain_marginals")
def _chain_marginals_fake(unary, trans, lengths=None, start=None, end=None):
    _check_fake("chain_marginals", unary, trans)
    return unary.new_empty(unary.shape)


@torch.library.register_fake("ebm_ext::_chain_log_partition_backward")
def _chain_log_partition_backward_fake(grad, unary, trans, lengths=None, start=None, end=None):
    _check_fake("_chain_log_partition_backward", unary, trans)
    K = unary.shape[-1]
    per_sequence = lambda p: p is not None and p.dim() == 2  # noqa: E731
    return (unary.new_empty(unary.shape), unary.new_empty(trans.shape),
            unary.new_empty(start.shape if per_sequence(start) else K),
            unary.new_empty(end.shape if per_sequence(end) else K))



def _setup(ctx, inputs, output):
    unary, trans, lengths, start, end = inputs
    ctx.save_for_backward(unary, trans, lengths, start, end)


def _backward(ctx, grad):
    unary, trans, lengths, start, end = ctx.saved_tensors
    du, dt, ds, de = _ops._chain_log_partition_backward(grad.contiguous(), unary, trans, lengths,
                                                        start, end)
    return du, dt, None, (ds if start is not None else None), (de if end is not None else None)


torch.library.register_autograd("ebm_ext::chain_log_partition", _backward, setup_context=_setup)



# Second order: the marginals are minus the gradient of log Z, so their derivative is the Hessian
# of log Z, Cov(phi, phi), applied by the covariance kernel (ebm_ext.ops.distribution) to the
# incoming cotangent as a direction: d <g, marginals> / d theta = -Cov(phi, g . phi).

def _marginals_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _marginals_backward(ctx, grad):
    unary, trans, lengths, start, end = ctx.saved_tensors
    weight = -torch.ones(unary.shape[0], dtype=unary.dtype, device=unary.device)
    du, dt, ds, de = _ops._chain_covariance(weight, unary, trans, grad.contiguous(), None, lengths,
                                            start, end, None, None)
    return du, dt, None, (ds if start is not None else None), (de if end is not None else None)


torch.library.register_autograd("ebm_ext::chain_marginals", _marginals_backward,
                                setup_context=_marginals_setup)


def _partition_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _partition_double_backward(ctx, g_unary, g_trans, g_start, g_end):
    # The outputs are -grad_b * (marginals of every feature), so with v = the cotangents:
    # d/d grad_b = -E_p_b[v . phi], d/d theta = sum_b grad_b Cov_p_b(phi, v . phi).
    grad, unary, trans, lengths, start, end = ctx.saved_tensors
    v_unary = g_unary if g_unary is not None else torch.zeros_like(unary)
    v = (v_unary, g_trans, lengths, start, end, g_start, g_end)
    d_grad = None
    if ctx.needs_input_grad[0]:
        d_grad = -_ops.chain_expectation(unary, trans, v_unary, g_trans, lengths, start, end,
                                         g_start, g_end)[1]
    du = dt = ds = de = None
    if any(ctx.needs_input_grad[i] for i in (1, 2, 4, 5)):
        du, dt, ds, de = _ops._chain_covariance(grad.contiguous(), unary, trans, *v)
    return (d_grad, du, dt, None, (ds if start is not None else None),
            (de if end is not None else None))


torch.library.register_autograd("ebm_ext::_chain_log_partition_backward",
                                _partition_double_backward,
                                setup_context=_partition_backward_setup)
