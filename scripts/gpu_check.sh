#!/usr/bin/env bash
# The one-shot check on a GPU machine (the device tool's H100/H200: Python 3.12 with torch 2.11
# + CUDA 13.0, 16 cores, no network, no ../shared). What the machine lacks travels in .gpu/
# (bash scripts/prepare_gpu_check.sh, run here first). Run it under a 570-second limit:
#
#   device run: bash scripts/gpu_check.sh          (carry: [".gpu"], timeout_s: 570)
#   here:       GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh   (the same steps on the emulation)
#
# The steps, in the order of what a first GPU run is worth, each under its own time limit (they
# add up to 475 s on the device, leaving the rest of the 570 s for the machine's own start-up
# of the command and the transfers):
#   probe       15 s  the GPU, driver, torch, nvcc, compute-sanitizer; the carried wheels
#   build      135 s  ebm_ext for sm_90 with 16 jobs; registers, stack and spills per kernel
#                     (nvcc --resource-usage) into build_resources.log
#   kernels     30 s  every kernel once under CUDA_LAUNCH_BLOCKING=1: a fault is named by
#                     kernel and case (scripts/gpu_kernels.py)
#   tests      100 s  every CPU == CUDA and CUDA-only test case (-m device_case), 8 workers
#   bench       90 s  bench/test_cuda_bench.py: wall and GPU time, floors, anchors; every op's
#                     roofline case (bench/roofline.py): its predicted time beside the measured
#   sanitizers  75 s  memcheck, racecheck, synccheck, initcheck side by side, on our kernels
#                     only, without the caching allocator (scripts/gpu_sanitizers.py)
#   opcheck     30 s  the remaining device cases: opcheck and torch.compile
# $OUT/gpu_check.json (scripts/gpu_check_summary.py) is rewritten after every step and on exit,
# so a run stopped at any moment still returns its verdict so far. $OUT also gets
# gpu_check.log, build_resources.log, junit_tests.xml, junit_opcheck.xml, bench.json and
# sanitizers.log: seven files, inside the device tool's eight.
#
# The dry run (GPU_CHECK_DRY_RUN=1, CI's last step) takes the same steps with the same flags on
# the SIMT emulation; only what needs the device is replaced: nvidia-smi and compute-sanitizer
# are not run (the sanitizer runner runs its program bare), the build is the emulation's
# (scripts/cmake_build.sh), the kernel driver and tests run `emulated` with 2 workers, the
# limits are scaled by 15 (the emulation is far slower, on 2 cores), and a planted fault must be
# named. CI runs the emulated device cases here only (scripts/test.sh skips them there), so
# they run once, with the GPU check's own selection and flags.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
dry="${GPU_CHECK_DRY_RUN:-0}"
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_check.log") 2>&1
work=$(mktemp -d)
if [ "$dry" = 1 ]; then
  py=.venv/bin/python where=emulated workers=2 scale="${GPU_CHECK_LIMIT_SCALE:-15}"
else
  py=python3 where=cuda workers=8 scale=1
fi
: > "$work/steps.tsv"
summary() { "$py" scripts/gpu_check_summary.py "$work" "$OUT" "$dry" "$@"; }
trap 'summary --final; rc=$?; rm -rf "$work"; exit $rc' EXIT

# step NAME LIMIT COMMAND...: runs the command under LIMIT * scale seconds, records how it went
# and rewrites the summary.
step() {
  local name=$1 limit=$(($2 * scale))
  shift 2
  echo "== $name (limit $limit s): $*"
  printf '%s\t%s\t%s\n' "$name" "$limit" "$(date +%s)" > "$work/current"
  local t0=$SECONDS
  # through bash, so that a step may be one of the functions below (exported with their variables)
  timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@"
  local rc=$?
  rm -f "$work/current"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$work/steps.tsv"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  summary
}

probe() {
  if [ "$dry" = 1 ]; then
    echo "dry run: no GPU; nvidia-smi and compute-sanitizer not run; wheels in .gpu: $(ls .gpu 2>/dev/null | tr '\n' ' ')"
  else
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || return 1
    compute-sanitizer --version | tail -1
    if ls .gpu/*.whl >/dev/null 2>&1; then
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/*.whl || return 1
    fi
  fi
  nvcc --version | tail -2
  "$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "(no device)")' || return 1
  "$py" -c 'import xdist, pytest_timeout, pytest_benchmark, hypothesis, expecttest' || return 1
  for anchor in torbi torch_struct torchcrf; do
    "$py" -c "import $anchor" >/dev/null 2>&1 && echo "anchor $anchor: importable" || echo "anchor $anchor: NOT importable (its bench case will skip)"
  done
}

build() {
  local log="$work/build.log" rc
  if [ "$dry" = 1 ]; then
    bash scripts/cmake_build.sh ebm_ext_emu > "$log" 2>&1
    rc=$?
    # the nvcc build's resource usage, from CI's scripts/build_cuda.sh
    cat "${EBM_CUDA_BUILD_LOG:-runs/cuda-build.log}" >> "$log" 2>/dev/null
  else
    EBM_NVCC_FLAGS=--resource-usage "$py" setup.py -q build_ext --inplace > "$log" 2>&1
    rc=$?
  fi
  grep -E "ptxas info|bytes stack frame" "$log" > "$OUT/build_resources.log"
  echo "build: $(grep -c 'Used [0-9]* registers' "$OUT/build_resources.log") kernel builds reported their registers"
  [ "$rc" = 0 ] || tail -60 "$log"
  return "$rc"
}

export -f probe build
export dry py work OUT
if [ "$dry" != 1 ]; then
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  site=$("$py" -c 'import site; print(site.getsitepackages()[0])')
  export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
  export TORCH_CUDA_ARCH_LIST=9.0 EBM_WITH_CUDA=1 MAX_JOBS=16
fi
export EBM_TEST_DEVICES=$where HYPOTHESIS_PROFILE=ci PYTHONUNBUFFERED=1
pytest=("$py" -m pytest -q -p no:cacheprovider -o addopts=-ra)

step probe 15 probe
step build 135 build
if grep -q "^build	0	" "$work/steps.tsv"; then
  step kernels 30 env CUDA_LAUNCH_BLOCKING=1 "$py" scripts/gpu_kernels.py "$where" --json "$work/kernels.json"
  if [ "$dry" = 1 ]; then
    # the kernel driver must name a fault planted in one kernel (csrc/simt/simt.cpp)
    step planted 30 env CUDA_LAUNCH_BLOCKING=1 EBM_SIMT_PLANT_FAULT=nearest_centroid_kernel \
      "$py" scripts/gpu_kernels.py "$where" --json "$work/planted.json" --expect-fault nearest_centroid_kernel
  fi
  step tests 100 "${pytest[@]}" -n "$workers" --timeout $((60 * scale)) -m "device_case and not compile_check" tests \
    --junitxml="$OUT/junit_tests.xml"
  step bench 90 "${pytest[@]}" --timeout $((40 * scale)) bench/test_cuda_bench.py --benchmark-json="$OUT/bench.json"
  sanitizer_dry=()
  [ "$dry" = 1 ] && sanitizer_dry=(--dry-run)
  step sanitizers 75 "$py" scripts/gpu_sanitizers.py "$where" --limit $((70 * scale)) --log "$OUT/sanitizers.log" \
    --json "$work/sanitizers.json" "${sanitizer_dry[@]}"
  step opcheck 30 "${pytest[@]}" -n "$workers" --timeout $((60 * scale)) -m "device_case and compile_check" tests \
    --junitxml="$OUT/junit_opcheck.xml"
else
  echo "gpu_check: the build failed; no later step can run"
fi
