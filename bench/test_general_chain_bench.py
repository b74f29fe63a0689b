"""General chains (a transition matrix per move and sequence, torch-struct's edge potentials)
side by side with torch-struct's LinearChainCRF on the same potentials and a plain-PyTorch
log-space scan, after checking that they agree; and the one-(K, K)-matrix kernels at the same
shape in the same run, for the cost of generality."""
import warnings

import pytest
import torch

import ebm_ext
from conftest import _id, _run

SHAPE = (256, 50, 25)


def _potentials(shape):
    B, T, K = shape
    g = torch.Generator().manual_seed(5)
    phi = torch.randn(B, T - 1, K, K, generator=g)  # phi[b, n, to, from]
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    return phi, lengths


def _reference_partition(phi, lengths):
    """The forward algorithm in log space over edge potentials, as users write it in PyTorch."""
    B, E, K, _ = phi.shape
    alpha = phi.new_zeros(B, K)
    out = alpha.logsumexp(-1)
    for n in range(E):
        alpha = torch.logsumexp(alpha[:, None, :] + phi[:, n], -1)  # [b, to]
        out = torch.where(lengths == n + 2, alpha.logsumexp(-1), out)
    return out


def _struct(phi, lengths):
    torch_struct = pytest.importorskip("torch_struct")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch_struct.LinearChainCRF(phi, lengths=lengths)


@pytest.mark.parametrize("impl", ["ebm_ext", "reference", "torch-struct"])
def test_general_partition_forward_backward(benchmark, impl):
    """log Z and its gradient, the edge marginals."""
    benchmark.group = f"general log Z fwd+bwd {_id(SHAPE)}"
    phi, lengths = _potentials(SHAPE)
    phi.requires_grad_()
    make = {"ebm_ext": lambda: ebm_ext.struct.LinearChainCRF(phi, lengths).partition,
            "reference": lambda: _reference_partition(phi, lengths),
            "torch-struct": lambda: _struct(phi, lengths).partition}[impl]
    torch.testing.assert_close(make().detach(), _reference_partition(phi, lengths).detach(),
                               atol=1e-3, rtol=1e-4)
    _run(benchmark, lambda: torch.autograd.grad(make().sum(), phi), impl)


@pytest.mark.parametrize("impl", ["ebm_ext", "torch-struct"])
def test_general_argmax(benchmark, impl):
    benchmark.group = f"general argmax {_id(SHAPE)}"
    phi, lengths = _potentials(SHAPE)
    make = {"ebm_ext": lambda: ebm_ext.struct.LinearChainCRF(phi, lengths).argmax,
            "torch-struct": lambda: _struct(phi, lengths).argmax}[impl]
    assert torch.equal(make(), _struct(phi, lengths).argmax.detach())
    _run(benchmark, make, impl)


@pytest.mark.parametrize("impl", ["ebm_ext", "torch-struct"])
def test_general_entropy(benchmark, impl):
    benchmark.group = f"general entropy {_id(SHAPE)}"
    phi, lengths = _potentials(SHAPE)
    make = {"ebm_ext": lambda: ebm_ext.struct.LinearChainCRF(phi, lengths).entropy,
            "torch-struct": lambda: _struct(phi, lengths).entropy}[impl]
    torch.testing.assert_close(make(), _struct(phi, lengths).entropy, atol=1e-3, rtol=1e-4)
    _run(benchmark, make, impl)


@pytest.mark.parametrize("form", ["one matrix", "per move"])
@pytest.mark.parametrize("op", ["viterbi", "chain_log_partition", "chain_marginals"])
def test_shared_and_general_kernels(benchmark, op, form):
    """The same chain given as one (K, K) matrix (the shared kernels) or repeated per move (the
    general kernels): what generality costs."""
    benchmark.group = f"{op} one matrix vs per move {_id(SHAPE)}"
    B, T, K = SHAPE
    g = torch.Generator().manual_seed(0)
    unary, trans = torch.randn(B, T, K, generator=g), torch.randn(K, K, generator=g)
    if form == "per move":
        trans = trans.expand(B, T - 1, K, K).contiguous()
    f = getattr(ebm_ext, op)
    _run(benchmark, lambda: f(unary, trans), None)
