"""Every CUDA kernel of ebm_ext once, case by case, on small inputs that reach each of its paths
(the shapes of csrc/simt/tests/simt_kernels.cpp): the GPU check's kernel driver, and the program
that compute-sanitizer's tools run (scripts/gpu_check.sh).

    python scripts/gpu_kernels.py [cuda|emulated] [--only TEXT] [--json FILE] [--expect-fault KERNEL]

Each case is one op called once; the device is synchronised after it, and its floating outputs
must be finite where its inputs are. Run under CUDA_LAUNCH_BLOCKING=1, a kernel that faults
fails its own launch, and the launch check names the kernel (csrc/ops/cuda/device.cuh), so the
failing case and kernel are named here. A fault leaves the CUDA context unusable, so the cases
run in a child process that stops at its first failure, and the next child carries on from the
case after it: every case runs, and every fault is named once. Exit status 0 when every case
passed.

`emulated` runs the same cases on the SIMT emulation of the kernels (tests/cuda_backends.py), which
is how this driver is checked without a GPU: EBM_SIMT_PLANT_FAULT=<kernel> plants a fault there,
and `--expect-fault <kernel>` turns the exit status around: 0 only when some case failed, every
failure names that kernel, and the cases after each fault still ran.
"""
import argparse
import contextlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import torch

import ebm_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOATS = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64}


def chain(B, T, K, dtype, device, form="shared"):
    """A batch of chains: one (K, K) matrix, or (form) one per sequence or per move with start
    and end per sequence (the general chains' kernels)."""
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + K)
    unary = torch.randn(B, T, K, generator=g)
    trans = {"shared": (K, K), "per_sequence": (B, K, K), "per_move": (B, max(T - 1, 0), K, K)}[form]
    trans = torch.randn(*trans, generator=g)
    ends = (K,) if form == "shared" else (B, K)
    start, end = torch.randn(*ends, generator=g), torch.randn(*ends, generator=g)
    lengths = torch.tensor([T - b % 2 if b not in (1, 2) else b - 1 for b in range(B)]).clamp(0, T)
    to = lambda x: x.to(device, dtype)  # noqa: E731
    return to(unary), to(trans), lengths.to(device), to(start), to(end)


def finite(*outputs):
    for out in outputs:
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out.double()).all():
            raise AssertionError("non-finite output from finite inputs")


def chain_cases(B, T, K, dt, form="shared"):
    """(name, call) for every chain op at one shape, dtype and form of the parameters;
    call(device) runs it once."""
    dtype = FLOATS[dt]

    def op(fn, check=True):
        def call(device):
            unary, trans, L, start, end = chain(B, T, K, dtype, device, form)
            out = fn(device, unary, trans, L, start, end)
            if check:
                finite(*(out if isinstance(out, tuple) else (out,)))
        return call

    def gold(device):
        return torch.randint(0, K, (B, T), generator=torch.Generator().manual_seed(K)).to(device)

    ones = lambda device: torch.ones(B, device=device, dtype=dtype)  # noqa: E731
    calls = {
        "viterbi": op(lambda d, u, tr, L, s, e: ebm_ext.viterbi(u, tr, L, s, e)),
        # missing paths are +inf: not checked for finiteness
        "viterbi_kbest": op(lambda d, u, tr, L, s, e: ebm_ext.viterbi_kbest(u, tr, 3, L, s, e), False),
        "loss_augmented_viterbi": op(lambda d, u, tr, L, s, e: ebm_ext.loss_augmented_viterbi(
            u, tr, gold(d), (1 - torch.eye(K, device=d)).to(dtype), L, s, e)),
        "chain_energy": op(lambda d, u, tr, L, s, e: ebm_ext.chain_energy(u, tr, gold(d), L, s, e)),
        "chain_log_partition": op(lambda d, u, tr, L, s, e: ebm_ext.chain_log_partition(u, tr, L, s, e)),
        "chain_marginals": op(lambda d, u, tr, L, s, e: ebm_ext.chain_marginals(u, tr, L, s, e)),
        "_chain_log_partition_backward": op(lambda d, u, tr, L, s, e:
                                            torch.ops.ebm_ext._chain_log_partition_backward(ones(d), u, tr, L, s, e)),
        "chain_expectation": op(lambda d, u, tr, L, s, e:
                                torch.ops.ebm_ext.chain_expectation(u, tr, u, tr, L, s, e, s, e)),
        "_chain_covariance": op(lambda d, u, tr, L, s, e: torch.ops.ebm_ext._chain_covariance(
            ones(d), u, tr, u, tr, L, s, e, s, e)),
        "chain_sample": op(lambda d, u, tr, L, s, e: torch.ops.ebm_ext.chain_sample(
            u, tr, torch.rand(3, B, T, generator=torch.Generator().manual_seed(3),
                              dtype=torch.float64).to(d), L, s, e), False),
    }
    for method in ("entropic", "projected"):
        calls[f"chain_relaxed_inference {method}"] = op(
            lambda d, u, tr, L, s, e, method=method: ebm_ext.chain_relaxed_inference(
                u, tr, L, s, e, steps=4, lr=0.5, method=method))
    suffix = "" if form == "shared" else f" {form}"
    return [(f"{name} {dt} B={B} T={T} K={K}{suffix}", call) for name, call in calls.items()]


def randn(*shape, dtype, device, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


def cases(only=None):
    """Every case (or those whose name contains `only`), in a fixed order: (name, call)."""
    return [c for c in all_cases() if only is None or only in c[0]]


def all_cases():
    out = []
    for dt in ("f32", "f64"):
        for B, T, K in ((4, 5, 4), (3, 4, 1), (4, 3, 40), (1, 2, 100)):
            out += chain_cases(B, T, K, dt)
    out += chain_cases(2, 3, 300, "f32")  # K > 256: several tags per thread
    for dt in ("f16", "bf16"):
        out += chain_cases(3, 4, 8, dt)
    # The general chains' kernels (a warp per sequence; K > 32: several tags per lane).
    for form in ("per_sequence", "per_move"):
        for dt in ("f32", "f64"):
            out += chain_cases(4, 5, 4, dt, form)
        out += chain_cases(3, 4, 40, "f32", form)
    out += chain_cases(3, 4, 8, "f16", "per_move")

    def big_viterbi(device):  # opted-in dynamic shared memory (above 48 KiB)
        unary, trans, _, _, _ = chain(1, 2, 7000, torch.float32, device)
        finite(*ebm_ext.viterbi(unary, trans))

    def kbest_8(device):
        unary, trans, _, _, _ = chain(1, 3, 1000, torch.float32, device)
        finite(ebm_ext.viterbi_kbest(unary, trans, 8)[1].float())

    def constrained_marginals(device):  # a forbidden transition: the exp domain flags every
        unary, trans, L, start, end = chain(4, 5, 4, torch.float32, device)  # sequence, log space runs
        trans[0, 1] = float("inf")
        finite(ebm_ext.chain_marginals(unary, trans, L, start, end),
               torch.ops.ebm_ext._chain_log_partition_backward(torch.ones(4, device=device), unary, trans, L,
                                                                start, end)[1])

    out += [("viterbi f32 K=7000 (opted-in shared memory)", big_viterbi), ("viterbi_kbest f32 k=8 K=1000", kbest_8),
            ("chain_marginals f32 forbidden transition (log space)", constrained_marginals),
            ("nearest_centroid f32 d=300 (SIMT kernel)", lambda d: finite(*ebm_ext.nearest_centroid(
                randn(70, 300, dtype=torch.float32, device=d), randn(67, 300, dtype=torch.float32, device=d,
                                                                        seed=1))))]
    for dt in ("f32", "f64", "f16"):
        dtype = FLOATS[dt]
        out.append((f"project_simplex {dt}", lambda d, dtype=dtype: finite(
            ebm_ext.project_simplex(randn(5, 7, dtype=dtype, device=d)))))
        out.append((f"nearest_centroid {dt}", lambda d, dtype=dtype: finite(*ebm_ext.nearest_centroid(
            randn(70, 20, dtype=dtype, device=d), randn(67, 20, dtype=dtype, device=d, seed=1)))))
    for dt in ("f32", "f64"):
        dtype = FLOATS[dt]
        for method in ("fista", "ista"):
            for nonneg in (False, True):
                out.append((f"sparse_code {dt} {method} nonneg={nonneg}",
                            lambda d, dtype=dtype, method=method, nonneg=nonneg: finite(ebm_ext.sparse_code(
                                randn(3, 8, dtype=dtype, device=d), randn(8, 20, dtype=dtype, device=d, seed=1),
                                0.1, max_iter=50, tol=1e-6, method=method, nonneg=nonneg))))
    # A warp per sample: at least 8 samples per SM (an H100's 132: 1056; the emulation's 2: 16).
    out.append(("sparse_code f32 warp per sample", lambda d: finite(ebm_ext.sparse_code(
        randn(1100 if d == "cuda" else 17, 8, dtype=torch.float32, device=d),
        randn(8, 20, dtype=torch.float32, device=d, seed=1), 0.1, max_iter=30, tol=1e-6))))
    out.append(("sparse_code f64 m=4200 (codes in global memory)", lambda d: finite(ebm_ext.sparse_code(
        randn(1, 4, dtype=torch.float64, device=d), randn(4, 4200, dtype=torch.float64, device=d, seed=1),
        0.5, max_iter=2))))
    for dt in ("f32", "f64", "f16"):
        out += bilstm_cases(dt)
    return out


def bilstm_cases(dt):
    dtype = FLOATS[dt]
    H, I = 5, 3

    def inputs(d):
        bs = torch.tensor([3, 3, 2, 1])
        return (randn(9, I, dtype=dtype, device=d), bs, randn(2, 4 * H, I, dtype=dtype, device=d, seed=1),
                randn(2, 4 * H, H, dtype=dtype, device=d, seed=2), randn(2, 4 * H, dtype=dtype, device=d, seed=3))

    def forward(d):
        finite(*torch.ops.ebm_ext.bilstm(*inputs(d)))

    def backward(d):
        x, bs, w_ih, w_hh, bias = inputs(d)
        out = torch.ops.ebm_ext.bilstm(x, bs, w_ih, w_hh, bias)
        finite(*torch.ops.ebm_ext._bilstm_backward(randn(*out[0].shape, dtype=out[0].dtype, device=d, seed=4),
                                                   x, bs, w_ih, w_hh, *out))
    def several_blocks(d):  # 6 sequences: 2 blocks of 4 rows per direction
        bs = torch.tensor([6, 5, 3, 1])
        x = randn(15, I, dtype=dtype, device=d)
        w = (randn(2, 4 * H, I, dtype=dtype, device=d, seed=1), randn(2, 4 * H, H, dtype=dtype, device=d, seed=2))
        out = torch.ops.ebm_ext.bilstm(x, bs, *w, randn(2, 4 * H, dtype=dtype, device=d, seed=3))
        finite(*out)
        finite(*torch.ops.ebm_ext._bilstm_backward(randn(*out[0].shape, dtype=out[0].dtype, device=d, seed=4),
                                                   x, bs, *w, *out))
    return [(f"bilstm {dt}", forward), (f"_bilstm_backward {dt}", backward),
            (f"bilstm {dt} several blocks", several_blocks)]


def first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def run_from(where, first, only):
    """Runs the cases from index `first` in this process until one fails; prints one JSON line
    per case ({"case", "index", "ok", "error", "seconds"})."""
    context, device = contextlib.nullcontext(), where
    if where == "emulated":
        # The emulated backend is the test suite's (tests/cuda_backends.py), loaded from its file.
        spec = importlib.util.spec_from_file_location("cuda_backends", ROOT / "tests" / "cuda_backends.py")
        backends = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(backends)
        EMULATION_MISSING, EmulatedCUDA = backends.EMULATION_MISSING, backends.EmulatedCUDA
        if EMULATION_MISSING:
            raise SystemExit(EMULATION_MISSING)
        context, device = EmulatedCUDA(), "cpu"
    chosen = cases(only)
    with context:
        for index in range(first, len(chosen)):
            name, call = chosen[index]
            t0 = time.perf_counter()
            try:
                call(device)
                if device == "cuda":
                    torch.cuda.synchronize()
                error = None
            except Exception as e:  # noqa: BLE001: every failure is reported, then this child stops
                error = first_line(e)
            print(json.dumps({"case": name, "index": index, "ok": error is None, "error": error,
                              "seconds": round(time.perf_counter() - t0, 4)}), flush=True)
            if error is not None:
                return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("where", nargs="?", default="cuda", choices=["cuda", "emulated"])
    parser.add_argument("--only", metavar="TEXT", help="only the cases whose name contains TEXT")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--expect-fault", metavar="KERNEL", help="pass only if the faults name KERNEL")
    parser.add_argument("--from", dest="first", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first is not None:  # a child
        raise SystemExit(run_from(args.where, args.first, args.only))

    chosen = cases(args.only)
    total, results, first = len(chosen), [], 0
    only = ["--only", args.only] if args.only else []
    t0 = time.perf_counter()
    while first < total:
        child = subprocess.run([sys.executable, __file__, args.where, "--from", str(first)] + only,
                               stdout=subprocess.PIPE, text=True)
        ran = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        for r in ran:  # the passes are in --json; the log names the failures
            if not r["ok"]:
                print(f"gpu_kernels: FAIL [{r['index'] + 1}/{total}] {r['case']}: {r['error']}", flush=True)
        results += ran
        if child.returncode != 0 and not ran:
            # nothing ran: the child could not start (its stderr is above); no case can run
            results.append({"case": "(start)", "index": total, "ok": False, "seconds": None,
                            "error": f"the driver's process exited with status {child.returncode} before any case"})
            print(f"gpu_kernels: FAIL {results[-1]['error']}", flush=True)
            break
        if child.returncode != 0 and ran[-1]["ok"]:
            # the child died outside a case's try (a crash, a sanitizer abort) in the case after
            # its last report: name that case and carry on after it
            index = ran[-1]["index"] + 1
            name = chosen[index][0] if index < total else "(exit, after the last case)"
            error = f"the process exited with status {child.returncode}" + (
                " during this case" if index < total else " after its last case (a sanitizer's error exit code?)")
            print(f"gpu_kernels: FAIL [{index + 1}/{total}] {name}: {error}", flush=True)
            results.append({"case": name, "index": index, "ok": False, "error": error, "seconds": None})
        first = max(first + 1, results[-1]["index"] + 1)
    failed = [r for r in results if not r["ok"]]
    summary = {"where": args.where, "cases": total, "passed": len(results) - len(failed),
               "failed": [{"case": r["case"], "error": r["error"]} for r in failed],
               "seconds": round(time.perf_counter() - t0, 2), "results": results}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"gpu_kernels: {summary['passed']} of {total} cases passed on {args.where}"
          + (f"; {len(failed)} failed" if failed else ""))
    if args.expect_fault:
        named = bool(failed) and all(args.expect_fault in (r["error"] or "") for r in failed)
        carried_on = any(r["ok"] and r["index"] > failed[0]["index"] for r in results) if failed else False
        print(f"gpu_kernels: planted fault in {args.expect_fault}: "
              + ("named by every failure, and the later cases ran" if named and carried_on else
                 "NOT named as expected" if not named else "named, but no later case ran"))
        raise SystemExit(0 if named and carried_on else 1)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
