import os

import pytest
import torch

from cuda_backends import EMULATION_MISSING, Emulated, EmulatedCUDA, RealCUDA

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", "emulated"] + (["cuda"] if HAS_CUDA else [])
GPU_BACKENDS = ["emulated"] + (["cuda"] if HAS_CUDA else [])
# EBM_TEST_DEVICES=cuda (scripts/gpu_check.sh) keeps only the named backends' cases.
if os.environ.get("EBM_TEST_DEVICES"):
    _keep = os.environ["EBM_TEST_DEVICES"].split(",")
    DEVICES = [d for d in DEVICES if d in _keep]
    GPU_BACKENDS = [d for d in GPU_BACKENDS if d in _keep]


@pytest.fixture(params=DEVICES)
def device(request):
    """Where a test's ops run: "cpu", "cuda", or "emulated": the test sees "cpu" tensors and its
    ops run the emulated CUDA kernels (tests/cuda_backends.py)."""
    if request.param != "emulated":
        yield request.param
        return
    if EMULATION_MISSING:
        pytest.skip(EMULATION_MISSING)
    with EmulatedCUDA():
        yield "cpu"


@pytest.fixture(params=GPU_BACKENDS)
def gpu(request):
    """The CUDA side of a CPU == CUDA test: `gpu.to(x)` moves an input, and the ops are called
    inside `with gpu():`. The emulated backend must have run at least one emulated kernel."""
    if request.param == "cuda":
        yield RealCUDA()
        return
    if EMULATION_MISSING:
        pytest.skip(EMULATION_MISSING)
    backend = Emulated()
    yield backend
    assert backend.calls, "the test ran no emulated CUDA kernel"


# torch.library.opcheck's checks: every op's opcheck runs as one test per (op case, check), so a
# failure names both.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_dynamic")


@pytest.fixture(params=OPCHECK_UTILS)
def opcheck_util(request):
    return request.param


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


def tolerance(dtype):
    return {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-9, "rtol": 1e-9}


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
