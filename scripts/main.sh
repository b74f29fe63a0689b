#!/usr/bin/env bash
# The main job: sets up .venv (scripts/setup.sh), trains the energy-based tagger with the best
# criterion on the tweet POS corpus (../shared/data/twpos), and prints its test accuracy.
# Checkpoints, metrics.json and pictures land in runs/main/. Extra arguments go to
# `python/tagger.py train` (e.g. --criterion crf_nll, --corpus ewt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python python/tagger.py train --corpus twpos --out runs/main "$@"
