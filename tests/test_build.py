"""The build contains what it should: CUDA kernels whenever this torch has CUDA (unless the
build was told EBM_WITH_CUDA=0), and every op has a kernel for every backend built."""
import os

import torch

import ebm_ext

EXPECTED_OPS = {"chain_energy", "viterbi", "viterbi_kbest", "loss_augmented_viterbi",
                "chain_log_partition", "chain_marginals", "_chain_log_partition_backward",
                "chain_expectation", "_chain_covariance", "chain_sample",
                "project_simplex", "nearest_centroid",
                "sparse_code",
                "chain_relaxed_inference", "bilstm", "_bilstm_backward"}


# Registered once for every backend (no kernel of their own): they must exist as ops.
COMPOSITE_OPS = {"sparse_coding_energy", "sparse_coding_lipschitz"}


def test_composite_ops_exist_without_backend_kernels():
    info = ebm_ext.build_info()
    for name in COMPOSITE_OPS:
        assert hasattr(torch.ops.ebm_ext, name)
        assert name not in info["cpu_ops"] and name not in info["cuda_ops"]


def test_cuda_kernels_built_when_torch_has_cuda():
    info = ebm_ext.build_info()
    if torch.version.cuda is not None and os.environ.get("EBM_WITH_CUDA") != "0":
        assert info["cuda"], "torch has CUDA but ebm_ext was built without its CUDA kernels"


def test_every_op_has_kernels_for_each_built_backend():
    info = ebm_ext.build_info()
    assert EXPECTED_OPS <= set(info["cpu_ops"])
    if info["cuda"]:
        assert set(info["cpu_ops"]) == set(info["cuda_ops"])
    else:
        assert info["cuda_ops"] == []


def test_built_against_running_torch():
    assert torch.__version__.startswith(ebm_ext.build_info()["torch_version"])


def test_every_cuda_kernel_has_an_emulated_build():
    """The SIMT emulation compiles every .cu file: each op with a CPU kernel has its emulated
    CUDA twin (ebm_ext_emu::<op>), so the CPU == CUDA tests miss none."""
    import pytest
    from cuda_backends import EMULATION_MISSING, emulated_ops
    if EMULATION_MISSING:
        pytest.skip(EMULATION_MISSING)
    assert set(emulated_ops()) == set(ebm_ext.build_info()["cpu_ops"])
