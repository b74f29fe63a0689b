#!/usr/bin/env bash
# Sets up .venv and times every op side by side with the libraries users pick today; prints
# the Markdown table of ratios that docs/benchmarks.md reports. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
# torch, faiss and SPAMS each bring an OpenMP runtime; left spinning after their parallel regions
# (the default), the idle threads of one steal the two cores from the next library timed.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/python -m pytest bench --benchmark-only -q --benchmark-json=runs/bench.json "$@"
.venv/bin/python bench/report.py runs/bench.json
