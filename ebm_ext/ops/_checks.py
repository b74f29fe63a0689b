"""Argument checks the dispatcher would otherwise answer for us, cryptically: None for a
required tensor, sparse (or other non-strided) layouts, and tensors on different devices (a meta
tensor among CPU ones would reach the fake kernel and come back as uninitialised memory). The
kernels' own checks (csrc/ops/*.h) cover everything else."""
from __future__ import annotations

from typing import Any

import torch


def check_tensors(op: str, *named: tuple[str, Any, bool]) -> None:
    """``named``: (argument name, value, required). Raises RuntimeError naming the op and the
    argument."""
    first = None
    for name, t, required in named:
        if t is None:
            if required:
                raise RuntimeError(f"{op}: {name} must be a tensor, got None")
            continue
        if not isinstance(t, torch.Tensor):
            raise RuntimeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise RuntimeError(f"{op}: {name} must be a dense (strided) tensor, got layout "
                               f"{t.layout}; call .to_dense() first")
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise RuntimeError(f"{op}: {name} must be on the same device as {first[0]} "
                               f"({first[1]}), got {t.device}")


INT64_MAX = 2 ** 63 - 1


def check_int64(op: str, name: str, value: Any) -> None:
    """An integer argument of an op's schema (int64): a Python int beyond int64 would reach the
    dispatcher as "Expected a value of type 'int' ... found type 'int'"; a bool or float would be
    taken or refused without naming the argument. Raises RuntimeError naming the op and it."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.SymInt):  # traced by torch.compile: the schema checks it
            return
        raise RuntimeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise RuntimeError(f"{op}: {name} must fit in int64 (at most 2**63 - 1), got {value}")


def check_fake_chain(op: str, unary: Any, trans: Any) -> None:
    """The shape checks of a chain op's fake kernel: unary (B, T, K) and trans (K, K), (B, K, K)
    per sequence or (B, T-1, K, K) per move."""
    torch._check(unary.dim() == 3, lambda: f"{op}: unary must be a 3-D tensor (B, T, K), got "
                 f"shape {tuple(unary.shape)}")
    B, T, K = unary.shape
    shapes = [(K, K), (B, K, K), (B, torch.sym_max(T - 1, 0), K, K)]
    torch._check(tuple(trans.shape) in shapes, lambda: f"{op}: trans must have shape " +
                 " or ".join(str(s) for s in shapes) + f", got {tuple(trans.shape)}")
