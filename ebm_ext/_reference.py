"""Plain-PyTorch versions of the ebm_ext ops: the test oracles and the benchmark baselines.

The decoders follow the same recursion and tie rule as the kernels (right-to-left min-plus, smallest
minimising index first), written with batched tensor ops and a Python loop over time.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _full_lengths(unary: Tensor, lengths: Optional[Tensor]) -> Tensor:
    B, T, _ = unary.shape
    if lengths is not None:
        return lengths
    return torch.full((B,), T, dtype=torch.long, device=unary.device)


def _or_zeros(x: Optional[Tensor], like: Tensor) -> Tensor:
    return x if x is not None else like.new_zeros(like.shape[-1])


def chain_energy(unary, trans, tags, lengths=None, start=None, end=None) -> Tensor:
    """E(x, y) for int64 tags (B, T) or (B, C, T)."""
    squeeze = tags.dim() == 2
    if squeeze:
        tags = tags[:, None]
    B, C, T = tags.shape
    K = unary.shape[-1]
    if T == 0:
        e = unary.new_zeros((B, C))
        return e[:, 0] if squeeze else e
    L = _full_lengths(unary, lengths)
    valid = torch.arange(T, device=tags.device) < L[:, None, None]
    y = torch.where(valid, tags, 0).clamp(0, K - 1)
    u = unary[:, None].expand(B, C, T, K).gather(3, y[..., None]).squeeze(3)
    e = torch.where(valid, u, 0).sum(-1)
    pair = valid[..., 1:]
    e = e + torch.where(pair, trans[y[..., :-1], y[..., 1:]], 0).sum(-1)
    last = (L - 1).clamp(min=0)[:, None, None].expand(B, C, 1)
    has = (L > 0)[:, None]
    e = e + torch.where(has, _or_zeros(start, unary)[y[..., 0]], 0)
    e = e + torch.where(has, _or_zeros(end, unary)[y.gather(2, last).squeeze(2)], 0)
    return e[:, 0] if squeeze else e


def viterbi(unary, trans, lengths=None, start=None, end=None):
    """(energy (B,), tags (B, T)) of the minimum-energy path."""
    B, T, K = unary.shape
    L = _full_lengths(unary, lengths)
    beta = _or_zeros(end, unary).expand(B, K).clone()
    ptrs = [None] * max(T - 1, 0)
    for t in range(T - 1, 0, -1):
        w = unary[:, t] + beta                       # over the next tag j
        cand = trans[None] + w[:, None, :]           # (B, i, j)
        arg = cand.argmin(dim=2)                     # first minimum: the smallest j
        val = cand.gather(2, arg[..., None]).squeeze(2)
        active = (t < L)[:, None]
        beta = torch.where(active, val, beta)
        ptrs[t - 1] = arg
    tags = torch.full((B, T), -1, dtype=torch.long, device=unary.device)
    if T == 0:
        return unary.new_zeros(B), tags
    w0 = unary[:, 0] + beta + _or_zeros(start, unary)
    y = w0.argmin(dim=1)
    energy = torch.where(L > 0, w0.gather(1, y[:, None]).squeeze(1), 0)
    cur = y
    for t in range(T):
        if t > 0:
            cur = ptrs[t - 1].gather(1, cur[:, None]).squeeze(1)
        tags[:, t] = torch.where(t < L, cur, -1)
    return energy, tags


def viterbi_kbest(unary, trans, k, lengths=None, start=None, end=None):
    """(energy (B, k), tags (B, k, T)): list Viterbi with stable sorting of the (j, r) candidates."""
    B, T, K = unary.shape
    inf = float("inf")
    L = _full_lengths(unary, lengths)
    beta = unary.new_full((B, k, K), inf)
    beta[:, 0] = _or_zeros(end, unary)
    ptrs = [None] * max(T - 1, 0)
    for t in range(T - 1, 0, -1):
        w = unary[:, t][:, None, :] + beta                        # (B, r, j)
        cand = trans[None, :, :, None] + w.transpose(1, 2)[:, None]  # (B, i, j, r): code j*k + r
        vals, codes = cand.reshape(B, K, K * k).sort(dim=2, stable=True)
        vals, codes = vals[..., :k], codes[..., :k]
        active = (t < L)[:, None, None]
        beta = torch.where(active, vals.transpose(1, 2), beta)   # (B, s, i)
        ptrs[t - 1] = codes.transpose(1, 2)                       # (B, s, i)
    energy = unary.new_full((B, k), inf)
    tags = torch.full((B, k, T), -1, dtype=torch.long, device=unary.device)
    if T == 0:
        energy[:, 0] = 0
        return energy, tags
    w0 = unary[:, 0][:, None, :] + beta + _or_zeros(start, unary)  # (B, r, j)
    vals, codes = w0.transpose(1, 2).reshape(B, K * k).sort(dim=1, stable=True)
    for b in range(B):
        if L[b] == 0:
            energy[b, 0] = 0
            continue
        for s in range(k):
            v, code = vals[b, s], int(codes[b, s])
            if not torch.isfinite(v) or v >= inf:
                break
            energy[b, s] = v
            j, r = divmod(code, k)
            tags[b, s, 0] = j
            for t in range(1, int(L[b])):
                j, r = divmod(int(ptrs[t - 1][b, r, j]), k)
                tags[b, s, t] = j
    return energy, tags


def loss_augmented_viterbi(unary, trans, gold, cost, lengths=None, start=None, end=None):
    """(E(y*), Delta(y*, gold), y*) for y* = argmin E(y) - Delta(y, gold), augmenting unary."""
    K = unary.shape[-1]
    L = _full_lengths(unary, lengths)
    T = unary.shape[1]
    valid = torch.arange(T, device=unary.device) < L[:, None]
    augmented = unary - cost[torch.where(valid, gold, 0).clamp(0, K - 1)]
    _, tags = viterbi(augmented, trans, lengths, start, end)
    energy = chain_energy(unary, trans, tags, lengths, start, end)
    y = tags.clamp(min=0)
    delta = torch.where(valid, cost[torch.where(valid, gold, 0), y], 0).sum(-1)
    return energy, delta, tags


def chain_log_partition(unary, trans, lengths=None, start=None, end=None) -> Tensor:
    """log sum_y exp(-E): the forward algorithm with logsumexp (differentiable by autograd)."""
    B, T, K = unary.shape
    if T == 0:
        return unary.new_zeros(B)
    L = _full_lengths(unary, lengths)
    alpha = -(unary[:, 0] + _or_zeros(start, unary))
    for t in range(1, T):
        nxt = torch.logsumexp(alpha[:, :, None] - trans[None], dim=1) - unary[:, t]
        alpha = torch.where((t < L)[:, None], nxt, alpha)
    logz = torch.logsumexp(alpha - _or_zeros(end, unary), dim=1)
    return torch.where(L > 0, logz, torch.zeros_like(logz))


def chain_marginals(unary, trans, lengths=None, start=None, end=None) -> Tensor:
    """p(y_t = k) as minus the gradient of the reference log Z."""
    if unary.shape[1] == 0:
        return torch.zeros_like(unary)
    with torch.enable_grad():
        u = unary.detach().requires_grad_()
        logz = chain_log_partition(u, trans.detach(), lengths,
                                   None if start is None else start.detach(),
                                   None if end is None else end.detach())
        (grad,) = torch.autograd.grad(logz.sum(), u)
    return -grad


def relaxed_chain_energy(unary, trans, probs, lengths=None, start=None, end=None) -> Tensor:
    """E of relaxed tags (B, T, K) by the formula, one position at a time."""
    B, T, K = unary.shape
    L = _full_lengths(unary, lengths)
    e = unary.new_zeros(B)
    for b in range(B):
        n = int(L[b])
        for t in range(n):
            e[b] = e[b] + unary[b, t] @ probs[b, t]
            if t > 0:
                e[b] = e[b] + probs[b, t - 1] @ trans @ probs[b, t]
        if n > 0:
            e[b] = e[b] + _or_zeros(start, unary) @ probs[b, 0] + _or_zeros(end, unary) @ probs[b, n - 1]
    return e


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection onto the simplex by sorting (Duchi et al. 2008)."""
    K = v.shape[-1]
    u, _ = v.sort(dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ind = torch.arange(1, K + 1, dtype=v.dtype, device=v.device)
    rho = ((u - css / ind) > 0).sum(-1, keepdim=True)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


def nearest_centroid(y: Tensor, W: Tensor):
    """The full (N, k) matrix of squared distances, then its min (first index on ties)."""
    dist2 = ((y.unsqueeze(1) - W.unsqueeze(0)) ** 2).sum(-1)
    if y.shape[0] == 0:
        return dist2.new_empty(0), torch.empty(0, dtype=torch.long, device=y.device)
    best, index = dist2.min(1)
    return best, index


def nearest_centroid_matmul(y: Tensor, W: Tensor, chunk: int = 16384):
    """What users write today: ||W_j||^2 - 2 y.W_j by matrix product in chunks of points, then
    argmin (the bench baseline; never the full N x k matrix at once)."""
    norm = (W * W).sum(1)
    parts = [torch.addmm(norm, y[s:s + chunk], W.t(), alpha=-2).min(1) for s in range(0, y.shape[0], chunk)]
    best = torch.cat([p.values for p in parts]) + (y * y).sum(1)
    return best.clamp_min(0), torch.cat([p.indices for p in parts])


def sparse_code(y: Tensor, D: Tensor, lam: float, iterations: int = 1000, method: str = "fista",
                nonneg: bool = False, z0: Optional[Tensor] = None) -> Tensor:
    """Batched ISTA/FISTA as users write it in PyTorch: dense D z and D^T r every iteration, a
    fixed number of iterations, step 1/L with L = 2 * the largest eigenvalue of D^T D."""
    L = 2 * torch.linalg.eigvalsh(D.t() @ D)[-1]
    z = torch.zeros(y.shape[0], D.shape[1], dtype=y.dtype, device=y.device) if z0 is None else z0.clone()
    x, t = z, 1.0
    for _ in range(iterations):
        v = x - 2 * ((x @ D.t() - y) @ D) / L
        step = (v - lam / L).clamp_min(0) if nonneg else torch.sign(v) * (v.abs() - lam / L).clamp_min(0)
        if method == "fista":
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            x, t = step + ((t - 1) / t_next) * (step - z), t_next
        else:
            x = step
        z = step
    return z


def sparse_coding_energy(y: Tensor, D: Tensor, lam: float, z: Tensor) -> Tensor:
    """E(y, z) = ||y - D z||^2 + lam ||z||_1 per row."""
    return ((y - z @ D.t()) ** 2).sum(1) + lam * z.abs().sum(1)


def _relaxed_energy_vectorised(unary, trans, p, start, end, last):
    """The relaxed chain energy with tensor ops (p already 0 at t >= L; last = L - 1, clamped)."""
    energy = (unary * p).sum((1, 2)) + ((p[:, :-1] @ trans) * p[:, 1:]).sum((1, 2))
    if start is not None:
        energy = energy + p[:, 0] @ start
    if end is not None:
        energy = energy + p[torch.arange(p.shape[0]), last] @ end
    return energy


def chain_relaxed_inference(unary, trans, lengths=None, start=None, end=None, steps=20, lr=1.0,
                            method="entropic", init=None):
    """The loop as users write it: the relaxed energy (tensor ops) through autograd for the
    gradient, then the entropic or projected update."""
    from .ops import project_simplex
    B, T, K = unary.shape
    if T == 0:
        return unary.new_zeros(unary.shape), unary.new_zeros(B)
    L = _full_lengths(unary, lengths)
    mask = (torch.arange(T, device=unary.device)[None, :] < L[:, None])[..., None].to(unary.dtype)
    last = (L - 1).clamp_min(0)
    # Positions t >= L keep a distribution (their gradient is 0) and are zeroed at the end.
    p = torch.full_like(unary, 1.0 / K) if init is None else torch.where(mask > 0, init, 1.0 / K)
    detached = [None if x is None else x.detach() for x in (unary, trans, start, end)]
    for _ in range(steps):
        q = p.detach().requires_grad_()
        energy = _relaxed_energy_vectorised(detached[0], detached[1], q * mask, detached[2], detached[3], last)
        (g,) = torch.autograd.grad(energy.sum(), q)
        with torch.no_grad():
            p = torch.softmax(torch.log(p) - lr * g, -1) if method == "entropic" else project_simplex(p - lr * g)
    p = p * mask
    return p, relaxed_chain_energy(unary, trans, p, lengths, start, end)
