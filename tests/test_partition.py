"""chain_log_partition and chain_marginals against brute force, the plain-PyTorch forward
algorithm and torch-struct; the forward-backward gradient; extreme energies; bad inputs."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ebm_ext
from ebm_ext import _reference as ref
from chain_cases import all_paths, edge_of_range_chains, hard_chains, make_chain
from conftest import requires_cuda, tolerance
from cuda_backends import emulating, skip_compile_if_emulated

small = st.fixed_dictionaries({
    "B": st.integers(1, 3), "T": st.integers(0, 4), "K": st.integers(1, 4),
    "lengths": st.booleans(), "start_end": st.booleans(), "seed": st.integers(0, 10_000),
    "scale": st.sampled_from([0.1, 1.0, 30.0, 1e4]),
})


def _brute(unary, trans, L, start, end, b):
    """log Z and marginals (T, K) of sequence b by enumerating every path."""
    T, K = unary.shape[1], unary.shape[2]
    paths = all_paths(unary, trans, L, start, end, b)
    if not paths:
        return 0.0, torch.zeros(T, K, dtype=torch.float64)
    scores = torch.tensor([-e for e, _ in paths], dtype=torch.float64)
    logz = torch.logsumexp(scores, 0)
    marg = torch.zeros(T, K, dtype=torch.float64)
    for (e, path), s in zip(paths, scores):
        for t, y in enumerate(path):
            marg[t, y] += math.exp(s - logz)
    return logz.item(), marg


@settings(max_examples=60, deadline=None)
@given(small)
def test_log_partition_and_marginals_match_brute_force(case):
    unary, trans, L, start, end = make_chain(case["B"], case["T"], case["K"],
                                             lengths=case["lengths"], start_end=case["start_end"],
                                             seed=case["seed"], scale=case["scale"])
    logz = ebm_ext.chain_log_partition(unary, trans, L, start, end)
    marg = ebm_ext.chain_marginals(unary, trans, L, start, end)
    for b in range(unary.shape[0]):
        want_z, want_m = _brute(unary, trans, L, start, end, b)
        assert logz[b].item() == pytest.approx(want_z, rel=1e-9, abs=1e-9)
        torch.testing.assert_close(marg[b], want_m, atol=1e-9, rtol=1e-7)


def test_gradient_is_minus_marginals_and_pair_marginals(device):
    unary, trans, L, start, end = make_chain(5, 6, 4, device=device, seed=3)
    params = [x.requires_grad_() for x in (unary, trans, start, end)]
    ebm_ext.chain_log_partition(unary, trans, L, start, end).sum().backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    ref.chain_log_partition(unary, trans, L, start, end).sum().backward()
    for got, exp in zip(want, [p.grad for p in params]):
        torch.testing.assert_close(got, exp, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(-want[0], ebm_ext.chain_marginals(unary.detach(), trans.detach(),
                                                                 L, start.detach(), end.detach()))


@pytest.mark.parametrize("trans_scale", [1.0, 1e4], ids=["exp-domain", "log-space"])
def test_gradcheck(device, trans_scale):
    unary, trans, L, start, end = make_chain(3, 5, 3, device=device, seed=8)
    trans = trans * trans_scale  # 1e4: a finite range far beyond the exp domain's 600
    args = [x.requires_grad_() for x in (unary, trans, start, end)]
    _domain_counts()
    torch.autograd.gradcheck(lambda u, t, s, e: ebm_ext.chain_log_partition(u, t, L, s, e), args)
    if not emulating():  # the CPU kernels say which recursion ran
        exp_runs, log_runs = _domain_counts()
        assert (exp_runs > 0, log_runs > 0) == ((True, False) if trans_scale == 1 else (False, True))


@pytest.mark.parametrize("shape", [(16, 40, 25), (4, 9, 70), (5, 1, 3), (3, 0, 2)])
def test_matches_reference(shape, device, dtype):
    unary, trans, L, start, end = make_chain(*shape, dtype=dtype, device=device, seed=2)
    tol = tolerance(dtype)
    torch.testing.assert_close(ebm_ext.chain_log_partition(unary, trans, L, start, end),
                               ref.chain_log_partition(unary, trans, L, start, end), **tol)
    torch.testing.assert_close(ebm_ext.chain_marginals(unary, trans, L, start, end),
                               ref.chain_marginals(unary, trans, L, start, end), **tol)


@pytest.mark.parametrize("which", ["unary", "trans", "start_end"])
def test_energies_of_1e4(which, dtype):
    """Huge energies in any term: both recursions stay finite and exact (float64 reference)."""
    unary, trans, L, start, end = make_chain(6, 12, 5, seed=4)
    if which == "unary":
        unary = unary * 1e4
    elif which == "trans":
        trans = trans * 1e4
    else:
        start, end = start * 1e4, end * 1e4
    # The oracle runs in float64 on the very values the op sees (float32 rounding of an energy
    # of 1e4 alone moves it by 1e-3).
    cast = [x.to(dtype) for x in (unary, trans, start, end)]
    exact = [x.double() for x in cast]
    want = ref.chain_log_partition(exact[0], exact[1], L, exact[2], exact[3])
    want_m = ref.chain_marginals(exact[0], exact[1], L, exact[2], exact[3])
    got = ebm_ext.chain_log_partition(cast[0], cast[1], L, cast[2], cast[3])
    assert torch.all(torch.isfinite(got))
    rel = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got.double(), want, rtol=rel, atol=rel * 1e4)
    marg = ebm_ext.chain_marginals(cast[0], cast[1], L, cast[2], cast[3])
    # Marginals are exp(alpha + beta - log Z) with |alpha|, |beta| ~ 1e5 here: float32 resolves
    # those to ~1e-2, and so any float32 recursion gets marginals to ~1e-2 at this scale.
    atol = 1e-3 if dtype == torch.float64 else (1e-3 if which == "unary" else 3e-2)
    torch.testing.assert_close(marg.double(), want_m, atol=atol if dtype == torch.float32 else 1e-8,
                               rtol=0)


def test_matches_torch_struct_marginals_in_float64():
    torch_struct = pytest.importorskip("torch_struct")
    unary, trans, _, start, end = make_chain(8, 15, 6, lengths=False, seed=5)
    B, T, K = unary.shape
    phi = (-trans.t())[None, None] - unary[:, 1:, :, None]
    phi = phi.repeat(1, 1, 1, 1)
    phi[:, 0] += (-(unary[:, 0] + start))[:, None, :]
    phi[:, -1] -= end[None, :, None]
    dist = torch_struct.LinearChainCRF(phi)
    torch.testing.assert_close(ebm_ext.chain_log_partition(unary, trans, None, start, end),
                               dist.partition, atol=1e-6, rtol=0)
    edge = dist.marginals  # (B, T-1, K_next, K_prev)
    want = torch.cat([edge.sum(2)[:, :1], edge.sum(3)], dim=1)  # p(y_0), then p(y_t), t >= 1
    torch.testing.assert_close(ebm_ext.chain_marginals(unary, trans, None, start, end), want,
                               atol=1e-6, rtol=0)


def test_forbidden_tags_and_infeasible_sequences(device):
    unary, trans, _, _, _ = make_chain(3, 5, 3, lengths=False, device=device, seed=6)
    unary[0, :, 0] = float("inf")        # tag 0 forbidden in sequence 0
    unary[1, 2, :] = float("inf")        # sequence 1 has no allowed path
    logz = ebm_ext.chain_log_partition(unary, trans)
    marg = ebm_ext.chain_marginals(unary, trans)
    ok = unary.clone()
    ok[0, :, 0] = 1e30
    assert torch.isfinite(logz[0]) and logz[1].item() == float("-inf")
    torch.testing.assert_close(logz[0], ref.chain_log_partition(ok[:1], trans)[0])
    assert torch.all(marg[0, :, 0] == 0) and torch.all(marg[1] == 0)
    torch.testing.assert_close(marg[0].sum(-1), torch.ones(5, dtype=marg.dtype, device=device))
    unary.requires_grad_()
    ebm_ext.chain_log_partition(unary, trans)[[0, 2]].sum().backward()
    assert torch.all(torch.isfinite(unary.grad))


def test_nan_inputs_give_nan(device):
    unary, trans, _, _, _ = make_chain(3, 4, 3, lengths=False, device=device)
    unary[1, 1, 1] = float("nan")
    logz = ebm_ext.chain_log_partition(unary, trans)
    assert torch.isnan(logz[1]) and torch.all(torch.isfinite(logz[[0, 2]]))
    marg = ebm_ext.chain_marginals(unary, trans)
    assert torch.all(torch.isnan(marg[1])) and torch.all(torch.isfinite(marg[[0, 2]]))
    trans[0, 0] = float("nan")
    assert torch.all(torch.isnan(ebm_ext.chain_log_partition(unary, trans)))


@pytest.mark.parametrize("case", ["chain_log_partition", "chain_marginals",
                                  "_chain_log_partition_backward"])
def test_opcheck(device, case, opcheck_util):
    unary, trans, L, start, end = make_chain(3, 5, 4, device=device, seed=9)
    grad = torch.ones(3, dtype=unary.dtype, device=device)
    ops = torch.ops.ebm_ext
    op, args = {
        "chain_log_partition": (ops.chain_log_partition.default,
                                (unary.detach().requires_grad_(), trans.detach().requires_grad_(),
                                 L, start, end)),
        "chain_marginals": (ops.chain_marginals.default, (unary, trans, L, start, end)),
        "_chain_log_partition_backward": (ops._chain_log_partition_backward.default,
                                          (grad, unary, trans, L, start, end)),
    }[case]
    torch.library.opcheck(op, args, test_utils=opcheck_util)


def test_compile(device):
    unary, trans, L, start, end = make_chain(3, 5, 4, device=device, seed=9)
    unary.requires_grad_()
    trans.requires_grad_()
    skip_compile_if_emulated()
    @torch.compile(fullgraph=True, backend="aot_eager")
    def nll(unary, trans):
        return ebm_ext.chain_log_partition(unary, trans, L, start, end).sum()

    nll(unary, trans).backward()
    torch.testing.assert_close(unary.grad, -ebm_ext.chain_marginals(unary.detach(), trans.detach(),
                                                                    L, start, end))


@pytest.mark.parametrize("call,message", [
    (lambda: ebm_ext.chain_log_partition(torch.randn(2, 3), torch.randn(3, 3)),
     r"chain_log_partition: unary must be a 3-D tensor \(B, T, K\), got shape \[2, 3\]"),
    (lambda: ebm_ext.chain_log_partition(torch.randn(2, 3, 4), torch.randn(4, 3)),
     r"chain_log_partition: trans must have shape \(K, K\) = \(4, 4\), \(B, K, K\) = \(2, 4, 4\) "
     r"or \(B, T-1, K, K\) = \(2, 2, 4, 4\), got \[4, 3\]"),
    (lambda: ebm_ext.chain_log_partition(torch.randn(2, 3, 4), torch.randn(4, 4), torch.tensor([1, 5])),
     r"chain_log_partition: lengths must be <= T=3, got 5"),
    (lambda: ebm_ext.chain_marginals(torch.randn(2, 3, 4), torch.randn(4, 4), None, torch.randn(4).double()),
     r"chain_marginals: start must have the same dtype as unary \(Float\), got Double"),
    (lambda: torch.ops.ebm_ext._chain_log_partition_backward(torch.ones(3), torch.randn(2, 3, 4), torch.randn(4, 4)),
     r"_chain_log_partition_backward: grad must have shape \(B,\) = \(2,\), got \[3\]"),
])
def test_bad_inputs(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


@pytest.mark.parametrize("shape", [(64, 50, 25), (8, 30, 300), (5, 1, 3)])
def test_cuda_matches_cpu(shape, dtype, gpu):
    unary, trans, L, start, end = make_chain(*shape, dtype=dtype, seed=1)
    tol = tolerance(dtype)
    cu = [gpu.to(x) for x in (unary, trans, L, start, end)]
    grad = torch.rand(shape[0], dtype=dtype)
    op = torch.ops.ebm_ext._chain_log_partition_backward
    with gpu():
        on_gpu = [ebm_ext.chain_log_partition(*cu), ebm_ext.chain_marginals(*cu), *op(gpu.to(grad), *cu)]
    on_cpu = [ebm_ext.chain_log_partition(unary, trans, L, start, end),
              ebm_ext.chain_marginals(unary, trans, L, start, end), *op(grad, unary, trans, L, start, end)]
    for a, b in zip(on_gpu, on_cpu):
        torch.testing.assert_close(a.cpu(), b, **tol)


def test_nan_as_the_only_term_of_a_sum_gives_nan(device):
    nan, inf = float("nan"), float("inf")
    one_tag = torch.tensor([[[nan], [0.0]]], dtype=torch.float64, device=device)
    assert torch.isnan(ebm_ext.chain_log_partition(one_tag, torch.zeros(1, 1, dtype=torch.float64, device=device)))
    forbidden_or_nan = torch.tensor([[[nan, inf], [0.0, 0.0]]], dtype=torch.float64, device=device)
    trans = torch.zeros(2, 2, dtype=torch.float64, device=device)
    assert torch.isnan(ebm_ext.chain_log_partition(forbidden_or_nan, trans))
    assert torch.isnan(ebm_ext.chain_marginals(forbidden_or_nan, trans)).all()


def test_nan_marginals_stop_at_the_length(device):
    unary, trans, _, _, _ = make_chain(2, 4, 3, lengths=False, device=device, seed=4)
    unary[0, 0, 0] = float("nan")
    marg = ebm_ext.chain_marginals(unary, trans, torch.tensor([2, 4], device=device))
    assert torch.isnan(marg[0, :2]).all() and (marg[0, 2:] == 0).all()
    assert torch.isfinite(marg[1]).all()


def test_float32_keeps_its_precision_at_large_energies(device):
    # Energies of 1e4 at every position: the log-space messages grow to ~T * 1e4 unless they
    # are normalised per position; the float32 marginals must still match float64's.
    g = torch.Generator().manual_seed(6)
    unary = (1e4 + torch.randn(3, 30, 6, generator=g, dtype=torch.float64)).float()
    trans = torch.randn(6, 6, generator=g, dtype=torch.float64).float()
    got = ebm_ext.chain_marginals(unary.to(device), trans.to(device))
    want = ebm_ext.chain_marginals(unary.double(), trans.double())
    torch.testing.assert_close(got.double().cpu(), want, atol=2e-5, rtol=0)
    torch.testing.assert_close(ebm_ext.chain_log_partition(unary.to(device), trans.to(device)).double().cpu(),
                               ebm_ext.chain_log_partition(unary.double(), trans.double()), atol=0, rtol=1e-7)


# ---- exactness where the exp domain is hardest: wide transitions, wide unary, forbidden moves --

def _domain_counts():
    """(exp-domain, log-space) sequences the CPU kernels ran since the last call."""
    return ebm_ext._C._take_partition_domain_counts()


def _brute_all(unary, trans, L, start, end, b):
    """log Z, marginals (T, K), pair marginal sums (K, K), p(y_0), p(y_{L-1}) of sequence b."""
    T, K = unary.shape[1], unary.shape[2]
    paths = all_paths(unary, trans, L, start, end, b)
    zeros = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
    marg, pair, first, last = zeros(T, K), zeros(K, K), zeros(K), zeros(K)
    scores = torch.tensor([-e for e, _ in paths], dtype=torch.float64)
    logz = torch.logsumexp(scores, 0).item() if paths else 0.0
    if not paths or logz == -math.inf:
        return logz, marg, pair, first, last
    for (_, path), s in zip(paths, scores):
        p = math.exp(s - logz)
        for t, y in enumerate(path):
            marg[t, y] += p
            if t:
                pair[path[t - 1], y] += p
        if path:
            first[path[0]] += p
            last[path[-1]] += p
    return logz, marg, pair, first, last


def _check_against_brute_force(dtype, unary, trans, L, start, end, device="cpu", move=None):
    move = move or (lambda x: None if x is None else x.to(device))
    args = [move(x) for x in (unary, trans, L, start, end)]
    logz = ebm_ext.chain_log_partition(*args).cpu()
    marg = ebm_ext.chain_marginals(*args).cpu()
    grad = move(torch.ones(unary.shape[0], dtype=dtype))
    du, dt, ds, de = [x.cpu() for x in torch.ops.ebm_ext._chain_log_partition_backward(grad, *args)]
    # The oracle sums the very (rounded) values the op sees, in float64.
    exact = [None if x is None else x.double() for x in (unary, trans, L, start, end)]
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-12, 1e-10)
    patol = 2e-5 if dtype == torch.float32 else 1e-9
    pair_sum, first_sum, last_sum = 0, 0, 0
    for b in range(unary.shape[0]):
        z, m, pair, first, last = _brute_all(*exact, b)
        if z == -math.inf:
            assert logz[b].item() == -math.inf
        else:
            assert logz[b].item() == pytest.approx(z, rel=rtol, abs=atol)
        torch.testing.assert_close(marg[b].double(), m, atol=patol, rtol=0)
        torch.testing.assert_close(-du[b].double(), m, atol=patol, rtol=0)
        pair_sum, first_sum, last_sum = pair_sum + pair, first_sum + first, last_sum + last
    # A pair sum adds up to B * (T - 1) marginals, each within patol.
    steps = unary.shape[0] * max(1, unary.shape[1] - 1)
    torch.testing.assert_close(-dt.double(), pair_sum, atol=patol * steps, rtol=0)
    if start is not None:
        torch.testing.assert_close(-ds.double(), first_sum, atol=patol * unary.shape[0], rtol=0)
        torch.testing.assert_close(-de.double(), last_sum, atol=patol * unary.shape[0], rtol=0)


@settings(max_examples=300, deadline=None)
@given(hard_chains())
def test_exact_where_the_exp_domain_is_hardest(case):
    _check_against_brute_force(*case)


@pytest.mark.parametrize("dtype,unary,trans", [
    # The cases that lost mass or gave NaN marginals before the rescaling came before the
    # products (log Z -1179.31, -117.31 and NaN marginals at t = 0).
    (torch.float64, [[0, 1000], [0, 160], [0, 0]], [[590, 590], [0, 0]]),
    (torch.float32, [[0, 100], [0, 50], [0, 0]], [[59, 59], [0, 0]]),
    (torch.float32, [[0, 0], [math.inf, 0], [0, math.inf]], [[0, 55], [55, 55]]),
    # A dead end: tag 0 at t = 0 is 80 cheaper but cannot go on, so the only paths run through
    # a tag below float32's range at t = 0 (the exp domain must notice and rerun in log space).
    (torch.float32, [[0, 100], [0, 0]], [[math.inf, math.inf], [0, 0]]),
])
def test_regressions_of_the_exp_domain(dtype, unary, trans, device):
    unary, trans = torch.tensor([unary], dtype=dtype), torch.tensor(trans, dtype=dtype)
    _check_against_brute_force(dtype, unary, trans, None, None, None, device)


@pytest.mark.parametrize("u0,u1", [(22.5, 67.5), (10.0, 80.0), (30.0, 60.0)])
def test_dead_end_below_the_float32_range_after_two_steps(u0, u1, device):
    # Found by hypothesis on 2026-12-03: tag 0 is a dead end, so the only path is 1-1 and its
    # mass exp(-90) is subnormal in float32 after the second step. The exp domain divided by that
    # mass (1 / m overflows: NaN); it now reruns the sequence in log space.
    unary = torch.tensor([[[0.0, u0], [0.0, u1]]])
    trans = torch.tensor([[math.inf, math.inf], [math.inf, 0.0]])
    _check_against_brute_force(torch.float32, unary, trans, None, None, None, device)
    assert ebm_ext.chain_log_partition(unary, trans).item() == pytest.approx(-90.0, abs=1e-4)


@settings(max_examples=3000, deadline=None)
@given(edge_of_range_chains())
def test_exact_at_the_edge_of_the_float_range(case):
    """Dead ends, forbidden moves and energies near -log of the smallest normal number: the
    exp-domain recursion (and its fall-back to log space) must agree with float64 enumeration.
    Against the kernel before the fall-back on subnormal mass, this search finds the NaN."""
    _check_against_brute_force(*case)


# The CUDA kernels run in log space throughout (no fall-back to miss), and the emulation runs
# ~15 times slower than the CPU kernel: fewer examples.
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edge_of_range_chains())
def test_exact_at_the_edge_of_the_float_range_on_cuda(gpu, case):
    dtype, *tensors = case
    with gpu():
        _check_against_brute_force(dtype, *tensors, move=gpu.to)


def test_each_recursion_reports_which_ran():
    unary, trans, L, start, end = make_chain(4, 6, 3, lengths=False, seed=8)
    _domain_counts()
    ebm_ext.chain_log_partition(unary, trans, L, start, end)
    assert _domain_counts() == (4, 0)
    ebm_ext.chain_log_partition(unary, trans * 1e3, L, start, end)  # finite range >> 600
    assert _domain_counts() == (0, 4)
    dead_end = torch.tensor([[[0.0, 800.0], [0.0, 0.0]]], dtype=torch.float64)
    inf = math.inf
    ebm_ext.chain_log_partition(dead_end, torch.tensor([[inf, inf], [0.0, 0.0]], dtype=torch.float64))
    assert _domain_counts() == (0, 1)
    bio = torch.tensor([[0.0, inf], [0.0, 0.0]], dtype=torch.float64)  # I after O forbidden
    ebm_ext.chain_marginals(unary[:, :, :2], bio)
    assert _domain_counts() == (4, 0)


def test_log_partition_checks_the_parameters_inside_its_kernels(gpu):
    """NaN or -inf in trans/start/end is found by each block (K^2 + 2K reads), not by ATen
    reductions before the launch: no aten::any, and on the emulation exactly the two kernels
    (the exp-domain one, and the log-space one, which exits at once when no sequence is flagged).
    The rule itself (every non-empty sequence NaN) is tested in test_chain.py and
    test_nonfinite.py."""
    unary, trans, _, start, end = make_chain(6, 5, 4, seed=81)
    args = [gpu.to(x) for x in (unary, trans, None, start, end)]

    def call():
        return gpu.ops.chain_log_partition(*args)

    call()
    launches, aten_ops = gpu.launches(call)
    assert not aten_ops & {"aten::any", "aten::logical_or", "aten::logical_not", "aten::item"}, aten_ops
    if gpu.name == "emulated":
        assert launches == 2
    bad = args[1].clone()
    bad[1, 2] = -math.inf
    assert torch.isnan(gpu.ops.chain_log_partition(args[0], bad, None, args[3], args[4])).all()
