#!/usr/bin/env bash
# Compiles the CUDA kernels on a machine without a GPU: a CUDA build of torch (2.14.1, cu130,
# from this machine's disk) in .venv-cuda, nvcc from /usr/local/cuda. The build happens in a
# copy of the tracked sources, so the CPU build in the work tree is left alone, with the command
# the GPU check builds with on the device (setup.py build_ext --inplace, nvcc --resource-usage:
# each kernel's registers, stack and spills are in this build's output). Then the CUDA build is
# imported and tests/test_build.py checks that every op has a CUDA kernel.
#   bash scripts/build_cuda.sh [--env-only]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ ! -x .venv-cuda/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-cuda
fi
.venv-cuda/bin/pip install -q --disable-pip-version-check torch==2.14.1 numpy ninja \
  'setuptools>=64' pytest hypothesis expecttest
# --env-only: stop once .venv-cuda is ready (.ci/run installs it beside the CPU tests: unpacking
# the 5.5 GB wheel waits on the disk, not on the cores).
[ "${1:-}" = "--env-only" ] && exit 0
site=$(.venv-cuda/bin/python -c 'import site; print(site.getsitepackages()[0])')
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
# The local toolkit lacks the cuBLAS/cuSPARSE headers that torch's CUDA headers include; the
# CUDA torch wheel ships them.
export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export EBM_WITH_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}"
src="${EBM_CUDA_BUILD_DIR:-$root/build/cuda-src}"
mkdir -p "$src"
git ls-files -z | xargs -0 cp --parents -t "$src"
cd "$src"
EBM_NVCC_FLAGS="--resource-usage" "$root/.venv-cuda/bin/python" setup.py -q build_ext --inplace
PYTHONPATH="$src" "$root/.venv-cuda/bin/python" -m pytest -q -p no:cacheprovider tests/test_build.py
