#!/usr/bin/env bash
# Builds the ops, the C++ tests and the SIMT emulation's sanitizer tests with CMake
# (scripts/cmake_build.sh) and runs them with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/cmake_build.sh
ctest --test-dir build/cmake --output-on-failure
