"""Every loss against a brute-force version written over all K^L paths with plain PyTorch
(values and gradients), and the shape of the margin loss."""
import itertools

import pytest
import torch

import ebm_ext
from ebm_ext import _reference as ref
from ebm_ext import losses
from chain_cases import category_cost, make_chain, tweet_categories


def _all_paths(T, K, L):
    """(P, T) every path of length L, padded with -1."""
    paths = [list(p) + [-1] * (T - L) for p in itertools.product(range(K), repeat=L)]
    return torch.tensor(paths, dtype=torch.long).view(-1, T)


def _path_energies(unary, trans, start, end, L, b):
    """Energies (P,) of all paths of sequence b, differentiable (the plain-PyTorch reference)."""
    T, K = unary.shape[1], unary.shape[2]
    n = int(L[b])
    paths = _all_paths(T, K, n)
    P = paths.shape[0]
    lengths = torch.full((P,), n)
    e = ref.chain_energy(unary[b:b + 1].expand(P, T, K), trans, paths.clamp(min=0), lengths,
                         start, end)
    return e, paths


def brute_force(name, unary, trans, gold, L, start, end, cost=None, margin=1.0):
    out = []
    for b in range(unary.shape[0]):
        e, paths = _path_energies(unary, trans, start, end, L, b)
        n = int(L[b])
        g = gold[b, :n]
        is_gold = (paths[:, :n] == g).all(-1)
        e_gold = e[is_gold][0]
        if name == "crf_nll":
            out.append(e_gold + torch.logsumexp(-e, 0))
        elif name == "perceptron":
            out.append(e_gold - e.min())
        elif name == "margin_hinge":
            others = e[~is_gold]
            out.append(torch.relu(margin + e_gold - others.min()) if len(others) else e_gold * 0)
        elif name == "margin_rescaled_hinge":
            delta = cost[g[None].expand(len(paths), n), paths[:, :n]].sum(-1)
            out.append(torch.relu((delta - e).max() + e_gold))
    return torch.stack(out)


def _case(seed, K=3, T=4, B=4):
    unary, trans, L, start, end = make_chain(B, T, K, seed=seed)
    L[0] = T
    gold = torch.randint(0, K, (B, T), generator=torch.Generator().manual_seed(seed))
    gold = torch.where(torch.arange(T) < L[:, None], gold, -1)
    return unary, trans, gold, L, start, end


@pytest.mark.parametrize("name", ["crf_nll", "perceptron", "margin_hinge", "margin_rescaled_hinge"])
@pytest.mark.parametrize("seed", range(4))
def test_loss_and_gradient_match_brute_force(name, seed):
    unary, trans, gold, L, start, end = _case(seed)
    K = unary.shape[-1]
    if name == "margin_rescaled_hinge":
        _, cats = tweet_categories()
        cost = (category_cost([cats[i] for i in (0, 1, 7)]) if seed % 2
                else losses.hamming_cost(K, torch.float64))
        extra = {"cost": cost}
    elif name == "margin_hinge":
        extra = {"margin": 2.5}
    else:
        extra = {}
    params = [x.requires_grad_() for x in (unary, trans, start, end)]
    fn = getattr(losses, name)
    if name == "margin_rescaled_hinge":
        got = fn(unary, trans, gold, extra["cost"], L, start, end, reduction="none")
    elif name == "margin_hinge":
        got = fn(unary, trans, gold, extra["margin"], L, start, end, reduction="none")
    else:
        got = fn(unary, trans, gold, L, start, end, reduction="none")
    want = brute_force(name, unary, trans, gold, L, start, end, **extra)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got.sum(), params)
    want_grads = torch.autograd.grad(want.sum(), params)
    for g1, g2 in zip(grads, want_grads):
        torch.testing.assert_close(g1, g2)


def test_token_nll_is_cross_entropy_of_minus_energies():
    unary, _, gold, L, _, _ = _case(1)
    got = losses.token_nll(unary, gold, L, reduction="sum")
    valid = gold >= 0
    want = torch.nn.functional.cross_entropy(-unary[valid], gold[valid], reduction="sum")
    torch.testing.assert_close(got, want)


def test_reductions():
    unary, trans, gold, L, start, end = _case(2)
    per = losses.crf_nll(unary, trans, gold, L, start, end, reduction="none")
    torch.testing.assert_close(losses.crf_nll(unary, trans, gold, L, start, end), per.mean())
    torch.testing.assert_close(losses.crf_nll(unary, trans, gold, L, start, end, reduction="sum"),
                               per.sum())
    with pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"):
        losses.crf_nll(unary, trans, gold, L, start, end, reduction="avg")


def test_losses_are_non_negative_and_zero_when_gold_wins_by_the_margin():
    unary, trans, gold, L, start, end = _case(3)
    for loss in (losses.crf_nll(unary, trans, gold, L, start, end, reduction="none"),
                 losses.perceptron(unary, trans, gold, L, start, end, reduction="none"),
                 losses.margin_hinge(unary, trans, gold, 1.0, L, start, end, reduction="none")):
        assert torch.all(loss >= -1e-12)
    # Make gold far better than everything: hinge losses vanish.
    K = unary.shape[-1]
    boosted = unary - 100 * torch.nn.functional.one_hot(gold.clamp(min=0), K) * (gold >= 0)[..., None]
    assert torch.all(losses.margin_hinge(boosted, trans, gold, 1.0, L, start, end, reduction="none") == 0)
    assert torch.all(losses.margin_rescaled_hinge(boosted, trans, gold, losses.hamming_cost(K, torch.float64),
                                                  L, start, end, reduction="none") == 0)


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_margin_hinge_shape(margin):
    """Two paths (K=2, T=1): loss = [m - (E(y_hat) - E(gold))]_+, zero at and beyond m, slope -1
    below."""
    gap = torch.linspace(-3, 4, 57, dtype=torch.float64)
    unary = torch.stack([torch.zeros_like(gap), gap], -1)[:, None, :].requires_grad_()
    trans = torch.zeros(2, 2, dtype=torch.float64)
    gold = torch.zeros(57, 1, dtype=torch.long)
    loss = losses.margin_hinge(unary, trans, gold, margin, reduction="none")
    torch.testing.assert_close(loss, torch.relu(margin - gap))
    (slope,) = torch.autograd.grad(loss.sum(), unary)
    slope = slope[:, 0, 1]
    assert torch.all(slope[gap < margin] == -1) and torch.all(slope[gap >= margin] == 0)
    assert torch.all(loss[gap >= margin] == 0)


def test_margin_hinge_without_competitor_is_zero():
    unary = torch.randn(2, 3, 1, dtype=torch.float64)  # K = 1: gold is the only path
    loss = losses.margin_hinge(unary, torch.zeros(1, 1, dtype=torch.float64),
                               torch.zeros(2, 3, dtype=torch.long), reduction="none")
    assert torch.all(loss == 0)


def test_category_cost_matches_the_tagset():
    tags, cats = tweet_categories()
    cost = losses.category_cost(cats)
    assert cost.shape == (25, 25) and torch.all(cost.diagonal() == 0)
    n, v = tags.index("N"), tags.index("V")
    o = tags.index("O")
    assert cost[n, o] == 0.5 and cost[n, v] == 1.0


def test_crf_nll_with_partial_labels_is_the_marginal_likelihood(device):
    """gold as allowed-tag sets (B, T, K): -log sum over the consistent sequences of p(y), by
    enumeration; exact tags as one-hot sets give the ordinary crf_nll; restricted decoding
    stays inside the sets."""
    import itertools
    import math
    from chain_cases import all_paths, make_chain
    unary, trans, L, start, end = make_chain(4, 4, 3, device=device, seed=11)
    g = torch.Generator().manual_seed(12)
    allowed = (torch.rand(4, 4, 3, generator=g) < 0.6).to(device)
    allowed[0, 1] = False  # sequence 0: nothing allowed at t = 1 (if L > 1: loss +inf)
    loss = losses.crf_nll(unary, trans, allowed, L, start, end, reduction="none")
    for b in range(4):
        paths = all_paths(unary, trans, L, start, end, b)
        z = torch.logsumexp(torch.tensor([-e for e, _ in paths], dtype=torch.float64), 0)
        ok = [-e for e, p in paths if all(bool(allowed[b, t, y]) for t, y in enumerate(p))]
        want = math.inf if not ok else float(z - torch.logsumexp(torch.tensor(ok, dtype=torch.float64), 0))
        assert loss[b].item() == pytest.approx(want, rel=1e-9, abs=1e-9)
    gold = torch.randint(0, 3, (4, 4), generator=g).to(device)
    one_hot = torch.nn.functional.one_hot(gold, 3).bool()
    torch.testing.assert_close(losses.crf_nll(unary, trans, one_hot, L, start, end, reduction="none"),
                               losses.crf_nll(unary, trans, gold, L, start, end, reduction="none"))
    _, tags = ebm_ext.viterbi(losses.restrict(unary, allowed), trans, L, start, end)
    for b in range(1, 4):
        for t in range(int(L[b])):
            assert bool(allowed[b, t, tags[b, t]])
    with pytest.raises(ValueError, match=r"crf_nll: allowed tags must be a bool tensor of the shape of unary"):
        losses.crf_nll(unary, trans, allowed[:, :, :2], L, start, end)
