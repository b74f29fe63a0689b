#!/usr/bin/env bash
# Builds the documentation site into docs/_build/html, warnings as errors (as CI does): sets up
# .venv (scripts/setup.sh: the extension must import, autodoc reads its docstrings), installs
# docs/requirements.txt, then sphinx-build. Extra arguments go to sphinx-build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q -r docs/requirements.txt
rm -rf docs/generated  # autosummary's pages are made anew, so a removed name leaves none behind
.venv/bin/python -m sphinx -b html -W --keep-going docs docs/_build/html "$@"
echo "docs: open docs/_build/html/index.html"
