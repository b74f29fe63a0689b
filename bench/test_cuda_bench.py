"""The CUDA kernels side by side with what GPU users pick today, on one device (run by
scripts/gpu_check.sh on a lent H100/H200; every case skips without a GPU):

- decoding at B=4096 (T=50, K=25, float32): ebm_ext.viterbi, torbi, torch-struct's argmax,
  pytorch-crf; and ours on the CPU against ours on the GPU;
- assignment of 10M points (d=32, k=256): nearest_centroid, and the plain-PyTorch way a user
  writes it, ||y||^2 - 2 y W^T (TF32) + argmin in chunks;
- sparse coding of 256K 8x8 patches (m=256 atoms): sparse_code, and plain FISTA in PyTorch;
- every CUDA op's roofline case (bench/roofline.py): the GPU time beside the time its design
  predicted before any GPU ran it, and their ratio.

Every case first checks its answer against ours (bench/device_floor.py: at least 99.9 % of
tags equal, and the energies of differing paths equal to our minimum within 1e-4 relative), then
records the wall time (pytest-benchmark, synchronised), the GPU time (CUDA events around a CUDA
graph's replays where the call can be captured), the case's memory and compute floors from the
device's rates measured in the same run, and GPU time / floor, into bench.json's extra_info.
"""
import pytest
import torch

import ebm_ext
from anchors import pytorch_crf_layer, torch_struct_crf
from device_floor import assert_same_decoding, device_rates, floors, record
from roofline import CASES, H100, H200

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

B, T, K = 4096, 50, 25


@pytest.fixture(scope="module")
def rates():
    r = device_rates()
    print(f"\n{r['device']}: copy {r['copy_bytes_per_s'] / 1e12:.2f} TB/s, FP32 "
          f"{r['fp32_flop_per_s'] / 1e12:.1f} TFLOP/s, TF32 {r['tf32_flop_per_s'] / 1e12:.1f} TFLOP/s")
    return r


@pytest.fixture(scope="module")
def chain():
    g = torch.Generator(device="cuda").manual_seed(0)
    unary, trans = torch.randn(B, T, K, device="cuda", generator=g), torch.randn(K, K, device="cuda", generator=g)
    start, end = torch.randn(K, device="cuda", generator=g), torch.randn(K, device="cuda", generator=g)
    energy, tags = ebm_ext.viterbi(unary, trans, None, start, end)
    return unary, trans, start, end, energy, tags


def decode_floor(rates):
    # read the energies once; write int64 tags and one energy per sequence
    return floors(rates, B * T * K * 4 + B * T * 8 + B * 4)


def test_decode_cpu_equals_cuda(chain):
    unary, trans, start, end, energy, tags = chain
    cpu_energy, cpu_tags = ebm_ext.viterbi(unary.cpu(), trans.cpu(), None, start.cpu(), end.cpu())
    torch.testing.assert_close(energy.cpu(), cpu_energy, rtol=1e-5, atol=1e-4)
    assert_same_decoding("ebm_ext on the CPU", unary, trans, start, end, tags, energy, cpu_tags)


@pytest.mark.parametrize("impl", ["ebm_ext", "torbi", "torch-struct", "pytorch-crf"])
def test_decode_4096(benchmark, rates, chain, impl):
    benchmark.group = f"cuda decode B={B} T={T} K={K}"
    unary, trans, start, end, energy, tags = chain
    graph = True
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.viterbi(unary, trans, None, start, end)  # noqa: E731
    elif impl == "torbi":
        torbi = pytest.importorskip("torbi")
        # torbi decodes log-probabilities: per-frame log-softmax of minus the energies, no end
        # term; so ours is run on the same problem. torbi writes into its observations, so each
        # call gets its own copy (a 20 MB device copy, about 10 us, inside the timing).
        obs = torch.log_softmax(-unary, -1)
        tr, init = torch.log_softmax(-trans, -1), torch.log_softmax(-start, -1)
        frames = torch.full((B,), T, device="cuda", dtype=torch.int32)
        fn = lambda: torbi.from_probabilities(obs.clone(), frames, tr, init, log_probs=True, gpu=0)  # noqa: E731
        want_energy, want_tags = ebm_ext.viterbi(-obs, -tr, None, -init, None)
        assert_same_decoding("torbi", -obs, -tr, -init, None, want_tags, want_energy, fn())
    elif impl == "torch-struct":
        pytest.importorskip("torch_struct")

        def fn():
            parts = torch_struct_crf(unary, trans, start, end).argmax  # [b, n, next, prev]
            return torch.cat([parts[:, :1].sum(-2).argmax(-1), parts.sum(-1).argmax(-1)], 1)
        assert_same_decoding("torch-struct", unary, trans, start, end, tags, energy, fn())
    else:
        pytest.importorskip("torchcrf")
        crf = pytorch_crf_layer(trans, start, end)
        fn = lambda: torch.tensor(crf.decode(-unary), device="cuda")  # noqa: E731
        assert_same_decoding("pytorch-crf", unary, trans, start, end, tags, energy, fn())
        graph = False  # decode returns Python lists
    record(benchmark, fn, rates, decode_floor(rates), rounds=3 if impl == "pytorch-crf" else 10, graph=graph)


N_POINTS, D_POINT, N_CENTROIDS = 10_000_000, 32, 256


@pytest.mark.parametrize("impl", ["ebm_ext", "torch tf32 matmul+argmin"])
def test_assign_10M_points(benchmark, rates, impl):
    benchmark.group = f"cuda nearest centroid N={N_POINTS} d={D_POINT} k={N_CENTROIDS}"
    g = torch.Generator(device="cuda").manual_seed(1)
    y = torch.randn(N_POINTS, D_POINT, device="cuda", generator=g)
    W = torch.randn(N_CENTROIDS, D_POINT, device="cuda", generator=g)
    _, index = ebm_ext.nearest_centroid(y, W)
    flops = 2 * N_POINTS * N_CENTROIDS * D_POINT
    bytes_moved = N_POINTS * D_POINT * 4 + N_POINTS * (4 + 8)
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.nearest_centroid(y, W)  # noqa: E731
        record(benchmark, fn, rates, floors(rates, bytes_moved, flops, "fp32"), rounds=5)
        return
    w_sq = (W * W).sum(1)

    def fn():
        # ||y||^2 is the same for every centroid: the argmin needs only ||w||^2 - 2 y.w
        return torch.cat([(w_sq - 2 * c @ W.t()).argmin(1) for c in y.split(1_000_000)])
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        # TF32 rounds the products: a few near-ties go the other way
        agreement = (fn() == index).double().mean().item()
        assert agreement >= 0.999, f"{agreement:.5f} of the assignments agree with ours"
        record(benchmark, fn, rates, floors(rates, bytes_moved, flops, "tf32"), rounds=5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


N_PATCHES, N_PIXELS, N_ATOMS, LAM, ITERATIONS = 262_144, 64, 256, 0.5, 200


@pytest.mark.parametrize("impl", ["ebm_ext", "plain FISTA"])
def test_sparse_code_patches(benchmark, rates, impl):
    benchmark.group = f"cuda sparse code {N_PATCHES} patches n={N_PIXELS} m={N_ATOMS}"
    g = torch.Generator(device="cuda").manual_seed(2)
    y = torch.randn(N_PATCHES, N_PIXELS, device="cuda", generator=g)
    D = torch.randn(N_PIXELS, N_ATOMS, device="cuda", generator=g)
    D = D / D.norm(dim=0, keepdim=True)
    bytes_moved = N_PATCHES * (N_PIXELS + N_ATOMS) * 4  # read the patches, write the codes
    per_iteration = 2 * N_PATCHES * N_ATOMS * N_ATOMS  # z G, the product every iteration needs
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.sparse_code(y, D, LAM, max_iter=ITERATIONS, tol=1e-4)  # noqa: E731
        iterations = ebm_ext.sparse_code(y, D, LAM, max_iter=ITERATIONS, tol=1e-4,
                                         return_info=True)[2].double().mean().item()
    else:
        L = 2 * torch.linalg.matrix_norm(D, ord=2) ** 2
        G, step = D.t() @ D, 1 / L

        def fn(iterations=ITERATIONS):
            b = y @ D
            z = x = torch.zeros(y.shape[0], D.shape[1], device="cuda")
            t = 1.0
            for _ in range(iterations):
                v = x - 2 * step * (x @ G - b)
                z_next = torch.sign(v) * (v.abs() - LAM * step).clamp_min(0)
                t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
                x, z, t = z_next + (t - 1) / t_next * (z_next - z), z_next, t_next
            return z
        iterations = ITERATIONS
    benchmark.extra_info["iterations"] = iterations
    record(benchmark, fn, rates, floors(rates, bytes_moved, iterations * per_iteration), rounds=3)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op} {c.shape}")
def test_roofline(benchmark, rates, case):
    benchmark.group = "roofline: measured against predicted"
    model = H200 if "H200" in rates["device"] else H100
    x = case.inputs(device="cuda")
    memory = case.bytes / rates["copy_bytes_per_s"]
    compute = case.floor_compute(model)
    case_floors = {"bytes": case.bytes, "memory_floor_s": memory, "compute_floor_s": compute,
                   "floor_s": max(memory, compute), "bound": "compute" if compute > memory else "memory"}
    info = record(benchmark, lambda: case.call(x), rates, case_floors, rounds=3)
    predicted = case.predict(model)
    benchmark.extra_info.update(predicted_s=predicted, gpu_over_predicted=info["gpu_s"] / predicted)
    print(f"  roofline {case.op} {case.shape}: floor {case_floors['floor_s'] * 1e6:.1f} us, predicted "
          f"{predicted * 1e6:.1f} us ({model.name}), measured {info['gpu_s'] * 1e6:.1f} us: "
          f"{info['gpu_s'] / predicted:.2f}x the prediction")
