#!/usr/bin/env bash
# Fills .gpu/ (git-ignored) with what scripts/gpu_check.sh needs on the GPU machine and that its
# image lacks (it has torch 2.11, pytest, hypothesis, pytest-benchmark, scikit-learn, ninja):
# wheels for its Python 3.12. The device tool carries .gpu/ when told (carry: [".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
pip="${PYTHON:-python3} -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all:"
platforms="--python-version 3.12 --implementation cp --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any"
# The anchors of the CUDA benches and the op tests' one missing dependency.
for pkg in expecttest==0.3.0 pytorch-crf==0.7.2 torch-struct==0.5 torbi==1.4.1; do
  $pip $platforms -d .gpu "$pkg" || echo "prepare_gpu_check: no wheel for $pkg (its bench case will skip)"
done
ls -l .gpu
