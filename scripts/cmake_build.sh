#!/usr/bin/env bash
# Configures build/cmake with CMake (find_package(Torch) from .venv's torch, ninja from .venv) and
# builds the targets named, or all of them: the ops library and C++ tests, the SIMT emulation of
# the CUDA kernels (libebm_ext_emu.so, which the Python tests load) and its sanitizer tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# CMake needs torch and ninja from .venv, not the extension: set up only when .venv is missing.
[ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, ninja' 2>/dev/null || bash scripts/setup.sh
prefix=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_MAKE_PROGRAM="$(.venv/bin/python -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))')" >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build/cmake -j "${MAX_JOBS:-2}" "${targets[@]}"
