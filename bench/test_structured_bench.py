"""The structured layers beside the ones users write today: ebm_ext.CRF against pytorch-crf's
torchcrf.CRF (the same parameters, ragged right-padded masks) and ebm_ext.LinearChainCRF
against torch-struct's LinearChainCRF (the same potentials), after checking that they agree.
Peak memory of the entropy's backward: bench/memory.py entropy."""
import warnings

import pytest
import torch

import ebm_ext
from anchors import torch_struct_crf
from conftest import _id, _inputs, _run

CRF_SHAPES = [(64, 50, 25), (256, 50, 25)]
DIST_SHAPE = (256, 50, 25)


def _layers(K):
    torchcrf = pytest.importorskip("torchcrf")
    torch.manual_seed(0)
    theirs = torchcrf.CRF(K, batch_first=True)
    ours = ebm_ext.CRF(K, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _ragged(shape):
    B, T, K = shape
    g = torch.Generator().manual_seed(2)
    emissions = torch.randn(B, T, K, generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    tags = torch.randint(0, K, (B, T), generator=g)
    return emissions, tags, mask


@pytest.mark.parametrize("impl", ["ebm_ext", "pytorch-crf"])
@pytest.mark.parametrize("shape", CRF_SHAPES, ids=_id)
def test_crf_layer_forward_backward(benchmark, shape, impl):
    benchmark.group = f"CRF layer fwd+bwd {_id(shape)}"
    ours, theirs = _layers(shape[2])
    emissions, tags, mask = _ragged(shape)
    emissions.requires_grad_()
    layer = ours if impl == "ebm_ext" else theirs
    params = [emissions, *layer.parameters()]
    torch.testing.assert_close(ours(emissions, tags, mask), theirs(emissions, tags, mask),
                               atol=1e-2, rtol=1e-5)

    def step():
        return torch.autograd.grad(-layer(emissions, tags, mask), params)
    _run(benchmark, step, None if impl == "ebm_ext" else "pytorch-crf")


@pytest.mark.parametrize("impl", ["ebm_ext", "pytorch-crf"])
@pytest.mark.parametrize("shape", CRF_SHAPES, ids=_id)
def test_crf_layer_decode(benchmark, shape, impl):
    benchmark.group = f"CRF layer decode {_id(shape)}"
    ours, theirs = _layers(shape[2])
    emissions, _, mask = _ragged(shape)
    assert ours.decode(emissions, mask) == theirs.decode(emissions, mask)
    layer = ours if impl == "ebm_ext" else theirs
    _run(benchmark, lambda: layer.decode(emissions, mask),
         None if impl == "ebm_ext" else "pytorch-crf")


def _distributions(shape):
    unary, trans, start, end = _inputs(shape)
    B, T, _ = shape
    lengths = torch.randint(T // 2, T + 1, (B,), generator=torch.Generator().manual_seed(3))
    lengths[0] = T
    ours = ebm_ext.LinearChainCRF(unary, trans, start, end, lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch_struct_crf(unary, trans, start, end, lengths)
    return ours, theirs, (unary, trans, start, end, lengths)


def _skip_torch_struct_at_scale(impl, shape, semiring):
    if impl == "torch-struct" and shape[0] > 16:
        pytest.skip(f"torch-struct's {semiring} semiring was killed for memory at B=256 (over 24 "
                    "GiB here); it is timed at B=16")


def _theirs(make):
    pytest.importorskip("torch_struct")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


@pytest.mark.parametrize("impl", ["ebm_ext", "torch-struct"])
def test_distribution_entropy(benchmark, impl):
    benchmark.group = f"LinearChainCRF entropy {_id(DIST_SHAPE)}"
    ours, theirs, _ = _distributions(DIST_SHAPE)
    want = ours.entropy()
    if impl == "ebm_ext":
        f = ours.entropy
    else:
        f = lambda: _theirs(lambda: torch_struct_crf(*theirs_args(ours)).entropy)  # noqa: E731
    torch.testing.assert_close(f(), want, atol=1e-3, rtol=1e-4)
    _run(benchmark, f, None if impl == "ebm_ext" else "torch-struct")


@pytest.mark.parametrize("impl", ["ebm_ext", "torch-struct"])
def test_distribution_entropy_forward_backward(benchmark, impl):
    benchmark.group = f"LinearChainCRF entropy fwd+bwd {_id(DIST_SHAPE)}"
    _, _, (unary, trans, start, end, lengths) = _distributions(DIST_SHAPE)
    params = [x.requires_grad_() for x in (unary, trans, start, end)]
    if impl == "ebm_ext":
        f = lambda: ebm_ext.chain_entropy(unary, trans, lengths, start, end)  # noqa: E731
    else:
        f = lambda: _theirs(lambda: torch_struct_crf(unary, trans, start, end, lengths).entropy)  # noqa: E731
    want = [g.detach() for g in torch.autograd.grad(
        ebm_ext.chain_entropy(unary, trans, lengths, start, end).sum(), params)]
    got = torch.autograd.grad(f().sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-3)
    _run(benchmark, lambda: torch.autograd.grad(f().sum(), params),
         None if impl == "ebm_ext" else "torch-struct")


def theirs_args(ours):
    return ours.unary, ours.trans, ours.start, ours.end, ours.lengths


@pytest.mark.parametrize("impl", ["ebm_ext", "torch-struct"])
def test_distribution_marginals(benchmark, impl):
    benchmark.group = f"LinearChainCRF marginals {_id(DIST_SHAPE)}"
    ours, _, _ = _distributions(DIST_SHAPE)
    mask = torch.arange(DIST_SHAPE[1])[None, :, None] < ours.lengths[:, None, None]
    if impl == "ebm_ext":
        f = lambda: ebm_ext.LinearChainCRF(*theirs_args(ours)).marginals  # noqa: E731
    else:
        def f():
            edge = _theirs(lambda: torch_struct_crf(*theirs_args(ours)).marginals)
            return torch.cat([edge.sum(2)[:, :1], edge.sum(3)], 1) * mask
    torch.testing.assert_close(f(), ours.marginals, atol=1e-4, rtol=1e-4)
    _run(benchmark, f, None if impl == "ebm_ext" else "torch-struct")


@pytest.mark.parametrize("impl", ["ebm_ext", "torch-struct"])
@pytest.mark.parametrize("shape", [(16, 50, 25), DIST_SHAPE], ids=_id)
def test_distribution_sample_100(benchmark, shape, impl):
    benchmark.group = f"LinearChainCRF sample(100) {_id(shape)}"
    _skip_torch_struct_at_scale(impl, shape, "sampling")
    ours, _, _ = _distributions(shape)
    if impl == "ebm_ext":
        f = lambda: ours.sample((100,))  # noqa: E731
    else:
        f = lambda: _theirs(lambda: torch_struct_crf(*theirs_args(ours)).sample((100,)))  # noqa: E731
    out = f()
    assert out.shape[:2] == (100, shape[0])
    _run(benchmark, f, None if impl == "ebm_ext" else "torch-struct")


@pytest.mark.parametrize("impl", ["ebm_ext", "torch-struct"])
@pytest.mark.parametrize("shape", [(16, 50, 25), DIST_SHAPE], ids=_id)
def test_distribution_topk_5(benchmark, shape, impl):
    benchmark.group = f"LinearChainCRF topk(5) {_id(shape)}"
    _skip_torch_struct_at_scale(impl, shape, "k-max")
    ours, _, _ = _distributions(shape)
    want = ours.kmax(5)
    if impl == "ebm_ext":
        f = lambda: ours.topk(5)  # noqa: E731
        check = ours.kmax
    else:
        dist = _theirs(lambda: torch_struct_crf(*theirs_args(ours)))
        f = lambda: _theirs(lambda: dist.topk(5))  # noqa: E731
        check = dist.kmax
    torch.testing.assert_close(check(5).detach(), want, atol=1e-3, rtol=1e-4)
    _run(benchmark, f, None if impl == "ebm_ext" else "torch-struct")
