"""Linear-chain energies: energies of tag sequences and exact decoding.

    E(x, y) = start[y_0] + sum_{t<L} unary[b,t,y_t] + sum_{1<=t<L} trans[y_{t-1}, y_t] + end[y_{L-1}]

Lower is better. Shapes: ``unary`` (B, T, K), ``trans`` (K, K) (``trans[i, j]`` is the energy of
i -> j), ``start``/``end`` (K,) or None, ``lengths`` (B,) int64 or None (all T). Padding is on the
right; output tags hold -1 at positions t >= L. Ties go to the lexicographically smallest path
(smallest tag first), identically on CPU and CUDA.

Non-finite inputs: +inf forbids a tag or transition. A sequence whose inputs hold NaN or -inf
(not an energy) gets a NaN energy (its tags are then in range but unspecified). In ``viterbi`` a sequence with no finite path
gets energy +inf; ``viterbi_kbest`` treats paths of energy +inf as missing.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._checks import check_fake_chain, check_int64, check_tensors

_ops = torch.ops.ebm_ext


def chain_energy(unary: Tensor, trans: Tensor, tags: Tensor, lengths: Optional[Tensor] = None,
                 start: Optional[Tensor] = None, end: Optional[Tensor] = None) -> Tensor:
    """Energy E(x, y) of given tag sequences, or of relaxed ones.

    E(x, y) = start[y_0] + sum_(t<L) unary[b, t, y_t] + sum_(1<=t<L) trans[y_(t-1), y_t] +
    end[y_(L-1)]. For relaxed tags (one distribution, or any weights, per position) the unary,
    start and end terms are linear and the transition term is y_(t-1)^T trans y_t; an entry of
    weight 0 contributes exactly 0 whatever its energy.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        tags (Tensor[B, T] or Tensor[B, C, T], int64; or Tensor[B, T, K], float): the
            tag sequences (C candidates per input in the 3-D integer form), or relaxed tags.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
            Positions t >= L are never read.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.

    Returns:
        Tensor[B] (Tensor[B, C] for candidates): the energies, in unary's dtype. Differentiable in
        unary, trans, start, end and relaxed tags.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])   # B=1, T=3, K=2
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> ebm_ext.chain_energy(unary, trans, torch.tensor([[0, 1, 1]]))
        tensor([5.])
    """
    check_tensors("chain_energy", ("unary", unary, True), ("trans", trans, True), ("tags", tags, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False))
    return _ops.chain_energy(unary, trans, tags, lengths, start, end)


def viterbi(unary: Tensor, trans: Tensor, lengths: Optional[Tensor] = None,
            start: Optional[Tensor] = None, end: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Exact minimum-energy decoding: the argmin path of every sequence.

    Ties go to the lexicographically smallest path (smallest tag first), on CPU and CUDA alike.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
            Positions t >= L are never read.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.

    Returns:
        tuple[Tensor[B], Tensor[B, T] int64]: ``(energy, tags)``. ``tags`` holds -1 at t >= L;
        a length-0 sequence has energy 0. ``energy`` is differentiable: its gradient is the
        indicator (counts) of the argmin path. +inf when no finite path exists; NaN when the
        sequence's inputs hold NaN or -inf.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])   # B=1, T=3, K=2
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> ebm_ext.viterbi(unary, trans)
        (tensor([1.]), tensor([[0, 0, 0]]))
    """
    check_tensors("viterbi", ("unary", unary, True), ("trans", trans, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False))
    return _ops.viterbi(unary, trans, lengths, start, end)


def viterbi_kbest(unary: Tensor, trans: Tensor, k: int, lengths: Optional[Tensor] = None,
                  start: Optional[Tensor] = None,
                  end: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The k lowest-energy distinct paths of every sequence, in ascending energy.

    The first row is ``viterbi``'s path; equal energies are ordered by the same tie rule.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        k (int): how many paths, >= 1.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.

    Returns:
        tuple[Tensor[B, k], Tensor[B, k, T] int64]: ``(energy, tags)``. When fewer than k finite
        paths exist, the missing rows have energy +inf and tags -1. Energies are differentiable
        like ``viterbi``'s; ``energy[:, 1]`` is min over y != best, the margin hinge's competitor.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])   # B=1, T=3, K=2
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> energy, tags = ebm_ext.viterbi_kbest(unary, trans, 2)
        >>> energy, tags
        (tensor([[1., 3.]]), tensor([[[0, 0, 0],
                 [1, 1, 1]]]))
    """
    check_tensors("viterbi_kbest", ("unary", unary, True), ("trans", trans, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False))
    check_int64("viterbi_kbest", "k", k)
    return _ops.viterbi_kbest(unary, trans, k, lengths, start, end)


def loss_augmented_viterbi(unary: Tensor, trans: Tensor, gold: Tensor, cost: Tensor,
                           lengths: Optional[Tensor] = None, start: Optional[Tensor] = None,
                           end: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Cost-augmented decoding: y* = argmin_y E(x, y) - Delta(y, gold), fused.

    Delta(y, gold) = sum_(t<L) cost[gold_t, y_t]. No augmented copy of ``unary`` is made.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        gold (Tensor[B, T], int64): the gold tags; positions t >= L are ignored (may hold -1).
        cost (Tensor[K, K], float): finite, >= 0, with a zero diagonal (Hamming: ``1 - eye(K)``,
            ``ebm_ext.losses.hamming_cost``).
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.

    Returns:
        tuple[Tensor[B], Tensor[B], Tensor[B, T] int64]: ``(energy, delta, tags)``: E(y*) (not
        the augmented minimum), Delta(y*, gold) and y*. ``energy`` is differentiable as in
        ``viterbi``, ``delta`` in ``cost``.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])   # B=1, T=3, K=2
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> gold = torch.tensor([[0, 0, 0]])
        >>> ebm_ext.loss_augmented_viterbi(unary, trans, gold, 5 * (1 - torch.eye(2)))
        (tensor([3.]), tensor([15.]), tensor([[1, 1, 1]]))
    """
    check_tensors("loss_augmented_viterbi", ("unary", unary, True), ("trans", trans, True), ("gold", gold, True), ("cost", cost, True), ("lengths", lengths, False), ("start", start, False), ("end", end, False))
    return _ops.loss_augmented_viterbi(unary, trans, gold, cost, lengths, start, end)


# ---- fake (meta) implementations: shapes and dtypes only, for torch.compile ------------------

@torch.library.register_fake("ebm_ext::chain_energy")
def _chain_energy_fake(unary, trans, tags, lengths=None, start=None, end=None):
    check_fake_chain("chain_energy", unary, trans)
    if tags.is_floating_point():
        return unary.new_empty(unary.shape[0])
    torch._check(tags.dim() in (2, 3), lambda: "chain_energy: tags must be (B, T) or (B, C, T)")
    return unary.new_empty(tags.shape[:-1])


@torch.library.register_fake("ebm_ext::viterbi")
def _viterbi_fake(unary, trans, lengths=None, start=None, end=None):
    check_fake_chain("viterbi", unary, trans)
    B, T, _ = unary.shape
    return unary.new_empty(B), unary.new_empty((B, T), dtype=torch.long)


@torch.library.register_fake("ebm_ext::viterbi_kbest")
def _viterbi_kbest_fake(unary, trans, k, lengths=None, start=None, end=None):
    check_fake_chain("viterbi_kbest", unary, trans)
    torch._check(k >= 1, lambda: f"viterbi_kbest: k must be >= 1, got {k}")
    B, T, _ = unary.shape
    return unary.new_empty((B, k)), unary.new_empty((B, k, T), dtype=torch.long)


@torch.library.register_fake("ebm_ext::loss_augmented_viterbi")
def _loss_augmented_viterbi_fake(unary, trans, gold, cost, lengths=None, start=None, end=None):
    check_fake_chain("loss_augmented_viterbi", unary, trans)
    B, T, _ = unary.shape
    return unary.new_empty(B), unary.new_empty(B), unary.new_empty((B, T), dtype=torch.long)


# ---- autograd: the energy of a fixed path is linear in unary/trans/start/end ------------------

def _lengths_or_full(lengths: Optional[Tensor], B: int, T: int, device) -> Tensor:
    """``lengths``, or all sequences of full length T when it is None."""
    if lengths is not None:
        return lengths
    return torch.full((B,), T, dtype=torch.long, device=device)


def _path_grads(grad: Tensor, tags: Tensor, lengths: Optional[Tensor], K: int,
                with_start: bool, with_end: bool, trans_dim: int = 2, start_dim: int = 1,
                end_dim: int = 1):
    """Gradients of sum_n grad[n] * E(path n) for paths ``tags`` (B, C, T), ``grad`` (B, C).

    Positions t >= L and tags < 0 (missing k-best rows) contribute nothing. Returns
    (d unary (B, T, K), d trans, d start or None, d end or None), each parameter's gradient
    shaped like it: trans (K, K), (B, K, K) or (B, T-1, K, K) (``trans_dim``), start and end
    (K,) or (B, K).
    """
    B, C, T = tags.shape
    zero = grad.new_zeros(())
    pos = torch.arange(T, device=tags.device)
    L = _lengths_or_full(lengths, B, T, tags.device)
    valid = (pos < L[:, None, None]) & (tags >= 0)
    y = tags.clamp(0, K - 1)
    g = torch.where(valid, grad[:, :, None], zero)  # (B, C, T)
    d_unary = grad.new_zeros((B, T, K)).scatter_add_(2, y.transpose(1, 2), g.transpose(1, 2))
    pair = valid[..., 1:] & valid[..., :-1]
    # Each parameter's cell of a move or tag, offset by the sequence (and the move) where the
    # parameter is per sequence (per move).
    seq = torch.arange(B, device=tags.device)[:, None, None]
    cell = y[..., :-1] * K + y[..., 1:]  # (B, C, T-1)
    if trans_dim == 3:
        cell = cell + seq * (K * K)
    elif trans_dim == 4:
        cell = cell + (seq * (T - 1) + torch.arange(T - 1, device=tags.device)) * (K * K)
    cells = K * K * (1 if trans_dim == 2 else B * (T - 1 if trans_dim == 4 else 1))
    d_trans = grad.new_zeros(cells).scatter_add_(
        0, cell.reshape(-1), torch.where(pair, grad[:, :, None], zero).reshape(-1))
    d_trans = d_trans.view((K, K) if trans_dim == 2 else (B, K, K) if trans_dim == 3
                           else (B, T - 1, K, K))

    def first_last(y_end, v_end, per_sequence):
        index = y_end + seq[..., 0] * K if per_sequence else y_end
        out = grad.new_zeros(B * K if per_sequence else K).scatter_add_(
            0, index.reshape(-1), torch.where(v_end, grad, zero).reshape(-1))
        return out.view(B, K) if per_sequence else out

    d_start = d_end = None
    if with_start:
        d_start = first_last(y[..., 0], valid[..., 0], start_dim == 2)
    if with_end:
        last = (L - 1).clamp(min=0)[:, None, None].expand(B, C, 1)
        d_end = first_last(y.gather(2, last).squeeze(2), valid.gather(2, last).squeeze(2),
                           end_dim == 2)
    return d_unary, d_trans, d_start, d_end


def _setup_path_ctx(ctx, unary, lengths, start, end, tags, trans=None):
    ctx.save_for_backward(tags, lengths)
    ctx.K = unary.shape[-1]
    ctx.with_start = start is not None
    ctx.with_end = end is not None
    ctx.trans_dim = trans.dim() if trans is not None else 2
    ctx.start_dim = start.dim() if start is not None else 1
    ctx.end_dim = end.dim() if end is not None else 1


def _grads_for(ctx, grad: Tensor, tags: Tensor, lengths: Optional[Tensor]):
    if tags.dim() == 2:
        tags, grad = tags[:, None], grad[:, None]
    return _path_grads(grad, tags, lengths, ctx.K, ctx.with_start, ctx.with_end, ctx.trans_dim,
                       ctx.start_dim, ctx.end_dim)


def _chain_energy_setup(ctx, inputs, output):
    unary, trans, tags, lengths, start, end = inputs
    ctx.relaxed = tags.is_floating_point()
    if ctx.relaxed:
        ctx.save_for_backward(unary, trans, tags, lengths, start, end)
    else:
        _setup_path_ctx(ctx, unary, lengths, start, end, tags, trans)


def _chain_energy_backward(ctx, grad):
    if ctx.relaxed:
        return _relaxed_backward(grad, *ctx.saved_tensors)
    tags, lengths = ctx.saved_tensors
    du, dt, ds, de = _grads_for(ctx, grad, tags, lengths)
    return du, dt, None, None, ds, de


def _weighted_matmul(y: Tensor, M: Tensor) -> Tensor:
    """y @ M where a zero weight contributes exactly 0 whatever M holds (the rule of the relaxed
    energy's forward, csrc/ops/chain.h weighted_matmul). No data-dependent shortcut: the
    backward must trace under torch.compile."""
    finite = torch.isfinite(M)
    out = y @ torch.where(finite, M, 0)
    ind = lambda m: m.to(y.dtype)  # noqa: E731
    pos_inf, invalid = ind(M == math.inf), ind(~finite & (M != math.inf))
    out = out + torch.where(ind(y > 0) @ pos_inf > 0, math.inf, 0.0)
    out = out + torch.where(ind(y < 0) @ pos_inf > 0, -math.inf, 0.0)
    return out + torch.where(ind(y != 0) @ invalid > 0, math.nan, 0.0)


def _relaxed_backward(grad, unary, trans, tags, lengths, start, end):
    """Gradients of sum_b grad[b] * E(relaxed tags b): the energy is linear in unary, start, end
    and bilinear in consecutive tag distributions. Positions t >= L get zero gradients; the
    gradient in a tag's weight is its energy (+inf for a forbidden tag), with the forward's rule
    that a zero weight times a non-finite energy is 0."""
    B, T, K = unary.shape
    pos = torch.arange(T, device=unary.device)
    L = _lengths_or_full(lengths, B, T, unary.device)
    inside = (pos < L[:, None]).unsqueeze(2)
    y = torch.where(inside, tags, 0)
    g = grad[:, None, None]
    d_unary = g * y
    d_tags = unary
    d_trans = None
    if T > 1:
        # Each move's matrix (one, per sequence, per move: as the forward, csrc/ops/chain.h),
        # times the tags after it (transposed) and before it.
        if trans.dim() == 4:
            moved = lambda v, M: _weighted_matmul(v.unsqueeze(2), M).squeeze(2)  # noqa: E731
        else:
            moved = _weighted_matmul
        d_tags = d_tags + torch.nn.functional.pad(moved(y[:, 1:], trans.transpose(-1, -2)),
                                                  (0, 0, 0, 1))
        d_tags = d_tags + torch.nn.functional.pad(moved(y[:, :-1], trans), (0, 0, 1, 0))
        pairs = {2: "btk,btl->kl", 3: "btk,btl->bkl", 4: "btk,btl->btkl"}[trans.dim()]
        d_trans = torch.einsum(pairs, g * y[:, :-1], y[:, 1:])
    else:
        d_trans = torch.zeros_like(trans)
    first = (pos == 0)[None, :, None]
    last = (pos[None] == (L - 1)[:, None]).unsqueeze(2)
    d_start = d_end = None
    summed = lambda x, p: x.sum(1) if p.dim() == 2 else x.sum((0, 1))  # noqa: E731
    if start is not None:
        d_tags = d_tags + torch.where(first, start.unsqueeze(-2), 0)
        d_start = summed(g * y * first, start)
    if end is not None:
        d_tags = d_tags + torch.where(last, end.unsqueeze(-2), 0)
        d_end = summed(g * y * last, end)
    d_tags = torch.where(inside, g * d_tags, 0)
    return d_unary, d_trans, d_tags, None, d_start, d_end


def _viterbi_setup(ctx, inputs, output):
    unary, trans, lengths, start, end = inputs
    _setup_path_ctx(ctx, unary, lengths, start, end, output[1], trans)


def _viterbi_backward(ctx, grad_energy, _grad_tags):
    tags, lengths = ctx.saved_tensors
    du, dt, ds, de = _grads_for(ctx, grad_energy, tags, lengths)
    return du, dt, None, ds, de


def _kbest_setup(ctx, inputs, output):
    unary, trans, _, lengths, start, end = inputs
    _setup_path_ctx(ctx, unary, lengths, start, end, output[1], trans)


def _kbest_backward(ctx, grad_energy, _grad_tags):
    tags, lengths = ctx.saved_tensors
    du, dt, ds, de = _grads_for(ctx, grad_energy, tags, lengths)
    return du, dt, None, None, ds, de


def _loss_augmented_setup(ctx, inputs, output):
    unary, trans, gold, _, lengths, start, end = inputs
    tags = output[2]
    _setup_path_ctx(ctx, unary, lengths, start, end, tags, trans)
    ctx.gold = gold


def _loss_augmented_backward(ctx, grad_energy, grad_delta, _grad_tags):
    tags, lengths = ctx.saved_tensors
    du, dt, ds, de = _grads_for(ctx, grad_energy, tags, lengths)
    # Delta = sum_t cost[gold_t, y_t]: its gradient in cost counts the (gold_t, y_t) pairs.
    K, (B, T) = ctx.K, tags.shape
    L = _lengths_or_full(lengths, B, T, tags.device)
    valid = (torch.arange(T, device=tags.device) < L[:, None]) & (tags >= 0)
    flat = (ctx.gold.clamp(0, K - 1) * K + tags.clamp(0, K - 1)).reshape(-1)
    src = torch.where(valid, grad_delta[:, None], grad_delta.new_zeros(())).reshape(-1)
    d_cost = grad_delta.new_zeros(K * K).scatter_add_(0, flat, src).view(K, K)
    return du, dt, None, d_cost, None, ds, de


torch.library.register_autograd("ebm_ext::chain_energy", _chain_energy_backward,
                                setup_context=_chain_energy_setup)
torch.library.register_autograd("ebm_ext::viterbi", _viterbi_backward,
                                setup_context=_viterbi_setup)
torch.library.register_autograd("ebm_ext::viterbi_kbest", _kbest_backward,
                                setup_context=_kbest_setup)
torch.library.register_autograd("ebm_ext::loss_augmented_viterbi", _loss_augmented_backward,
                                setup_context=_loss_augmented_setup)
