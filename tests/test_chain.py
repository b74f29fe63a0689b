"""chain_energy, viterbi, viterbi_kbest, loss_augmented_viterbi against brute force and the
plain-PyTorch reference; autograd, opcheck, torch.compile, bad inputs, CPU == CUDA."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_ext
from ebm_ext import _reference as ref
from chain_cases import (all_paths, category_cost, make_chain, padded, path_energy,
                         tweet_categories)
from conftest import requires_cuda, tolerance
from cuda_backends import skip_compile_if_emulated

small = st.fixed_dictionaries({
    "B": st.integers(1, 3), "T": st.integers(0, 5), "K": st.integers(1, 4),
    "lengths": st.booleans(), "start_end": st.booleans(), "integer": st.booleans(),
    "seed": st.integers(0, 10_000), "scale": st.sampled_from([1.0, 1e4]),
})


def _chain(case, device="cpu", dtype=torch.float64):
    case = dict(case)
    if case["K"] ** case["T"] > 1024:
        case["T"] = 3
    return make_chain(case["B"], case["T"], case["K"], dtype=dtype, device=device,
                      lengths=case["lengths"], start_end=case["start_end"],
                      integer=case["integer"], seed=case["seed"], scale=case["scale"])


# ---- brute force ---------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(small)
def test_viterbi_matches_brute_force(case):
    unary, trans, L, start, end = _chain(case)
    energy, tags = ebm_ext.viterbi(unary, trans, L, start, end)
    T = unary.shape[1]
    for b in range(unary.shape[0]):
        best_e, best_path = all_paths(unary, trans, L, start, end, b)[0]
        assert energy[b].item() == pytest.approx(best_e, rel=1e-9, abs=1e-9)
        # Integer energies are exact, so ties are real: the smallest path must win. With random
        # floats the minimiser is unique and this is the same check.
        assert tags[b].tolist() == padded(best_path, T)


@settings(max_examples=60, deadline=None)
@given(small, st.integers(1, 6))
def test_kbest_matches_brute_force(case, k):
    unary, trans, L, start, end = _chain(case)
    energy, tags = ebm_ext.viterbi_kbest(unary, trans, k, L, start, end)
    T = unary.shape[1]
    for b in range(unary.shape[0]):
        paths = all_paths(unary, trans, L, start, end, b)
        n = min(k, len(paths))
        want = [e for e, _ in paths[:n]]
        assert energy[b, :n].tolist() == pytest.approx(want, rel=1e-9, abs=1e-9)
        assert torch.all(energy[b, n:] == float("inf"))
        assert torch.all(tags[b, n:] == -1)
        got = [tuple(tags[b, s, : (T if L is None else int(L[b]))].tolist()) for s in range(n)]
        assert len(set(got)) == n, "k-best paths must be distinct"
        for s, path in enumerate(got):
            assert path_energy(unary, trans, start, end, b, path) == pytest.approx(
                energy[b, s].item(), rel=1e-9, abs=1e-9)
        assert energy[b, :n].tolist() == sorted(energy[b, :n].tolist())


@settings(max_examples=40, deadline=None)
@given(small)
def test_kbest_first_equals_viterbi(case):
    unary, trans, L, start, end = _chain(case)
    e1, y1 = ebm_ext.viterbi(unary, trans, L, start, end)
    ek, yk = ebm_ext.viterbi_kbest(unary, trans, 3, L, start, end)
    torch.testing.assert_close(ek[:, 0], e1)
    assert torch.equal(yk[:, 0], y1)


def _gold_for(unary, L, seed):
    B, T, K = unary.shape
    g = torch.Generator().manual_seed(seed)
    gold = torch.randint(0, K, (B, T), generator=g)
    if L is not None:  # padding may hold anything, -1 included: it must be ignored
        gold = torch.where(torch.arange(T) < L[:, None], gold, -1)
    return gold.to(unary.device)


def _hamming(K, dtype=torch.float64):
    return 1.0 - torch.eye(K, dtype=dtype)


@pytest.mark.parametrize("cost_kind", ["hamming", "category"])
@settings(max_examples=40, deadline=None)
@given(case=small)
def test_loss_augmented_matches_brute_force(cost_kind, case):
    unary, trans, L, start, end = _chain(case)
    K = unary.shape[-1]
    if cost_kind == "hamming":
        cost = _hamming(K)
    else:  # K tags of the tweet tagset, taken across categories: 0 / 0.5 / 1 costs
        _, cats = tweet_categories()
        cost = category_cost([cats[i] for i in (0, 1, 7, 11)][:K])
    gold = _gold_for(unary, L, case["seed"])
    energy, delta, tags = ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end)
    T = unary.shape[1]
    for b in range(unary.shape[0]):
        def augmented(path, e):
            return e - sum(float(cost[gold[b, t], y]) for t, y in enumerate(path))
        best_aug, path = all_paths(unary, trans, L, start, end, b, key=augmented)[0]
        assert energy[b].item() - delta[b].item() == pytest.approx(best_aug, rel=1e-9, abs=1e-9)
        assert tags[b].tolist() == padded(path, T)
        assert energy[b].item() == pytest.approx(path_energy(unary, trans, start, end, b, path),
                                                 rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(small, st.integers(1, 4))
def test_chain_energy_matches_formula_with_candidates(case, C):
    unary, trans, L, start, end = _chain(case)
    B, T, K = unary.shape
    tags = torch.randint(0, K, (B, C, T), generator=torch.Generator().manual_seed(case["seed"]))
    energy = ebm_ext.chain_energy(unary, trans, tags, L, start, end)
    assert energy.shape == (B, C)
    for b in range(B):
        for c in range(C):
            n = T if L is None else int(L[b])
            want = path_energy(unary, trans, start, end, b, tuple(tags[b, c, :n].tolist()))
            assert energy[b, c].item() == pytest.approx(want, rel=1e-9, abs=1e-6)
    torch.testing.assert_close(ebm_ext.chain_energy(unary, trans, tags[:, 0], L, start, end),
                               energy[:, 0])


def test_candidate_table_argmin():
    """The lowest-energy candidate of a table equals viterbi when the table holds the argmin."""
    unary, trans, L, start, end = make_chain(27, 6, 4, lengths=False, seed=3)
    _, best = ebm_ext.viterbi(unary, trans, None, start, end)
    table = torch.randint(0, 4, (27, 64, 6), generator=torch.Generator().manual_seed(1))
    table[:, 17] = best
    energy = ebm_ext.chain_energy(unary, trans, table, None, start, end)
    assert torch.all(energy.argmin(dim=1) == 17) or torch.all(
        energy.min(dim=1).values == energy[:, 17])


# ---- the plain-PyTorch reference at larger shapes -------------------------------------------

@pytest.mark.parametrize("shape", [(7, 13, 5), (16, 40, 25), (3, 9, 64), (5, 1, 7), (4, 0, 3)])
def test_ops_match_reference(shape, device, dtype):
    unary, trans, L, start, end = make_chain(*shape, dtype=dtype, device=device, seed=sum(shape))
    tol = tolerance(dtype)
    e, y = ebm_ext.viterbi(unary, trans, L, start, end)
    re, ry = ref.viterbi(unary, trans, L, start, end)
    torch.testing.assert_close(e, re, **tol)
    assert torch.equal(y, ry)
    ek, yk = ebm_ext.viterbi_kbest(unary, trans, 3, L, start, end)
    rek, ryk = ref.viterbi_kbest(unary, trans, 3, L, start, end)
    torch.testing.assert_close(ek, rek, **tol)
    assert torch.equal(yk, ryk)
    gold = _gold_for(unary.cpu(), None if L is None else L.cpu(), 5).to(device)
    cost = _hamming(shape[2], dtype).to(device)
    ea, da, ya = ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end)
    rea, rda, rya = ref.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end)
    torch.testing.assert_close(ea, rea, **tol)
    torch.testing.assert_close(da, rda, **tol)
    assert torch.equal(ya, rya)
    torch.testing.assert_close(ebm_ext.chain_energy(unary, trans, y.clamp(min=0), L, start, end),
                               ref.chain_energy(unary, trans, y.clamp(min=0), L, start, end), **tol)


def test_loss_augmented_with_tweet_category_cost(dtype):
    tags, cats = tweet_categories()
    assert len(tags) == 25
    unary, trans, L, start, end = make_chain(32, 20, 25, dtype=dtype, seed=11)
    gold = _gold_for(unary, L, 2)
    cost = category_cost(cats, dtype)
    assert set(cost.unique().tolist()) == {0.0, 0.5, 1.0}
    e, d, y = ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end)
    re, rd, ry = ref.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end)
    assert torch.equal(y, ry)
    torch.testing.assert_close(d, rd)
    torch.testing.assert_close(e, re, **tolerance(dtype))
    # Zero cost is plain decoding.
    e0, d0, y0 = ebm_ext.loss_augmented_viterbi(unary, trans, gold, torch.zeros_like(cost), L,
                                                start, end)
    ev, yv = ebm_ext.viterbi(unary, trans, L, start, end)
    assert torch.equal(y0, yv) and torch.all(d0 == 0)


# ---- edge cases and non-finite inputs --------------------------------------------------------

def test_empty_batch_and_zero_length(device):
    unary = torch.zeros(0, 5, 3, device=device)
    trans = torch.zeros(3, 3, device=device)
    e, y = ebm_ext.viterbi(unary, trans)
    assert e.shape == (0,) and y.shape == (0, 5)
    ek, yk = ebm_ext.viterbi_kbest(unary, trans, 2)
    assert ek.shape == (0, 2) and yk.shape == (0, 2, 5)
    unary = torch.randn(2, 0, 3, device=device)
    e, y = ebm_ext.viterbi(unary, trans)
    assert e.tolist() == [0.0, 0.0] and y.shape == (2, 0)
    ek, yk = ebm_ext.viterbi_kbest(unary, trans, 2)
    assert ek[:, 0].tolist() == [0.0, 0.0] and torch.all(ek[:, 1] == float("inf"))


def test_k_larger_than_number_of_paths(device):
    unary, trans, _, _, _ = make_chain(2, 2, 2, lengths=False, device=device)
    e, y = ebm_ext.viterbi_kbest(unary, trans, 6)
    assert torch.all(torch.isfinite(e[:, :4])) and torch.all(e[:, 4:] == float("inf"))
    assert torch.all(y[:, 4:] == -1)


def test_single_tag(device):
    unary, trans, L, start, end = make_chain(3, 4, 1, device=device)
    e, y = ebm_ext.viterbi(unary, trans, L, start, end)
    for b in range(3):
        assert y[b, : int(L[b])].tolist() == [0] * int(L[b])


def test_infinite_energy_forbids_tags(device):
    unary, trans, _, _, _ = make_chain(4, 6, 3, lengths=False, device=device, seed=2)
    unary[:, :, 0] = float("inf")  # tag 0 forbidden everywhere
    trans[1, 1] = float("inf")     # and the transition 1 -> 1
    e, y = ebm_ext.viterbi(unary, trans)
    assert torch.all(torch.isfinite(e)) and torch.all(y != 0)
    assert not torch.any((y[:, :-1] == 1) & (y[:, 1:] == 1))
    ek, yk = ebm_ext.viterbi_kbest(unary, trans, 4)
    assert torch.all(torch.isfinite(ek))
    assert torch.all(yk != 0)


def test_infeasible_sequence(device):
    unary = torch.full((1, 3, 2), float("inf"), device=device)
    trans = torch.zeros(2, 2, device=device)
    e, y = ebm_ext.viterbi(unary, trans)
    assert e.item() == float("inf") and torch.all((y >= 0) & (y < 2))
    ek, yk = ebm_ext.viterbi_kbest(unary, trans, 2)
    assert torch.all(ek == float("inf")) and torch.all(yk == -1)


def test_nan_gives_nan_energy_and_valid_tags(device):
    unary, trans, _, _, _ = make_chain(3, 5, 4, lengths=False, device=device)
    unary[1, 2, 3] = float("nan")
    e, y = ebm_ext.viterbi(unary, trans)
    assert torch.isnan(e[1]) and not torch.isnan(e[0]) and not torch.isnan(e[2])
    assert torch.all((y >= 0) & (y < 4))
    ek, _ = ebm_ext.viterbi_kbest(unary, trans, 2)
    assert torch.isnan(ek[1, 0]) and torch.all(torch.isfinite(ek[0]))
    trans[0, 0] = float("nan")
    e, y = ebm_ext.viterbi(unary, trans)
    assert torch.all(torch.isnan(e))


def test_noncontiguous_inputs(device):
    unary, trans, L, start, end = make_chain(6, 7, 5, device=device)
    e, y = ebm_ext.viterbi(unary.transpose(0, 1).contiguous().transpose(0, 1), trans.t().contiguous().t(), L, start, end)
    re, ry = ebm_ext.viterbi(unary, trans, L, start, end)
    torch.testing.assert_close(e, re)
    assert torch.equal(y, ry)


# ---- autograd, opcheck, compile ----------------------------------------------------------------

def _grad_inputs(device, lengths=True):
    unary, trans, L, start, end = make_chain(3, 5, 4, device=device, lengths=lengths, seed=7)
    return [x.requires_grad_() for x in (unary, trans, start, end)], L


def test_gradcheck_energies(device):
    (unary, trans, start, end), L = _grad_inputs(device)
    gold = _gold_for(unary.detach().cpu(), L.cpu(), 1).to(device)
    # The cost is built from positive off-diagonal weights, so that gradcheck's perturbations
    # keep it a valid cost (non-negative, zero diagonal).
    off = (1.0 + torch.rand(4, 4, dtype=torch.float64)).to(device).requires_grad_()
    mask = _hamming(4).to(device)
    torch.autograd.gradcheck(lambda *a: ebm_ext.viterbi(*a[:2], L, *a[2:])[0],
                             (unary, trans, start, end))
    torch.autograd.gradcheck(lambda *a: ebm_ext.viterbi_kbest(a[0], a[1], 3, L, a[2], a[3])[0],
                             (unary, trans, start, end))
    torch.autograd.gradcheck(
        lambda u, t, c, s, e: ebm_ext.loss_augmented_viterbi(u, t, gold, c * mask, L, s, e)[:2],
        (unary, trans, off, start, end))
    tags = torch.randint(0, 4, (3, 2, 5), device=device)
    torch.autograd.gradcheck(lambda *a: ebm_ext.chain_energy(a[0], a[1], tags, L, a[2], a[3]),
                             (unary, trans, start, end))


def test_viterbi_gradient_is_path_indicator(device):
    (unary, trans, start, end), L = _grad_inputs(device, lengths=False)
    energy, tags = ebm_ext.viterbi(unary, trans, None, start, end)
    energy.sum().backward()
    onehot = torch.nn.functional.one_hot(tags, 4).to(unary.dtype)
    torch.testing.assert_close(unary.grad, onehot)
    assert trans.grad.sum().item() == 3 * 4  # B * (T - 1) transitions
    assert start.grad.sum().item() == 3 and end.grad.sum().item() == 3


def test_kbest_missing_rows_have_zero_gradient(device):
    unary, trans, _, _, _ = make_chain(2, 1, 2, lengths=False, device=device)
    unary.requires_grad_()
    e, _ = ebm_ext.viterbi_kbest(unary, trans, 4)
    torch.where(torch.isfinite(e), e, 0).sum().backward()
    assert unary.grad.sum().item() == 4  # two real paths per sequence, one position each


def _opcheck_cases(device):
    unary, trans, L, start, end = make_chain(3, 5, 4, device=device, seed=4)
    unary.requires_grad_()
    trans.requires_grad_()
    gold = _gold_for(unary.detach().cpu(), L.cpu(), 3).to(device)
    cost = _hamming(4).to(device)
    tags = torch.randint(0, 4, (3, 5), device=device)
    ops = torch.ops.ebm_ext
    return {
        "chain_energy": (ops.chain_energy.default, (unary, trans, tags, L, start, end)),
        "viterbi": (ops.viterbi.default, (unary, trans, L, start, end)),
        "viterbi-no-lengths": (ops.viterbi.default, (unary, trans, None, None, None)),
        "viterbi_kbest": (ops.viterbi_kbest.default, (unary, trans, 2, L, start, end)),
        "loss_augmented_viterbi": (ops.loss_augmented_viterbi.default,
                                   (unary, trans, gold, cost, L, start, end)),
    }


@pytest.mark.parametrize("case", ["chain_energy", "viterbi", "viterbi-no-lengths",
                                  "viterbi_kbest", "loss_augmented_viterbi"])
def test_opcheck(device, case, opcheck_util):
    op, args = _opcheck_cases(device)[case]
    torch.library.opcheck(op, args, test_utils=opcheck_util)


def test_torch_compile_fullgraph(device):
    unary, trans, L, start, end = make_chain(4, 6, 5, dtype=torch.float32, device=device)
    unary.requires_grad_()

    skip_compile_if_emulated()
    @torch.compile(fullgraph=True, backend="aot_eager")
    def margin(unary, trans):
        e2, _ = ebm_ext.viterbi_kbest(unary, trans, 2, L, start, end)
        e1, _ = ebm_ext.viterbi(unary, trans, L, start, end)
        return (e2[:, 1] - e1).sum()

    out = margin(unary, trans)
    out.backward()
    e2, _ = ebm_ext.viterbi_kbest(unary.detach(), trans, 2, L, start, end)
    torch.testing.assert_close(out.detach(), (e2[:, 1] - e2[:, 0]).sum())


# ---- bad inputs: each message is tested ---------------------------------------------------------

def _bad_cases():
    u = torch.randn(2, 3, 4)
    t = torch.randn(4, 4)
    L = torch.tensor([3, 1])
    g = torch.zeros(2, 3, dtype=torch.long)
    c = 1 - torch.eye(4)
    v, ca, kb, la = (ebm_ext.viterbi, ebm_ext.chain_energy, ebm_ext.viterbi_kbest,
                     ebm_ext.loss_augmented_viterbi)
    return [
        (lambda: v(u[0], t), r"viterbi: unary must be a 3-D tensor \(B, T, K\), got shape \[3, 4\]"),
        (lambda: v(u.long(), t.long()), r"viterbi: unary must be a floating-point tensor, got Long"),
        (lambda: v(u.half(), t.half()), r"viterbi: on CPU, unary must be float32 or float64, got Half"),
        (lambda: v(u, t[:3]), r"viterbi: trans must have shape \(K, K\) = \(4, 4\), \(B, K, K\) = \(2, 4, 4\) or "
         r"\(B, T-1, K, K\) = \(2, 2, 4, 4\), got \[3, 4\]"),
        (lambda: v(u, t.double()), r"viterbi: trans must have the same dtype as unary \(Float\), got Double"),
        (lambda: v(u, t, L.int()), r"viterbi: lengths must be int64, got Int"),
        (lambda: v(u, t, L[:1]), r"viterbi: lengths must have shape \(B,\) = \(2,\), got \[1\]"),
        (lambda: v(u, t, torch.tensor([4, 1])), r"viterbi: lengths must be <= T=3, got 4"),
        (lambda: v(u, t, torch.tensor([-1, 1])), r"viterbi: lengths must be >= 0, got -1"),
        (lambda: v(u, t, None, torch.randn(3)), r"viterbi: start must have shape \(K,\) = \(4,\) or \(B, K\) = \(2, 4\), got \[3\]"),
        (lambda: v(u, t, None, None, torch.randn(4, 1)), r"viterbi: end must have shape \(K,\) = \(4,\) or \(B, K\) = \(2, 4\), got \[4, 1\]"),
        (lambda: v(torch.randn(2, 3, 0), torch.randn(0, 0)), r"viterbi: unary must have at least one tag"),
        (lambda: kb(u, t, 0), r"viterbi_kbest: k must be >= 1, got 0"),
        (lambda: ca(u, t, g.int()), r"chain_energy: tags must be int64 \(B, T\) / \(B, C, T\) or floating \(B, T, K\), got Int"),
        (lambda: ca(u, t, g.float()), r"chain_energy: tags must be int64 tags \(B, T\) or \(B, C, T\), or relaxed tags \(B, T, K\) = \[2, 3, 4\]; got Float tags of shape \[2, 3\] \(cast tag indices to int64\)"),
        (lambda: ca(u, t, u.double()), r"chain_energy: tags must have the same dtype as unary \(Float\), got Double"),
        (lambda: ca(u, t, g[:, :2]), r"chain_energy: tags must have shape \(B, T\) = \(2, 3\) or \(B, C, T\), got \[2, 2\]"),
        (lambda: ca(u, t, g + 4), r"chain_energy: tags must hold tags in \[0, K=4\) at positions t < length, got 4 at index \[0, 0\]"),
        (lambda: la(u, t, g - 1, c), r"loss_augmented_viterbi: gold must hold tags in \[0, K=4\) at positions t < length, got -1"),
        (lambda: la(u, t, g[0], c), r"loss_augmented_viterbi: gold must have shape \(B, T\) = \(2, 3\), got \[3\]"),
        (lambda: la(u, t, g, c[:3]), r"loss_augmented_viterbi: cost must be a square \(K, K\) matrix, got shape \[3, 4\]"),
        (lambda: la(u, t, g, c[:3, :3]), r"loss_augmented_viterbi: cost must have shape \(K, K\) = \(4, 4\), got \[3, 3\]"),
        (lambda: la(u, t, g, -c), r"loss_augmented_viterbi: cost must be finite and non-negative, got -1 at index \[0, 1\]"),
        (lambda: la(u, t, g, c + torch.eye(4)), r"loss_augmented_viterbi: cost must have a zero diagonal"),
        (lambda: la(u, t, g, c.double()), r"loss_augmented_viterbi: cost must have the same dtype as unary"),
    ]


@pytest.mark.parametrize("call,message", _bad_cases())
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_padding_of_gold_is_ignored():
    u = torch.randn(2, 3, 4)
    t = torch.randn(4, 4)
    L = torch.tensor([3, 1])
    gold = torch.tensor([[0, 1, 2], [3, -1, 99]])  # -1 and 99 lie past the second length
    padded = ebm_ext.loss_augmented_viterbi(u, t, gold, 1 - torch.eye(4), L)
    clean = ebm_ext.loss_augmented_viterbi(u, t, torch.tensor([[0, 1, 2], [3, 0, 0]]),
                                           1 - torch.eye(4), L)
    for a, b in zip(padded, clean):
        assert torch.equal(a, b)


@requires_cuda
def test_device_mismatch_is_reported():
    u = torch.randn(2, 3, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"viterbi: trans must be on the same device as unary"):
        ebm_ext.viterbi(u, torch.randn(4, 4))


# ---- CPU == CUDA -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 50, 25), (8, 30, 300), (5, 1, 3), (33, 17, 1)])
def test_cuda_matches_cpu(shape, dtype, gpu):
    unary, trans, L, start, end = make_chain(*shape, dtype=dtype, seed=1)
    gold = _gold_for(unary, L, 1)
    cost = _hamming(shape[2], dtype)
    cpu = [ebm_ext.viterbi(unary, trans, L, start, end),
           ebm_ext.viterbi_kbest(unary, trans, 3, L, start, end),
           ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end),
           (ebm_ext.chain_energy(unary, trans, gold.clamp(min=0), L, start, end),)]
    args = [gpu.to(x) for x in (unary, trans, L, start, end)]
    with gpu():
        on_gpu = [ebm_ext.viterbi(*args),
                  ebm_ext.viterbi_kbest(args[0], args[1], 3, *args[2:]),
                  ebm_ext.loss_augmented_viterbi(args[0], args[1], gpu.to(gold), gpu.to(cost), *args[2:]),
                  (ebm_ext.chain_energy(args[0], args[1], gpu.to(gold.clamp(min=0)), *args[2:]),)]
    for a, b in zip(cpu, on_gpu):
        for x, y in zip(a, b):
            if x.dtype == torch.long:
                assert torch.equal(x, y.cpu())
            else:
                torch.testing.assert_close(x, y.cpu(), **tolerance(dtype))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_cuda_half_inputs_accumulate_in_float32(half, gpu):
    unary, trans, L, start, end = make_chain(16, 20, 8, dtype=torch.float32, seed=2)
    args = [gpu.to(x).to(half) if x.is_floating_point() else gpu.to(x) for x in (unary, trans, L, start, end)]
    with gpu():
        e, y = ebm_ext.viterbi(*args)
    ref_e = ebm_ext.chain_energy(*[a.float() if a.is_floating_point() else a for a in args[:2]],
                                 y.clamp(min=0), args[2], args[3].float(), args[4].float())
    torch.testing.assert_close(e.float(), ref_e, atol=5e-2, rtol=1e-2)


# ---- decoding: one kernel launch, no host synchronisation, values checked on the device ---------

def _decoding_calls(ops, gpu):
    """Each decoding op on inputs as users hand them: unary a non-contiguous view, transposed
    transitions, lengths given (all read in place by the kernel, no staging copy)."""
    unary, trans, L, start, end = make_chain(6, 9, 5, seed=4)
    u = gpu.to(unary).transpose(0, 1).contiguous().transpose(0, 1)
    t = gpu.to(trans).t().contiguous().t()
    L, start, end = gpu.to(L), gpu.to(start), gpu.to(end)
    gold, cost = gpu.to(_gold_for(unary, L.cpu(), 4)), gpu.to(_hamming(5))
    paths = gold.clamp(min=0)
    return {"viterbi": lambda: ops.viterbi(u, t, L, start, end),
            "chain_energy": lambda: ops.chain_energy(u, t, paths, L, start, end),
            "viterbi_kbest": lambda: ops.viterbi_kbest(u, t, 3, L, start, end),
            "loss_augmented_viterbi": lambda: ops.loss_augmented_viterbi(u, t, gold, cost, L, start,
                                                                         end)}


@pytest.mark.parametrize("op", ["viterbi", "viterbi_kbest", "loss_augmented_viterbi", "chain_energy"])
def test_decoding_is_one_kernel_launch_without_host_synchronisation(op, gpu):
    call = _decoding_calls(gpu.ops, gpu)[op]
    call()  # a first call may load the module and opt in to shared memory
    launches, aten_ops = gpu.launches(call)
    assert launches == 1, op
    # Allocating the outputs is all the ATen work there is: no staging copy, no reduction, and
    # no aten::item (a host synchronisation).
    assert aten_ops <= {"aten::empty"}, (op, aten_ops)


def _bad_decoder_values():
    u, t = torch.randn(2, 3, 4), torch.randn(4, 4)
    g, c = torch.zeros(2, 3, dtype=torch.long), 1 - torch.eye(4)
    L = torch.tensor([3, 1])
    return [
        ("viterbi", (u, t, torch.tensor([3, 4]), None, None),
         r"viterbi: lengths must be in \[0, T=3\], got 4 at index 1"),
        ("viterbi_kbest", (u, t, 2, torch.tensor([-1, 3]), None, None),
         r"viterbi_kbest: lengths must be in \[0, T=3\], got -1 at index 0"),
        ("chain_energy", (u, t, g, torch.tensor([3, 4]), None, None),
         r"chain_energy: lengths must be in \[0, T=3\], got 4 at index 1"),
        ("chain_energy", (u, t, torch.tensor([[0, 1, 2], [3, 4, -1]]), torch.tensor([3, 2]), None,
                          None),
         r"chain_energy: tags must hold tags in \[0, K=4\) at positions t < length, got 4 at index "
         r"\[1, 1\]"),
        ("chain_energy", (u, t, torch.tensor([[[0, 1, 2]], [[3, -2, 0]]]), torch.tensor([3, 2]), None,
                          None),
         r"chain_energy: tags must hold tags in \[0, K=4\) at positions t < length, got -2 at index "
         r"\[1, 0, 1\]"),
        ("loss_augmented_viterbi", (u, t, g, c, torch.tensor([3, 5]), None, None),
         r"loss_augmented_viterbi: lengths must be in \[0, T=3\], got 5 at index 1"),
        ("loss_augmented_viterbi", (u, t, torch.tensor([[0, 1, 2], [3, 4, 9]]), c,
                                    torch.tensor([3, 2]), None, None),
         r"loss_augmented_viterbi: gold must hold tags in \[0, K=4\) at positions t < length, "
         r"got 4 at index \[1, 1\]"),
        ("loss_augmented_viterbi", (u, t, g, c.index_put((torch.tensor(1), torch.tensor(0)),
                                                         torch.tensor(-1.0)), L, None, None),
         r"loss_augmented_viterbi: cost must be finite and non-negative, got -1 at index \[1, 0\]"),
        ("loss_augmented_viterbi", (u, t, g, c + torch.eye(4) * (torch.arange(4) == 2), L, None,
                                    None),
         r"loss_augmented_viterbi: cost must have a zero diagonal \(cost\[y, y\] = 0\), got 1 at "
         r"index \[2, 2\]"),
    ]


@pytest.mark.parametrize("op,args,message", _bad_decoder_values())
def test_decoders_check_values_on_the_device(op, args, message, gpu):
    if gpu.name == "cuda":
        pytest.skip("a device-side check ends the process's CUDA context, as PyTorch's own do")
    with pytest.raises(RuntimeError, match=message):
        getattr(gpu.ops, op)(*[gpu.to(a) if isinstance(a, torch.Tensor) else a for a in args])
    # Padding past a length is not read: gold's -1 there passes.
    gold = torch.tensor([[0, 1, 2], [3, -1, -1]])
    gpu.ops.loss_augmented_viterbi(*map(gpu.to, (args[0], args[1], gold, 1 - torch.eye(4),
                                                 torch.tensor([3, 1]), None, None)))


# ---- non-finite parameters and the device's shared memory, on every backend -----------------

@pytest.mark.parametrize("name", ["trans", "start", "end"])
def test_nan_in_shared_parameters_gives_nan_for_every_nonempty_sequence(name, device):
    unary, trans, _, start, end = make_chain(4, 5, 3, device=device, seed=3)
    L = torch.tensor([5, 0, 1, 3], device=device)
    params = {"trans": trans, "start": start, "end": end}
    params[name].view(-1)[0] = float("nan")
    args = (unary, params["trans"], L, params["start"], params["end"])
    gold = torch.zeros(4, 5, dtype=torch.long, device=device)
    outputs = {"viterbi": ebm_ext.viterbi(*args)[0],
               "viterbi_kbest": ebm_ext.viterbi_kbest(args[0], args[1], 2, *args[2:])[0][:, 0],
               "loss_augmented_viterbi": ebm_ext.loss_augmented_viterbi(
                   args[0], args[1], gold, _hamming(3).to(device), *args[2:])[0],
               "chain_log_partition": ebm_ext.chain_log_partition(*args)}
    for op, energy in outputs.items():
        assert torch.isnan(energy[[0, 2, 3]]).all(), op  # L = 1 uses no transition: NaN all the same
        assert energy[1] == 0, op  # the empty sequence uses no parameter


def test_large_K_opts_in_to_shared_memory(gpu):
    # 7000 tags: Viterbi's and the marginals' two K-vectors (56 KB in float32) are over the
    # 48 KiB a kernel may use without opting in.
    g = torch.Generator().manual_seed(5)
    unary, trans = torch.randn(1, 2, 7000, generator=g), torch.randn(7000, 7000, generator=g)
    with gpu():
        decoded = ebm_ext.viterbi(gpu.to(unary), gpu.to(trans))
        marginals = ebm_ext.chain_marginals(gpu.to(unary), gpu.to(trans))
    want = ebm_ext.viterbi(unary, trans)
    assert torch.equal(decoded[1].cpu(), want[1])
    torch.testing.assert_close(decoded[0].cpu(), want[0])
    torch.testing.assert_close(marginals.cpu(), ebm_ext.chain_marginals(unary, trans), atol=1e-6, rtol=1e-4)


def test_K_beyond_the_devices_shared_memory_is_a_clear_error(gpu):
    K = 15000  # float64: 2 K values are 240000 bytes, more than any GPU's 227 KiB per block
    unary = gpu.to(torch.zeros(1, 2, K, dtype=torch.float64))
    trans = gpu.to(torch.zeros(1, 1, dtype=torch.float64)).expand(K, K)
    with gpu():
        for call in (lambda: ebm_ext.viterbi(unary, trans),
                     lambda: ebm_ext.loss_augmented_viterbi(unary, trans, gpu.to(torch.zeros(1, 2, dtype=torch.long)),
                                                            trans),
                     lambda: ebm_ext.chain_marginals(unary, trans)):
            with pytest.raises(RuntimeError, match=r": K must be at most \d+ on this CUDA device \(\d+ bytes of "
                                                   r"shared memory per block\), got K=15000"):
                call()
        with pytest.raises(RuntimeError, match=r"viterbi_kbest: k \* K must be at most \d+ on this CUDA device "
                                               r"\(\d+ bytes of shared memory per block\), got k \* K = 30000"):
            ebm_ext.viterbi_kbest(unary, trans, 2)
