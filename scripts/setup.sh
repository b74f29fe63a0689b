#!/usr/bin/env bash
# Creates .venv (CPU torch 2.13.0, taken from this machine's disk) with everything the project
# needs, and builds ebm_ext in place into it. Idempotent, and a rerun recompiles only what
# changed: the build happens in the checkout's build/ (ninja is incremental), and the checkout
# is put on the environment's path by a .pth file. `pip install -e .` would build in a fresh
# temporary directory each time (setuptools >= 64 editable wheels) and so recompile every object
# (about 4 minutes on 2 cores) whenever the second quick-start command follows the first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 -r requirements.txt
MAX_JOBS="${MAX_JOBS:-2}" .venv/bin/python setup.py -q build_ext --inplace
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$(pwd)" > "$site/ebm_ext_checkout.pth"
.venv/bin/python -c 'import ebm_ext' # fails loudly if the build cannot be imported
