"""chain_log_partition forward+backward and chain_marginals side by side with torch-struct
(LinearChainCRF partition / marginals), pytorch-crf (negative log-likelihood) and the
plain-PyTorch forward algorithm, on the same energies. Peak memory: bench/memory.py."""
import pytest
import torch

import ebm_ext
from ebm_ext import _reference as ref
from ebm_ext import losses
from anchors import pytorch_crf_layer, torch_struct_crf
from conftest import _id, _inputs, _run

SHAPES = [(256, 50, 25), (1024, 50, 25)]


def _gold(shape):
    B, T, K = shape
    return torch.randint(0, K, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("impl", ["ebm_ext", "reference", "torch-struct"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_log_partition_forward_backward(benchmark, shape, impl):
    benchmark.group = f"log Z fwd+bwd {_id(shape)}"
    unary, trans, start, end = _inputs(shape)
    params = [x.requires_grad_() for x in (unary, trans, start, end)]
    want = ebm_ext.chain_log_partition(unary, trans, None, start, end).detach()
    if impl == "ebm_ext":
        f = lambda: ebm_ext.chain_log_partition(unary, trans, None, start, end)  # noqa: E731
    elif impl == "reference":
        f = lambda: ref.chain_log_partition(unary, trans, None, start, end)  # noqa: E731
    else:
        f = lambda: torch_struct_crf(unary, trans, start, end).partition  # noqa: E731
    torch.testing.assert_close(f().detach(), want, atol=1e-3, rtol=1e-4)

    def step():
        return torch.autograd.grad(f().sum(), params)
    _run(benchmark, step, impl)


@pytest.mark.parametrize("impl", ["ebm_ext", "pytorch-crf"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_crf_nll_forward_backward(benchmark, shape, impl):
    benchmark.group = f"CRF NLL fwd+bwd {_id(shape)}"
    unary, trans, start, end = _inputs(shape)
    gold = _gold(shape)
    want = losses.crf_nll(unary, trans, gold, None, start, end, reduction="sum")
    if impl == "pytorch-crf":
        crf = pytorch_crf_layer(trans, start, end)
        emissions = (-unary).requires_grad_()
        params = [emissions] + list(crf.parameters())
        f = lambda: -crf(emissions, gold, reduction="sum")  # noqa: E731
    else:
        params = [x.requires_grad_() for x in (unary, trans, start, end)]
        f = lambda: losses.crf_nll(unary, trans, gold, None, start, end, reduction="sum")  # noqa: E731
    torch.testing.assert_close(f().detach(), want, atol=1e-1, rtol=1e-5)

    def step():
        return torch.autograd.grad(f(), params)
    _run(benchmark, step, "pytorch-crf" if impl == "pytorch-crf" else None)


@pytest.mark.parametrize("impl", ["ebm_ext", "reference", "torch-struct"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_marginals(benchmark, shape, impl):
    benchmark.group = f"marginals {_id(shape)}"
    unary, trans, start, end = _inputs(shape)
    want = ebm_ext.chain_marginals(unary, trans, None, start, end)
    if impl == "ebm_ext":
        f = lambda: ebm_ext.chain_marginals(unary, trans, None, start, end)  # noqa: E731
    elif impl == "reference":
        f = lambda: ref.chain_marginals(unary, trans, None, start, end)  # noqa: E731
    else:
        def f():
            edge = torch_struct_crf(unary, trans, start, end).marginals
            return torch.cat([edge.sum(2)[:, :1], edge.sum(3)], dim=1)
    torch.testing.assert_close(f(), want, atol=1e-4, rtol=1e-4)
    _run(benchmark, f, impl)
