"""ebm_ext.CRF against pytorch-crf 0.7.2 (the same numbers, decodes and errors on the same
parameters), its extras against brute force, and TorchScript, torch.compile and torch.export."""
import itertools
import math

import pytest
import torch

import ebm_ext

torchcrf = pytest.importorskip("torchcrf")


def _pair(K, batch_first, seed=0):
    torch.manual_seed(seed)
    theirs = torchcrf.CRF(K, batch_first=batch_first)
    ours = ebm_ext.CRF(K, batch_first=batch_first)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _batch(T, B, K, batch_first, seed=1):
    g = torch.Generator().manual_seed(seed)
    emissions = torch.randn(T, B, K, generator=g, dtype=torch.float64)
    tags = torch.randint(0, K, (T, B), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[:, None] < lengths[None, :]).to(torch.uint8)
    if batch_first:
        emissions, tags, mask = emissions.transpose(0, 1), tags.transpose(0, 1), mask.transpose(0, 1)
    return emissions, tags, mask


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "token_mean"])
def test_same_log_likelihood_and_gradients_as_pytorch_crf(batch_first, reduction):
    theirs, ours = _pair(5, batch_first)
    theirs.double(), ours.double()
    emissions, tags, mask = _batch(7, 6, 5, batch_first)
    for masked in (None, mask):
        e1, e2 = emissions.clone().requires_grad_(), emissions.clone().requires_grad_()
        want = theirs(e1, tags, masked, reduction)
        got = ours(e2, tags, masked, reduction)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
        want.sum().backward()
        got.sum().backward()
        torch.testing.assert_close(e2.grad, e1.grad, atol=1e-10, rtol=1e-10)
        for name in ("start_transitions", "end_transitions", "transitions"):
            torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad,
                                       atol=1e-10, rtol=1e-10)
        theirs.zero_grad(), ours.zero_grad()


@pytest.mark.parametrize("batch_first", [False, True])
def test_same_decode_as_pytorch_crf(batch_first):
    theirs, ours = _pair(6, batch_first, seed=3)
    emissions, _, mask = _batch(9, 8, 6, batch_first, seed=4)
    assert ours.decode(emissions.float(), mask) == theirs.decode(emissions.float(), mask)
    assert ours.decode(emissions.float()) == theirs.decode(emissions.float())


def test_parameters_and_init_like_pytorch_crf():
    crf = ebm_ext.CRF(7)
    assert [n for n, _ in crf.named_parameters()] == ["start_transitions", "end_transitions", "transitions"]
    assert crf.transitions.shape == (7, 7) and repr(crf) == "CRF(num_tags=7)"
    for p in crf.parameters():
        assert p.min() >= -0.1 and p.max() <= 0.1


@pytest.mark.parametrize("call", [
    lambda c: c(torch.randn(3, 2), torch.zeros(3, 2, dtype=torch.long)),
    lambda c: c(torch.randn(3, 2, 4), torch.zeros(3, 2, dtype=torch.long)),
    lambda c: c(torch.randn(3, 2, 5), torch.zeros(3, 3, dtype=torch.long)),
    lambda c: c(torch.randn(3, 2, 5), torch.zeros(3, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.uint8)),
    lambda c: c(torch.randn(3, 2, 5), torch.zeros(3, 2, dtype=torch.long), torch.tensor([[1, 0], [1, 0], [0, 0]], dtype=torch.uint8)),
    lambda c: c(torch.randn(3, 2, 5), torch.zeros(3, 2, dtype=torch.long), reduction="avg"),
    lambda c: c.decode(torch.randn(3, 2, 5), torch.ones(3, 3, dtype=torch.uint8)),
])
def test_same_errors_as_pytorch_crf(call):
    theirs, ours = _pair(5, False)
    with pytest.raises(ValueError) as want:
        call(theirs)
    with pytest.raises(ValueError, match=None) as got:
        call(ours)
    assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="invalid number of tags: 0"):
        ebm_ext.CRF(0)


def _brute(crf, emissions, L):
    """(score, path) of every path of one batch-first sequence of length L, best first."""
    K = crf.num_tags
    out = []
    for path in itertools.product(range(K), repeat=L):
        s = float(crf.start_transitions[path[0]] + crf.end_transitions[path[-1]])
        s += sum(float(emissions[t, y]) for t, y in enumerate(path))
        s += sum(float(crf.transitions[a, b]) for a, b in zip(path, path[1:]))
        out.append((s, list(path)))
    return sorted(out, key=lambda x: (-x[0], x[1]))


def test_nbest_tensors_and_marginals_against_brute_force():
    crf = ebm_ext.CRF(3, batch_first=True).double()
    emissions, _, mask = _batch(4, 3, 3, True, seed=5)
    lengths = mask.sum(1)
    nbest = crf.decode_nbest(emissions, 5, mask)
    scores, tags = crf.viterbi_tensors(emissions, mask, nbest=5)
    marg = crf.marginals(emissions, mask)
    for b in range(3):
        paths = _brute(crf, emissions[b], int(lengths[b]))
        assert nbest[b] == [p for _, p in paths[:5]]
        torch.testing.assert_close(scores[b, : len(paths[:5])], torch.tensor([s for s, _ in paths[:5]],
                                   dtype=torch.float64))
        assert tags[b, 0, : int(lengths[b])].tolist() == paths[0][1] and (tags[b, :, int(lengths[b]):] == -1).all()
        z = math.log(sum(math.exp(s) for s, _ in paths))
        want = torch.zeros(4, 3, dtype=torch.float64)
        for s, p in paths:
            for t, y in enumerate(p):
                want[t, y] += math.exp(s - z)
        torch.testing.assert_close(marg[b], want)
    assert crf.decode(emissions, mask) == [n[0] for n in nbest]


def test_any_mask_scores_the_selected_positions_as_one_chain():
    crf = ebm_ext.CRF(4, batch_first=True, any_mask=True).double()
    g = torch.Generator().manual_seed(6)
    right = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    tags = torch.randint(0, 4, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    # The same sequences left-padded, and with a hole (a skipped [CLS]-like token) instead.
    left = torch.stack([right[0].roll(2, 0), right[1].roll(1, 0)])
    left_tags = torch.stack([tags[0].roll(2, 0), tags[1].roll(1, 0)])
    left_mask = torch.stack([mask[0].roll(2, 0), mask[1].roll(1, 0)])
    want = crf(right, tags, mask, reduction="none")
    torch.testing.assert_close(crf(left, left_tags, left_mask, reduction="none"), want)
    assert crf.decode(left, left_mask) == crf.decode(right, mask)
    scores, placed = crf.viterbi_tensors(left, left_mask)
    assert (placed[~left_mask[:, None, :].expand_as(placed)] == -1).all()
    torch.testing.assert_close(crf.marginals(left, left_mask).sum(-1), left_mask.double())
    empty = torch.zeros(2, 5, dtype=torch.bool)
    assert (crf(right, tags, empty, reduction="none") == 0).all() and crf.decode(right, empty) == [[], []]
    strict = ebm_ext.CRF(4, batch_first=True)
    with pytest.raises(ValueError, match="mask must be a right-padded prefix .* any_mask=True"):
        strict(right, tags, torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool))


def test_torchscript_compile_and_export():
    crf = ebm_ext.CRF(5, batch_first=True)
    emissions, tags, mask = _batch(6, 3, 5, True, seed=7)
    emissions, mask = emissions.float(), mask.bool()
    scripted = torch.jit.script(crf)
    torch.testing.assert_close(scripted(emissions, tags, mask), crf(emissions, tags, mask))
    assert scripted.decode(emissions, mask) == crf.decode(emissions, mask)
    with pytest.raises(Exception, match="mask of the first timestep must all be on"):
        scripted(emissions, tags, torch.zeros_like(mask))
    compiled = torch.compile(lambda e, t, m: crf(e, t, m, reduction="mean"), fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(emissions, tags, mask), crf(emissions, tags, mask, reduction="mean"))

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.crf = crf

        def forward(self, e, m):
            return self.crf.viterbi_tensors(e, m)

    exported = torch.export.export(Tagger(), (emissions, mask))
    for a, b in zip(exported.module()(emissions, mask), crf.viterbi_tensors(emissions, mask)):
        torch.testing.assert_close(a, b)


def test_constrained_crf_never_decodes_or_scores_an_invalid_path():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    crf = ebm_ext.CRF(5, batch_first=True, constraints=ebm_ext.allowed_transitions("BIO", labels))
    g = torch.Generator().manual_seed(8)
    emissions = 4 * torch.randn(32, 6, 5, generator=g)
    emissions[:, :, 2] += 5  # the network prefers I-PER everywhere, which is invalid at t = 0
    for path in crf.decode(emissions):
        assert path[0] != 2 and path[0] != 4
        assert all(b not in (2, 4) or (a in (b - 1, b)) for a, b in zip(path, path[1:]))
    bad = torch.tensor([[2, 2, 2, 2, 2, 2]])
    assert crf(emissions[:1], bad, reduction="none").item() == -math.inf
    good = torch.tensor([[1, 2, 0, 3, 4, 4]])
    llh = crf(emissions[:1], good)
    assert math.isfinite(llh.item())
    llh.backward()
    assert torch.isfinite(crf.transitions.grad).all() and crf.transitions.grad[0, 2] == 0
    state = crf.state_dict()
    assert "constraint_transitions" in state and torch.isinf(state["constraint_transitions"]).any()


def test_partial_labels_and_restricted_decoding_by_enumeration():
    crf = ebm_ext.CRF(3, batch_first=True).double()
    emissions, tags, mask = _batch(4, 3, 3, True, seed=9)
    g = torch.Generator().manual_seed(10)
    allowed = torch.rand(3, 4, 3, generator=g) < 0.6
    allowed[:, 0, 0] = True  # at least one tag at t = 0
    llh = crf(emissions, allowed, mask, reduction="none")
    decoded = crf.decode(emissions, mask, allowed=allowed)
    lengths = mask.sum(1)
    for b in range(3):
        L = int(lengths[b])
        paths = _brute(crf, emissions[b], L)
        z = math.log(sum(math.exp(s) for s, _ in paths))
        ok = [(s, p) for s, p in paths if all(bool(allowed[b, t, y]) for t, y in enumerate(p))]
        want = math.log(sum(math.exp(s) for s, _ in ok)) - z if ok else -math.inf
        assert llh[b].item() == pytest.approx(want, rel=1e-9, abs=1e-9)
        if ok:
            assert decoded[b] == ok[0][1]
    one_hot = torch.nn.functional.one_hot(tags, 3).bool()
    torch.testing.assert_close(crf(emissions, one_hot, mask, reduction="none"),
                               crf(emissions, tags, mask, reduction="none"))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_emissions_accumulate_in_float32(half, device):
    crf = ebm_ext.CRF(5, batch_first=True).to(device)
    emissions, tags, mask = _batch(6, 4, 5, True, seed=13)
    emissions = emissions.to(half).to(device)
    tags, mask = tags.to(device), mask.to(device)
    llh = crf(emissions, tags, mask, reduction="none")
    assert llh.dtype == torch.float32
    torch.testing.assert_close(llh, crf(emissions.float(), tags, mask, reduction="none"))
    assert crf.decode(emissions, mask) == crf.decode(emissions.float(), mask)


def test_extra_arguments_are_checked():
    with pytest.raises(ValueError, match=r"constraints must be \(trans \(3, 3\), start \(3,\), end \(3,\)\) energies, got shapes \(2, 2\)"):
        ebm_ext.CRF(3, constraints=(torch.zeros(2, 2), torch.zeros(3), torch.zeros(3)))
    crf = ebm_ext.CRF(3)
    emissions = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"allowed tags \(bool\) must have the shape of emissions, got \(4, 2, 3\) and \(4, 2, 2\)"):
        crf.decode(emissions, allowed=torch.ones(4, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="nbest must be >= 1, got 0"):
        crf.decode_nbest(emissions, 0)
    with pytest.raises(ValueError, match="nbest must be >= 1, got 0"):
        crf.viterbi_tensors(emissions, nbest=0)


@pytest.mark.parametrize("emission_dtype,param_dtype", [(torch.float64, torch.float32),
                                                        (torch.float32, torch.float64)])
def test_dtypes_promote_as_in_pytorch_crf(emission_dtype, param_dtype):
    """pytorch-crf computes in the promoted dtype of the emissions and its parameters; so does
    the drop-in (before, float64 emissions into a float32 layer raised "chain_energy: trans must
    have the same dtype as unary", naming arguments the user never passed)."""
    theirs, ours = _pair(5, True, seed=21)
    theirs.to(param_dtype), ours.to(param_dtype)
    emissions, tags, mask = _batch(7, 6, 5, True, seed=22)
    emissions = emissions.to(emission_dtype)
    want = theirs(emissions, tags, mask.bool(), "none")
    got = ours(emissions, tags, mask, "none")
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want)
    assert ours.decode(emissions, mask) == theirs.decode(emissions, mask.bool())
    assert ours.marginals(emissions, mask).dtype == torch.float64
    torch.testing.assert_close(ours(emissions, tags.int(), mask, "none"), want)  # int32 tags too


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.float32, torch.float64])
def test_masks_of_other_dtypes_are_refused_as_pytorch_crf_refuses_them(dtype):
    """pytorch-crf takes bool and uint8 masks and fails on the others (in torch.where); the
    drop-in refuses them up front, in the layer's own terms, rather than reading them silently."""
    crf = ebm_ext.CRF(3)
    emissions, tags = torch.randn(4, 2, 3), torch.zeros(4, 2, dtype=torch.long)
    mask = torch.ones(4, 2, dtype=dtype)
    message = rf"mask must be a bool \(or uint8\) tensor, got {dtype}"
    for call in (lambda: crf(emissions, tags, mask), lambda: crf.decode(emissions, mask),
                 lambda: crf.marginals(emissions, mask)):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=r"emissions must be a floating-point tensor, got torch.int64"):
        crf(emissions.long(), tags)
    with pytest.raises(ValueError, match=r"tags must be an integer tensor of tag indices \(or a bool tensor of allowed tags\), got torch.float32"):
        crf(emissions, tags.float())
