#!/usr/bin/env bash
# Sets up .venv and times every op side by side with the libraries users pick today; prints
# the Markdown table of ratios that the README reports. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
.venv/bin/python -m pytest bench --benchmark-only -q --benchmark-json=runs/bench.json "$@"
.venv/bin/python bench/report.py runs/bench.json
