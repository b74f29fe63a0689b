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
