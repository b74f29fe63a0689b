"""The CUDA kernels side by side with what GPU users pick today, on one device (run by
scripts/gpu_check.sh on a lent H200; every case skips without a GPU):

- decoding at B=4096 (T=50, K=25): ebm_ext.viterbi, torbi, torch-struct's argmax, pytorch-crf;
- assignment of 10M points (d=32, k=256): nearest_centroid, torch.cdist + argmin in chunks;
- sparse coding of 1M 8x8 patches (m=256 atoms): sparse_code, plain FISTA in PyTorch.

Each case checks its answer against ebm_ext's before it is timed; torch.cuda.synchronize() is
inside every timed call.
"""
import pytest
import torch

import ebm_ext
from anchors import pytorch_crf_layer, torch_struct_crf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _timed(benchmark, fn, rounds=10):
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    call()  # warm-up: kernels loaded, caches allocated
    return benchmark.pedantic(call, rounds=rounds, iterations=1)


def _chain(B=4096, T=50, K=25):
    g = torch.Generator(device="cuda").manual_seed(0)
    return (torch.randn(B, T, K, device="cuda", generator=g), torch.randn(K, K, device="cuda", generator=g),
            torch.randn(K, device="cuda", generator=g), torch.randn(K, device="cuda", generator=g))


@pytest.mark.parametrize("impl", ["ebm_ext", "torbi", "torch-struct", "pytorch-crf"])
def test_decode_4096(benchmark, impl):
    benchmark.group = "cuda decode B=4096 T=50 K=25"
    unary, trans, start, end = _chain()
    energy, tags = ebm_ext.viterbi(unary, trans, None, start, end)
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.viterbi(unary, trans, None, start, end)  # noqa: E731
    elif impl == "torbi":
        torbi = pytest.importorskip("torbi")
        # torbi decodes log-probabilities: per-frame log-softmax of the scores, no end term.
        obs = torch.log_softmax(-unary, -1)
        tr, init = torch.log_softmax(-trans, -1), torch.log_softmax(-start, -1)
        frames = torch.full((unary.shape[0],), unary.shape[1], device="cuda", dtype=torch.int32)
        fn = lambda: torbi.from_probabilities(obs, frames, tr, init, log_probs=True, gpu=0)  # noqa: E731
        want = ebm_ext.viterbi(-obs, -tr, None, -init, None)[1]
        assert torch.equal(fn().long(), want)
    elif impl == "torch-struct":
        pytest.importorskip("torch_struct")
        fn = lambda: torch_struct_crf(unary, trans, start, end).argmax  # noqa: E731
        assert torch.equal(fn().sum(-1).argmax(-1), tags[:, 1:])  # parts [b, n, next, prev]
    else:
        pytest.importorskip("torchcrf")
        crf = pytorch_crf_layer(trans, start, end)
        fn = lambda: crf.decode(-unary)  # noqa: E731
        assert torch.equal(torch.tensor(fn(), device="cuda"), tags)
    _timed(benchmark, fn, rounds=3 if impl == "pytorch-crf" else 10)


@pytest.mark.parametrize("impl", ["ebm_ext", "torch cdist+argmin"])
def test_assign_10M_points(benchmark, impl):
    benchmark.group = "cuda nearest centroid N=10M d=32 k=256"
    g = torch.Generator(device="cuda").manual_seed(1)
    y = torch.randn(10_000_000, 32, device="cuda", generator=g)
    W = torch.randn(256, 32, device="cuda", generator=g)
    index = ebm_ext.nearest_centroid(y, W)[1]
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.nearest_centroid(y, W)  # noqa: E731
    else:
        def fn():
            return torch.cat([torch.cdist(c, W).argmin(1) for c in y.split(1_000_000)])
        assert (fn() == index).float().mean() > 0.999
    _timed(benchmark, fn, rounds=5)


@pytest.mark.parametrize("impl", ["ebm_ext", "plain FISTA"])
def test_sparse_code_1M_patches(benchmark, impl):
    benchmark.group = "cuda sparse code 1M patches n=64 m=256"
    g = torch.Generator(device="cuda").manual_seed(2)
    y = torch.randn(1_000_000, 64, device="cuda", generator=g)
    D = torch.randn(64, 256, device="cuda", generator=g)
    D = D / D.norm(dim=0, keepdim=True)
    lam = 0.5
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.sparse_code(y, D, lam, max_iter=200, tol=1e-4)  # noqa: E731
    else:
        L = 2 * torch.linalg.matrix_norm(D, ord=2) ** 2
        G, step = D.t() @ D, 1 / L

        def fn(iterations=200):
            b = y @ D
            z = x = torch.zeros(y.shape[0], D.shape[1], device="cuda")
            t = 1.0
            for _ in range(iterations):
                v = x - 2 * step * (x @ G - b)
                z_next = torch.sign(v) * (v.abs() - lam * step).clamp_min(0)
                t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
                x, z, t = z_next + (t - 1) / t_next * (z_next - z), z_next, t_next
            return z
    _timed(benchmark, fn, rounds=3)
