#!/usr/bin/env bash
# Creates .venv (CPU torch 2.13.0, taken from this machine's disk) with everything the project
# needs, and builds ebm_ext into it (editable: the kernels are compiled in place). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 -r requirements.txt
if .venv/bin/python -c 'import ebm_ext' 2>/dev/null; then
  # Already built and installed (editable): rebuild in place what changed (ninja is incremental).
  MAX_JOBS="${MAX_JOBS:-2}" .venv/bin/python setup.py -q build_ext --inplace
else
  MAX_JOBS="${MAX_JOBS:-2}" .venv/bin/pip install -q --disable-pip-version-check \
    --no-build-isolation -e .
fi
