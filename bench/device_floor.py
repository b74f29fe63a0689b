"""What the CUDA benches measure besides wall time: the GPU-side time of a call, the device's own
rates (measured in the same run, not taken from a data sheet), the floor those rates put under a
case, and the check that a decoding agrees with ours.

- `device_rates()`: copy bandwidth (bytes read + written per second by a device-to-device copy
  of 1 GiB) and matrix-product rates in FP32 (TF32 off) and TF32.
- `gpu_seconds(fn)`: CUDA events around replays of a CUDA graph of `fn` where it can be
  captured, else around plain calls (the timer says which; host gaps count in the second).
- `floors(...)`: memory floor = bytes that must move / copy bandwidth; compute floor = FLOPs /
  the measured rate of the precision the implementation computes in.
- `assert_same_decoding(...)`: at least 99.9 % of tags equal to ours, and wherever a sequence's
  tags differ, the other path's energy (recomputed with chain_energy) equal to our minimum
  within 1e-4 relative: two exact decoders may break near-ties differently when they sum in
  another order, and neither is then wrong.
"""
import time

import torch

import ebm_ext

AGREEMENT = 0.999
ENERGY_RTOL = 1e-4


def _events_seconds(run, repeats):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    run()
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def gpu_seconds(fn, repeats=10, graph=True):
    """(seconds per call on the GPU, how it was timed: "graph" or "events (why not a graph)")."""
    torch.cuda.synchronize()
    run, how = fn, "events (not captured: the call reads results on the host)"
    if graph:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # capture needs the call's allocations warmed up
                fn()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run, how = g.replay, "graph"
        except Exception as e:  # noqa: BLE001: an op that syncs or allocates on the host
            torch.cuda.synchronize()
            how = f"events (capture failed: {type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return _events_seconds(run, repeats), how


def device_rates():
    """The device's copy bandwidth (bytes/s, read + written) and FP32/TF32 product rates
    (FLOP/s), each the best of a few timed runs."""
    n = 1 << 28  # 1 GiB of float32
    src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    copy_s = min(_events_seconds(lambda: dst.copy_(src), 5) for _ in range(3))
    del src, dst
    m = 8192
    a, b = torch.randn(m, m, device="cuda"), torch.randn(m, m, device="cuda")
    rates = {"copy_bytes_per_s": 2 * n * 4 / copy_s}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, tf32 in (("fp32_flop_per_s", False), ("tf32_flop_per_s", True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            rates[name] = 2 * m ** 3 / min(_events_seconds(lambda: a @ b, 3) for _ in range(2))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    rates["device"] = torch.cuda.get_device_name()
    return rates


def floors(rates, bytes_moved, flops=0.0, precision="fp32"):
    """The memory and compute floors of a case (seconds) and the larger one."""
    memory = bytes_moved / rates["copy_bytes_per_s"]
    compute = flops / rates[f"{precision}_flop_per_s"] if flops else 0.0
    return {"bytes": bytes_moved, "flops": flops, "precision": precision, "memory_floor_s": memory,
            "compute_floor_s": compute, "floor_s": max(memory, compute),
            "bound": "compute" if compute > memory else "memory"}


def record(benchmark, fn, rates, case_floors, rounds, graph=True):
    """Times fn with pytest-benchmark (wall time, synchronised) and its GPU time, and puts the
    GPU time, the floors and their ratio in the benchmark's extra_info (bench.json)."""
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    call()  # warm-up: kernels loaded, caches allocated
    t0 = time.perf_counter()
    benchmark.pedantic(call, rounds=rounds, iterations=1)
    gpu_s, how = gpu_seconds(fn, repeats=max(3, rounds), graph=graph)
    info = dict(case_floors, gpu_s=gpu_s, gpu_timer=how, gpu_over_floor=gpu_s / case_floors["floor_s"],
                device=rates["device"], copy_bytes_per_s=rates["copy_bytes_per_s"],
                timed_s=time.perf_counter() - t0)
    benchmark.extra_info.update(info)
    print(f"\n  gpu {gpu_s * 1e6:.1f} us ({how}); floor {case_floors['floor_s'] * 1e6:.1f} us "
          f"({case_floors['bound']}-bound); ratio {info['gpu_over_floor']:.1f}")
    return info


def assert_same_decoding(what, unary, trans, start, end, ours_tags, ours_energy, other_tags):
    """Tags of another exact decoder (or ours on another device) against ours: see the module's
    docstring. Tensors on any one device; start/end may be None."""
    other_tags = other_tags.to(ours_tags.device, torch.long)
    assert other_tags.shape == ours_tags.shape, f"{what}: tags {tuple(other_tags.shape)}, ours {tuple(ours_tags.shape)}"
    agreement = (other_tags == ours_tags).double().mean().item()
    assert agreement >= AGREEMENT, f"{what}: {agreement:.5f} of tags agree with ours (at least {AGREEMENT} expected)"
    rows = (other_tags != ours_tags).any(-1).nonzero().flatten()
    if rows.numel():
        energy = ebm_ext.chain_energy(unary[rows], trans, other_tags[rows], None, start, end)
        want = ours_energy[rows].to(energy.dtype)
        gap = ((energy - want).abs() / want.abs().clamp_min(1.0)).max().item()
        assert gap <= ENERGY_RTOL, (f"{what}: {rows.numel()} sequences decode differently and their "
                                    f"energies differ from our minimum by up to {gap:.2e} relative "
                                    f"(at most {ENERGY_RTOL} for a tie)")
    return agreement, int(rows.numel())
