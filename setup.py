"""Builds ebm_ext._C: the CPU kernels always, the CUDA kernels when this torch has CUDA and
nvcc is found (decided from torch.version.cuda and CUDA_HOME, not from a visible GPU, so a
GPU-less host still compiles them). EBM_WITH_CUDA=0/1 overrides the choice; EBM_NVCC_FLAGS adds
nvcc flags (the GPU check passes --resource-usage: registers, stack and spills per kernel).

    pip install -v --no-build-isolation .      (-v: a line per compiled file)

The wheel requires the torch it was compiled against (torch==X.Y.Z): the extension links
against that torch's C++ ABI, so pip refuses to install it beside another torch rather than
letting the import fail. It is compiled without debug information (-g0: the .so is about 2 MB
instead of 37 MB); EBM_DEBUG=1 keeps it.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

# Architectures to compile for when no GPU is visible (A100 and H100/H200).
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def want_cuda() -> bool:
    forced = os.environ.get("EBM_WITH_CUDA")
    if forced is not None:
        if forced not in ("0", "1"):
            raise SystemExit(f"EBM_WITH_CUDA must be 0 or 1, got {forced!r}")
        if forced == "1" and (torch.version.cuda is None or cpp_extension.CUDA_HOME is None):
            raise SystemExit(
                "EBM_WITH_CUDA=1 but this torch has no CUDA "
                f"(torch.version.cuda={torch.version.cuda}) or nvcc was not found "
                f"(CUDA_HOME={cpp_extension.CUDA_HOME})")
        return forced == "1"
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    with_cuda = want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
    # -Wno-psabi: GCC notes that passing our 64-byte vector types (simd.h) by value changed ABI
    # in GCC 4.6; they never cross a library boundary, so the note is noise to a user installing.
    debug = os.environ.get("EBM_DEBUG") == "1"
    cxx_flags = ["-O3", "-fopenmp", "-Wno-psabi"] + ([] if debug else ["-g0"])
    link_flags = ["-fopenmp"] + ([] if debug else ["-Wl,--strip-debug"])
    define_macros = []
    print(f"ebm_ext build: torch {torch.__version__}, torch CUDA {torch.version.cuda}, "
          f"CUDA_HOME {cpp_extension.CUDA_HOME}, CUDA kernels: {'yes' if with_cuda else 'no'}")
    if not with_cuda:
        return cpp_extension.CppExtension(
            "ebm_ext._C", sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    print(f"ebm_ext build: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    sources += sorted(glob.glob("csrc/ops/cuda/*.cu"))
    define_macros.append(("EBM_WITH_CUDA", None))
    return cpp_extension.CUDAExtension(
        "ebm_ext._C", sources, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags,
                            "nvcc": ["-O3", "-lineinfo"] + os.environ.get("EBM_NVCC_FLAGS", "").split()},
        extra_link_args=link_flags)


def install_requires() -> list:
    """What the library imports, with the torch it is being built against pinned (its release
    only: a +cpu or +cu130 local label is the same release)."""
    return [f"torch=={torch.__version__.split('+')[0]}", "numpy", "tqdm", "conllu"]


setup(
    packages=find_packages(include=["ebm_ext", "ebm_ext.*"]),
    install_requires=install_requires(),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
