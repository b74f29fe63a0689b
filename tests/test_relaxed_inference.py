"""chain_relaxed_inference against the same loop written with autograd (ebm_ext._reference),
its invariants, and rounding against viterbi."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_ext
from ebm_ext import _reference as ref
from chain_cases import make_chain
from conftest import requires_cuda, tolerance
from cuda_backends import skip_compile_if_emulated


@pytest.mark.parametrize("method", ["entropic", "projected"])
@pytest.mark.parametrize("shape", [(6, 9, 5), (3, 1, 4), (4, 0, 3), (2, 7, 1), (3, 12, 40)])
def test_matches_the_autograd_loop(shape, method, device, dtype):
    unary, trans, L, start, end = make_chain(*shape, device=device, dtype=dtype, seed=1)
    probs, energy = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=25, lr=0.3, method=method)
    want_p, want_e = ref.chain_relaxed_inference(unary, trans, L, start, end, steps=25, lr=0.3, method=method)
    torch.testing.assert_close(probs, want_p, **tolerance(dtype))
    torch.testing.assert_close(energy, want_e, **tolerance(dtype))


@settings(deadline=None, max_examples=40)
@given(B=st.integers(0, 4), T=st.integers(0, 8), K=st.integers(1, 20), steps=st.integers(0, 15),
       lr=st.floats(0.01, 2.0), method=st.sampled_from(["entropic", "projected"]), seed=st.integers(0, 2**16),
       with_init=st.booleans(), start_end=st.booleans())
def test_any_shape_matches_the_loop(B, T, K, steps, lr, method, seed, with_init, start_end):
    unary, trans, L, start, end = make_chain(B, T, K, seed=seed, start_end=start_end)
    init = None
    if with_init:
        g = torch.Generator().manual_seed(seed)
        init = torch.softmax(torch.randn(B, T, K, generator=g, dtype=torch.float64), -1)
    probs, energy = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps, lr, method, init)
    want_p, want_e = ref.chain_relaxed_inference(unary, trans, L, start, end, steps, lr, method, init)
    torch.testing.assert_close(probs, want_p)
    torch.testing.assert_close(energy, want_e)


def test_outputs_are_distributions_and_their_energy(device):
    unary, trans, L, start, end = make_chain(8, 10, 6, device=device, seed=2)
    for method in ("entropic", "projected"):
        probs, energy = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=10, method=method)
        mask = torch.arange(10, device=device)[None, :] < L[:, None]
        assert (probs >= 0).all() and (probs[~mask] == 0).all()
        torch.testing.assert_close(probs.sum(-1)[mask], torch.ones_like(probs.sum(-1)[mask]))
        torch.testing.assert_close(energy, ebm_ext.chain_energy(unary, trans, probs, L, start, end))


def test_zero_steps_return_the_start():
    unary, trans, L, start, end = make_chain(3, 5, 4, seed=3, lengths=False)
    probs, _ = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=0)
    assert torch.equal(probs, torch.full_like(unary, 0.25))
    init = torch.softmax(unary, -1)
    probs, _ = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=0, init=init)
    torch.testing.assert_close(probs, init)


def test_small_steps_lower_the_energy():
    unary, trans, L, start, end = make_chain(16, 12, 8, seed=4)
    uniform = torch.full_like(unary, 1 / 8)
    before = ebm_ext.chain_energy(unary, trans, uniform, L, start, end)
    for method in ("entropic", "projected"):
        _, after = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=50, lr=0.05, method=method)
        assert (after <= before + 1e-9).all()
        assert (after < before - 1e-3).float().mean() > 0.8


def test_relaxation_is_bounded_by_viterbi_and_rounding_often_finds_it():
    # E is multilinear in (p_0, ..., p_{L-1}), so its minimum over the simplices is at a vertex:
    # the viterbi path. Gradient descent finds a local minimum (Jacobi steps, non-convex), whose
    # energy is at least viterbi's; on these random chains rounding recovers the exact path on
    # 55-70 % of them (measured; the README reports tagger energies).
    unary, trans, L, start, end = make_chain(200, 15, 10, seed=5, lengths=False)
    unary = unary * 4
    best, tags = ebm_ext.viterbi(unary, trans, None, start, end)
    for method in ("entropic", "projected"):
        probs, energy = ebm_ext.chain_relaxed_inference(unary, trans, None, start, end, steps=200,
                                                        lr=0.05, method=method)
        rounded = probs.argmax(-1)
        assert (energy >= best - 1e-9).all()
        assert (ebm_ext.chain_energy(unary, trans, rounded, None, start, end) >= best - 1e-9).all()
        assert (rounded == tags).all(-1).float().mean() > 0.4


def test_init_zeros_stay_zero_under_the_entropic_update():
    unary, trans, L, start, end = make_chain(2, 4, 3, seed=6, lengths=False)
    init = torch.full_like(unary, 0.5)
    init[..., 2] = 0
    probs, _ = ebm_ext.chain_relaxed_inference(unary, trans, None, start, end, steps=20, init=init)
    assert (probs[..., 2] == 0).all()


@pytest.mark.parametrize("method", ["entropic", "projected"])
def test_opcheck(device, dtype, method, opcheck_util):
    unary, trans, L, start, end = make_chain(3, 5, 4, device=device, dtype=dtype, seed=7)
    init = torch.softmax(unary, -1) if method == "projected" else None
    torch.library.opcheck(torch.ops.ebm_ext.chain_relaxed_inference,
                          (unary, trans, L, start, end, 5, 0.5, method, init),
                          test_utils=opcheck_util)


def test_compile_fullgraph(device):
    unary, trans, L, start, end = make_chain(3, 5, 4, device=device, dtype=torch.float32, seed=8)
    skip_compile_if_emulated()
    f = torch.compile(lambda u, t: ebm_ext.chain_relaxed_inference(u, t, L, start, end, steps=5)[1].sum(),
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(unary, trans), ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=5)[1].sum())


@pytest.mark.parametrize("method", ["entropic", "projected"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_equals_cuda(method, dtype, gpu):
    unary, trans, L, start, end = make_chain(64, 30, 45, dtype=dtype, seed=9)
    on_cpu = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=20, lr=0.3, method=method)
    with gpu():
        on_gpu = ebm_ext.chain_relaxed_inference(*(gpu.to(x) for x in (unary, trans, L, start, end)),
                                                 steps=20, lr=0.3, method=method)
    for a, b in zip(on_cpu, on_gpu):
        torch.testing.assert_close(a, b.cpu(), **tolerance(dtype))


def test_cuda_half_precision(gpu):
    # The same half-rounded energies in float64 on the CPU: what is left is the accumulation's
    # precision and the half-rounded output.
    unary, trans, L, start, end = (x if x is None or not x.is_floating_point() else x.half().double()
                                   for x in make_chain(8, 10, 6, seed=10))
    want = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=10)[0]
    with gpu():
        got = ebm_ext.chain_relaxed_inference(*(gpu.to(x) for x in (unary.half(), trans.half(), L, start.half(),
                                                                    end.half())), steps=10)[0]
    torch.testing.assert_close(got.double().cpu(), want, atol=1e-2, rtol=0)


_u, _t = torch.zeros(2, 3, 4), torch.zeros(4, 4)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": -1}, "steps must be >= 0, got -1"),
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0"),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
    ({"method": "mirror"}, "method must be 'entropic' or 'projected', got 'mirror'"),
    ({"init": torch.zeros(2, 3, 5)}, r"init must have the shape of unary \(\[2, 3, 4\]\), got \[2, 3, 5\]"),
    ({"init": torch.zeros(2, 3, 4, dtype=torch.float64)}, r"init must have the same dtype as unary \(Float\), got Double"),
    ({"lengths": torch.tensor([1, 4])}, "lengths must be <= T=3, got 4"),
])
def test_errors(kwargs, message):
    with pytest.raises(RuntimeError, match="chain_relaxed_inference: " + message):
        ebm_ext.chain_relaxed_inference(_u, _t, **kwargs)


@pytest.mark.parametrize("method", ["entropic", "projected"])
def test_forbidden_transitions_are_respected(method, device):
    """+inf forbids a transition here as everywhere: a tag of probability 0 adds nothing through
    it (0 * inf = 0), a tag whose gradient is +inf (mass on both sides of a forbidden move) is
    removed for good, and the energy stays finite; before, 0 * inf made every output NaN."""
    unary, trans, L, start, end = make_chain(3, 6, 4, seed=8, device=device)
    trans[0, 1] = trans[2, 2] = math.inf
    probs, energy = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=30, lr=0.5,
                                                    method=method)
    assert torch.isfinite(probs).all() and torch.isfinite(energy).all()
    torch.testing.assert_close(probs.sum(-1), (torch.arange(6, device=probs.device) < L[:, None]).to(probs.dtype))
    for i, j in ((0, 1), (2, 2)):  # no mass on both ends of a forbidden move
        assert (probs[:, :-1, i] * probs[:, 1:, j]).max() == 0
    torch.testing.assert_close(energy, ebm_ext.chain_energy(unary, trans, probs, L, start, end))


def test_everything_forbidden_keeps_the_start_and_says_inf():
    """No finite step exists when every tag of a position has a +inf gradient: the positions
    keep their distributions (uniform here) and the energy is +inf, not NaN."""
    unary = torch.randn(2, 3, 3)
    probs, energy = ebm_ext.chain_relaxed_inference(unary, torch.full((3, 3), math.inf))
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / 3))
    assert (energy == math.inf).all()
