"""Expectations, entropies and samples of the chain distribution p(y) ∝ exp(-E(x, y)).

E is the chain energy of ebm_ext.ops.chain; phi(y) are its indicator features (one per unary
entry at t < L, per transition, first and last tag), so that E(y) = theta . phi(y) with theta =
(unary, trans, start, end). A direction v of the same layout defines the additive statistic
s(y) = v . phi(y). The kernels (csrc/ops/chain_sequence.h, one per-sequence algorithm for both
backends) compute, exactly and in float64:

    chain_expectation    log Z and E_p[s]                        (B,) each, differentiable
    _chain_covariance    sum_b w_b Cov_p_b(phi, s)              the Hessian of log Z times v
    chain_sample         forward-filtering backward-sampling      (N, B, T) tags, -1 padding

From these, in closed form (no autograd through a time loop):

    entropy  H(p)    = log Z_p + E_p[E_p]
    cross    H(p, q) = log Z_q + E_p[E_q]
    KL(p || q)       = log Z_q - log Z_p + E_p[E_q - E_p]

and their gradients: d E_p[s] / d theta = -Cov(phi, s), d E_p[s] / d v = the marginals.

Non-finite rules (as the log partition's): +inf energies forbid; an entry of no mass contributes
exactly 0 to an expectation whatever v holds there (a forbidden tag's +inf energy adds nothing to
the entropy); a sequence with no allowed path has log Z = -inf, expectation 0, and samples of -1;
NaN or -inf energies give NaN (and samples of -1).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._autograd import register_not_differentiable
from ._checks import check_fake_chain, check_tensors

_ops = torch.ops.ebm_ext


def _check(op, unary, trans, lengths, start, end, **more):
    check_tensors(op, ("unary", unary, True), ("trans", trans, True), ("lengths", lengths, False),
                  ("start", start, False), ("end", end, False),
                  *((name, t, False) for name, t in more.items()))


def chain_expectation(unary: Tensor, trans: Tensor, v_unary: Tensor, v_trans: Optional[Tensor] = None,
                      lengths: Optional[Tensor] = None, start: Optional[Tensor] = None,
                      end: Optional[Tensor] = None, v_start: Optional[Tensor] = None,
                      v_end: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """log Z and the expectation E_p[v . phi] of an additive statistic, per sequence.

    p(y) is proportional to exp(-E(x, y)), and v . phi(y) is the energy that the ``v_*`` tensors
    (in the layout of the energies) give the path y: the expectation semiring (Li and Eisner
    2009) computes both in one pass.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        v_unary (Tensor[B, T, K], float): the statistic's unary weights.
        v_trans (Tensor[K, K], float, optional): its transition weights; None: 0.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
        start, end (Tensor[K], float, optional): the energies of the first and last tags.
        v_start, v_end (Tensor[K], float, optional): the statistic's; None: 0.

    Returns:
        tuple[Tensor[B], Tensor[B]]: ``(log_z, expectation)``. Differentiable in every float
        input: d/d theta of E_p[v . phi] is -Cov(phi, v . phi), d/d v the marginals.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> unary = torch.zeros(1, 3, 2)
        >>> log_z, mean = ebm_ext.chain_expectation(unary, torch.zeros(2, 2), torch.ones(1, 3, 2))
        >>> mean                                         # every path has v . phi = 3
        tensor([3.])
    """
    _check("chain_expectation", unary, trans, lengths, start, end, v_trans=v_trans,
           v_start=v_start, v_end=v_end)
    check_tensors("chain_expectation", ("v_unary", v_unary, True))
    return tuple(_ops.chain_expectation(unary, trans, v_unary, v_trans, lengths, start, end,
                                        v_start, v_end))


def chain_entropy(unary: Tensor, trans: Tensor, lengths: Optional[Tensor] = None,
                  start: Optional[Tensor] = None, end: Optional[Tensor] = None) -> Tensor:
    """The entropy H(p) = log Z + E_p[E] of p(y) proportional to exp(-E(x, y)), in nats.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
            Positions t >= L are never read.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.

    Returns:
        Tensor[B]: the entropies, exact (from one expectation), 0 for a length-0 sequence and
        -inf for a sequence with no allowed path. Differentiable (-Cov(phi, E), from one
        covariance kernel).

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> ebm_ext.chain_entropy(torch.zeros(1, 3, 2), torch.zeros(2, 2))   # log 8
        tensor([2.0794])
    """
    _check("chain_entropy", unary, trans, lengths, start, end)
    dtype = unary.dtype
    unary, trans, start, end = _in_float64(unary, trans, start, end)
    log_z, mean_energy = _ops.chain_expectation(unary, trans, unary, trans, lengths, start, end,
                                                start, end)
    return (log_z + mean_energy).to(dtype)


def _in_float64(*tensors):
    """The entropy family's terms are float64 in the kernels; summing them there and rounding
    the result once (not each term) keeps float32 results within float32's own rounding of the
    exact value. Casts are differentiable: the gradients come back in each input's dtype."""
    return tuple(t.double() if t is not None and t.dtype != torch.float64 else t for t in tensors)


def _transition_difference(a: Tensor, b: Tensor, unary: Tensor) -> Tensor:
    """a - b for transitions of any two of the shapes (K, K), (B, K, K), (B, T-1, K, K): a
    per-sequence matrix does not broadcast against per-move ones, so it is repeated per move."""
    if a.dim() != b.dim() and 4 in (a.dim(), b.dim()):
        B, T, K = unary.shape
        per_move = lambda m: m if m.dim() == 4 else (  # noqa: E731
            m.unsqueeze(1) if m.dim() == 3 else m).expand(B, max(T - 1, 0), K, K)
        a, b = per_move(a), per_move(b)
    return a - b


def _check_other(op, pairs):
    """q's energies must match p's in dtype and device, and unary in shape (``pairs``: (name,
    q's, p's)); q's parameters may be per sequence or per move where p's are not, or the
    other way round."""
    for name, q, p in pairs:
        if q is None or p is None:
            continue
        same_shape = q.shape == p.shape or name != "other_unary"
        if not same_shape or q.dtype != p.dtype or q.device != p.device:
            raise RuntimeError(f"{op}: {name} must match {name[len('other_'):]} in shape, dtype "
                               f"and device ({list(p.shape)}, {p.dtype}, {p.device}), got "
                               f"{list(q.shape)}, {q.dtype}, {q.device}")


def _difference(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None and b is None:
        return None
    if a is None:
        return -b
    if b is None:
        return a
    return a - b


def chain_cross_entropy(unary: Tensor, trans: Tensor, other_unary: Tensor, other_trans: Tensor,
                        lengths: Optional[Tensor] = None, start: Optional[Tensor] = None,
                        end: Optional[Tensor] = None, other_start: Optional[Tensor] = None,
                        other_end: Optional[Tensor] = None) -> Tensor:
    """The cross entropy H(p, q) = -E_p[log q(y)] of two chain distributions, per sequence.

    p comes from (unary, trans, start, end), q from the ``other_*`` energies, over the same
    lengths.

    Args:
        unary (Tensor[B, T, K], float): p's unary energies.
        trans (Tensor[K, K], float): p's transition energies, ``trans[i, j]`` for i -> j.
        other_unary (Tensor[B, T, K], float): q's unary energies.
        other_trans (Tensor[K, K], float): q's transition energies.
        lengths (Tensor[B], int64, optional): the lengths, shared by p and q; None: all T.
        start, end (Tensor[K], float, optional): p's start and end energies; None: 0.
        other_start, other_end (Tensor[K], float, optional): q's; None: 0.

    Returns:
        Tensor[B]: H(p, q) in nats; +inf where p gives mass to a path that q forbids.
        Differentiable in both sets of energies.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> u, t = torch.zeros(1, 3, 2), torch.zeros(2, 2)
        >>> ebm_ext.chain_cross_entropy(u, t, u, t)        # = H(p) = log 8
        tensor([2.0794])
    """
    _check("chain_cross_entropy", unary, trans, lengths, start, end, other_start=other_start,
           other_end=other_end)
    _check_other("chain_cross_entropy", (("other_unary", other_unary, unary), ("other_trans", other_trans, trans),
                         ("other_start", other_start, start), ("other_end", other_end, end)))
    check_tensors("chain_cross_entropy", ("other_unary", other_unary, True),
                  ("other_trans", other_trans, True))
    dtype = unary.dtype
    unary, trans, start, end, other_unary, other_trans, other_start, other_end = _in_float64(
        unary, trans, start, end, other_unary, other_trans, other_start, other_end)
    log_zq = _ops.chain_log_partition(other_unary, other_trans, lengths, other_start, other_end)
    _, mean_q = _ops.chain_expectation(unary, trans, other_unary, other_trans, lengths, start, end,
                                       other_start, other_end)
    return (log_zq + mean_q).to(dtype)


def chain_kl(unary: Tensor, trans: Tensor, other_unary: Tensor, other_trans: Tensor,
             lengths: Optional[Tensor] = None, start: Optional[Tensor] = None,
             end: Optional[Tensor] = None, other_start: Optional[Tensor] = None,
             other_end: Optional[Tensor] = None) -> Tensor:
    """KL(p || q) = log Z_q - log Z_p + E_p[E_q - E_p] of two chain distributions, per sequence.

    Entries where both energies are +inf carry no mass and contribute 0.

    Args:
        unary (Tensor[B, T, K], float): p's unary energies.
        trans (Tensor[K, K], float): p's transition energies, ``trans[i, j]`` for i -> j.
        other_unary (Tensor[B, T, K], float): q's unary energies.
        other_trans (Tensor[K, K], float): q's transition energies.
        lengths (Tensor[B], int64, optional): the lengths, shared by p and q; None: all T.
        start, end (Tensor[K], float, optional): p's start and end energies; None: 0.
        other_start, other_end (Tensor[K], float, optional): q's; None: 0.

    Returns:
        Tensor[B]: the divergences, in nats, from one expectation; differentiable in both sets
        of energies.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> u, t = torch.zeros(1, 3, 2), torch.zeros(2, 2)
        >>> ebm_ext.chain_kl(u, t, u, t)
        tensor([0.])
    """
    _check("chain_kl", unary, trans, lengths, start, end, other_start=other_start,
           other_end=other_end)
    _check_other("chain_kl", (("other_unary", other_unary, unary), ("other_trans", other_trans, trans),
                         ("other_start", other_start, start), ("other_end", other_end, end)))
    check_tensors("chain_kl", ("other_unary", other_unary, True), ("other_trans", other_trans, True))
    dtype = unary.dtype
    unary, trans, start, end, other_unary, other_trans, other_start, other_end = _in_float64(
        unary, trans, start, end, other_unary, other_trans, other_start, other_end)
    log_zq = _ops.chain_log_partition(other_unary, other_trans, lengths, other_start, other_end)
    log_zp, gap = _ops.chain_expectation(unary, trans, other_unary - unary,
                                         _transition_difference(other_trans, trans, unary),
                                         lengths, start, end, _difference(other_start, start),
                                         _difference(other_end, end))
    return (log_zq - log_zp + gap).to(dtype)


def chain_sample(unary: Tensor, trans: Tensor, sample_shape: Union[int, Sequence[int]] = (),
                 lengths: Optional[Tensor] = None, start: Optional[Tensor] = None,
                 end: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Exact samples of p(y) proportional to exp(-E(x, y)).

    Forward-filtering backward-sampling from float64 uniforms drawn with ``generator``, so
    ``torch.manual_seed`` makes it reproducible.

    Args:
        unary (Tensor[B, T, K], float): the energy of tag k at position t of sequence b
            (float32 or float64; float16 and bfloat16 on CUDA, accumulated in float32).
        trans (Tensor[K, K], float): ``trans[i, j]`` is the energy of the move from tag i to j.
        sample_shape (int or tuple of int): the leading shape of the samples; () for one.
        lengths (Tensor[B], int64, optional): each sequence's length, in [0, T]; None: all T.
        start (Tensor[K], float, optional): the energy of each first tag; None: 0.
        end (Tensor[K], float, optional): the energy of each last tag; None: 0.
        generator (torch.Generator, optional): the source of randomness; None: torch's default.

    Returns:
        Tensor[sample_shape + (B, T)], int64: tag sequences, -1 at t >= L. Forbidden (+inf)
        paths are never drawn. Not differentiable.

    Raises:
        RuntimeError: an argument of the wrong shape, dtype or device, or a bad value (a length
            out of range, a tag out of range), named with the op in the message.

    Example:
        >>> trans = torch.tensor([[float("inf"), 0.], [0., float("inf")]])   # tags alternate
        >>> ebm_ext.chain_sample(torch.zeros(1, 4, 2), trans, 3).shape
        torch.Size([3, 1, 4])
    """
    _check("chain_sample", unary, trans, lengths, start, end)
    shape = _sample_shape("chain_sample", sample_shape)
    if unary.dim() != 3:  # the kernel's own check says it
        return _ops.chain_sample(unary, trans, unary.new_zeros((0, 0, 0), dtype=torch.float64),
                                 lengths, start, end)
    B, T = unary.shape[0], unary.shape[1]
    noise = torch.rand((shape.numel(), B, T), dtype=torch.float64, device=unary.device,
                       generator=generator)
    return _ops.chain_sample(unary, trans, noise, lengths, start, end).reshape(*shape, B, T)


def _sample_shape(op: str, sample_shape) -> torch.Size:
    dims = [sample_shape] if isinstance(sample_shape, int) else sample_shape
    try:
        dims = list(dims)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                               for d in dims):
        raise ValueError(f"{op}: sample_shape must be an int or a sequence of ints >= 0, got "
                         f"{sample_shape!r}")
    return torch.Size(dims)


# ---- fake implementations -------------------------------------------------------------------

def _check_fake(op, unary, trans):
    check_fake_chain(op, unary, trans)


def _like_parameter(unary, p):
    """The gradient's shape for a parameter: its own (K, K) / per sequence / per move shape,
    (K,) for an absent start or end."""
    return unary.new_empty(p.shape if p is not None else unary.shape[-1])


@torch.library.register_fake("ebm_ext::chain_expectation")
def _chain_expectation_fake(unary, trans, v_unary, v_trans=None, lengths=None, start=None,
                            end=None, v_start=None, v_end=None):
    _check_fake("chain_expectation", unary, trans)
    return unary.new_empty(unary.shape[0]), unary.new_empty(unary.shape[0])


@torch.library.register_fake("ebm_ext::_chain_covariance")
def _chain_covariance_fake(weight, unary, trans, v_unary, v_trans=None, lengths=None, start=None,
                           end=None, v_start=None, v_end=None):
    _check_fake("_chain_covariance", unary, trans)
    return (unary.new_empty(unary.shape), unary.new_empty(trans.shape),
            _like_parameter(unary, start), _like_parameter(unary, end))


@torch.library.register_fake("ebm_ext::chain_sample")
def _chain_sample_fake(unary, trans, noise, lengths=None, start=None, end=None):
    _check_fake("chain_sample", unary, trans)
    return noise.new_empty(noise.shape, dtype=torch.long)


# ---- autograd -------------------------------------------------------------------------------

def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else a if b is None else a + b


def _expectation_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _expectation_backward(ctx, grad_log_z, grad_mean):
    unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end = ctx.saved_tensors
    theta = (lengths, start, end)
    d_theta = [None, None, None, None]  # unary, trans, start, end
    if grad_log_z is not None:  # d log Z = -marginals
        d_theta = list(_ops._chain_log_partition_backward(grad_log_z.contiguous(), unary, trans,
                                                          *theta))
    d_v = [None, None, None, None]
    if grad_mean is not None:
        if any(ctx.needs_input_grad[i] for i in (0, 1, 5, 6)):
            cov = _ops._chain_covariance(-grad_mean.contiguous(), unary, trans, v_unary, v_trans,
                                         lengths, start, end, v_start, v_end)
            d_theta = [_add(a, b) for a, b in zip(d_theta, cov)]
        if any(ctx.needs_input_grad[i] for i in (2, 3, 7, 8)):  # d E[v . phi] / d v = marginals
            d_v = list(_ops._chain_log_partition_backward(-grad_mean.contiguous(), unary, trans,
                                                          *theta))
    du, dt, ds, de = d_theta
    dvu, dvt, dvs, dve = d_v
    return (du, dt, dvu, dvt if v_trans is not None else None, None,
            ds if start is not None else None, de if end is not None else None,
            dvs if v_start is not None else None, dve if v_end is not None else None)


torch.library.register_autograd("ebm_ext::chain_expectation", _expectation_backward,
                                setup_context=_expectation_setup)

register_not_differentiable(
    "_chain_covariance", "derivatives of chain_expectation and of the marginals beyond the "
    "second order of log Z are not implemented")
