"""The roofline of every CUDA op: the bytes that must move, the work that must be done, and the
time each kernel's design predicts on an H100 and an H200, written down before a GPU ran it, so
that the first GPU run (scripts/gpu_check.sh, bench/test_cuda_bench.py::test_roofline) confirms
or refutes every prediction in one step.

    python bench/roofline.py              # the table, as docs/benchmarks.md shows it
    python bench/roofline.py --readme     # without the H200 column, as the README shows it
    python bench/roofline.py --json       # every case's numbers

The model (one line of arithmetic per case, in `CASES`):

- **memory floor** = bytes that must move (read each input once, write each output once) / the
  device's copy bandwidth;
- **compute floor** = the op's essential work at the rate of the unit that does it: FP32 lanes
  (128 per SM per clock), FP64 lanes (64), the special-function unit for exponentials (16), or
  the tensor cores (TF32, dense);
- **floor** = the larger of the two;
- **predicted** = what the kernel as designed issues: its warp instructions / (SMs x 4
  schedulers x clock), its exponentials / the SFU rate, its DRAM and L2 traffic / their
  bandwidths (the largest of those), plus 3 us per kernel launch (graph replay and the tail).
  Counted per design: "warp-instr per pair" is read from the inner loop (a min-plus pair with
  its argmin: load, add, compare, two selects, ~6).

The device numbers are the data sheets' with a sustained clock (1.755 GHz, not the 1.98 GHz
boost) and the copy bandwidth a device-to-device copy reaches (about 90 % of the peak); the GPU
check measures the real ones in the same run (bench/device_floor.py) and prints both.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from typing import Callable

LAUNCH_S = 3e-6


@dataclass(frozen=True)
class Device:
    name: str
    sms: int
    clock_hz: float
    copy_bytes_per_s: float
    l2_bytes_per_s: float
    tf32_flop_per_s: float

    def issue(self, warp_instructions: float) -> float:
        return warp_instructions / (self.sms * 4 * self.clock_hz)

    def lanes(self, lane_ops: float, per_sm_clock: int = 128) -> float:
        return lane_ops / (self.sms * per_sm_clock * self.clock_hz)

    def sfu(self, exps: float) -> float:
        return exps / (self.sms * 16 * self.clock_hz)


H100 = Device("H100 SXM", 132, 1.755e9, 3.0e12, 10e12, 400e12)
H200 = Device("H200", 132, 1.755e9, 4.3e12, 10e12, 400e12)
DEVICES = (H100, H200)


@dataclass
class Case:
    """One op at one shape: its floor and its design's predicted time on a device."""
    op: str
    shape: str
    design: str                                  # the kernel as it is now, in a few words
    bytes: float                                 # that must move
    floor_compute: Callable[[Device], float]     # seconds of essential work
    predict: Callable[[Device], float]           # seconds, launches included
    inputs: Callable[..., dict] = field(repr=False, default=None)  # (device, small) -> kwargs
    call: Callable[[dict], object] = field(repr=False, default=None)

    def floor(self, d: Device) -> float:
        return max(self.bytes / d.copy_bytes_per_s, self.floor_compute(d))

    def row(self, d: Device) -> dict:
        return {"op": self.op, "shape": self.shape, "design": self.design, "device": d.name,
                "bytes": self.bytes, "memory_floor_s": self.bytes / d.copy_bytes_per_s,
                "compute_floor_s": self.floor_compute(d), "floor_s": self.floor(d),
                "predicted_s": self.predict(d)}


def _chain_inputs(B, T, K, small, dtype="float32", device="cpu"):
    import torch
    if small:
        B, T, K = min(B, 3), min(T, 6), min(K, 5)
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    unary = torch.randn(B, T, K, generator=g, dtype=dt).to(device)
    trans = torch.randn(K, K, generator=g, dtype=dt).to(device)
    start = torch.randn(K, generator=g, dtype=dt).to(device)
    end = torch.randn(K, generator=g, dtype=dt).to(device)
    return {"unary": unary, "trans": trans, "start": start, "end": end}


def _decode(B, T, K, kind: str, k: int = 1) -> Case:
    """viterbi / loss_augmented_viterbi (warp per sequence) and viterbi_kbest (block per sequence)."""
    pairs = B * (T - 1) * K * K
    tag_slices = math.ceil(K / 32)  # a lane's tags i, i + 32, ...
    bytes_ = B * T * K * 4 + k * B * T * 8 + k * B * 4
    if kind == "kbest":
        # per (t, i): K * k candidate inserts into a k-list, ~8 warp-instr each (compare, shift)
        instr = B * (T - 1) * tag_slices * K * k * 8 + B * T * 20
        design = "block per sequence, lists and back-pointers in shared memory, one launch"
    else:
        # per step: lane i's K pairs at ~6 warp-instr, the messages (~12), staging (~4)
        instr = B * (T - 1) * tag_slices * K * 6 + B * T * tag_slices * 16
        design = "warp per sequence, 4 per block, shared backpointers, one launch"
    op = {"plain": "viterbi", "augmented": "loss_augmented_viterbi", "kbest": "viterbi_kbest"}[kind]
    extra = B * T * 16 if kind == "augmented" else 0  # gold read, cost row per step, the path sum

    def inputs(device="cpu", small=False):
        import torch
        x = _chain_inputs(B, T, K, small, device=device)
        if kind == "augmented":
            b, t, kk = x["unary"].shape
            x["gold"] = torch.randint(kk, (b, t), generator=torch.Generator().manual_seed(1)).to(device)
            x["cost"] = (1 - torch.eye(kk)).to(device)
        return x

    def call(x):
        import ebm_ext
        if kind == "plain":
            return ebm_ext.viterbi(x["unary"], x["trans"], None, x["start"], x["end"])
        if kind == "kbest":
            return ebm_ext.viterbi_kbest(x["unary"], x["trans"], k, None, x["start"], x["end"])
        return ebm_ext.loss_augmented_viterbi(x["unary"], x["trans"], x["gold"], x["cost"], None,
                                              x["start"], x["end"])

    shape = f"B={B} T={T} K={K}" + (f" k={k}" if kind == "kbest" else "")
    return Case(op, shape, design, bytes_ + extra,
                floor_compute=lambda d: d.lanes(pairs * 4 * (k if kind == "kbest" else 1)),
                predict=lambda d: max(d.issue(instr + extra / 4), (bytes_ + extra) / d.copy_bytes_per_s)
                + LAUNCH_S,
                inputs=inputs, call=call)


def _partition(B, T, K, marginals: bool) -> Case:
    pairs = B * (T - 1) * K * K
    bytes_ = B * T * K * 4 * (2 if marginals else 1) + B * 4
    # the exp-domain design's essential work: K^2 FMAs and K exps per step (twice for marginals)
    passes = 2 if marginals else 1

    def floor_compute(d):
        return passes * max(d.lanes(pairs * 2), d.sfu(B * T * K))

    # The design (partition_kernel.cu): the exp domain, a warp per sequence: per step a lane's
    # K pairs at ~3 warp-instr (a_i and E from shared memory, an FMA) plus ~40 for the step's
    # reductions and exponentials; the backward recomputes v_t (twice the pairs) and adds ~80.
    # Around it: the transposed copy of trans, the log-space kernel launched for the flagged
    # sequences (it exits at once when none is; every block checks trans/start/end for NaN
    # itself), log Z's conversion to the input's dtype, and for marginals ~8 ATen kernels after.
    slices = math.ceil(K / 32)

    def predict(d):
        t = max(d.issue(B * (T - 1) * (slices * K * 3 + 40)), bytes_ / d.copy_bytes_per_s)
        t += 4 * LAUNCH_S
        if marginals:
            t += d.issue(B * (T - 1) * (2 * slices * K * 3 + 80)) + 9 * LAUNCH_S
        return t

    def call(x):
        import ebm_ext
        f = ebm_ext.chain_marginals if marginals else ebm_ext.chain_log_partition
        return f(x["unary"], x["trans"], None, x["start"], x["end"])

    return Case("chain_marginals" if marginals else "chain_log_partition", f"B={B} T={T} K={K}",
                "exp domain, warp per sequence, fused; log space for flagged sequences",
                bytes_, floor_compute, predict,
                inputs=lambda device="cpu", small=False: _chain_inputs(B, T, K, small, device=device),
                call=call)


def _distribution(B, T, K, op: str) -> Case:
    pairs = B * (T - 1) * K * K
    bytes_ = B * T * K * 8 * (2 if op == "chain_expectation" else 1)

    # The design (distribution_kernel.cu): a warp per sequence, lane j owning column j, 4 per
    # block. Per step and lane, the column's K pairs: a load of E (L1) and of the message
    # (shared, broadcast), the float64 product and sum, and with a direction the weighted
    # statistic: ~10 warp-instr per pair with v, ~5 without, 4 and 2 of them on the FP64 pipe
    # (64 lanes per SM and clock: 2 warp-instr). Per step and sequence the row's exps and logs
    # in float64 (software, ~25 FP64 instr each: 2 per lane) and the warp reductions, ~100
    # warp-instr. chain_sample writes the forward messages for its walk (B T K 3 doubles) and
    # adds the walk (a thread per sample, latency-bound in one wave).
    # Each block first stages exp(tmin - trans) into its shared memory: K^2 float64 exps per
    # block (~25 FP64 instr each). chain_sample launches the forward, the walk and the fill of
    # the tags with -1.
    def predict(d):
        slices = math.ceil(K / 32)
        per_pair = 10 if op == "chain_expectation" else 5
        fp64_per_pair = 4 if op == "chain_expectation" else 2
        instr = B * (T - 1) * slices * K * per_pair + B * T * slices * 100
        fp64 = (B * (T - 1) * slices * K * fp64_per_pair + B * T * slices * 50
                + math.ceil(B / 4) * K * K * 25 / 32)
        traffic = bytes_ if op == "chain_expectation" else bytes_ + B * T * K * 3 * 8
        t = max(d.issue(instr), fp64 / (d.sms * 2 * d.clock_hz), traffic / d.copy_bytes_per_s)
        if op == "chain_sample":
            # the walk, one wave of threads: per step 2K dependent float64 adds (~8 cycles)
            # after two rounds of loads from L2 (~400 cycles each)
            t += T * (2 * K * 8 + 2 * 400) / d.clock_hz
        return t + (1 if op == "chain_expectation" else 3) * LAUNCH_S

    def inputs(device="cpu", small=False):
        x = _chain_inputs(B, T, K, small, dtype="float64", device=device)
        x["v_unary"] = x["unary"].clone().normal_()
        return x

    def call(x):
        import ebm_ext
        if op == "chain_expectation":
            return ebm_ext.chain_expectation(x["unary"], x["trans"], x["v_unary"], None, None,
                                             x["start"], x["end"])
        return ebm_ext.chain_sample(x["unary"], x["trans"], (), None, x["start"], x["end"])

    return Case(op, f"B={B} T={T} K={K} float64",
                "warp per sequence, 4 per block; each block stages the exp-domain transitions",
                bytes_, lambda d: d.lanes(pairs * 2 * 2, per_sm_clock=64), predict,
                inputs=inputs, call=call)


def _nearest_centroid(N, D, C) -> Case:
    flops = 2 * N * C * D
    bytes_ = N * D * 4 + N * 12  # read the points; write index (int64) and distance (float32)

    # The design (kmeans_kernel.cu, float32): TF32 wmma at about half the tensor cores' rate; per
    # (point, centroid) an epilogue of ~7 warp-instr / 32 lanes (read the dot, fold it into the
    # row's two smallest); every block of 128 points reads all centroids from L2; the rare rows
    # without a clear gap are recomputed in float32 (not counted); ATen's ||W||^2 (2 launches).
    def predict(d):
        return max(flops / (0.5 * d.tf32_flop_per_s), d.issue(N * C * 7 / 32),
                   bytes_ / d.copy_bytes_per_s, N / 128 * C * D * 4 / d.l2_bytes_per_s) + 3 * LAUNCH_S

    def inputs(device="cpu", small=False):
        import torch
        n, dd, c = (min(N, 2000), D, min(C, 16)) if small else (N, D, C)
        g = torch.Generator().manual_seed(0)
        return {"y": torch.randn(n, dd, generator=g).to(device),
                "W": torch.randn(c, dd, generator=g).to(device)}

    def call(x):
        import ebm_ext
        return ebm_ext.nearest_centroid(x["y"], x["W"])

    return Case("nearest_centroid", f"N={N // 1_000_000}M d={D} k={C}",
                "TF32 tensor cores, exact argmin by a gap check and float32 recompute",
                bytes_, lambda d: flops / d.tf32_flop_per_s, predict, inputs=inputs, call=call)


def _bilstm(B, T, D, H) -> Case:
    flops = 2 * T * B * 4 * H * (D + H) * 2  # both directions, input and recurrent products
    bytes_ = B * T * D * 4 + B * T * 2 * H * 4 + 2 * T * B * 4 * H * 4  # in, out, saved gates

    # The design (bilstm_kernel.cu): x W_ih^T + bias for every row and both directions in one
    # cuBLAS GEMM (float32 SIMT: PyTorch leaves TF32 off for matmuls; ~80 % of the FP32 lanes),
    # then one launch for both directions' recurrences: a block per 4 sequences and direction
    # walks all T steps, fusing h_prev W_hh^T with the cell. Per step every block reads W_hh^T
    # (4H x H floats) from L2, and each thread issues ~26 warp-instr per i for its 16
    # accumulators; a step costs the larger of the two. Launches: the GEMM, the transpose of
    # W_hh, the copy of the step sizes, the recurrence.
    def predict(d):
        gemm = d.lanes(B * T * D * 8 * H) / 0.8  # one FMA per lane and clock, at 80 %
        blocks = 2 * math.ceil(B / 4)
        l2_step = blocks * 4 * H * H * 4 / d.l2_bytes_per_s
        warps = math.ceil(H / 32)
        per_sm_blocks = math.ceil(blocks / d.sms)
        issue_step = per_sm_blocks * warps * H * 26 / (4 * d.clock_hz)
        return gemm + T * max(l2_step, issue_step) + 4 * LAUNCH_S

    def inputs(device="cpu", small=False):
        import torch
        b, t = (2, 4) if small else (B, T)
        d_, h = (3, 4) if small else (D, H)
        g = torch.Generator().manual_seed(0)
        return {"input": torch.randn(b * t, d_, generator=g).to(device),
                "batch_sizes": torch.full((t,), b, dtype=torch.long),
                "weight_ih": torch.randn(2, 4 * h, d_, generator=g).to(device),
                "weight_hh": torch.randn(2, 4 * h, h, generator=g).to(device),
                "bias": torch.randn(2, 4 * h, generator=g).to(device)}

    def call(x):
        import ebm_ext
        return ebm_ext.bilstm(x["input"], x["batch_sizes"], x["weight_ih"], x["weight_hh"], x["bias"])

    return Case("bilstm", f"B={B} T={T} d={D} h={H}",
                "input GEMM, then one launch: a block per 4 sequences and direction walks all steps",
                bytes_, lambda d: flops / d.tf32_flop_per_s, predict, inputs=inputs, call=call)


def _sparse_code(N, n, m, iterations) -> Case:
    flops = 2 * N * m * m * iterations  # z G every iteration
    bytes_ = N * (n + m) * 4

    # The design (sparse_coding_kernel.cu): a warp per sample at this N (a block per sample
    # below 8 samples per SM), iterating on a working set W. On these inputs (lam = 0.5) the
    # CPU kernel ends with supports of 54 atoms on average, so W holds ~108 (the support and as
    # many violators). Per iteration a lane forms (G x)_k for its ~4 coordinates over the ~54
    # nonzeros of x, ~5 warp-instr each (the test, the loads of x_i, of i and of G[i, k]), plus
    # ~80 for the restart sum and the update; G (m x m float32, 256 KB) does not fit in L1, so
    # about half of its reads go to L2.
    support = 54
    work_set = 2 * support

    def predict(d):
        per_iteration = math.ceil(work_set / 32) * support * 5 + 80
        issue = d.issue(N * iterations * per_iteration)
        l2 = N * iterations * work_set * support * 4 * 0.5 / d.l2_bytes_per_s
        return max(issue, l2) + LAUNCH_S

    def inputs(device="cpu", small=False):
        import torch
        g = torch.Generator().manual_seed(0)
        k = min(N, 4) if small else N
        D = torch.randn(n, m, generator=g)
        return {"y": torch.randn(k, n, generator=g).to(device),
                "D": (D / D.norm(dim=0, keepdim=True)).to(device)}

    def call(x):
        import ebm_ext
        return ebm_ext.sparse_code(x["y"], x["D"], 0.5, max_iter=iterations, tol=0.0)

    return Case("sparse_code", f"N={N} n={n} m={m} iters={iterations}",
                "warp per sample on a working set; G read from L2",
                bytes_, lambda d: flops / d.tf32_flop_per_s, predict, inputs=inputs, call=call)


def _relaxed(B, T, K, steps) -> Case:
    flops = B * T * K * K * 2 * 2 * steps  # y_{t-1} trans and trans y_{t+1} per step
    bytes_ = B * T * K * 4 * 2

    # One block of 256 threads per sequence, all steps fused; per step a gradient pass over
    # (t, k) (2K FMAs each) and a warp per position for the update, ~4 barriers per step.
    def predict(d):
        return max(d.issue(flops / 2 / 32 * 2), d.sfu(B * T * K * steps)) + LAUNCH_S

    def call(x):
        import ebm_ext
        return ebm_ext.chain_relaxed_inference(x["unary"], x["trans"], None, x["start"], x["end"],
                                               steps=steps)

    return Case("chain_relaxed_inference", f"B={B} T={T} K={K} steps={steps}",
                "block per sequence, all steps fused in one launch",
                bytes_, lambda d: d.lanes(flops / 2), predict,
                inputs=lambda device="cpu", small=False: _chain_inputs(B, T, K, small, device=device),
                call=call)


def _simplex(R, K) -> Case:
    bytes_ = R * K * 4 * 2

    def inputs(device="cpu", small=False):
        import torch
        return {"v": torch.randn(min(R, 7) if small else R, K,
                                 generator=torch.Generator().manual_seed(0)).to(device)}

    def call(x):
        import ebm_ext
        return ebm_ext.project_simplex(x["v"])

    # A warp per row, Michelot's rounds of warp sums (~3 rounds of ~20 warp-instr).
    return Case("project_simplex", f"rows={R} K={K}", "warp per row, one launch", bytes_,
                lambda d: d.lanes(R * K * 8), lambda d: max(d.issue(R * 80), bytes_ / d.copy_bytes_per_s)
                + LAUNCH_S, inputs=inputs, call=call)


def _chain_energy(B, T, K) -> Case:
    bytes_ = B * T * 8 + B * T * 32 + B * 4  # the tags, one 32-byte sector of unary per (b, t)

    # A thread per path summing its T terms (a tag, then the unary entry it names: two dependent
    # loads of ~600 cycles per position; B / 32 warps are too few to hide them), one launch.
    def predict(d):
        return T * 2 * 600 / d.clock_hz + LAUNCH_S

    def inputs(device="cpu", small=False):
        import torch
        x = _chain_inputs(B, T, K, small, device=device)
        b, t, k = x["unary"].shape
        x["tags"] = torch.randint(k, (b, t), generator=torch.Generator().manual_seed(2)).to(device)
        return x

    def call(x):
        import ebm_ext
        return ebm_ext.chain_energy(x["unary"], x["trans"], x["tags"], None, x["start"], x["end"])

    return Case("chain_energy", f"B={B} T={T} K={K}", "thread per path, one launch, checks on the device",
                bytes_, lambda d: 0.0, predict, inputs=inputs, call=call)


CASES: list[Case] = [
    _decode(4096, 50, 25, "plain"),
    _decode(4096, 50, 50, "plain"),
    _decode(4096, 50, 25, "augmented"),
    _decode(4096, 50, 25, "kbest", k=4),
    _chain_energy(4096, 50, 25),
    _partition(4096, 50, 25, marginals=False),
    _partition(4096, 50, 25, marginals=True),
    _distribution(4096, 50, 25, "chain_expectation"),
    _distribution(4096, 50, 25, "chain_sample"),
    _relaxed(4096, 50, 25, 20),
    _simplex(4096 * 50, 25),
    _nearest_centroid(10_000_000, 32, 256),
    _bilstm(256, 50, 128, 128),
    _sparse_code(262_144, 64, 256, 200),
]

# The ops whose CUDA kernels a case times (backward ops are timed through their forward's case
# in training, and listed here so that the coverage test knows them).
COVERED_BY = {"_chain_log_partition_backward": "chain_marginals", "_chain_covariance": "chain_expectation",
              "_bilstm_backward": "bilstm", "kmeans_energy": "nearest_centroid"}


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f} us" if s < 1e-3 else f"{s * 1e3:,.1f} ms"


def markdown(measured: dict[str, float] | None = None, h200: bool = True) -> str:
    """The roofline table: op, shape, floor and predicted time on an H100 (and on an H200), and
    the measured time (from a GPU check's bench.json, keyed by "op shape"; empty until a GPU has
    run the case). The README shows it without the H200 column, docs/benchmarks.md whole."""
    measured = measured or {}
    head = ["op", "shape", "floor (H100)", "predicted (H100)"] + (["predicted (H200)"] if h200 else [])
    lines = ["| " + " | ".join(head + ["measured"]) + " |",
             "| --- | --- |" + " ---: |" * (len(head) - 1)]
    for c in CASES:
        m = measured.get(f"{c.op} {c.shape}")
        cells = [f"`{c.op}`", c.shape, _us(c.floor(H100)), _us(c.predict(H100))]
        cells += [_us(c.predict(H200))] if h200 else []
        lines.append("| " + " | ".join(cells + [_us(m) if m else ""]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="every case's numbers as JSON")
    parser.add_argument("--readme", action="store_true", help="the README's table (H100 only)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps([c.row(d) for c in CASES for d in DEVICES], indent=1))
    else:
        print(markdown(h200=not args.readme))


if __name__ == "__main__":
    main()
