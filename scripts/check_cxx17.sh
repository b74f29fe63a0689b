#!/usr/bin/env bash
# Compiles every translation unit (the .cpp files and, through nvcc, the .cu files) as C++17
# against torch 2.11.0's headers, the torch of the GPU machine (scripts/gpu_check.sh builds there
# with torch 2.11's cpp_extension, which passes -std=c++17 to g++ and nvcc, where our own builds
# use 2.13/2.14 and C++20). A C++20-only construct fails here, in CI, instead of costing the
# GPU check its first step. Syntax only: no object is written.
#
# torch 2.11.0's headers come from its wheel, unpacked (include/ only) into build/torch-2.11.0;
# it is neither installed nor imported. The .cu files need CUDA's headers and cuBLAS's (from
# .venv-cuda, scripts/build_cuda.sh --env-only): without .venv-cuda they are skipped, loudly.
#   bash scripts/check_cxx17.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.11.0
dest=build/torch-$version
if [ ! -d "$dest/torch/include" ] || [ ! -f "$dest/torch/utils/cpp_extension.py" ]; then
  wheels=$(mktemp -d)
  "${PYTHON:-python3}" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 "torch==$version" -d "$wheels"
  mkdir -p "$dest"
  # only the headers and cpp_extension.py (with Python's zipfile: unzip may not be installed)
  "${PYTHON:-python3}" - "$wheels"/torch-"$version"-*.whl "$dest" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist()
                                   if n.startswith("torch/include/") or n == "torch/utils/cpp_extension.py"])
PY
  rm -rf "$wheels"
fi
include="$PWD/$dest/torch/include"
python_include=$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
# The flags torch 2.11's cpp_extension gives an extension's sources (with ours from setup.py).
defines=(-DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C)
# and the flags it gives nvcc (COMMON_NVCC_FLAGS: --expt-relaxed-constexpr, the half-operator
# defines), read from 2.11's own cpp_extension.py so that they follow it
mapfile -t nvcc_flags < <("${PYTHON:-python3}" - "$dest/torch/utils/cpp_extension.py" <<'PY'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMON_NVCC_FLAGS" for t in node.targets):
        print("\n".join(ast.literal_eval(node.value)))
PY
)
[ ${#nvcc_flags[@]} -gt 0 ] || { echo "check_cxx17: COMMON_NVCC_FLAGS not found in torch $version's cpp_extension.py"; exit 1; }
includes=(-I"$include" -I"$include/torch/csrc/api/include" -I"$python_include")

# Two compiles at a time (MAX_JOBS), each into its own log; a failure prints its log.
mkdir -p build/cxx17
rm -f build/cxx17/*.log build/cxx17/failed
jobs=0
check() {  # check FILE COMMAND...
  local file=$1 log
  shift
  log="build/cxx17/$(echo "$file" | tr '/ ()' '____').log"
  (
    if "$@" > "$log" 2>&1; then
      echo "c++17 ok: $file"
    else
      echo "c++17 FAILED: $file"
      cat "$log"
      echo "$file" >> build/cxx17/failed
    fi
  ) &
  jobs=$((jobs + 1))
  if [ "$jobs" -ge "${MAX_JOBS:-2}" ]; then
    wait -n
    jobs=$((jobs - 1))
  fi
}

for f in $(git ls-files 'csrc/*.cpp' 'csrc/ops/*.cpp' 'csrc/ops/cpu/*.cpp'); do
  check "$f" g++ -std=c++17 -fsyntax-only -fopenmp -fPIC "${defines[@]}" "${includes[@]}" "$f"
done
# The .cu files as the SIMT emulation compiles them (g++, host code), in C++17.
for f in $(git ls-files 'csrc/ops/cuda/*.cu'); do
  check "$f (emulation)" g++ -std=c++17 -fsyntax-only -xc++ -DEBM_SIMT_EMULATION "${includes[@]}" "$f"
done
# And as nvcc compiles them: the host side through g++, the device side through nvcc's front end.
site=$(.venv-cuda/bin/python -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
nvcc="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
if [ -n "$site" ] && [ -x "$nvcc" ]; then
  for f in $(git ls-files 'csrc/ops/cuda/*.cu'); do
    check "$f (nvcc)" "$nvcc" -std=c++17 -fdevice-syntax-only -arch=sm_90 -Xcompiler -fsyntax-only \
      "${nvcc_flags[@]}" -DEBM_WITH_CUDA "${defines[@]}" "${includes[@]}" -I"$site/nvidia/cu13/include" -c "$f" \
      -o /dev/null
  done
else
  echo "check_cxx17: no .venv-cuda or nvcc: the .cu files were not compiled by nvcc"
  echo "(nvcc not run)" >> build/cxx17/failed
fi
wait
if [ -s build/cxx17/failed ]; then
  echo "check_cxx17: $(wc -l < build/cxx17/failed) failed: $(tr '\n' ' ' < build/cxx17/failed)"
  exit 1
fi
echo "check_cxx17: every translation unit compiles as C++17 against torch $version's headers"
