"""Every CUDA kernel of ebm_ext once, on small inputs that reach each of its paths (the shapes
of csrc/simt/tests/simt_kernels.cpp): the driver that compute-sanitizer's memcheck and
racecheck run on a GPU (scripts/gpu_check.sh). Exit status 0 when every op ran and gave finite
outputs where its inputs are finite.

    python scripts/gpu_kernels.py [cuda|emulated]

`emulated` runs the same calls on the SIMT emulation of the kernels (tests/cuda_backends.py),
which is how this driver is checked on a machine without a GPU.
"""
import contextlib
import pathlib
import sys

import torch

import ebm_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]


def chain(B, T, K, dtype, device):
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + K)
    unary, trans = torch.randn(B, T, K, generator=g), torch.randn(K, K, generator=g)
    start, end = torch.randn(K, generator=g), torch.randn(K, generator=g)
    lengths = torch.tensor([T - b % 2 if b not in (1, 2) else b - 1 for b in range(B)]).clamp(0, T)
    to = lambda x: x.to(device, dtype)  # noqa: E731
    return to(unary), to(trans), lengths.to(device), to(start), to(end)


def finite(name, *outputs):
    for out in outputs:
        if out.is_floating_point() and not torch.isfinite(out.double()).all():
            raise AssertionError(f"{name}: non-finite output")


def chain_ops(B, T, K, dtype, device):
    unary, trans, L, start, end = chain(B, T, K, dtype, device)
    gold = torch.randint(0, K, (B, T), device=device)
    cost = (1 - torch.eye(K, device=device)).to(dtype)
    finite("viterbi", *ebm_ext.viterbi(unary, trans, L, start, end))
    ebm_ext.viterbi_kbest(unary, trans, 3, L, start, end)  # missing paths are +inf
    finite("loss_augmented_viterbi", *ebm_ext.loss_augmented_viterbi(unary, trans, gold, cost, L, start, end))
    finite("chain_energy", ebm_ext.chain_energy(unary, trans, gold, L, start, end))
    finite("chain_log_partition", ebm_ext.chain_log_partition(unary, trans, L, start, end))
    finite("chain_marginals", ebm_ext.chain_marginals(unary, trans, L, start, end))
    finite("_chain_log_partition_backward", *torch.ops.ebm_ext._chain_log_partition_backward(
        torch.ones(B, device=device, dtype=dtype), unary, trans, L, start, end))
    finite("chain_expectation", *torch.ops.ebm_ext.chain_expectation(
        unary, trans, unary, trans, L, start, end, start, end))
    finite("_chain_covariance", *torch.ops.ebm_ext._chain_covariance(
        torch.ones(B, device=device, dtype=dtype), unary, trans, unary, trans, L, start, end,
        start, end))
    torch.ops.ebm_ext.chain_sample(unary, trans, torch.rand(3, B, T, device=device,
                                                            dtype=torch.float64), L, start, end)
    for method in ("entropic", "projected"):
        finite("chain_relaxed_inference", *ebm_ext.chain_relaxed_inference(
            unary, trans, L, start, end, steps=4, lr=0.5, method=method))


def run(device):
    for dtype in (torch.float32, torch.float64):
        for B, T, K in ((4, 5, 4), (3, 4, 1), (4, 3, 40), (1, 2, 100)):
            chain_ops(B, T, K, dtype, device)
    chain_ops(2, 3, 300, torch.float32, device)
    for half in (torch.float16, torch.bfloat16):
        chain_ops(3, 4, 8, half, device)
    unary, trans, _, _, _ = chain(1, 2, 7000, torch.float32, device)
    finite("viterbi K=7000", *ebm_ext.viterbi(unary, trans))  # opted-in shared memory
    unary, trans, _, _, _ = chain(1, 3, 1000, torch.float32, device)
    finite("viterbi_kbest k=8", ebm_ext.viterbi_kbest(unary, trans, 8)[1].float())
    for dtype in (torch.float32, torch.float64, torch.float16):
        finite("project_simplex", ebm_ext.project_simplex(torch.randn(5, 7, device=device, dtype=dtype)))
        finite("nearest_centroid", *ebm_ext.nearest_centroid(torch.randn(70, 20, device=device, dtype=dtype),
                                                             torch.randn(67, 20, device=device, dtype=dtype)))
    for dtype in (torch.float32, torch.float64):
        D = torch.randn(8, 20, device=device, dtype=dtype)
        for method in ("fista", "ista"):
            for nonneg in (False, True):
                finite("sparse_code", ebm_ext.sparse_code(torch.randn(3, 8, device=device, dtype=dtype), D, 0.1,
                                                          max_iter=50, tol=1e-6, method=method, nonneg=nonneg))
    D = torch.randn(4, 4200, device=device, dtype=torch.float64)  # codes in global memory
    finite("sparse_code (global)", ebm_ext.sparse_code(torch.randn(1, 4, device=device, dtype=torch.float64),
                                                       D, 0.5, max_iter=2))
    for dtype in (torch.float32, torch.float64, torch.float16):
        H, I = 5, 3
        bs = torch.tensor([3, 3, 2, 1])
        x = torch.randn(9, I, device=device, dtype=dtype)
        w_ih, w_hh = torch.randn(2, 4 * H, I, device=device, dtype=dtype), torch.randn(2, 4 * H, H, device=device, dtype=dtype)
        bias = torch.randn(2, 4 * H, device=device, dtype=dtype)
        out = torch.ops.ebm_ext.bilstm(x, bs, w_ih, w_hh, bias)
        finite("bilstm", *out)
        finite("_bilstm_backward", *torch.ops.ebm_ext._bilstm_backward(torch.randn_like(out[0]), x, bs, w_ih, w_hh, *out))
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_kernels: every op ran on {device}")


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    context = contextlib.nullcontext()
    device = where
    if where == "emulated":
        sys.path.insert(0, str(ROOT / "tests"))
        from cuda_backends import EMULATION_MISSING, EmulatedCUDA
        if EMULATION_MISSING:
            raise SystemExit(EMULATION_MISSING)
        context, device = EmulatedCUDA(), "cpu"
    with context:
        run(device)
    if where == "emulated":
        print(f"gpu_kernels: {sum(context.calls.values())} emulated kernel calls over {len(context.calls)} ops")


if __name__ == "__main__":
    main()
