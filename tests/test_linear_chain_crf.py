"""ebm_ext.LinearChainCRF: against enumeration of every path, and against torch-struct's
LinearChainCRF on the same potentials (float64, 1e-9) where torch-struct is right."""
import math
import warnings

import pytest
import torch

import ebm_ext
from ebm_ext import LinearChainCRF
from chain_cases import all_paths, make_chain

torch_struct = pytest.importorskip("torch_struct")


def torch_struct_crf(phi, lengths):
    with warnings.catch_warnings():  # it defines no arg_constraints
        warnings.simplefilter("ignore")
        return torch_struct.LinearChainCRF(phi, lengths=lengths)


def edge_scores(emission, transition):
    """torch-struct's usual construction: phi[b, n, to, from] = emission at node n + 1 plus the
    transition, and the first node's emission on the first edge."""
    phi = emission[:, 1:, :, None] + transition[None, None]
    return torch.cat([phi[:, :1] + emission[:, :1, None, :], phi[:, 1:]], 1)


def ragged(B=4, N=7, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    emission = torch.randn(B, N, C, generator=g, dtype=torch.float64, requires_grad=True)
    transition = torch.randn(C, C, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.randint(2, N + 1, (B,), generator=g)
    lengths[0] = N
    return emission, transition, lengths


def node_marginals(edge, lengths):
    node = torch.cat([edge.sum(2)[:, :1], edge.sum(3)], 1)
    return node * (torch.arange(node.shape[1])[None, :, None] < lengths[:, None, None])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_struct(seed):
    emission, transition, L = ragged(seed=seed)
    ours = LinearChainCRF.from_edge_potentials(edge_scores(emission, transition), L)
    theirs = torch_struct_crf(edge_scores(emission, transition), L)
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-9, rtol=0)  # noqa: E731
    close(ours.partition, theirs.partition)
    close(ours.marginals, node_marginals(theirs.marginals, L))
    close(ours.entropy(), theirs.entropy)
    close(ours.max, theirs.max)
    close(ours.kmax(3), theirs.kmax(3))
    other_e, other_t, _ = ragged(seed=seed + 10)
    ours_q = LinearChainCRF.from_edge_potentials(edge_scores(other_e, other_t), L)
    theirs_q = torch_struct_crf(edge_scores(other_e, other_t), L)
    close(ours.kl(ours_q), theirs.kl(theirs_q))
    close(torch.distributions.kl_divergence(ours, ours_q), theirs.kl(theirs_q))
    close(ours.cross_entropy(ours_q), theirs.cross_entropy(theirs_q))
    # Argmax and top-k: torch-struct gives one-hot edges; compare the paths they select.
    assert torch.equal(edges_of(ours.argmax, 5), theirs.argmax.detach().round().long())
    assert torch.equal(edges_of(ours.topk(3), 5), theirs.topk(3).detach().round().long())


def edges_of(tags, C):
    """One-hot edges (..., N-1, C, C) [to, from] of tag paths (..., N), zero past a -1."""
    prev, nxt = tags[..., :-1], tags[..., 1:]
    ok = (prev >= 0) & (nxt >= 0)
    out = torch.zeros(*prev.shape, C, C, dtype=torch.long)
    idx = torch.nonzero(ok, as_tuple=True)
    out[idx + (nxt[idx], prev[idx])] = 1
    return out


@pytest.mark.parametrize("what", ["partition", "entropy", "marginals"])
def test_gradients_of_emissions_and_transitions_match_torch_struct(what):
    emission, transition, L = ragged(seed=3)

    def value(dist):
        if what == "partition":
            return dist.partition.sum()
        if what == "entropy":
            return (dist.entropy() if isinstance(dist, LinearChainCRF) else dist.entropy).sum()
        m = dist.marginals
        m = m if isinstance(dist, LinearChainCRF) else node_marginals(m, L)
        return (m * torch.linspace(-1, 1, m.numel(), dtype=m.dtype).view_as(m)).sum()

    ours = torch.autograd.grad(value(LinearChainCRF.from_edge_potentials(
        edge_scores(emission, transition), L)), (emission, transition))
    theirs = torch.autograd.grad(value(torch_struct_crf(edge_scores(emission, transition), L)),
                                 (emission, transition))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_forbidden_transitions_where_torch_struct_gives_nan():
    # BIO constraints as -inf scores: torch-struct's entropy is NaN there (its semiring
    # multiplies -inf by 0); ours is the entropy of the allowed paths, by enumeration.
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    trans, start, end = ebm_ext.allowed_transitions("BIO", labels)
    g = torch.Generator().manual_seed(4)
    emission = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    phi = edge_scores(emission, -trans.double().t())
    ours = LinearChainCRF.from_edge_potentials(phi)
    theirs = torch_struct_crf(phi, None)
    torch.testing.assert_close(ours.partition, theirs.partition, atol=1e-9, rtol=0)
    assert torch.isnan(theirs.entropy).all()
    shared = LinearChainCRF(-emission, trans.double())  # the same chain, one (K, K) matrix
    for b in range(2):
        energies = torch.tensor([e for e, _ in all_paths(shared.unary, shared.trans, None, None,
                                                         None, b)], dtype=torch.float64)
        finite = torch.isfinite(energies)
        lp = torch.log_softmax(-energies[finite], 0)
        assert ours.entropy()[b].item() == pytest.approx(-(lp.exp() * lp).sum().item(), abs=1e-10)
    # No sampled, decoded or top-k path takes a forbidden transition.
    forbidden = torch.isinf(trans)
    for tags in (ours.sample(200), ours.argmax[None], ours.topk(4)):
        assert not forbidden[tags[..., :-1], tags[..., 1:]].any()


def test_against_enumeration():
    unary, trans, L, start, end = make_chain(3, 4, 3, seed=5)
    dist = LinearChainCRF(unary, trans, start, end, L)
    for b in range(3):
        paths = all_paths(unary, trans, L, start, end, b)
        energies = torch.tensor([e for e, _ in paths], dtype=torch.float64)
        logp = torch.log_softmax(-energies, 0)
        tags = torch.zeros((len(paths), 3, 4), dtype=torch.long)  # other sequences: any tags
        tags[:, b] = -1
        for n, (_, path) in enumerate(paths):
            tags[n, b, :len(path)] = torch.tensor(path, dtype=torch.long)
        got = dist.log_prob(tags)[:, b]
        torch.testing.assert_close(got, logp, atol=1e-12, rtol=0)
        assert dist.partition[b].item() == pytest.approx(torch.logsumexp(-energies, 0).item(),
                                                         abs=1e-12)
        if paths[0][1]:
            assert tuple(dist.argmax[b, :len(paths[0][1])].tolist()) == paths[0][1]
            k = min(3, len(paths))
            for n in range(k):
                assert tuple(dist.topk(3)[n, b, :len(paths[n][1])].tolist()) == paths[n][1]


def test_sample_shapes_log_prob_of_samples_and_seed():
    unary, trans, L, start, end = make_chain(3, 5, 4, seed=6)
    dist = LinearChainCRF(unary, trans, start, end, L)
    torch.manual_seed(3)
    a = dist.sample((2, 6))
    torch.manual_seed(3)
    b = dist.sample(torch.Size([2, 6]))
    assert a.shape == (2, 6, 3, 5) and torch.equal(a, b)
    assert dist.sample().shape == (3, 5)
    assert dist.log_prob(a).shape == (2, 6, 3)
    assert torch.all(dist.log_prob(a) <= 0)
    assert dist.perturb_and_map(4).shape == (4, 3, 5)


def test_mask_and_bad_arguments():
    unary, trans, _, _, _ = make_chain(2, 4, 3, seed=7, lengths=False)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    by_mask = LinearChainCRF(unary, trans, mask=mask)
    torch.testing.assert_close(by_mask.partition,
                               LinearChainCRF(unary, trans, lengths=torch.tensor([3, 4])).partition)
    cases = [
        (lambda: LinearChainCRF(unary[0], trans), r"unary must be a 3-D tensor \(B, T, K\)"),
        (lambda: LinearChainCRF(unary, trans[:2]), r"trans must have shape \(K, K\) = \(3, 3\)"),
        (lambda: LinearChainCRF(unary, trans, mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]).bool()),
         "right-padded prefix"),
        (lambda: LinearChainCRF(unary, trans, lengths=torch.tensor([1.0, 2.0])),
         r"lengths must be an int64 tensor of shape \(B,\)"),
        (lambda: by_mask.log_prob(torch.zeros(2, 3, dtype=torch.long)),
         r"value must have shape \(\*sample_shape, B, T\)"),
        (lambda: by_mask.kl(LinearChainCRF(unary, trans)), "other must have the same lengths"),
        (lambda: LinearChainCRF.from_edge_potentials(torch.randn(2, 3, 4, 5, dtype=torch.float64)),
         r"log_potentials must be \(B, N-1, C, C\)"),
        (lambda: LinearChainCRF.from_edge_potentials(torch.randn(2, 3, 4, 4), torch.tensor([0, 4])),
         r"lengths must be in \[1, N=4\]"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_crf_layer_hands_out_its_distribution():
    crf = ebm_ext.CRF(4, batch_first=True)
    emissions = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    dist = crf.distribution(emissions, mask)
    tags = dist.argmax
    assert [t[t >= 0].tolist() for t in tags] == crf.decode(emissions, mask)
    torch.testing.assert_close(dist.marginals, crf.marginals(emissions, mask))
    gold = tags.clamp(min=0)
    torch.testing.assert_close(dist.log_prob(gold), crf(emissions, gold, mask, reduction="none"))
