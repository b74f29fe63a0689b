"""The CUDA kernels as the tests reach them: on a real GPU when there is one, and always through
the SIMT emulation build (csrc/simt/simt.h): the same .cu sources compiled by g++ as host code,
registered as ebm_ext_emu::<op> on CPU tensors (build/cmake/libebm_ext_emu.so, built by
scripts/cmake_build.sh ebm_ext_emu, which scripts/test.sh runs first).

`EmulatedCUDA` is a dispatch mode that sends every ebm_ext op with a CUDA kernel to its
emulated twin, so the public API, its autograd formulas and its backward ops all run the CUDA
kernels while the tensors stay on the CPU.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import os
from pathlib import Path

import torch
import torch.utils._pytree
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
EMULATION_LIBRARY = Path(os.environ.get("EBM_EMULATION_LIBRARY",
                                        ROOT / "build" / "cmake" / "libebm_ext_emu.so"))


def _load_emulation() -> str | None:
    """Loads the emulated ops; returns why they are missing, or None."""
    if not EMULATION_LIBRARY.exists():
        return (f"the SIMT emulation build is missing ({EMULATION_LIBRARY}): "
                "run scripts/cmake_build.sh ebm_ext_emu")
    torch.ops.load_library(str(EMULATION_LIBRARY))
    return None


EMULATION_MISSING = _load_emulation()
# scripts/test.sh (the README's test command, CI's) builds the emulation and sets this: there
# the emulated CUDA tests must never skip for want of the build.
if EMULATION_MISSING and os.environ.get("EBM_REQUIRE_EMULATION") == "1":
    raise RuntimeError(EMULATION_MISSING)


def emulated_ops() -> list[str]:
    """Names of the ops that have an emulated CUDA kernel (composites, registered for every
    backend at once, have none)."""
    prefix = "ebm_ext_emu::"
    return sorted(name[len(prefix):] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith(prefix)
                  and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"))


def _plain_tensors(args, kwargs) -> bool:
    """Whether every tensor argument is a real tensor: fake and meta tensors (opcheck,
    torch.compile) go to the op's fake implementation, as they would on CUDA."""
    leaves, _ = torch.utils._pytree.tree_flatten((args, kwargs))
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
               for t in leaves if isinstance(t, torch.Tensor))


class EmulatedCUDA(TorchDispatchMode):
    """Runs ebm_ext ops on their emulated CUDA kernels; counts the calls per op."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "ebm_ext" and _plain_tensors(args, kwargs):
            name = func._opname
            try:
                emulated = getattr(getattr(torch.ops.ebm_ext_emu, name), func._overloadname)
            except AttributeError:
                emulated = None
            if emulated is not None:
                self.calls[name] += 1
                return emulated(*args, **kwargs)
        return func(*args, **kwargs)


def emulating() -> bool:
    """Whether the calling test runs its ops on the emulated CUDA kernels."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return any(isinstance(m, EmulatedCUDA) for m in _get_current_dispatch_mode_stack())


def emulated_batch(n: int, emulated: int = 3) -> int:
    """A batch size for a test of many long solves: all n samples, or a few when the kernels are
    emulated (a block's barriers cost ~0.1 ms there; the samples exercise the same code)."""
    return min(n, emulated) if emulating() else n


def skip_compile_if_emulated():
    """torch.compile refuses to trace under a user dispatch mode; the emulated run of a test
    stops before its compile step (fake kernels and tracing are the same for every device)."""
    import pytest
    if emulating():
        pytest.skip("torch.compile does not trace under the emulation's dispatch mode "
                    "(what ran before this point did run on the emulated kernels)")


class Backend:
    """Where a test sends its CUDA side: `to` moves a tensor (or module) there, and the
    backend used as a context manager is where the ops must be called."""

    name = ""

    def to(self, x):
        raise NotImplementedError

    def __call__(self):
        return contextlib.nullcontext()

    def __repr__(self):
        return self.name


    @property
    def ops(self):
        """The namespace whose ops run this backend's kernels when called directly."""
        raise NotImplementedError

    def launches(self, call) -> tuple[int, set[str]]:
        """Runs call(); returns how many kernels it launched and the names of the ATen ops it
        dispatched (aten::item among them where it synchronised with the host)."""
        raise NotImplementedError


def _aten_ops(prof) -> set[str]:
    return {e.name for e in prof.events() if e.name.startswith("aten::")}


class RealCUDA(Backend):
    name = "cuda"

    def to(self, x):
        return None if x is None else x.cuda()

    @property
    def ops(self):
        return torch.ops.ebm_ext

    def launches(self, call):
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return len(kernels), _aten_ops(prof)


class Emulated(Backend):
    name = "emulated"

    def __init__(self):
        self.calls: collections.Counter[str] = collections.Counter()

    def to(self, x):
        if x is None:
            return None
        if isinstance(x, torch.nn.Module):
            return copy.deepcopy(x)
        return x.clone()

    @property
    def ops(self):
        self.calls["direct"] += 1  # the gpu fixture's check that an emulated kernel ran
        return torch.ops.ebm_ext_emu

    def launches(self, call):
        from torch.profiler import ProfilerActivity, profile
        before = torch.ops.ebm_ext_emu._simt_launches()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        return torch.ops.ebm_ext_emu._simt_launches() - before, _aten_ops(prof)

    @contextlib.contextmanager
    def __call__(self):
        mode = EmulatedCUDA()
        try:
            with mode:
                yield mode
        finally:
            self.calls.update(mode.calls)
