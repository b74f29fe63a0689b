"""The non-finite and edge rules of docs/concepts.md's table, one test per row, on the CPU
kernels and on the CUDA kernels (emulated, and on a GPU when there is one): NaN, -inf and +inf in each input
of each chain op, padding, empty batches, T = 0, K = 1 and k > K^L."""
import math

import pytest
import torch

import ebm_ext
from chain_cases import make_chain

nan, inf = math.nan, math.inf


def _chain_outputs(unary, trans, L, start, end):
    """Every chain op's per-sequence number on one problem, by name: (B,) tensors (k-best: its
    first and last rows), marginal rows summed over tags (NaN stays NaN)."""
    B, T, K = unary.shape
    gold = torch.zeros(B, T, dtype=torch.long, device=unary.device)
    cost = (1 - torch.eye(K, dtype=unary.dtype)).to(unary.device)
    uniform = torch.full_like(unary, 1.0 / K)
    kbest = ebm_ext.viterbi_kbest(unary, trans, 2, L, start, end)[0]
    grad = torch.ones(B, dtype=unary.dtype, device=unary.device)
    d_unary = torch.ops.ebm_ext._chain_log_partition_backward(grad, unary, trans, L, start, end)[0]
    out = {
        "viterbi": ebm_ext.viterbi(unary, trans, L, start, end)[0],
        "kbest_1": kbest[:, 0], "kbest_2": kbest[:, 1],
        "loss_augmented": ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end)[0],
        "energy": ebm_ext.chain_energy(unary, trans, gold, L, start, end),
        "relaxed_energy": ebm_ext.chain_energy(unary, trans, uniform, L, start, end),
        "log_partition": ebm_ext.chain_log_partition(unary, trans, L, start, end),
        "marginals": ebm_ext.chain_marginals(unary, trans, L, start, end).sum((1, 2)),
        "log_partition_grad": d_unary.sum((1, 2)),
    }
    return {k: v.cpu() for k, v in out.items()}


def _problem(device, seed=1):
    unary, trans, _, start, end = make_chain(3, 4, 3, lengths=False, device=device, seed=seed)
    L = torch.tensor([4, 2, 0], device=device)
    return unary, trans, L, start, end


@pytest.mark.parametrize("value", [nan, -inf], ids=["nan", "-inf"])
def test_invalid_unary_makes_its_sequence_nan(device, value):
    """Row: NaN or -inf in unary at t < L -> that sequence's results are NaN (tags in range)."""
    unary, trans, L, start, end = _problem(device)
    unary[0, 1, 0] = value  # tag 0 is on the gold path and on every candidate's reach
    unary[1, 3, :] = value  # past sequence 1's length: never read
    out = _chain_outputs(unary, trans, L, start, end)
    for name, got in out.items():
        assert torch.isnan(got[0]), name
        assert torch.isfinite(got[1]), name
        assert got[2] == 0 or name.startswith("kbest_2"), name  # length 0: energy and log Z 0
    tags = ebm_ext.viterbi(unary, trans, L, start, end)[1]
    assert ((tags[0] >= 0) & (tags[0] < 3)).all()


@pytest.mark.parametrize("where", ["trans", "start", "end"])
@pytest.mark.parametrize("value", [nan, -inf], ids=["nan", "-inf"])
def test_invalid_parameters_make_every_nonempty_sequence_nan(device, where, value):
    """Row: NaN or -inf anywhere in trans/start/end -> every sequence of length >= 1 is NaN (for
    chain_energy of given paths: those whose path reads it); length 0 stays 0."""
    unary, trans, L, start, end = _problem(device)
    {"trans": trans, "start": start, "end": end}[where].view(-1)[0] = value
    out = _chain_outputs(unary, trans, L, start, end)
    for name, got in out.items():
        assert torch.isnan(got[:2]).all(), name  # the gold path (all tag 0) reads entry 0 too
        if not name.startswith("kbest_2"):
            assert got[2] == 0, name


def test_forbidden_tags_and_no_feasible_path(device):
    """Row: +inf forbids a tag or transition; with no finite path viterbi gives +inf, k-best
    rows are missing (+inf, tags -1), log Z is -inf and the marginals are 0."""
    unary, trans, L, start, end = _problem(device)
    unary[0, 2, :] = inf
    unary[1, 0, 1:] = inf
    out = _chain_outputs(unary, trans, L, start, end)
    for name in ("viterbi", "kbest_1", "kbest_2", "loss_augmented"):
        assert out[name][0] == inf, name
    assert out["log_partition"][0] == -inf
    assert out["marginals"][0] == 0 and out["log_partition_grad"][0] == 0
    assert torch.isfinite(out["log_partition"][1]) and out["marginals"][1] == pytest.approx(2)
    energy, tags = ebm_ext.viterbi_kbest(unary, trans, 2, L, start, end)
    assert (tags[0].cpu() == -1).all()
    assert (tags[1, :, :2].cpu()[:, 0] == 0).all()  # only tag 0 allowed at t = 0


def test_relaxed_energy_reads_only_weighted_entries(device):
    """Row: relaxed tags: weight 0 times +inf or NaN is 0; positions t >= L and their
    transitions are not read; a weighted -inf is NaN."""
    unary, trans, L, start, end = _problem(device)
    probs = torch.full_like(unary, 0.5)
    probs[..., 2] = 0
    unary[..., 2] = inf              # forbidden tag, no mass
    trans[2, :] = inf                # forbidden moves from it
    unary[1, 2:] = nan               # padding of sequence 1
    probs[1, 2:] = nan
    got = ebm_ext.chain_energy(unary, trans, probs, L, start, end).cpu()
    assert torch.isfinite(got[:2]).all() and got[2] == 0
    one = ebm_ext.chain_energy(unary, trans, probs, torch.tensor([1, 1, 1], device=device), start, end)
    trans_nan = trans.clone()
    trans_nan[:2, :2] = nan          # read only by sequences of length >= 2
    one_nan = ebm_ext.chain_energy(unary, trans_nan, probs, torch.tensor([1, 1, 1], device=device),
                                   start, end)
    torch.testing.assert_close(one, one_nan)
    unary[0, 0, 0] = -inf
    assert torch.isnan(ebm_ext.chain_energy(unary, trans, probs, L, start, end).cpu()[0])
    # The gradient in a tag's weight is its energy: +inf for the forbidden tag, finite elsewhere.
    probs = probs.clone().requires_grad_()
    unary[0, 0, 0] = 0.0
    ebm_ext.chain_energy(unary, trans, probs, L, start, end)[:2].sum().backward()
    g = probs.grad.cpu()
    assert torch.isfinite(g[0, :, :2]).all() and (g[1, 2:] == 0).all()


def test_empty_batch_zero_length_and_one_tag(device):
    """Rows: B = 0 gives empty results; T = 0 gives energy and log Z 0 and tags (B, 0); K = 1 has
    one path; k > K^L leaves the missing rows at +inf with tags -1."""
    for B, T, K in [(0, 3, 2), (2, 0, 2), (2, 3, 1)]:
        unary = torch.randn(B, T, K, dtype=torch.float64, device=device)
        trans = torch.randn(K, K, dtype=torch.float64, device=device)
        out = _chain_outputs(unary, trans, None, None, None)
        for name, got in out.items():
            assert got.shape == (B,), name
        if T == 0 and B:
            assert (out["viterbi"] == 0).all() and (out["log_partition"] == 0).all()
        if K == 1 and B:
            want = unary.sum((1, 2)).cpu() + trans[0, 0].cpu() * (T - 1)
            for name in ("viterbi", "kbest_1", "energy", "log_partition"):
                torch.testing.assert_close(out[name] * (-1 if name == "log_partition" else 1), want)
            assert (out["kbest_2"] == inf).all()
    unary = torch.randn(1, 2, 2, dtype=torch.float64, device=device)
    energy, tags = ebm_ext.viterbi_kbest(unary, torch.zeros(2, 2, dtype=torch.float64, device=device), 6)
    assert torch.isfinite(energy[0, :4]).all() and (energy[0, 4:] == inf).all()
    assert (tags[0, 4:] == -1).all()


# ---- answers that used to come back wrong without an error ---------------------------------

def test_loss_augmented_cost_is_checked_everywhere(device):
    unary = torch.randn(1, 2, 2, dtype=torch.float64, device=device)
    gold = torch.zeros(1, 2, dtype=torch.long, device=device)
    for bad, what in [(math.nan, "nan"), (math.inf, "inf"), (-1.0, "-1")]:
        cost = torch.tensor([[0.0, 1.0], [bad, 0.0]], dtype=torch.float64, device=device)
        with pytest.raises(RuntimeError, match=rf"loss_augmented_viterbi: cost must be finite and "
                           rf"non-negative, got {what} at index \[1, 0\]"):
            ebm_ext.loss_augmented_viterbi(unary, torch.zeros(2, 2, dtype=torch.float64, device=device),
                                           gold, cost)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_simplex_of_large_entries(device, dtype):
    """Shift-invariance: [1e8, 0] projects to [1, 0] (float32 used to return [1e8, 0])."""
    got = ebm_ext.project_simplex(torch.tensor([[1e8, 0.0], [1e8, 1e8 - 0.5]], dtype=dtype, device=device))
    want = torch.tensor([[1.0, 0.0], [0.75, 0.25]], dtype=torch.float64)
    if dtype == torch.float32:
        want[1] = torch.tensor([0.5, 0.5])  # 1e8 - 0.5 rounds to 1e8 in float32
    torch.testing.assert_close(got.double().cpu(), want)


@pytest.mark.parametrize("call", [
    lambda u: ebm_ext.chain_relaxed_inference(u, torch.zeros(3, 3), steps=2)[0].sum(),
    lambda u: ebm_ext.sparse_code(u.flatten(1), torch.eye(12), 0.1).sum(),
    lambda u: ebm_ext.sparse_coding_lipschitz(u.flatten(1)),
    lambda u: torch.autograd.grad(torch.autograd.grad(
        ebm_ext.chain_log_partition(u, torch.zeros(3, 3)).sum(), u, create_graph=True)[0].pow(2).sum(),
        u, create_graph=True)[0].sum(),
], ids=["chain_relaxed_inference", "sparse_code", "sparse_coding_lipschitz",
        "chain_log_partition third order"])
def test_no_gradient_is_silently_none(call):
    unary = torch.randn(2, 4, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="is not differentiable: "):
        call(unary).backward()


def test_sparse_code_rules(device):
    D = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.randn(3, 5, generator=torch.Generator().manual_seed(1)).to(device)
    for L, message in [(0.0, r"lipschitz must be a finite number > 0"),
                       (1e-3, r"lipschitz \(0.001\) must be at least the Lipschitz constant")]:
        with pytest.raises(RuntimeError, match="sparse_code: " + message):
            ebm_ext.sparse_code(y, D, 0.1, lipschitz=torch.tensor(L, device=device))
    y[1, 2] = math.nan
    z, gap, _ = ebm_ext.sparse_code(y, D, 0.1, return_info=True)
    assert torch.isnan(z[1]).all() and torch.isnan(gap[1])
    assert torch.isfinite(z[[0, 2]]).all() and (gap[[0, 2]] < 1e-3).all()
    assert ebm_ext.sparse_coding_lipschitz(torch.zeros(3, 4, device=device)).item() == 0
    z, gap, _ = ebm_ext.sparse_code(y[[0]], torch.zeros(5, 8, device=device), 0.1, return_info=True)
    assert (z == 0).all() and (gap == 0).all()  # D = 0: z = 0 is exact


# ---- messages that name the op, the argument, what was expected and what came ----------------

_u, _t = torch.randn(2, 3, 4), torch.randn(4, 4)


@pytest.mark.parametrize("call,message", [
    (lambda: ebm_ext.viterbi(None, _t), r"viterbi: unary must be a tensor, got None"),
    (lambda: torch.ops.ebm_ext.viterbi(_u, None), r"viterbi: trans must be a tensor, got None"),
    (lambda: ebm_ext.chain_energy(_u, _t, None), r"chain_energy: tags must be a tensor, got None"),
    (lambda: ebm_ext.project_simplex(None), r"project_simplex: v must be a tensor, got None"),
    (lambda: ebm_ext.bilstm(None, None, None, None, None), r"bilstm: input must be a tensor, got None"),
    (lambda: ebm_ext.sparse_code(torch.randn(2, 3), None, 0.1), r"sparse_code: D must be a tensor, got None"),
    (lambda: ebm_ext.viterbi(_u.to_sparse(), _t), r"viterbi: unary must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    (lambda: ebm_ext.chain_log_partition(_u, _t.to_sparse()), r"chain_log_partition: trans must be a dense \(strided\) tensor"),
    (lambda: ebm_ext.viterbi(_u, _t.to("meta")), r"viterbi: trans must be on the same device as unary \(cpu\), got meta"),
    (lambda: ebm_ext.viterbi(_u, _t, torch.tensor([1, 2], device="meta")), r"viterbi: lengths must be on the same device as unary"),
    (lambda: ebm_ext.nearest_centroid(torch.randn(2, 3), torch.randn(4, 3, device="meta")), r"nearest_centroid: W must be on the same device as y"),
    (lambda: ebm_ext.viterbi_kbest(_u, _t, 2 ** 61), r"viterbi_kbest: k \* K must be < 2\^31, got k \* K = 9.2\d*e\+18 .*would need"),
    (lambda: ebm_ext.viterbi_kbest(_u, _t, 10 ** 9), r"viterbi_kbest: k \* K must be < 2\^31, got k \* K = 4e\+09 \(k=1000000000, K=4\); the outputs and back-pointers would need 89.4\d* GiB"),
    (lambda: ebm_ext.viterbi_kbest(torch.randn(64, 2000, 4), _t, 10 ** 6), r"viterbi_kbest: k=1000000 would need \d+.* GiB .* more than this machine's"),
    (lambda: ebm_ext.chain_energy(_u, _t, torch.zeros(2, 3)), r"chain_energy: tags must be int64 tags \(B, T\) or \(B, C, T\), or relaxed tags \(B, T, K\) = \[2, 3, 4\]; got Float tags of shape \[2, 3\]"),
    (lambda: ebm_ext.chain_relaxed_inference(_u, _t, lr=1e39), r"chain_relaxed_inference: lr must be finite in the energies' dtype \(Float\), got 1e\+39"),
    (lambda: ebm_ext.losses.crf_nll(_u, _t, torch.zeros(2, 3)), r"crf_nll: gold must be an int64 tensor of tags \(B, T\), got torch.float32"),
    (lambda: ebm_ext.losses.token_nll(_u, torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 5])), r"token_nll: lengths must be in \[0, T=3\], got values in \[1, 5\]"),
    (lambda: ebm_ext.losses.token_nll(_u, torch.full((2, 3), 7)), r"token_nll: gold must hold tags in \[0, K=4\) at positions t < length, got 7 at index \[0, 0\]"),
    (lambda: ebm_ext.packed_order(torch.tensor([3, 5]), 4), r"packed_order: lengths must be <= T=4, got 5"),
    (lambda: ebm_ext.packed_order(torch.tensor([3, -1])), r"packed_order: lengths must be >= 0, got -1"),
    (lambda: ebm_ext.packed_order(torch.tensor([3, 1]), 4.0), r"packed_order: T must be an int >= 0 or None, got 4.0"),
    (lambda: ebm_ext.packed_order(torch.tensor([3.0, 1.0])), r"packed_order: lengths must be a 1-D integer tensor \(B,\), got torch.float32"),
    # Integers beyond int64 reach the dispatcher as "Expected a value of type 'int' ... found type 'int'".
    (lambda: ebm_ext.viterbi_kbest(_u, _t, 2 ** 63), r"viterbi_kbest: k must fit in int64 \(at most 2\*\*63 - 1\), got 9223372036854775808"),
    (lambda: ebm_ext.viterbi_kbest(_u, _t, 2.0), r"viterbi_kbest: k must be an int, got float 2.0"),
    (lambda: ebm_ext.chain_relaxed_inference(_u, _t, steps=2 ** 63), r"chain_relaxed_inference: steps must fit in int64 \(at most 2\*\*63 - 1\), got 9223372036854775808"),
    (lambda: ebm_ext.sparse_code(torch.randn(2, 3), torch.randn(3, 4), 0.1, max_iter=-2 ** 64), r"sparse_code: max_iter must fit in int64 \(at most 2\*\*63 - 1\), got -18446744073709551616"),
    (lambda: ebm_ext.losses.token_nll(torch.ones(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)), r"token_nll: unary must be a floating-point tensor of energies \(B, T, K\), got torch.int64"),
    (lambda: ebm_ext.losses.crf_nll(torch.ones(2, 3, 4, dtype=torch.int32), _t, torch.zeros(2, 3, dtype=torch.long)), r"crf_nll: unary must be a floating-point tensor of energies \(B, T, K\), got torch.int32"),
    (lambda: ebm_ext.losses.hamming_cost(-1), r"hamming_cost: num_tags must be an int >= 0, got -1"),
    (lambda: ebm_ext.losses.hamming_cost(2.5), r"hamming_cost: num_tags must be an int >= 0, got 2.5"),
    (lambda: ebm_ext.losses.hamming_cost(True), r"hamming_cost: num_tags must be an int >= 0, got True"),
    (lambda: ebm_ext.losses.hamming_cost(3, dtype=torch.long), r"hamming_cost: dtype must be a floating-point dtype, got torch.int64"),
    (lambda: ebm_ext.bilstm(torch.randn(2, 3), torch.tensor([2 ** 62, 2 ** 62]), torch.randn(2, 8, 3), torch.randn(2, 8, 2), torch.zeros(2, 8)),
     r"bilstm: batch_sizes must sum to input.size\(0\)=2, got more: 0 rows before step 0 and 4611686018427387904 at it"),
    (lambda: ebm_ext.bilstm(torch.randn(2, 3), torch.tensor([1, 2 ** 63 - 1]), torch.randn(2, 8, 3), torch.randn(2, 8, 2), torch.zeros(2, 8)),
     r"bilstm: batch_sizes must be non-increasing"),
    (lambda: ebm_ext.sparse_code(torch.randn(2, 4), torch.full((4, 4), 1e19), 0.1),
     r"sparse_code: D is too large for its dtype \(Float\): its Lipschitz constant 2 \* max eig\(D\^T D\) overflows to inf \(max \|D\| = 1e\+19\); scale D down"),
])
def test_clear_messages(call, message):
    with pytest.raises((RuntimeError, ValueError), match=message):
        call()


def test_packed_order_takes_any_integer_lengths_as_torch_does():
    want = ebm_ext.packed_order(torch.tensor([3, 1, 2]))
    for dtype in (torch.int32, torch.int16, torch.uint8):
        got = ebm_ext.packed_order(torch.tensor([3, 1, 2], dtype=dtype))
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.zeros(3, 3, 1), torch.tensor([3, 1, 2], dtype=torch.int32),
                                                     batch_first=True, enforce_sorted=False)
    assert torch.equal(packed.batch_sizes, want[1])  # torch's own packing, from the same int32 lengths


def test_lipschitz_overflow_is_inf_and_underflow_safe():
    """2 max eig(D^T D) of a float32 D past float32's range is +inf (the rounded answer), not the
    NaN of an overflowed power iteration; the same D in float64 is finite, and a D of tiny
    entries keeps its relative precision (the iteration runs on D / max|D|)."""
    D = torch.full((4, 4), 1e20)
    assert ebm_ext.sparse_coding_lipschitz(D).item() == math.inf
    assert ebm_ext.sparse_coding_lipschitz(D.double()).item() == pytest.approx(2 * 4 * 4 * 1e40, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    D = torch.randn(6, 5, generator=g, dtype=torch.float64)
    want = 2 * torch.linalg.eigvalsh(D.T @ D).max().item()
    for scale in (1e-15, 1.0, 1e15):
        got = ebm_ext.sparse_coding_lipschitz((D * scale).float()).item()
        assert got == pytest.approx(want * scale ** 2, rel=1e-5)
    assert math.isnan(ebm_ext.sparse_coding_lipschitz(torch.tensor([[1.0, math.nan]])).item())
