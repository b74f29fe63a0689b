import os

import pytest
import torch
from hypothesis import HealthCheck, settings


from cuda_backends import EMULATION_MISSING, Emulated, EmulatedCUDA, RealCUDA

# Hypothesis profiles (HYPOTHESIS_PROFILE selects one; CI and the GPU check set "ci"): "ci" is
# derandomised, keeps no example database and has no deadline, so a run draws the same examples
# every time and cannot fail on a draw that a rerun would not repeat, nor on a slow machine's
# timing; "dev", the default, draws anew each run (and remembers failures in .hypothesis/),
# which is how new bugs are found.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    """Give each parametrisation of a property test its own derandomised seed, whatever else the
    run selects. Hypothesis' pytest plugin keys a parametrised test by its node id, but skips
    that for every case after the first once the test suppresses the function_scoped_fixture
    health check (hypothesis 6.170: its first call adds differing_executors to the suppressed
    set, and with both suppressed it no longer looks at fixture parameters): a test[emulated]
    then drew test[cpu]'s examples in a full run and its own under -k or on another xdist
    worker, so a CI failure did not reproduce alone."""
    inner = getattr(getattr(item.obj, "hypothesis", None), "inner_test", None)
    if inner is not None and hasattr(item, "callspec"):
        inner._hypothesis_internal_add_digest = item.nodeid.encode()

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


# The cases that run CUDA kernels (real or emulated): a `device` of "cuda" or "emulated", the
# `gpu` fixture, or a test that needs a CUDA device. scripts/gpu_check.sh selects them with
# `-m device_case`; among them, `compile_check` marks the opcheck and torch.compile cases, which
# trace more than they run kernels and so come last there.
def pytest_collection_modifyitems(config, items):
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        needs_cuda = any(m.kwargs.get("reason") == "no CUDA device" for m in item.iter_markers("skipif"))
        if params.get("device") in ("cuda", "emulated") or "gpu" in params or needs_cuda:
            item.add_marker(pytest.mark.device_case)
            if "opcheck_util" in item.fixturenames or "compile" in item.name:
                item.add_marker(pytest.mark.compile_check)
