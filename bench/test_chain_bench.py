"""viterbi, viterbi_kbest(k=2) and loss_augmented_viterbi side by side with pytorch-crf,
torch-struct and the plain-PyTorch reference, on the same energies, after a correctness check.

    pytest bench --benchmark-only
"""
import pytest
import torch

import ebm_ext
from ebm_ext import _reference as ref
from anchors import pytorch_crf_layer, torch_struct_crf
from conftest import _id, _inputs, _run

SHAPES = [(256, 50, 25), (1024, 50, 25), (64, 200, 50), (32, 100, 256)]


@pytest.mark.parametrize("impl", ["ebm_ext", "reference", "pytorch-crf", "torch-struct"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_viterbi(benchmark, shape, impl):
    benchmark.group = f"viterbi {_id(shape)}"
    unary, trans, start, end = _inputs(shape)
    energy, tags = ebm_ext.viterbi(unary, trans, None, start, end)
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.viterbi(unary, trans, None, start, end)  # noqa: E731
    elif impl == "reference":
        fn = lambda: ref.viterbi(unary, trans, None, start, end)  # noqa: E731
        assert torch.equal(fn()[1], tags)
    elif impl == "pytorch-crf":
        crf = pytorch_crf_layer(trans, start, end)
        emissions = -unary
        fn = lambda: crf.decode(emissions)  # noqa: E731
        assert torch.equal(torch.tensor(fn()), tags)
    else:
        if shape[2] > 64:
            pytest.skip("torch-struct needs B*T*K*K*4 bytes per semiring pass; too slow here")
        fn = lambda: torch_struct_crf(unary, trans, start, end).max  # noqa: E731
        torch.testing.assert_close(-fn(), energy, atol=1e-3, rtol=1e-4)
    _run(benchmark, fn, impl)


@pytest.mark.parametrize("impl", ["ebm_ext viterbi_kbest(k=2)", "ebm_ext viterbi",
                                  "torch-struct kmax(2)"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=_id)
def test_kbest(benchmark, shape, impl):
    benchmark.group = f"kbest2 {_id(shape)}"
    unary, trans, start, end = _inputs(shape)
    energy, _ = ebm_ext.viterbi_kbest(unary, trans, 2, None, start, end)
    if impl == "ebm_ext viterbi_kbest(k=2)":
        fn = lambda: ebm_ext.viterbi_kbest(unary, trans, 2, None, start, end)  # noqa: E731
    elif impl == "ebm_ext viterbi":
        fn = lambda: ebm_ext.viterbi(unary, trans, None, start, end)  # noqa: E731
    else:
        if shape != SHAPES[0]:
            pytest.skip("torch-struct's k-max semiring takes ~10 s per call at the smallest shape")
        fn = lambda: torch_struct_crf(unary, trans, start, end).kmax(2)  # noqa: E731
        torch.testing.assert_close(-fn().t(), energy, atol=1e-3, rtol=1e-4)
        impl = "torch-struct"
    _run(benchmark, fn, impl)


@pytest.mark.parametrize("impl", ["ebm_ext loss_augmented_viterbi", "ebm_ext viterbi"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_loss_augmented(benchmark, shape, impl):
    benchmark.group = f"loss-augmented {_id(shape)}"
    unary, trans, start, end = _inputs(shape)
    B, T, K = shape
    gold = torch.randint(0, K, (B, T), generator=torch.Generator().manual_seed(1))
    cost = 1 - torch.eye(K)
    if impl == "ebm_ext viterbi":
        fn = lambda: ebm_ext.viterbi(unary, trans, None, start, end)  # noqa: E731
    else:
        fn = lambda: ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, None, start, end)  # noqa: E731
        e, d, y = fn()
        re, rd, ry = ref.loss_augmented_viterbi(unary, trans, gold, cost, None, start, end)
        assert torch.equal(y, ry)
    _run(benchmark, fn, impl)
