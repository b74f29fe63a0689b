#!/usr/bin/env bash
# Fills .gpu/ (git-ignored) with what scripts/gpu_check.sh needs on the GPU machine and that its
# image lacks (it has torch 2.11, pytest, pytest-xdist, pytest-timeout, hypothesis,
# pytest-benchmark, scikit-learn, ninja, numpy, tqdm, tensorboard, psutil, requests, click,
# markdown, pyyaml, certifi, filelock): wheels for its Python 3.12, without their dependencies,
# so every one that is needed is named here. The device tool carries .gpu/ when told
# (carry: [".gpu"]); about 31 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
pip="${PYTHON:-python3} -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all:"
platforms="--python-version 3.12 --implementation cp --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any"
# The op tests' one missing dependency; the decoding anchors of the CUDA benches; and what
# `import torbi` imports: yapecs (its configuration), torchutil (which imports apprise for its
# notifications, and apprise requests-oauthlib).
packages="expecttest==0.3.0 pytorch-crf==0.7.2 torch-struct==0.5 torbi==1.4.1 yapecs==0.5.0
  torchutil==0.1.2 apprise==2.3.0 requests-oauthlib==2.0.0 oauthlib==4.0.1"
for pkg in $packages; do
  $pip $platforms -d .gpu "$pkg"
done
ls -l .gpu
