#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), builds the SIMT emulation of the CUDA kernels that the CPU ==
# CUDA tests run against (scripts/cmake_build.sh ebm_ext_emu), and runs the test suite; extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/cmake_build.sh ebm_ext_emu
EBM_REQUIRE_EMULATION=1 .venv/bin/python -m pytest tests "$@"
