"""chain_energy on relaxed tags (per-position distributions) and project_simplex."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ebm_ext
from ebm_ext import _reference as ref
from chain_cases import make_chain
from conftest import requires_cuda, tolerance
from cuda_backends import skip_compile_if_emulated


def _probs(B, T, K, seed=0, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, T, K, generator=g, dtype=torch.float64), -1).to(device, dtype)


@pytest.mark.parametrize("shape", [(4, 6, 5), (3, 1, 4), (2, 0, 3), (5, 9, 1)])
def test_relaxed_energy_matches_formula(shape, device, dtype):
    unary, trans, L, start, end = make_chain(*shape, device=device, dtype=dtype, seed=1)
    probs = _probs(*shape, device=device, dtype=dtype)
    got = ebm_ext.chain_energy(unary, trans, probs, L, start, end)
    torch.testing.assert_close(got, ref.relaxed_chain_energy(unary, trans, probs, L, start, end),
                               **tolerance(dtype))


def test_one_hot_relaxation_equals_integer_energy(device):
    unary, trans, L, start, end = make_chain(6, 7, 4, device=device, seed=2)
    tags = torch.randint(0, 4, (6, 7), device=device)
    one_hot = torch.nn.functional.one_hot(tags, 4).double()
    torch.testing.assert_close(ebm_ext.chain_energy(unary, trans, one_hot, L, start, end),
                               ebm_ext.chain_energy(unary, trans, tags, L, start, end))


def test_relaxed_gradcheck(device):
    unary, trans, L, start, end = make_chain(3, 5, 3, device=device, seed=3)
    probs = _probs(3, 5, 3, device=device)
    args = [x.requires_grad_() for x in (unary, trans, probs, start, end)]
    torch.autograd.gradcheck(lambda u, t, p, s, e: ebm_ext.chain_energy(u, t, p, L, s, e), args)


def test_relaxed_opcheck(device, opcheck_util):
    unary, trans, L, start, end = make_chain(3, 5, 3, device=device, seed=3)
    probs = _probs(3, 5, 3, device=device)
    for x in (unary, trans, probs, start, end):
        x.requires_grad_()
    torch.library.opcheck(torch.ops.ebm_ext.chain_energy.default,
                          (unary, trans, probs, L, start, end), test_utils=opcheck_util)


def test_relaxed_gradient_wrt_tags_matches_autograd_of_reference(device):
    unary, trans, L, start, end = make_chain(4, 6, 5, device=device, seed=4)
    probs = _probs(4, 6, 5, device=device).requires_grad_()
    (g1,) = torch.autograd.grad(ebm_ext.chain_energy(unary, trans, probs, L, start, end).sum(), probs)
    (g2,) = torch.autograd.grad(ref.relaxed_chain_energy(unary, trans, probs, L, start, end).sum(), probs)
    torch.testing.assert_close(g1, g2)


# ---- project_simplex ------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(hnp.arrays(float, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7),
                  elements=st.floats(-1e3, 1e3)))
def test_project_simplex_is_the_projection(v):
    v = torch.from_numpy(v)
    p = ebm_ext.project_simplex(v)
    assert torch.all(p >= 0)
    torch.testing.assert_close(p.sum(-1), torch.ones(v.shape[:-1], dtype=v.dtype))
    torch.testing.assert_close(p, ref.project_simplex(v))
    # Optimality (KKT): v - p = theta on the support and <= theta off it.
    diff = v - p
    theta = torch.where(p > 0, diff, torch.full_like(diff, -float("inf"))).amax(-1, keepdim=True)
    assert torch.all(diff <= theta + 1e-9)
    assert torch.all(torch.where(p > 0, (diff - theta).abs(), torch.zeros_like(diff)) < 1e-9)


def test_project_simplex_fixed_points_and_edges(device):
    p = _probs(3, 4, 6, device=device)
    torch.testing.assert_close(ebm_ext.project_simplex(p), p)
    assert ebm_ext.project_simplex(torch.tensor([[5.0]], device=device)).item() == 1.0
    v = torch.tensor([[-float("inf"), 0.3, 0.1], [0.0, float("nan"), 1.0], [0.0, float("inf"), 1.0]],
                     device=device)
    out = ebm_ext.project_simplex(v)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.6, 0.4], device=device))
    assert torch.all(torch.isnan(out[1])) and torch.all(torch.isnan(out[2]))
    assert ebm_ext.project_simplex(torch.empty(0, 4, device=device)).shape == (0, 4)


def test_project_simplex_opcheck(device, opcheck_util):
    v = (torch.randn(4, 5, dtype=torch.float64, device=device) * 2).requires_grad_()
    torch.library.opcheck(torch.ops.ebm_ext.project_simplex.default, (v,), test_utils=opcheck_util)


def test_project_simplex_gradcheck_compile(device):
    v = (torch.randn(4, 5, dtype=torch.float64, device=device) * 2).requires_grad_()
    torch.autograd.gradcheck(ebm_ext.project_simplex, (v,))
    skip_compile_if_emulated()
    f = torch.compile(lambda x: ebm_ext.project_simplex(x).square().sum(), fullgraph=True,
                      backend="aot_eager")
    f(v).backward()


@pytest.mark.parametrize("call,message", [
    (lambda: ebm_ext.project_simplex(torch.tensor(1.0)),
     r"project_simplex: v must have at least one dimension, got a 0-D tensor"),
    (lambda: ebm_ext.project_simplex(torch.ones(3, dtype=torch.long)),
     r"project_simplex: v must be a floating-point tensor, got Long"),
    (lambda: ebm_ext.project_simplex(torch.ones(3, 0)),
     r"project_simplex: the last dimension of v must be >= 1"),
])
def test_project_simplex_bad_inputs(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_cuda_matches_cpu(gpu):
    v = torch.randn(50, 33, dtype=torch.float64) * 3
    unary, trans, L, start, end = make_chain(8, 9, 5, seed=9)
    probs = _probs(8, 9, 5)
    cu = [gpu.to(x) for x in (unary, trans, probs, L, start, end)]
    with gpu():
        simplex, energy = ebm_ext.project_simplex(gpu.to(v)), ebm_ext.chain_energy(*cu)
    torch.testing.assert_close(simplex.cpu(), ebm_ext.project_simplex(v))
    torch.testing.assert_close(energy.cpu(), ebm_ext.chain_energy(unary, trans, probs, L, start, end))


def test_project_simplex_rows_of_minus_inf_and_any_strides(device):
    inf = float("inf")
    v = torch.tensor([[-inf, -inf, -inf], [0.3, -inf, 5.0]], dtype=torch.float64, device=device)
    torch.testing.assert_close(ebm_ext.project_simplex(v),
                               torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64, device=device))
    w = torch.randn(6, 4, dtype=torch.float64, device=device).t()  # non-contiguous rows
    out = ebm_ext.project_simplex(w)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ebm_ext.project_simplex(w.contiguous()))
