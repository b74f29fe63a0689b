"""What the training programs share: resumable epoch loops, JSON outputs, progress bars and
torch.distributed set-up. Atomic writes and safe checkpoints are the library's
(ebm_ext.checkpoint)."""
from __future__ import annotations

import json
import os
import pathlib
from contextlib import contextmanager
from typing import Any, Iterable

import torch
import torch.distributed as dist

from ebm_ext.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint


class EpochCheckpoint:
    """Checkpoints of an epoch loop that a later run can resume from: after each epoch, ``save``
    writes the modules', optimizers' and RNG state with the loop's own values (its history,
    best score...) atomically to ``path``; ``start`` gives (the first epoch to run, those
    values), from ``path`` when ``resume`` is set and it exists, else (first, initial). Epoch
    loops whose data order depends on nothing but the epoch then end, resumed, with exactly the
    parameters of an uninterrupted run."""

    def __init__(self, path, modules: dict, optimizers: dict, resume: bool):
        self.path, self.modules, self.optimizers, self.resume = (pathlib.Path(path), modules,
                                                                 optimizers, resume)

    def start(self, first: int, initial: dict) -> tuple[int, dict]:
        if not (self.resume and self.path.exists()):
            return first, initial
        state = load_checkpoint(self.path)
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        torch.set_rng_state(state["rng"])
        return state["epoch"] + 1, state["values"]

    def save(self, epoch: int, values: dict) -> None:
        save_checkpoint({"modules": {n: m.state_dict() for n, m in self.modules.items()},
                         "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                         "rng": torch.get_rng_state(), "epoch": epoch, "values": values},
                        self.path)


def write_json(obj: Any, path) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic_write_bytes(path, lambda f: f.write(data))


def progress(iterable: Iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


class Distributed:
    """torch.distributed as torchrun sets it up (RANK, WORLD_SIZE, LOCAL_RANK in the
    environment): gloo on CPU, NCCL on GPU. A single process when not launched by torchrun."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1
        if self.active and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world

    def broadcast_flag(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([int(flag)])
        dist.broadcast(t, 0)
        return bool(t.item())

    def max_param_difference(self, module: torch.nn.Module) -> float:
        """Largest difference between any rank's parameters and rank 0's (0 when in sync)."""
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in module.parameters()])
        if not self.active:
            return 0.0
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        return max((g - gathered[0]).abs().max().item() for g in gathered)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def eval_mode(module: torch.nn.Module):
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)
