#!/usr/bin/env bash
# Compile-check every CUDA source (csrc/**/*.cu) with nvcc against a CUDA build of torch's headers,
# on a machine without a GPU (and with a CPU-only torch in the venv).
#
#   bash tools/cuda_check.sh PYTHON TORCH_CUDA_VERSION      (make cuda-check)
#
# The CPU torch wheel lacks the generated c10/cuda macros header, so the headers come from the CUDA
# wheel, unpacked (no dependencies, nothing imported) under build/torch-cuda. Objects go to
# build/cuda-check/. Exit status is non-zero when any file fails or when there is no .cu file.
# Environment: NVCC (default: nvcc on PATH), CUDA_CHECK_JOBS (parallel compiles, default: nproc),
# CUDA_CHECK_ARCHS (default: "80 90").
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: bash tools/cuda_check.sh PYTHON TORCH_CUDA_VERSION" >&2
  exit 2
fi
PYTHON=$1
TORCH_CUDA_VERSION=$2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "cuda-check: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 1
fi

TORCH_DIR=build/torch-cuda
INC=$TORCH_DIR/torch/include
OBJ_DIR=build/cuda-check
LOG_DIR=$OBJ_DIR/logs

# 1. CUDA torch headers (about 10 s from the local package cache; the wheel itself is never imported).
if [[ ! -d $INC ]]; then
  echo "cuda-check: fetching torch==$TORCH_CUDA_VERSION headers into $TORCH_DIR"
  mkdir -p "$TORCH_DIR"
  "$PYTHON" -m pip install -q --no-deps --target "$TORCH_DIR" "torch==$TORCH_CUDA_VERSION"
fi
if [[ ! -f $INC/c10/cuda/impl/cuda_cmake_macros.h ]]; then
  echo "cuda-check: $INC has no c10/cuda/impl/cuda_cmake_macros.h: torch==$TORCH_CUDA_VERSION is not a CUDA build" >&2
  echo "            (remove $TORCH_DIR and point pip at a CUDA wheel)" >&2
  exit 1
fi
PY_INC=$("$PYTHON" -c 'import sysconfig;print(sysconfig.get_paths()["include"])')

# 2. The sources.
mapfile -t SOURCES < <(find csrc -type f -name '*.cu' | LC_ALL=C sort)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "cuda-check: no .cu files under csrc/" >&2
  exit 1
fi

GENCODE=()
for arch in ${CUDA_CHECK_ARCHS:-80 90}; do
  GENCODE+=(-gencode "arch=compute_${arch},code=sm_${arch}")
done
# Torch's CUDA wheels are built with the C++11 ABI (_GLIBCXX_USE_CXX11_ABI=1, the default since 2.6),
# so that is what its headers (and any module linked against it) must see.
# With nvcc 13.0 and torch 2.14.1 these flags need no workaround: torch's headers compile cleanly.
# The one toolkit-related trap is ATen/cuda/CUDAContext.h, which includes cusparse.h/cublas_v2.h that a
# minimal toolkit (cudart + nvcc, as here) lacks; the kernels therefore use c10/cuda headers only
# (see csrc/ops/cuda/common.cuh) rather than adding include paths here.
FLAGS=(
  -std=c++20 --expt-relaxed-constexpr -O2 -Xcompiler -fPIC
  "${GENCODE[@]}"
  -DFDE_WITH_CUDA=1 -D_GLIBCXX_USE_CXX11_ABI=1 -DTORCH_EXTENSION_NAME=_C
  -DAT_PER_OPERATOR_HEADERS -DTORCH_ASSERT_ONLY_METHOD_OPERATORS  # as CMakeLists.txt (FDE_LEAN_ATEN)
  -Icsrc -I"$INC" -I"$INC/torch/csrc/api/include" -I"$PY_INC"
)

mkdir -p "$OBJ_DIR" "$LOG_DIR"
JOBS=${CUDA_CHECK_JOBS:-$(nproc 2>/dev/null || echo 2)}
echo "cuda-check: $("$NVCC" --version | tail -n 2 | head -n 1)"
echo "cuda-check: ${#SOURCES[@]} file(s), $JOBS job(s), torch headers from $INC"

# One compile; its report (one line, plus the log's head on failure) goes to a file that collect()
# prints, so the output of parallel jobs never interleaves.
compile_one() {  # SRC STEM
  local src=$1 stem=$2
  local obj=$OBJ_DIR/$stem.o log=$LOG_DIR/$stem.log report=$LOG_DIR/$stem.report
  local start=$SECONDS
  if "$NVCC" "${FLAGS[@]}" -c "$src" -o "$obj" >"$log" 2>&1; then
    echo "  ok    $src ($((SECONDS - start)) s)" >"$report"
    return 0
  fi
  {
    echo "  FAIL  $src ($((SECONDS - start)) s), full log: $log"
    sed 's/^/        /' "$log" | head -n 60
  } >"$report"
  return 1
}

# A small job pool: at most $JOBS nvcc processes at a time, collected oldest first.
PIDS=()
SRCS=()
STEMS=()
FAILED=()
collect() {
  local pid=${PIDS[0]} src=${SRCS[0]} stem=${STEMS[0]} status=0
  PIDS=("${PIDS[@]:1}")
  SRCS=("${SRCS[@]:1}")
  STEMS=("${STEMS[@]:1}")
  wait "$pid" || status=$?
  cat "$LOG_DIR/$stem.report" 2>/dev/null || echo "  FAIL  $src (no report)"
  if [[ $status -ne 0 ]]; then FAILED+=("$src"); fi
}
for src in "${SOURCES[@]}"; do
  while [[ ${#PIDS[@]} -ge $JOBS ]]; do collect; done
  stem=${src#csrc/}
  stem=${stem%.cu}
  stem=${stem//\//__}
  rm -f "$LOG_DIR/$stem.report"
  compile_one "$src" "$stem" &
  PIDS+=($!)
  SRCS+=("$src")
  STEMS+=("$stem")
done
while [[ ${#PIDS[@]} -gt 0 ]]; do collect; done

N_OK=$((${#SOURCES[@]} - ${#FAILED[@]}))
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "cuda-check: FAILED: $N_OK/${#SOURCES[@]} compiled; failing: ${FAILED[*]}"
  exit 1
fi
echo "cuda-check: OK: ${#SOURCES[@]}/${#SOURCES[@]} files compiled (objects in $OBJ_DIR)"
