#!/usr/bin/env bash
# Build a fastdiffeq wheel for a given torch release in a throwaway virtual environment:
#
#   bash tools/build_wheel.sh PYTHON TORCH_VERSION [OUT_DIR]        (make wheel TORCH=2.14.1)
#
# The environment (build/wheel-env/torch-VERSION, kept for the next run; `make clean` removes it) gets that
# torch from pip's configured sources (here: the local indexes and /opt/wheels), plus the build tools; the
# wheel is compiled against it with --no-build-isolation, in its own build directory
# (build/wheel-torchVERSION/). CUDA kernels are compiled in when that torch has CUDA and nvcc is found
# (FASTDIFFEQ_CUDA=ON|OFF in the environment overrides; CUDA architectures: TORCH_CUDA_ARCH_LIST,
# default "8.0;9.0"). The wheel's version carries a local label naming the torch and the kernels' CUDA
# version (fastdiffeq-0.1.0+torch2.14.cu130-...whl, or +torch2.13.cpu) and its metadata pins torch==2.14.*.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: bash tools/build_wheel.sh PYTHON TORCH_VERSION [OUT_DIR]" >&2
  exit 2
fi
PYTHON=$1
TORCH=$2
OUT=${3:-dist}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ENV=build/wheel-env/torch-$TORCH
if [[ ! -x $ENV/bin/python ]]; then
  echo "build_wheel: creating $ENV"
  "$PYTHON" -m venv "$ENV"
fi
echo "build_wheel: installing torch==$TORCH and the build tools into $ENV"
"$ENV/bin/pip" install -q "torch==$TORCH" numpy "scikit-build-core>=1.1" pybind11 cmake ninja

# Decide CUDA once, so the version label and CMake (FASTDIFFEQ_CUDA=ON fails loudly without nvcc) agree.
TORCH_CUDA=$("$ENV/bin/python" -c "import torch; print(torch.version.cuda or '')")
MODE=${FASTDIFFEQ_CUDA:-AUTO}
if [[ $MODE == AUTO ]]; then
  if [[ -n $TORCH_CUDA ]] && command -v "${CUDACXX:-nvcc}" >/dev/null 2>&1; then MODE=ON; else MODE=OFF; fi
fi
echo "build_wheel: torch $("$ENV/bin/python" -c 'import torch; print(torch.__version__)')" \
     "(CUDA: ${TORCH_CUDA:-none}), CUDA kernels: $MODE"
mkdir -p "$OUT"
start=$SECONDS
FASTDIFFEQ_CUDA=$MODE FASTDIFFEQ_LOCAL_VERSION=1 \
  "$ENV/bin/pip" wheel -v --no-build-isolation --no-deps . -w "$OUT" -C "build-dir=build/wheel-torch$TORCH/{wheel_tag}"
echo "build_wheel: done in $((SECONDS - start)) s:"
ls -1 "$OUT"/fastdiffeq-*+torch"${TORCH%.*}".*.whl
