"""General chains: a transition matrix per sequence (B, K, K) or per move (B, T-1, K, K), start and
end per sequence (B, K), in every op that takes them (csrc/ops/edge_chain.h), on the CPU and the
(emulated) CUDA kernels. Oracles: enumeration of every path, the shared (K, K) kernels on
expanded parameters, and torch-struct 0.5's LinearChainCRF on general edge potentials."""
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ebm_ext
from cuda_backends import skip_compile_if_emulated

inf = math.inf
FORMS = ["shared_trans_per_sequence_ends", "per_sequence", "per_move"]


def general_chain(form, B=3, T=4, K=3, seed=0, integer=False, forbid=True, lengths=(4, 0, 1),
                  dtype=torch.float64):
    """unary, trans, lengths, start, end of the given form (lengths padded to B with T)."""
    g = torch.Generator().manual_seed(seed)
    draw = ((lambda *s: torch.randint(-2, 3, s, generator=g).to(dtype)) if integer
            else (lambda *s: torch.randn(*s, generator=g, dtype=dtype)))
    unary = draw(B, T, K)
    trans = {"shared_trans_per_sequence_ends": lambda: draw(K, K),
             "per_sequence": lambda: draw(B, K, K),
             "per_move": lambda: draw(B, max(T - 1, 0), K, K)}[form]()
    if forbid and form == "per_move" and T > 2:
        trans[0, 1, 0, :] = inf  # a constraint at one move of one sequence only
        trans[0, 1, 0, 1] = 0.0
    elif forbid and form == "per_sequence":
        trans[B - 1, :, K - 1] = inf
    start, end = draw(B, K), draw(B, K)
    L = torch.tensor((list(lengths) + [T] * B)[:B], dtype=torch.long)
    return unary, trans, L, start, end


def move_matrix(trans, b, t):
    """The matrix of the move into position t of sequence b."""
    return trans if trans.dim() == 2 else trans[b] if trans.dim() == 3 else trans[b, t - 1]


def all_paths(unary, trans, L, start, end):
    """Per sequence: every path (lexicographic order) and its energy, float64."""
    out = []
    for b in range(unary.shape[0]):
        Lb = int(L[b])
        paths = list(itertools.product(range(unary.shape[2]), repeat=Lb))
        energies = []
        for y in paths:
            if Lb == 0:
                energies.append(0.0)
                continue
            e = float(start[b, y[0]]) + float(end[b, y[-1]])
            e += sum(float(unary[b, t, y[t]]) for t in range(Lb))
            e += sum(float(move_matrix(trans, b, t)[y[t - 1], y[t]]) for t in range(1, Lb))
            energies.append(e)
        out.append((paths, torch.tensor(energies, dtype=torch.float64)))
    return out


def brute_marginals(unary, trans, L, start, end):
    """log Z, node marginals (B, T, K) and pair marginals shaped like trans, from enumeration."""
    B, T, K = unary.shape
    logz = torch.zeros(B, dtype=torch.float64)
    node = torch.zeros(B, T, K, dtype=torch.float64)
    pair = torch.zeros(B, max(T - 1, 0), K, K, dtype=torch.float64)
    for b, (paths, E) in enumerate(all_paths(unary, trans, L, start, end)):
        logz[b] = torch.logsumexp(-E, 0)
        if logz[b] == -inf:
            continue
        p = torch.exp(-E - logz[b])
        for w, y in zip(p, paths):
            for t, tag in enumerate(y):
                node[b, t, tag] += w
            for t in range(1, len(y)):
                pair[b, t - 1, y[t - 1], y[t]] += w
    if trans.dim() == 2:
        pair = pair.sum((0, 1))
    elif trans.dim() == 3:
        pair = pair.sum(1)
    return logz, node, pair


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("integer", [False, True], ids=["random", "ties"])
def test_against_enumeration(device, form, integer):
    unary, trans, L, start, end = general_chain(form, B=4, integer=integer, seed=3,
                                                lengths=(4, 0, 1, 3))
    trans.requires_grad_()
    start.requires_grad_()
    energy, tags = ebm_ext.viterbi(unary, trans, L, start, end)
    logz = ebm_ext.chain_log_partition(unary, trans, L, start, end)
    want_logz, want_node, want_pair = brute_marginals(unary, trans.detach(), L, start.detach(), end)
    for b, (paths, E) in enumerate(all_paths(unary, trans.detach(), L, start.detach(), end)):
        best = E.min()
        assert energy[b].item() == pytest.approx(best.item(), abs=1e-12)
        first = paths[int(torch.nonzero(E == best)[0])]  # lexicographically smallest best path
        assert tags[b].tolist() == list(first) + [-1] * (unary.shape[1] - len(first))
    torch.testing.assert_close(logz.detach(), want_logz, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ebm_ext.chain_marginals(unary, trans, L, start, end).detach(),
                               want_node, atol=1e-12, rtol=0)
    d_trans, d_start = torch.autograd.grad(logz.sum(), (trans, start))
    assert d_trans.shape == trans.shape and d_start.shape == start.shape
    torch.testing.assert_close(-d_trans, want_pair, atol=1e-12, rtol=0)
    torch.testing.assert_close(-d_start, want_node[:, 0] * (L > 0)[:, None], atol=1e-12, rtol=0)
    # chain_energy of the decoded paths, and its gradient: the path's indicators.
    e = ebm_ext.chain_energy(unary, trans, tags, L, start, end)
    torch.testing.assert_close(e.detach(), energy.detach(), atol=1e-12, rtol=0)
    g_trans, = torch.autograd.grad(e.sum(), trans)
    want = torch.zeros(unary.shape[0], max(unary.shape[1] - 1, 0), *trans.shape[-2:],
                       dtype=torch.float64)
    for b in range(unary.shape[0]):
        for t in range(1, int(L[b])):
            want[b, t - 1, tags[b, t - 1], tags[b, t]] += 1
    want = want.sum((0, 1)) if trans.dim() == 2 else want.sum(1) if trans.dim() == 3 else want
    torch.testing.assert_close(g_trans, want)


@pytest.mark.parametrize("form", FORMS)
def test_expanded_parameters_agree_with_the_shared_kernels(device, form):
    """The same chain given in general form: the general kernels equal the shared ones."""
    B, T, K = 5, 7, 4
    g = torch.Generator().manual_seed(1)
    unary = torch.randn(B, T, K, generator=g, dtype=torch.float64)
    trans = torch.randn(K, K, generator=g, dtype=torch.float64)
    start, end = torch.randn(K, generator=g, dtype=torch.float64), torch.randn(K, generator=g,
                                                                              dtype=torch.float64)
    L = torch.tensor([7, 0, 1, 2, 5])
    big = {"shared_trans_per_sequence_ends": trans,
           "per_sequence": trans.expand(B, K, K),
           "per_move": trans.expand(B, T - 1, K, K)}[form]
    args = (unary, trans, L, start, end)
    gen = (unary, big, L, start.expand(B, K), end.expand(B, K))
    torch.testing.assert_close(ebm_ext.chain_log_partition(*gen), ebm_ext.chain_log_partition(*args))
    torch.testing.assert_close(ebm_ext.chain_marginals(*gen), ebm_ext.chain_marginals(*args))
    e1, y1 = ebm_ext.viterbi(*gen)
    e0, y0 = ebm_ext.viterbi(*args)
    torch.testing.assert_close(e1, e0)
    assert torch.equal(y1, y0)


@pytest.mark.parametrize("form", FORMS)
def test_cpu_equals_cuda(gpu, form):
    unary, trans, L, start, end = general_chain(form, B=6, T=5, K=4, seed=2,
                                                lengths=(5, 0, 1, 2, 4, 5))
    scale = torch.linspace(-1, 2, 6, dtype=torch.float64)
    cpu = (ebm_ext.viterbi(unary, trans, L, start, end),
           ebm_ext.chain_log_partition(unary, trans, L, start, end),
           ebm_ext.chain_marginals(unary, trans, L, start, end),
           torch.ops.ebm_ext._chain_log_partition_backward(scale, unary, trans, L, start, end))
    args = [gpu.to(x) for x in (unary, trans, L, start, end)]
    with gpu():
        dev = (ebm_ext.viterbi(*args), ebm_ext.chain_log_partition(*args),
               ebm_ext.chain_marginals(*args),
               torch.ops.ebm_ext._chain_log_partition_backward(gpu.to(scale), *args))
    assert torch.equal(cpu[0][1], dev[0][1].cpu())
    torch.testing.assert_close(cpu[0][0], dev[0][0].cpu(), atol=0, rtol=0)
    for a, b in zip(cpu[1:], dev[1:]):
        torch.testing.assert_close(a, torch.utils._pytree.tree_map(lambda x: x.cpu(), b),
                                   atol=1e-12, rtol=1e-12)
    tags = cpu[0][1]
    with gpu():
        e = ebm_ext.chain_energy(*args[:2], gpu.to(tags), *args[2:])
    torch.testing.assert_close(e.cpu(), ebm_ext.chain_energy(unary, trans, tags, L, start, end))


def test_non_finite_rules(device):
    unary, trans, L, start, end = general_chain("per_move", B=3, T=4, seed=4, forbid=False,
                                                lengths=(4, 2, 3))
    trans[1, 2] = math.nan   # past sequence 1's last move (length 2): never read
    trans[2, 0, 1, 1] = -inf  # read by sequence 2: NaN (-inf is not an energy)
    logz = ebm_ext.chain_log_partition(unary, trans, L, start, end)
    assert torch.isfinite(logz[:2]).all() and torch.isnan(logz[2])
    energy, _ = ebm_ext.viterbi(unary, trans, L, start, end)
    assert torch.isfinite(energy[:2]).all() and torch.isnan(energy[2])
    marg = ebm_ext.chain_marginals(unary, trans, L, start, end)
    assert torch.isfinite(marg[:2]).all() and torch.isnan(marg[2, :3]).all()
    assert (marg[2, 3] == 0).all()
    # a sequence with no allowed path: log Z = -inf, marginals 0, Viterbi +inf
    trans2 = trans.clone()
    trans2[0, 1] = inf
    assert ebm_ext.chain_log_partition(unary, trans2, L, start, end)[0] == -inf
    assert (ebm_ext.chain_marginals(unary, trans2, L, start, end)[0] == 0).all()
    assert ebm_ext.viterbi(unary, trans2, L, start, end)[0][0] == inf


def test_bad_shapes_name_every_shape_taken():
    unary, trans, L, start, end = general_chain("per_move")
    with pytest.raises(RuntimeError, match=r"viterbi: trans must have shape \(K, K\) = \(3, 3\), "
                       r"\(B, K, K\) = \(3, 3, 3\) or \(B, T-1, K, K\) = \(3, 3, 3, 3\), got "
                       r"\[3, 2, 3, 3\]"):
        ebm_ext.viterbi(unary, trans[:, :2], L)
    with pytest.raises(RuntimeError, match=r"chain_log_partition: start must have shape \(K,\) "
                       r"= \(3,\) or \(B, K\) = \(3, 3\), got \[2, 3\]"):
        ebm_ext.chain_log_partition(unary, trans, L, start[:2])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(FORMS), B=st.integers(1, 3), T=st.integers(0, 4),
       K=st.integers(1, 3), seed=st.integers(0, 2 ** 16), integer=st.booleans(),
       data=st.data())
def test_hypothesis_enumeration(form, B, T, K, seed, integer, data):
    lengths = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    unary, trans, L, start, end = general_chain(form, B, T, K, seed, integer, forbid=K > 2,
                                                lengths=lengths)
    if integer and T > 1 and K > 1:  # +inf at some moves only
        mask = torch.rand(trans.shape, generator=torch.Generator().manual_seed(seed)) < 0.2
        trans = trans.masked_fill(mask, inf)
    energy, tags = ebm_ext.viterbi(unary, trans, L, start, end)
    logz = ebm_ext.chain_log_partition(unary, trans, L, start, end)
    want_logz, want_node, _ = brute_marginals(unary, trans, L, start, end)
    torch.testing.assert_close(logz, want_logz, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ebm_ext.chain_marginals(unary, trans, L, start, end), want_node,
                               atol=1e-12, rtol=0)
    for b, (paths, E) in enumerate(all_paths(unary, trans, L, start, end)):
        best = E.min()
        assert energy[b].item() == best.item() or abs(energy[b].item() - best.item()) < 1e-12
        if best < inf:
            first = paths[int(torch.nonzero(E == best)[0])]
            assert tags[b, :len(first)].tolist() == list(first)
        assert (tags[b, int(L[b]):] == -1).all()


def to_torch_struct(trans, L):
    """torch-struct's edge potentials phi[b, n, to, from] (scores) of a unary-free per-move
    chain, and its lengths (nodes)."""
    return -trans.transpose(-1, -2), L


def test_torch_struct_differential_on_general_potentials():
    torch_struct = pytest.importorskip("torch_struct")
    g = torch.Generator().manual_seed(11)
    B, N, C = 6, 7, 5
    phi = torch.randn(B, N - 1, C, C, generator=g, dtype=torch.float64)
    phi[2, 3, 1, :] = -inf  # torch-struct's forbidden entries
    lengths = torch.tensor([7, 7, 5, 2, 6, 3])
    ours = ebm_ext.LinearChainCRF.from_edge_potentials(phi.clone().requires_grad_(), lengths)
    theirs = torch_struct.LinearChainCRF(phi.clone().requires_grad_(), lengths=lengths)
    torch.testing.assert_close(ours.partition, theirs.partition, atol=1e-9, rtol=1e-9)
    # the gradient idiom: d log Z / d phi is torch-struct's edge marginals
    p_ours = phi.clone().requires_grad_()
    p_theirs = phi.clone().requires_grad_()
    g_ours, = torch.autograd.grad(
        ebm_ext.LinearChainCRF.from_edge_potentials(p_ours, lengths).partition.sum(), p_ours)
    g_theirs, = torch.autograd.grad(
        torch_struct.LinearChainCRF(p_theirs, lengths=lengths).partition.sum(), p_theirs)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ours.edge_marginals.transpose(-1, -2), theirs.marginals, atol=1e-9,
                               rtol=1e-9)
    # argmax (as torch-struct's one-hot edges) and the best score
    tags = ours.argmax
    prev, nxt = tags[:, :-1], tags[:, 1:]
    edges = torch.zeros(B, N - 1, C, C, dtype=torch.float64)
    idx = torch.nonzero((prev >= 0) & (nxt >= 0), as_tuple=True)
    edges[idx + (nxt[idx], prev[idx])] = 1
    torch.testing.assert_close(edges, theirs.argmax.detach(), atol=0, rtol=0)
    torch.testing.assert_close(ours.max, theirs.max, atol=1e-9, rtol=1e-9)
    # the rest of torch-struct's members on the same general potentials
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)  # noqa: E731
    # (torch-struct's entropy family is NaN where a potential is -inf, sequence 2 here: its
    # semiring multiplies -inf by 0; tests/test_linear_chain_crf.py checks ours by enumeration)
    keep = torch.arange(B) != 2
    assert torch.isnan(theirs.entropy[2]) and torch.isfinite(ours.entropy()).all()
    close(ours.entropy()[keep], theirs.entropy[keep])
    other = torch.randn(B, N - 1, C, C, generator=g, dtype=torch.float64)
    ours_q = ebm_ext.LinearChainCRF.from_edge_potentials(other, lengths)
    theirs_q = torch_struct.LinearChainCRF(other, lengths=lengths)
    close(ours.kl(ours_q)[keep], theirs.kl(theirs_q)[keep])
    close(ours.cross_entropy(ours_q)[keep], theirs.cross_entropy(theirs_q)[keep])
    close(ours.kmax(3), theirs.kmax(3))


@pytest.mark.parametrize("form", ["per_sequence", "per_move"])
@pytest.mark.parametrize("case", ["viterbi", "viterbi_kbest", "loss_augmented_viterbi",
                                  "chain_energy", "chain_energy relaxed", "chain_log_partition",
                                  "chain_marginals", "_chain_log_partition_backward",
                                  "chain_expectation", "_chain_covariance", "chain_sample",
                                  "chain_relaxed_inference"])
def test_opcheck(device, form, case, opcheck_util):
    unary, trans, L, start, end = general_chain(form, B=3, T=4, K=3, seed=5, forbid=False,
                                                lengths=(4, 2, 3))
    ops = torch.ops.ebm_ext
    tags = ebm_ext.viterbi(unary, trans, L, start, end)[1]
    grad = torch.ones(3, dtype=unary.dtype)
    gold = torch.zeros(3, 4, dtype=torch.long)
    cost = 1 - torch.eye(3, dtype=unary.dtype)
    relaxed = torch.softmax(unary, -1)
    noise = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    needs = lambda x: x.detach().clone().requires_grad_()  # noqa: E731
    op, args = {
        "viterbi": (ops.viterbi.default, (unary, needs(trans), L, start, end)),
        "viterbi_kbest": (ops.viterbi_kbest.default, (unary, needs(trans), 2, L, start, end)),
        "loss_augmented_viterbi": (ops.loss_augmented_viterbi.default,
                                   (unary, needs(trans), gold, cost, L, start, end)),
        "chain_energy": (ops.chain_energy.default, (unary, needs(trans), tags, L, needs(start), end)),
        "chain_energy relaxed": (ops.chain_energy.default,
                                 (unary, needs(trans), needs(relaxed), L, needs(start), end)),
        "chain_log_partition": (ops.chain_log_partition.default,
                                (needs(unary), needs(trans), L, needs(start), needs(end))),
        "chain_marginals": (ops.chain_marginals.default, (unary, trans, L, start, end)),
        "_chain_log_partition_backward": (ops._chain_log_partition_backward.default,
                                          (grad, unary, trans, L, start, end)),
        "chain_expectation": (ops.chain_expectation.default,
                              (needs(unary), needs(trans), unary, trans, L, start, end, start,
                               end)),
        "_chain_covariance": (ops._chain_covariance.default,
                              (grad, unary, trans, unary, trans, L, start, end, start, end)),
        "chain_sample": (ops.chain_sample.default, (unary, trans, noise, L, start, end)),
        "chain_relaxed_inference": (ops.chain_relaxed_inference.default,
                                    (unary, trans, L, start, end, 3, 0.5, "entropic", None)),
    }[case]
    torch.library.opcheck(op, args, test_utils=opcheck_util)


def test_compile():
    skip_compile_if_emulated()
    unary, trans, L, start, end = general_chain("per_move", B=3, T=4, K=3, seed=6, forbid=False,
                                                lengths=(4, 2, 3))
    trans.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(unary, trans):
        energy, tags = ebm_ext.viterbi(unary, trans, L, start, end)
        return (ebm_ext.chain_log_partition(unary, trans, L, start, end) + energy).sum()

    loss(unary, trans).backward()
    p = trans.detach().clone().requires_grad_()
    want, = torch.autograd.grad((ebm_ext.chain_log_partition(unary, p, L, start, end)
                                 + ebm_ext.viterbi(unary, p, L, start, end)[0]).sum(), p)
    torch.testing.assert_close(trans.grad, want)


def test_gradcheck_per_move_parameters():
    unary, trans, L, start, end = general_chain("per_move", B=3, T=4, K=3, seed=6, forbid=False,
                                                lengths=(4, 1, 3))
    args = [x.requires_grad_() for x in (unary, trans, start, end)]
    assert torch.autograd.gradcheck(
        lambda u, t, s, e: ebm_ext.chain_log_partition(u, t, L, s, e), args)


@pytest.mark.parametrize("form", FORMS)
def test_kbest_and_loss_augmented_against_enumeration(device, form):
    unary, trans, L, start, end = general_chain(form, B=4, integer=True, seed=8,
                                                lengths=(4, 0, 1, 3))
    k = 5
    energy, tags = ebm_ext.viterbi_kbest(unary, trans, k, L, start, end)
    gold = torch.randint(0, 3, (4, 4), generator=torch.Generator().manual_seed(1))
    cost = 2.0 * (1 - torch.eye(3, dtype=torch.float64))
    aug_energy, delta, aug_tags = ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, L,
                                                                 start, end)
    for b, (paths, E) in enumerate(all_paths(unary, trans, L, start, end)):
        # k-best: the k smallest finite energies, ties in lexicographic order of the paths
        order = sorted(range(len(paths)), key=lambda n: (E[n].item(), paths[n]))
        order = [n for n in order if E[n] < inf][:k]
        for s in range(k):
            if s < len(order):
                assert energy[b, s].item() == pytest.approx(E[order[s]].item(), abs=1e-12)
                assert tags[b, s, :len(paths[order[s]])].tolist() == list(paths[order[s]])
            else:
                assert energy[b, s] == inf and (tags[b, s] == -1).all()
        # loss-augmented: min over paths of E(y) - sum_t cost[gold_t, y_t], smallest path first
        aug = torch.tensor([E[n].item() - sum(float(cost[gold[b, t], y]) for t, y in enumerate(p))
                            for n, p in enumerate(paths)], dtype=torch.float64)
        best = int(torch.nonzero(aug == aug.min())[0])
        assert aug_tags[b, :len(paths[best])].tolist() == list(paths[best])
        assert aug_energy[b].item() == pytest.approx(E[best].item(), abs=1e-12)
        assert delta[b].item() == pytest.approx((E[best] - aug[best]).item(), abs=1e-12)


def brute_entropy_family(p_args, q_args):
    out = {"entropy": [], "cross_entropy": [], "kl": []}
    for (paths, Ep), (_, Eq) in zip(all_paths(*p_args), all_paths(*q_args)):
        lp, lq = torch.log_softmax(-Ep, 0), torch.log_softmax(-Eq, 0)
        p = lp.exp()
        mass = p > 0
        out["entropy"].append(-(p[mass] * lp[mass]).sum())
        out["cross_entropy"].append(-(p[mass] * lq[mass]).sum())
        out["kl"].append((p[mass] * (lp[mass] - lq[mass])).sum())
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("form", FORMS)
def test_entropy_family_and_samples_against_enumeration(device, form):
    p_args = general_chain(form, B=4, seed=9, lengths=(4, 0, 1, 3))
    q_args = general_chain("per_move", B=4, seed=10, forbid=False, lengths=(4, 0, 1, 3))
    q_args = (q_args[0], q_args[1], p_args[2], q_args[3], q_args[4])
    want = brute_entropy_family(p_args, q_args)
    u, t, L, s, e = p_args
    uq, tq, _, sq, eq = q_args
    torch.testing.assert_close(ebm_ext.chain_entropy(u, t, L, s, e), want["entropy"],
                               atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ebm_ext.chain_cross_entropy(u, t, uq, tq, L, s, e, sq, eq),
                               want["cross_entropy"], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ebm_ext.chain_kl(u, t, uq, tq, L, s, e, sq, eq), want["kl"],
                               atol=1e-12, rtol=1e-12)
    # samples: empirical path frequencies against the exact probabilities
    n = 20000
    samples = ebm_ext.chain_sample(u, t, n, L, s, e, generator=torch.Generator().manual_seed(3))
    for b, (paths, E) in enumerate(all_paths(*p_args)):
        p = torch.softmax(-E, 0)
        Lb = int(L[b])
        assert (samples[:, b, Lb:] == -1).all()
        if Lb == 0:
            continue
        codes = (samples[:, b, :Lb] * (3 ** torch.arange(Lb - 1, -1, -1))).sum(1)
        freq = torch.bincount(codes, minlength=len(paths)).double() / n
        assert (freq[p == 0] == 0).all()  # no forbidden path is drawn
        assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("form", ["per_sequence", "per_move"])
def test_second_derivatives(form):
    unary, trans, L, start, end = general_chain(form, B=3, T=4, K=3, seed=12, forbid=False,
                                                lengths=(4, 1, 3))
    args = [x.requires_grad_() for x in (unary, trans, start, end)]
    assert torch.autograd.gradgradcheck(
        lambda u, t, s, e: ebm_ext.chain_log_partition(u, t, L, s, e), args)
    assert torch.autograd.gradcheck(lambda u, t, s, e: ebm_ext.chain_entropy(u, t, L, s, e), args)
    assert torch.autograd.gradcheck(lambda u, t, s, e: ebm_ext.chain_marginals(u, t, L, s, e),
                                    args)


@pytest.mark.parametrize("form", FORMS)
def test_relaxed_energy(form):
    unary, trans, L, start, end = general_chain(form, B=3, T=4, K=3, seed=13, forbid=False,
                                                lengths=(4, 1, 3))
    y = torch.softmax(torch.randn(3, 4, 3, dtype=torch.float64), -1)
    want = []
    for b in range(3):
        Lb = int(L[b])
        e = (unary[b, :Lb] * y[b, :Lb]).sum() + start[b] @ y[b, 0] + end[b] @ y[b, Lb - 1]
        for t_ in range(1, Lb):
            e = e + y[b, t_ - 1] @ move_matrix(trans, b, t_) @ y[b, t_]
        want.append(e)
    got = ebm_ext.chain_energy(unary, trans, y, L, start, end)
    torch.testing.assert_close(got, torch.stack(want))
    args = [x.requires_grad_() for x in (unary, trans, y, start, end)]
    assert torch.autograd.gradcheck(
        lambda u, t, yy, s, e: ebm_ext.chain_energy(u, t, yy, L, s, e), args)


@pytest.mark.parametrize("form", FORMS)
def test_cpu_equals_cuda_distribution_and_lists(gpu, form):
    unary, trans, L, start, end = general_chain(form, B=6, T=5, K=4, seed=14,
                                                lengths=(5, 0, 1, 2, 4, 5))
    gold = torch.randint(0, 4, (6, 5), generator=torch.Generator().manual_seed(2))
    cost = 1.5 * (1 - torch.eye(4, dtype=torch.float64))
    noise = torch.rand(7, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    v = torch.randn(6, 5, 4, dtype=torch.float64)
    w = torch.linspace(-1, 1, 6, dtype=torch.float64)
    ops = torch.ops.ebm_ext

    def run(to):
        u, t, l, s, e = (to(x) for x in (unary, trans, L, start, end))
        return (ops.viterbi_kbest(u, t, 3, l, s, e),
                ops.loss_augmented_viterbi(u, t, to(gold), to(cost), l, s, e),
                ops.chain_expectation(u, t, to(v), t, l, s, e, s, e),
                ops._chain_covariance(to(w), u, t, to(v), t, l, s, e, s, e),
                ops.chain_sample(u, t, to(noise), l, s, e))

    cpu = run(lambda x: x)
    with gpu():
        dev = run(gpu.to)
    for a, b in zip(torch.utils._pytree.tree_leaves(cpu), torch.utils._pytree.tree_leaves(dev)):
        if a.dtype == torch.long:
            assert torch.equal(a, b.cpu())
        else:
            torch.testing.assert_close(a, b.cpu(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_partition_is_never_below_the_best_score(dtype):
    """Nearly all the mass on one path, energies of every scale: log Z and the best score are
    equal to rounding there. The general kernels guarantee -viterbi <= log Z exactly; the
    distribution guarantees max <= partition for every form. (Before: 400+ of these sequences
    had log Z 1-2 ulps below the best score.)"""
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        B, T, K = 8, int(torch.randint(1, 12, (), generator=g)), int(torch.randint(1, 6, (), generator=g))
        scale = 10.0 ** float(torch.randint(-2, 4, (), generator=g))
        u = torch.randn(B, T, K, dtype=dtype, generator=g) * scale
        tr = torch.randn(K, K, dtype=dtype, generator=g) * scale
        keep = torch.randint(0, K, (B, T), generator=g)
        mask = torch.rand(B, T, K, generator=g) < 0.9
        mask.scatter_(2, keep.unsqueeze(2), False)
        u = u.masked_fill(mask, inf)
        per_move = tr.expand(B, max(T - 1, 0), K, K).contiguous()
        e, _ = ebm_ext.viterbi(u, per_move)
        lz = ebm_ext.chain_log_partition(u, per_move)
        assert torch.all(torch.isinf(e) | (-e <= lz))
        for t in (tr, per_move):
            dist = ebm_ext.LinearChainCRF(u, t)
            assert torch.all(torch.isinf(dist.max) | (dist.max <= dist.partition))


@pytest.mark.parametrize("method", ["entropic", "projected"])
@pytest.mark.parametrize("form", FORMS)
def test_relaxed_inference_equals_its_reference_and_cuda(gpu, form, method):
    """chain_relaxed_inference on general chains: the fused kernels against a plain-PyTorch
    Jacobi loop of the same updates, and CPU == CUDA."""
    unary, trans, L, start, end = general_chain(form, B=4, T=5, K=3, seed=15, forbid=False,
                                                lengths=(5, 0, 1, 3))
    steps, lr = 7, 0.3
    probs, energy = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps, lr, method)
    # reference: every position's gradient from the same p, then the update
    B, T, K = unary.shape
    p = torch.full((B, T, K), 1.0 / K, dtype=torch.float64)
    e = torch.zeros_like(p)
    inside = (torch.arange(T)[None] < L[:, None])
    for _ in range(steps):
        g = unary.clone()
        for b in range(B):
            Lb = int(L[b])
            if Lb == 0:
                continue
            g[b, 0] += start[b]
            g[b, Lb - 1] += end[b]
            for t in range(Lb):
                if t > 0:
                    g[b, t] += p[b, t - 1] @ move_matrix(trans, b, t)
                if t + 1 < Lb:
                    g[b, t] += move_matrix(trans, b, t + 1) @ p[b, t + 1]
        if method == "entropic":
            e = e + lr * g
            p = torch.softmax(-e, -1)
        else:
            p = ebm_ext.project_simplex(p - lr * g)
    p = torch.where(inside[..., None], p, 0)
    torch.testing.assert_close(probs, p, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(energy, ebm_ext.chain_energy(unary, trans, p, L, start, end))
    args = [gpu.to(x) for x in (unary, trans, L, start, end)]
    with gpu():
        dev = ebm_ext.chain_relaxed_inference(*args, steps, lr, method)
    torch.testing.assert_close(dev[0].cpu(), probs, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dev[1].cpu(), energy, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_distribution_members_on_general_chains(form):
    """LinearChainCRF with general parameters: count, log_prob, topk, perturb_and_map against
    enumeration."""
    unary, trans, L, start, end = general_chain(form, B=4, integer=True, seed=16,
                                                lengths=(4, 0, 1, 3))
    trans = trans.masked_fill(trans > 1.5, inf)  # some moves forbidden
    dist = ebm_ext.LinearChainCRF(unary, trans, start, end, L)
    for b, (paths, E) in enumerate(all_paths(unary, trans, L, start, end)):
        assert dist.count[b].item() == int(torch.isfinite(E).sum())
        logp = torch.log_softmax(-E, 0)
        tags = torch.zeros((len(paths), 4, 4), dtype=torch.long)  # other sequences: any tags
        tags[:, b] = -1
        for n, p in enumerate(paths):
            tags[n, b, :len(p)] = torch.tensor(p, dtype=torch.long)
        finite = torch.isfinite(E)
        torch.testing.assert_close(dist.log_prob(tags)[:, b][finite], logp[finite])
    top = dist.topk(3)
    torch.testing.assert_close(dist.kmax(3), -ebm_ext.viterbi_kbest(unary, trans, 3, L, start,
                                                                      end)[0].t())
    assert torch.equal(top[0], dist.argmax)
    noisy = dist.perturb_and_map(5, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == (5, 4, 4)
    energies = ebm_ext.chain_energy(unary, trans, noisy.permute(1, 0, 2).contiguous(), L, start,
                                    end)
    assert torch.isfinite(energies[torch.tensor([0, 2, 3])]).all()  # allowed paths only


@pytest.mark.parametrize("form", ["one_matrix"] + FORMS)
def test_float32_entropy_family_is_its_exact_value_rounded_once(form):
    """float32 entropy, cross entropy and KL sum their float64 terms before rounding, so each is
    within one float32 rounding of the float64 value (before, float32 KL rounded log Z_q, log Z_p
    and the expectation separately: cancellation left errors of many ulps)."""
    for seed in range(20):
        if form == "one_matrix":
            g = torch.Generator().manual_seed(seed)
            u = torch.randn(4, 6, 5, generator=g) * 30
            p_args = (u, torch.randn(5, 5, generator=g) * 30, None, None, None)
            q_args = (u + 0.01 * torch.randn(4, 6, 5, generator=g), p_args[1] * 1.001, None, None,
                      None)
        else:
            p_args = general_chain(form, B=4, T=6, K=5, seed=seed, forbid=False,
                                   lengths=(6, 5, 4, 6), dtype=torch.float32)
            q_args = tuple(x if x is None or not x.is_floating_point() else x * 1.001 + 0.01
                           for x in p_args)
            p_args = tuple(x * 30 if x is not None and x.is_floating_point() else x
                           for x in p_args)
            q_args = tuple(x * 30 if x is not None and x.is_floating_point() else x
                           for x in q_args)
        u, t, L, s, e = p_args
        uq, tq, _, sq, eq = q_args
        d64 = lambda x: None if x is None else x.double()  # noqa: E731
        for name, f32, f64 in [
            ("entropy", ebm_ext.chain_entropy(u, t, L, s, e),
             ebm_ext.chain_entropy(d64(u), d64(t), L, d64(s), d64(e))),
            ("kl", ebm_ext.chain_kl(u, t, uq, tq, L, s, e, sq, eq),
             ebm_ext.chain_kl(d64(u), d64(t), d64(uq), d64(tq), L, d64(s), d64(e), d64(sq),
                              d64(eq))),
            ("cross_entropy", ebm_ext.chain_cross_entropy(u, t, uq, tq, L, s, e, sq, eq),
             ebm_ext.chain_cross_entropy(d64(u), d64(t), d64(uq), d64(tq), L, d64(s), d64(e),
                                         d64(sq), d64(eq))),
        ]:
            assert f32.dtype == torch.float32
            ulp = torch.finfo(torch.float32).eps * f64.abs().clamp(min=torch.finfo(torch.float32).tiny)
            assert torch.all((f32.double() - f64).abs() <= ulp + 1e-12), (name, seed, f32, f64)


@pytest.mark.parametrize("op", ["viterbi", "viterbi_kbest", "loss_augmented_viterbi",
                                "chain_energy", "chain_log_partition", "chain_marginals",
                                "chain_entropy", "chain_sample", "chain_relaxed_inference"])
def test_bad_lengths_are_named_on_every_backend(device, op):
    """The general kernels check the lengths themselves where the host does not (CUDA's
    decoders and distribution kernels, on the device): never a read past T."""
    unary, trans, _, start, end = general_chain("per_move", B=2, T=4, K=3, seed=17)
    L = torch.tensor([4, 5])
    call = {
        "viterbi": lambda: ebm_ext.viterbi(unary, trans, L, start, end),
        "viterbi_kbest": lambda: ebm_ext.viterbi_kbest(unary, trans, 2, L, start, end),
        "loss_augmented_viterbi": lambda: ebm_ext.loss_augmented_viterbi(
            unary, trans, torch.zeros(2, 4, dtype=torch.long), 1 - torch.eye(3, dtype=unary.dtype),
            L, start, end),
        "chain_energy": lambda: ebm_ext.chain_energy(unary, trans, torch.zeros(2, 4, dtype=torch.long),
                                                     L, start, end),
        "chain_log_partition": lambda: ebm_ext.chain_log_partition(unary, trans, L, start, end),
        "chain_marginals": lambda: ebm_ext.chain_marginals(unary, trans, L, start, end),
        "chain_entropy": lambda: ebm_ext.chain_entropy(unary, trans, L, start, end),
        "chain_sample": lambda: ebm_ext.chain_sample(unary, trans, 2, L, start, end),
        "chain_relaxed_inference": lambda: ebm_ext.chain_relaxed_inference(unary, trans, L, start,
                                                                           end),
    }[op]
    with pytest.raises(RuntimeError, match=r"lengths must be (<= T=4, got 5|in \[0, T=4\], got 5)"):
        call()
