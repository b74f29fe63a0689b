"""Shared by every bench module: the same random chain energies, and
one way to time an implementation (pytest-benchmark's calibration for the fast ones, a fixed
number of rounds for the slow anchors)."""

import torch


# torch-struct's semiring scan takes seconds per call and GBs at the large shapes: time it once.
SLOW = {"torch-struct": 1, "pytorch-crf": 3, "reference": 5}


def _inputs(shape, device="cpu"):
    g = torch.Generator().manual_seed(0)
    B, T, K = shape
    unary = torch.randn(B, T, K, generator=g).to(device)
    trans = torch.randn(K, K, generator=g).to(device)
    start = torch.randn(K, generator=g).to(device)
    end = torch.randn(K, generator=g).to(device)
    return unary, trans, start, end


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn, impl, device="cpu"):
    def timed():
        out = fn()
        _sync(device)
        return out
    rounds = SLOW.get(impl)
    if rounds is None:
        return benchmark(timed)
    return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)


def _id(shape):
    return "x".join(map(str, shape))
