"""The distribution family (chain_expectation, _chain_covariance, chain_sample) and what is
built from it (entropy, cross entropy, KL, differentiable marginals, the double backward of
log Z), against enumeration of every path: features, probabilities and covariances computed by
the formula, not by autograd."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import ebm_ext
from ebm_ext.ops import (chain_cross_entropy, chain_entropy, chain_expectation, chain_kl,
                         chain_sample)
from chain_cases import all_paths, edge_of_range_chains, hard_chains, make_chain
from conftest import tolerance

ops = torch.ops.ebm_ext


def _features(path, T, K):
    """phi(y) flattened as (unary T*K, trans K*K, start K, end K)."""
    phi = torch.zeros(T * K + K * K + 2 * K, dtype=torch.float64)
    for t, y in enumerate(path):
        phi[t * K + y] = 1
        if t:
            phi[T * K + path[t - 1] * K + y] += 1
    if path:
        phi[T * K + K * K + path[0]] = 1
        phi[T * K + K * K + K + path[-1]] = 1
    return phi


def _flat(unary_b, trans, start, end):
    T, K = unary_b.shape
    zero = torch.zeros(K, dtype=torch.float64)
    parts = [unary_b, trans, zero if start is None else start, zero if end is None else end]
    return torch.cat([p.double().reshape(-1) for p in parts])


def _weighted_dot(p, x):
    return torch.where(p == 0, torch.zeros_like(x), p * x).sum()


def brute_moments(unary, trans, L, start, end, b, v):
    """(log Z, E_p[v . phi], Cov_p(phi, v . phi) flattened) of sequence b by enumeration."""
    T, K = unary.shape[1], unary.shape[2]
    paths = all_paths(unary, trans, L, start, end, b)
    n = T * K + K * K + 2 * K
    if not paths:
        return 0.0, 0.0, torch.zeros(n, dtype=torch.float64)
    energies = torch.tensor([e for e, _ in paths], dtype=torch.float64)
    log_z = torch.logsumexp(-energies, 0).item()
    if log_z == -math.inf:
        return log_z, 0.0, torch.zeros(n, dtype=torch.float64)
    p = torch.exp(-energies - log_z)
    phi = torch.stack([_features(path, T, K) for _, path in paths])
    s = torch.stack([_weighted_dot(f, v) for f in phi])  # v at features a path does not use: unread
    es = _weighted_dot(p, s).item()
    cov = (torch.where(p[:, None] == 0, 0.0, p[:, None] * phi * (s[:, None] - es))).sum(0)
    return log_z, es, cov


def _split(flat, T, K):
    return (flat[:T * K].view(T, K), flat[T * K:T * K + K * K].view(K, K),
            flat[T * K + K * K:T * K + K * K + K], flat[T * K + K * K + K:])


def _check_moments(dtype, unary, trans, L, start, end, v_unary, v_trans, v_start, v_end, device,
                   move=None):
    B, T, K = unary.shape
    move = move or (lambda x: None if x is None else x.to(device))
    args = [move(x) for x in (unary, trans, v_unary, v_trans, L, start, end, v_start, v_end)]
    weight = torch.linspace(0.5, 1.5, B, dtype=dtype)
    log_z, mean = [x.cpu() for x in ops.chain_expectation(*args)]
    cov = [x.cpu() for x in ops._chain_covariance(move(weight), *args)]
    rtol, atol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-10, 1e-9)
    exact = [None if x is None else x.double() for x in (unary, trans, L, start, end)]
    c_params = torch.zeros(K * K + 2 * K, dtype=torch.float64)
    for b in range(B):
        v = _flat(v_unary[b], v_trans if v_trans is not None else torch.zeros(K, K),
                  v_start, v_end)
        z, es, c = brute_moments(*exact, b, v)
        if z == -math.inf:
            assert log_z[b].item() == -math.inf and mean[b].item() == 0
        else:
            assert log_z[b].item() == pytest.approx(z, rel=rtol, abs=atol)
            assert mean[b].item() == pytest.approx(es, rel=rtol, abs=atol * max(1, abs(es)))
        cu, ct, cs, ce = _split(c, T, K)
        scale = max(1.0, float(v.abs().where(torch.isfinite(v), 0).max()))
        torch.testing.assert_close(cov[0][b].double(), weight[b].double() * cu, rtol=0,
                                   atol=atol * scale)
        c_params += weight[b].double() * torch.cat([ct.reshape(-1), cs, ce])
    torch.testing.assert_close(torch.cat([cov[1].reshape(-1), cov[2], cov[3]]).double(), c_params,
                               rtol=0, atol=atol * B * 10)


@pytest.mark.parametrize("shape", [(4, 4, 3), (3, 1, 2), (2, 3, 1)])
def test_expectation_and_covariance_match_enumeration(shape, dtype, device):
    unary, trans, L, start, end = make_chain(*shape, dtype=dtype, seed=11)
    v_unary, v_trans, _, v_start, v_end = make_chain(*shape, dtype=dtype, seed=12)
    _check_moments(dtype, unary, trans, L, start, end, v_unary, v_trans, v_start, v_end, device)


@settings(max_examples=200, deadline=None)
@given(hard_chains(), st.integers(0, 2 ** 31))
def test_exact_where_the_exp_domain_is_hardest(case, seed):
    """Transitions spanning up to hundreds, unary energies spread wider, forbidden tags and
    moves and dead ends: the per-column switch to log space must keep every moment exact."""
    dtype, unary, trans, L, start, end = case
    g = torch.Generator().manual_seed(seed)
    v_unary = torch.randn(unary.shape, generator=g, dtype=torch.float64).to(dtype)
    v_trans = torch.randn(trans.shape, generator=g, dtype=torch.float64).to(dtype)
    _check_moments(dtype, unary, trans, L, start, end, v_unary, v_trans, start, None, "cpu")


def _edge_moments(case, seed, move):
    dtype, unary, trans, L, start, end = case
    g = torch.Generator().manual_seed(seed)
    v_unary = torch.randn(unary.shape, generator=g, dtype=torch.float64).to(dtype)
    v_trans = torch.randn(trans.shape, generator=g, dtype=torch.float64).to(dtype)
    _check_moments(dtype, unary, trans, L, start, end, v_unary, v_trans, start, None, "cpu",
                   move=move)


@settings(max_examples=1500, deadline=None)
@given(edge_of_range_chains(), st.integers(0, 2 ** 31))
def test_exact_at_the_edge_of_the_float_range(case, seed):
    """Dead ends, forbidden moves and energies near -log of the smallest normal number: log Z,
    the expectation (hence the entropy) and the covariance (their backward) stay exact."""
    _edge_moments(case, seed, None)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edge_of_range_chains(), st.integers(0, 2 ** 31))
def test_exact_at_the_edge_of_the_float_range_on_cuda(gpu, case, seed):
    with gpu():
        _edge_moments(case, seed, gpu.to)


def test_a_dead_end_runs_its_column_in_log_space():
    # Tag 0 at t = 0 is 800 cheaper but cannot go on: every path runs through a tag 800 above the
    # cheapest one, far below the exp domain's reach (exp(-800) = 0 in float64).
    inf = math.inf
    unary = torch.tensor([[[0.0, 800.0], [0.0, 0.0], [3.0, 0.0]]], dtype=torch.float64)
    trans = torch.tensor([[inf, inf], [0.0, 1.0]], dtype=torch.float64)
    _check_moments(torch.float64, unary, trans, None, None, None, unary.clone(), trans.clone(),
                   None, None, "cpu")
    # Two paths remain, 1-1-1 (802) and 1-1-0 (804): the entropy of odds e^2 : 1.
    q = math.exp(-2) / (1 + math.exp(-2))
    # log Z + E[E] cancels two numbers of about 802: float64 leaves ~1e-13 of each.
    h = -q * math.log(q) - (1 - q) * math.log(1 - q)
    assert chain_entropy(unary, trans).item() == pytest.approx(h, abs=1e-10)


def _brute_entropy(unary, trans, L, start, end, b):
    paths = all_paths(unary, trans, L, start, end, b)
    energies = torch.tensor([e for e, _ in paths], dtype=torch.float64)
    log_z = torch.logsumexp(-energies, 0)
    p = torch.exp(-energies - log_z)
    return (log_z + _weighted_dot(p, energies)).item()


def test_entropy_cross_entropy_and_kl_match_enumeration(device):
    p = make_chain(4, 4, 3, seed=21, device=device)
    q = make_chain(4, 4, 3, seed=22, device=device)
    L = p[2]
    up, tp, _, sp, ep = p
    uq, tq, _, sq, eq = q
    h = chain_entropy(up, tp, L, sp, ep).cpu()
    ce = chain_cross_entropy(up, tp, uq, tq, L, sp, ep, sq, eq).cpu()
    kl = chain_kl(up, tp, uq, tq, L, sp, ep, sq, eq).cpu()
    cpu = lambda x: None if x is None else x.cpu()  # noqa: E731
    P = [cpu(x) for x in p]
    Q = [cpu(x) for x in q]
    for b in range(4):
        paths = all_paths(*P, b)
        if not paths:
            assert h[b] == 0 and ce[b] == 0 and kl[b] == 0
            continue
        ep_ = torch.tensor([e for e, _ in paths], dtype=torch.float64)
        eq_ = torch.tensor([dict((path, e) for e, path in all_paths(*Q[:2], P[2], *Q[3:], b))[path]
                            for _, path in paths], dtype=torch.float64)
        lp = torch.log_softmax(-ep_, 0)
        lq = torch.log_softmax(-eq_, 0)
        assert h[b].item() == pytest.approx(-(lp.exp() * lp).sum().item(), abs=1e-10)
        assert ce[b].item() == pytest.approx(-(lp.exp() * lq).sum().item(), abs=1e-10)
        assert kl[b].item() == pytest.approx((lp.exp() * (lp - lq)).sum().item(), abs=1e-10)
    assert torch.all(chain_kl(up, tp, up, tp, L, sp, ep, sp, ep).abs() < 1e-12)


def test_forbidden_entries_add_nothing_and_kl_to_a_forbidding_q_is_inf(device):
    inf = math.inf
    unary, trans, _, _, _ = make_chain(2, 4, 3, lengths=False, seed=23, device=device)
    unary[0, 1, 2] = inf
    trans[0, 1] = inf
    h = chain_entropy(unary, trans).cpu()
    for b in range(2):
        assert h[b].item() == pytest.approx(_brute_entropy(unary.cpu(), trans.cpu(), None, None,
                                                           None, b), abs=1e-10)
    forbid = unary.clone()
    forbid[:, 0, 0] = inf  # q forbids paths p gives mass to
    assert torch.all(chain_kl(unary, trans, forbid, trans) == inf)
    assert torch.all(torch.isfinite(chain_kl(forbid, trans, unary, trans)))
    both = chain_kl(unary, trans, unary.clone(), trans.clone())  # inf - inf entries are unread
    assert torch.all(both.abs() < 1e-12)


def test_nan_and_infeasible_sequences(device):
    unary, trans, _, _, _ = make_chain(3, 4, 3, lengths=False, seed=24, device=device)
    unary[1, 2, 1] = float("nan")
    unary[2, 1, :] = math.inf  # no allowed path
    log_z, mean = chain_expectation(unary, trans, unary, trans)
    assert torch.isfinite(log_z[0]) and torch.isnan(log_z[1]) and torch.isnan(mean[1])
    assert log_z[2].item() == -math.inf and mean[2].item() == 0
    tags = chain_sample(unary, trans, 5)
    assert torch.all(tags[:, 1:] == -1) and torch.all(tags[:, 0] >= 0)
    trans[0, 0] = -math.inf  # -inf follows NaN's rule
    assert torch.all(torch.isnan(chain_entropy(unary, trans)))


def _energies(device, dtype=torch.float64, seed=31, **kw):
    unary, trans, L, start, end = make_chain(3, 4, 3, dtype=dtype, seed=seed, device=device, **kw)
    return [x if x is None or x.dtype == torch.long else x.requires_grad_()
            for x in (unary, trans, L, start, end)]


def test_gradgradcheck_of_log_partition(device):
    u, t, L, s, e = _energies(device)
    f = lambda u, t, s, e: ebm_ext.chain_log_partition(u, t, L, s, e)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (u, t, s, e))


def test_marginals_are_differentiable(device):
    u, t, L, s, e = _energies(device)
    assert torch.autograd.gradcheck(lambda u, t, s, e: ebm_ext.chain_marginals(u, t, L, s, e),
                                    (u, t, s, e))


@pytest.mark.parametrize("which", ["entropy", "cross_entropy", "kl"])
def test_gradcheck_of_entropy_cross_entropy_and_kl(which, device):
    u, t, L, s, e = _energies(device)
    u2, t2, _, s2, e2 = _energies(device, seed=32)
    fns = {
        "entropy": lambda u, t, s, e, u2, t2, s2, e2: chain_entropy(u, t, L, s, e),
        "cross_entropy": lambda u, t, s, e, u2, t2, s2, e2: chain_cross_entropy(
            u, t, u2, t2, L, s, e, s2, e2),
        "kl": lambda u, t, s, e, u2, t2, s2, e2: chain_kl(u, t, u2, t2, L, s, e, s2, e2),
    }
    assert torch.autograd.gradcheck(fns[which], (u, t, s, e, u2, t2, s2, e2))


def test_entropy_gradient_matches_autograd_through_enumeration():
    u, t, L, s, e = _energies("cpu", seed=33)
    h = chain_entropy(u, t, L, s, e)
    got = torch.autograd.grad(h.sum(), (u, t, s, e))
    total = 0
    for b in range(u.shape[0]):  # entropy of every path's probability, by autograd
        Lb = int(L[b])
        if Lb == 0:
            continue
        energies = torch.stack([
            u[b, torch.arange(Lb), torch.tensor(path)].sum()
            + sum(t[path[i - 1], path[i]] for i in range(1, Lb)) + s[path[0]] + e[path[-1]]
            for _, path in all_paths(u.detach(), t.detach(), L, s.detach(), e.detach(), b)])
        lp = torch.log_softmax(-energies, 0)
        total = total - (lp.exp() * lp).sum()
    want = torch.autograd.grad(total, (u, t, s, e))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_sample_matches_enumeration_by_chi_square():
    # Two sequences of 3 tags over 3 labels (27 paths each), one with a forbidden transition
    # and a forbidden tag: 40000 samples, a chi-square test of the path frequencies against
    # the exact probabilities, and no forbidden path ever drawn.
    unary, trans, _, start, end = make_chain(2, 3, 3, lengths=False, seed=41)
    unary[1, 1, 0] = math.inf
    trans[2, 1] = math.inf
    torch.manual_seed(0)
    tags = chain_sample(unary, trans, 40000, None, start, end)
    assert tags.shape == (40000, 2, 3)
    for b in range(2):
        paths = all_paths(unary, trans, None, start, end, b)
        energies = torch.tensor([e for e, _ in paths], dtype=torch.float64)
        p = torch.softmax(-energies, 0)
        index = {path: i for i, (_, path) in enumerate(paths)}
        drawn = [index[tuple(y)] for y in tags[:, b].tolist()]
        counts = torch.bincount(torch.tensor(drawn), minlength=len(paths)).double()
        assert torch.all(counts[p == 0] == 0)
        keep = p > 0
        chi2, pvalue = stats.chisquare(counts[keep].numpy(), (p[keep] * 40000).numpy())
        assert pvalue > 1e-3, (b, chi2, pvalue)


def test_sample_is_reproducible_and_respects_lengths(device):
    unary, trans, L, start, end = make_chain(5, 6, 4, seed=42, device=device)
    g = torch.Generator().manual_seed(7)
    a = chain_sample(unary, trans, (2, 3), L, start, end, generator=g)
    b = chain_sample(unary, trans, (2, 3), L, start, end,
                     generator=torch.Generator().manual_seed(7))
    assert a.shape == (2, 3, 5, 6) and torch.equal(a, b)
    inside = torch.arange(6, device=L.device)[None] < L[:, None]
    assert torch.all((a >= 0) == inside.expand_as(a))
    assert torch.all(a < 4)


def test_constrained_samples_are_always_valid():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    trans, start, end = ebm_ext.allowed_transitions("BIO", labels)
    unary = torch.randn(8, 7, 5, dtype=trans.dtype)
    torch.manual_seed(1)
    tags = chain_sample(unary, trans.to(unary), 500, None, start, end)
    bad_pairs = torch.isinf(trans)[tags[..., :-1], tags[..., 1:]]
    assert not bad_pairs.any() and not torch.isinf(start)[tags[..., 0]].any()


# K = 180: E (K x K float64) is past the shared memory of a block, so the CUDA kernels read it
# from global memory, staged there by a launch of its own. T = 2: as many rows as the forward
# alone keeps, and yet the sampling walk must find them in global memory (ASan found a first
# version reading the walk's rows from shared memory).
@pytest.mark.parametrize("B,T,K", [(33, 12, 7), (9, 5, 180), (5, 2, 6)])
def test_cuda_matches_cpu(B, T, K, dtype, gpu):
    unary, trans, L, start, end = make_chain(B, T, K, dtype=dtype, seed=51)
    v_unary, v_trans, _, v_start, _ = make_chain(B, T, K, dtype=dtype, seed=52)
    weight = torch.rand(B, dtype=dtype)
    noise = torch.rand(4, B, T, dtype=torch.float64)
    args = (unary, trans, v_unary, v_trans, L, start, end, v_start, None)
    on_cpu = [*ops.chain_expectation(*args), *ops._chain_covariance(weight, *args),
              ops.chain_sample(unary, trans, noise, L, start, end)]
    moved = [gpu.to(x) for x in args]
    with gpu():
        on_gpu = [*ops.chain_expectation(*moved), *ops._chain_covariance(gpu.to(weight), *moved),
                  ops.chain_sample(*[gpu.to(x) for x in (unary, trans, noise, L, start, end)])]
    for a, b in zip(on_gpu, on_cpu):
        if b.dtype == torch.long:
            assert torch.equal(a.cpu(), b)  # the same noise and float64 arithmetic: the same tags
        else:
            torch.testing.assert_close(a.cpu(), b, **tolerance(dtype))


@pytest.mark.parametrize("case", ["chain_expectation", "_chain_covariance", "chain_sample"])
def test_opcheck(device, case, opcheck_util):
    unary, trans, L, start, end = make_chain(3, 5, 4, device=device, seed=61)
    v_unary, v_trans, _, v_start, v_end = make_chain(3, 5, 4, device=device, seed=62)
    args = (unary, trans, v_unary, v_trans, L, start, end, v_start, v_end)
    weight = torch.rand(3, dtype=unary.dtype, device=device)
    noise = torch.rand(2, 3, 5, dtype=torch.float64, device=device)
    op, args = {
        "chain_expectation": (ops.chain_expectation.default, args),
        "_chain_covariance": (ops._chain_covariance.default, (weight, *args)),
        "chain_sample": (ops.chain_sample.default, (unary, trans, noise, L, start, end)),
    }[case]
    torch.library.opcheck(op, args, test_utils=opcheck_util)


@pytest.mark.parametrize("call,message", [
    (lambda: ops.chain_expectation(torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(2, 3, 3)),
     r"chain_expectation: v_unary must have the shape of unary \[2, 3, 4\], got \[2, 3, 3\]"),
    (lambda: ops.chain_expectation(torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(2, 3, 4),
                                   torch.randn(4, 4).double()),
     r"chain_expectation: v_trans must have the same dtype as unary \(Float\), got Double"),
    (lambda: ops._chain_covariance(torch.ones(3), torch.randn(2, 3, 4), torch.randn(4, 4),
                                   torch.randn(2, 3, 4)),
     r"_chain_covariance: weight must have shape \(B,\) = \(2,\), got \[3\]"),
    (lambda: ops.chain_sample(torch.randn(2, 3, 4), torch.randn(4, 4), torch.rand(5, 2, 3)),
     r"chain_sample: noise must be float64, got Float"),
    (lambda: ops.chain_sample(torch.randn(2, 3, 4), torch.randn(4, 4),
                              torch.rand(5, 2, 4, dtype=torch.float64)),
     r"chain_sample: noise must have shape \(N, B, T\) = \(N, 2, 3\), got \[5, 2, 4\]"),
    (lambda: chain_sample(torch.randn(2, 3), torch.randn(3, 3), 4),
     r"chain_sample: unary must be a 3-D tensor \(B, T, K\), got shape \[2, 3\]"),
    (lambda: chain_entropy(None, torch.randn(3, 3)), r"chain_entropy: unary must be a tensor, got None"),
])
def test_bad_inputs(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_third_order_says_it_is_not_implemented():
    u, t, L, s, e = _energies("cpu")
    (g,) = torch.autograd.grad(ebm_ext.chain_log_partition(u, t, L, s, e).sum(), u,
                               create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="_chain_covariance is not differentiable"):
        gg.sum().backward()


@pytest.mark.parametrize("call,error,message", [
    (lambda: chain_sample(torch.randn(2, 3, 4), torch.randn(4, 4), -1), ValueError,
     r"chain_sample: sample_shape must be an int or a sequence of ints >= 0, got -1"),
    (lambda: chain_sample(torch.randn(2, 3, 4), torch.randn(4, 4), (2.5,)), ValueError,
     r"chain_sample: sample_shape must be an int or a sequence of ints >= 0"),
    (lambda: chain_kl(torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(2, 3, 4).double(),
                      torch.randn(4, 4).double()), RuntimeError,
     r"chain_kl: other_unary must match unary in shape, dtype and device"),
    (lambda: chain_cross_entropy(torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(2, 3, 5),
                                 torch.randn(5, 5)), RuntimeError,
     r"chain_cross_entropy: other_unary must match unary"),
])
def test_bad_arguments_of_the_composites(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_expectation_is_one_kernel_launch_without_host_synchronisation(gpu):
    """The exp-domain transitions are staged by each block, not by ATen kernels before it."""
    unary, trans, L, start, end = make_chain(9, 6, 5, seed=71)
    v_unary, v_trans, _, v_start, _ = make_chain(9, 6, 5, seed=72)
    args = [gpu.to(x) for x in (unary, trans, v_unary, v_trans, L, start, end, v_start, None)]

    def call():
        return gpu.ops.chain_expectation(*args)

    call()
    launches, aten_ops = gpu.launches(call)
    assert launches == 1
    assert aten_ops <= {"aten::empty"}, aten_ops


@pytest.mark.parametrize("op", ["chain_expectation", "_chain_covariance", "chain_sample"])
def test_lengths_are_checked_on_the_device(op, gpu):
    if gpu.name == "cuda":
        pytest.skip("a device-side check ends the process's CUDA context, as PyTorch's own do")
    unary, trans = torch.randn(2, 3, 4), torch.randn(4, 4)
    L = torch.tensor([3, 4])
    calls = {"chain_expectation": lambda o: o.chain_expectation(unary, trans, unary, None, L),
             "_chain_covariance": lambda o: o._chain_covariance(torch.ones(2), unary, trans, unary,
                                                                None, L),
             "chain_sample": lambda o: o.chain_sample(unary, trans,
                                                      torch.rand(1, 2, 3, dtype=torch.float64), L)}
    message = rf"{op}: lengths must be in \[0, T=3\], got 4 at index 1"
    with pytest.raises(RuntimeError, match=message):
        calls[op](gpu.ops)
    with pytest.raises(RuntimeError, match=rf"{op}: lengths must be <= T=3, got 4"):
        calls[op](ops)  # the CPU checks on the host, as before
