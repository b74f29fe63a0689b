"""A bidirectional one-layer LSTM over packed sequences, forward and backward fused in C++/CUDA.

The layout is PyTorch's PackedSequence: ``input`` (N, I) time-major, step t holding the
``batch_sizes[t]`` sequences that are still running, longest first (what
``torch.nn.utils.rnn.pack_padded_sequence`` gives as ``.data`` and ``.batch_sizes``). Gates are
in nn.LSTM's order (i, f, g, o), so nn.LSTM's weights load as they are: ``weight_ih`` =
stack(weight_ih_l0, weight_ih_l0_reverse), ``weight_hh`` likewise, ``bias`` = b_ih + b_hh per
direction. ``packed_order`` gives the packing of a padded batch without building a
PackedSequence.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._autograd import register_not_differentiable
from torch import Tensor

from ._checks import check_tensors

_ops = torch.ops.ebm_ext


def bilstm(input: Tensor, batch_sizes: Tensor, weight_ih: Tensor, weight_hh: Tensor,
           bias: Tensor) -> Tensor:
    """Both directions of a one-layer LSTM over packed rows, fused (forward and backward kernels).

    The same numbers as ``nn.LSTM(bidirectional=True)`` on the same PackedSequence, with the
    same gates and weight layout, from zero initial states.

    Args:
        input (Tensor[N, I], float): the packed rows (PackedSequence's ``data``).
        batch_sizes (Tensor[T], int64, on the CPU): rows per step, non-increasing, summing to N.
        weight_ih (Tensor[2, 4H, I], float): input weights of the two directions (nn.LSTM's
            ``weight_ih_l0`` and ``weight_ih_l0_reverse``).
        weight_hh (Tensor[2, 4H, H], float): recurrent weights.
        bias (Tensor[2, 4H], float): ``bias_ih + bias_hh`` of each direction.

    Returns:
        Tensor[N, 2H]: [left-to-right h_t | right-to-left h_t] of each row. Differentiable in
        input, weights and bias; half inputs give float32 outputs on CUDA.

    Raises:
        RuntimeError: shapes, dtypes or batch sizes that do not fit, named in the message.

    Example:
        >>> lstm = torch.nn.LSTM(3, 4, bidirectional=True)
        >>> packed = torch.nn.utils.rnn.pack_sequence([torch.randn(5, 3), torch.randn(2, 3)])
        >>> w = lambda name: torch.stack([getattr(lstm, name), getattr(lstm, name + "_reverse")])
        >>> out = ebm_ext.bilstm(packed.data, packed.batch_sizes, w("weight_ih_l0"),
        ...                      w("weight_hh_l0"), w("bias_ih_l0") + w("bias_hh_l0"))
        >>> torch.allclose(out, lstm(packed)[0].data, atol=1e-6)
        True
    """
    check_tensors("bilstm", ("input", input, True), ("weight_ih", weight_ih, True),
                  ("weight_hh", weight_hh, True), ("bias", bias, True))
    check_tensors("bilstm", ("batch_sizes", batch_sizes, True))  # on the CPU, as nn.LSTM's
    return _ops.bilstm(input, batch_sizes, weight_ih, weight_hh, bias)[0]


def packed_order(lengths: Tensor, T: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """The packed layout of a right-padded batch: which flat positions make the packed rows.

    ``index`` holds the flat position b * T + t of each packed row (steps in order; within a
    step, longer sequences first, ties by b), so ``x.reshape(B * T, -1)[index]`` packs x and
    ``index_copy`` unpacks. With T given it is the op ``ebm_ext::packed_order``, whose sizes N
    and max L depend on the data: ``torch.export`` and ``torch.compile`` trace through it (its
    fake gives them as unbacked sizes).

    Args:
        lengths (Tensor[B], any integer dtype): the lengths, >= 0.
        T (int, optional): the padded length, >= max L; None: max L.

    Returns:
        tuple[Tensor[N] int64, Tensor[max L] int64]: ``(index, batch_sizes)``, on the CPU.
        Sequences of length 0 have no rows.

    Raises:
        ValueError: non-integer or negative lengths, or a T below the longest.

    Example:
        >>> ebm_ext.packed_order(torch.tensor([2, 3]), 3)
        (tensor([3, 0, 4, 1, 5]), tensor([2, 2, 1]))
    """
    # Any integer dtype, as torch's own packing takes (pack_padded_sequence: int32 too).
    if (not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.is_floating_point()
            or lengths.is_complex() or lengths.dtype == torch.bool):
        got = (f"{lengths.dtype} of shape {tuple(lengths.shape)}" if isinstance(lengths, Tensor)
               else type(lengths).__name__)
        raise ValueError(f"packed_order: lengths must be a 1-D integer tensor (B,), got {got}")
    lengths = lengths.long()
    # T may be a symbolic size (torch.export, torch.compile): a dimension of the traced batch.
    if T is not None and (isinstance(T, bool) or not isinstance(T, (int, torch.SymInt)) or T < 0):
        raise ValueError(f"packed_order: T must be an int >= 0 or None, got {T!r}")
    if T is None:
        T = int(lengths.max()) if lengths.numel() else 0
    return _packed_order(lengths, T)


@torch.library.custom_op("ebm_ext::packed_order", mutates_args=())
def _packed_order(lengths: Tensor, T: int) -> tuple[Tensor, Tensor]:
    lengths = lengths.cpu()
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"packed_order: lengths must be >= 0, got {int(lengths.min())}")
    if lengths.numel() and int(lengths.max()) > T:
        raise ValueError(f"packed_order: lengths must be <= T={T}, got {int(lengths.max())}")
    order = torch.argsort(lengths, descending=True, stable=True)
    steps = torch.arange(T)
    running = lengths[order][None, :] > steps[:, None]           # (T, B): step t, sorted rank
    index = (order[None, :] * T + steps[:, None])[running]
    batch_sizes = running.sum(1)
    return index, batch_sizes[batch_sizes > 0]


@_packed_order.register_fake
def _packed_order_fake(lengths, T):
    ctx = torch.library.get_ctx()
    rows, steps = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    return (torch.empty(rows, dtype=torch.long, device="cpu"),
            torch.empty(steps, dtype=torch.long, device="cpu"))


def _check_fake(op, input, weight_ih, weight_hh):
    torch._check(input.dim() == 2, lambda: f"{op}: input must be a 2-D tensor (N, I)")
    torch._check(weight_hh.dim() == 3 and weight_hh.shape[0] == 2
                 and weight_hh.shape[1] == 4 * weight_hh.shape[2],
                 lambda: f"{op}: weight_hh must have shape (2, 4H, H)")
    H = weight_hh.shape[2]
    torch._check(tuple(weight_ih.shape) == (2, 4 * H, input.shape[1]),
                 lambda: f"{op}: weight_ih must have shape (2, 4H, I)")
    return input.shape[0], H


@torch.library.register_fake("ebm_ext::bilstm")
def _bilstm_fake(input, batch_sizes, weight_ih, weight_hh, bias):
    N, H = _check_fake("bilstm", input, weight_ih, weight_hh)
    torch._check(tuple(bias.shape) == (2, 4 * H), lambda: "bilstm: bias must have shape (2, 4H)")
    # gates and cells in the accumulation type: float32 for half/bfloat16 inputs (CUDA)
    acc = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    return (input.new_empty(N, 2 * H), input.new_empty(N, 8 * H, dtype=acc),
            input.new_empty(N, 2 * H, dtype=acc))


@torch.library.register_fake("ebm_ext::_bilstm_backward")
def _bilstm_backward_fake(grad_output, input, batch_sizes, weight_ih, weight_hh, output, gates,
                          cells):
    N, H = _check_fake("_bilstm_backward", input, weight_ih, weight_hh)
    return (input.new_empty(input.shape), weight_ih.new_empty(weight_ih.shape),
            weight_hh.new_empty(weight_hh.shape), weight_hh.new_empty(2, 4 * H))


def _setup(ctx, inputs, output):
    input, batch_sizes, weight_ih, weight_hh, _ = inputs
    output, gates, cells = output
    ctx.mark_non_differentiable(gates, cells)
    ctx.save_for_backward(input, batch_sizes, weight_ih, weight_hh, output, gates, cells)


def _backward(ctx, grad_output, _grad_gates, _grad_cells):
    input, batch_sizes, weight_ih, weight_hh, output, gates, cells = ctx.saved_tensors
    d_input, d_ih, d_hh, d_bias = _ops._bilstm_backward(
        grad_output.contiguous(), input, batch_sizes, weight_ih, weight_hh, output, gates, cells)
    return d_input, None, d_ih, d_hh, d_bias


torch.library.register_autograd("ebm_ext::bilstm", _backward, setup_context=_setup)

register_not_differentiable(
    "_bilstm_backward", "the double backward of bilstm is not implemented")
