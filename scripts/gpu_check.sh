#!/usr/bin/env bash
# The one-shot check on a GPU machine (the device tool's H200: Python 3.12 with torch 2.11 +
# CUDA 13.0, no network, no ../shared): builds ebm_ext's CUDA kernels against that torch for
# sm_90, runs the CUDA cases of the op tests, compute-sanitizer memcheck and racecheck on a
# driver of every kernel (scripts/gpu_kernels.py), and the CUDA benches (bench/test_cuda_bench.py).
# Writes $OUT/gpu_check.log and $OUT/gpu_check.json (each step's status and seconds, and the
# benches' timings); inside 8 minutes. What the machine lacks travels in .gpu/
# (scripts/prepare_gpu_check.sh, run here first):
#
#   device run: bash scripts/gpu_check.sh          (carry: [".gpu"], timeout_s: 540)
#   here:       GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh   (the same steps on the emulation)
set -uo pipefail
cd "$(dirname "$0")/.."
dry="${GPU_CHECK_DRY_RUN:-0}"
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
steps="$OUT/steps.tsv"
: > "$steps"
py=python3
[ "$dry" = 1 ] && py=.venv/bin/python

# step NAME SECONDS COMMAND...: runs the command under a time limit and records how it went.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$steps"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}

if [ "$dry" = 1 ]; then
  echo "dry run: no GPU; wheels in .gpu: $(ls .gpu 2>/dev/null | tr '\n' ' ')"
  export EBM_TEST_DEVICES=emulated
  step build 600 bash scripts/cmake_build.sh ebm_ext_emu
  step tests 300 "$py" -m pytest -q -p no:cacheprovider tests/test_build.py
  step kernels 300 "$py" scripts/gpu_kernels.py emulated
  step bench 120 "$py" -m pytest -q -p no:cacheprovider bench/test_cuda_bench.py --benchmark-only \
    --benchmark-json="$OUT/bench.json"
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  if ls .gpu/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/*.whl
    export PYTHONPATH=/tmp/site
  fi
  site=$("$py" -c 'import site; print(site.getsitepackages()[0])')
  export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
  export TORCH_CUDA_ARCH_LIST=9.0 EBM_WITH_CUDA=1 MAX_JOBS=16
  step build 240 "$py" setup.py -q build_ext --inplace
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" EBM_TEST_DEVICES=cuda
  "$py" -c 'import torch, ebm_ext; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), ebm_ext.build_info()["cuda_ops"])'
  step tests 150 "$py" -m pytest -q -p no:cacheprovider --timeout 60 tests/test_build.py tests/test_chain.py \
    tests/test_partition.py tests/test_relaxed.py tests/test_relaxed_inference.py tests/test_kmeans.py \
    tests/test_sparse_coding.py tests/test_bilstm.py -k "cuda or gpu"
  step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 3 "$py" scripts/gpu_kernels.py cuda
  step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 3 "$py" scripts/gpu_kernels.py cuda
  step bench 120 "$py" -m pytest -q -p no:cacheprovider bench/test_cuda_bench.py --benchmark-only \
    --benchmark-json="$OUT/bench.json"
fi

"$py" - "$steps" "$OUT/bench.json" "$OUT/gpu_check.json" <<'PY'
import json, sys
steps = [dict(zip(("step", "exit", "seconds"), line.split("\t"))) for line in open(sys.argv[1]).read().splitlines()]
try:
    bench = [{"name": b["fullname"], "group": b["group"], "mean_s": b["stats"]["mean"], "min_s": b["stats"]["min"],
              "rounds": b["stats"]["rounds"]} for b in json.load(open(sys.argv[2]))["benchmarks"]]
except (OSError, KeyError, ValueError):
    bench = []
json.dump({"steps": steps, "bench": bench}, open(sys.argv[3], "w"), indent=1)
print(json.dumps(steps))
failed = [s["step"] for s in steps if s["exit"] != "0"]
if failed:
    print("gpu_check: failed steps:", ", ".join(failed))
sys.exit(1 if failed else 0)
PY
rc=$?
rm -f "$steps"
exit $rc
