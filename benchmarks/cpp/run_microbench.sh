#!/usr/bin/env bash
# C++ microbenchmarks of the fused CPU ops (`make microbench`).
# Usage: bash benchmarks/cpp/run_microbench.sh PYTHON [extra Google Benchmark flags...]
#   PYTHON: the interpreter whose torch the kernels are built against (the venv's; cmake and ninja are
#   taken from the same bin directory).
# Writes benchmarks/out/microbench.txt (console), benchmarks/out/microbench.json (Google Benchmark
# JSON), benchmarks/out/microbench_machine.txt (lscpu) and benchmarks/out/microbench_table.md.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 PYTHON [benchmark flags...]" >&2
  exit 2
fi
PYTHON="$1"
shift

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
BIN="$(dirname "$PYTHON")"
BUILD_DIR="$ROOT/build/microbench"
OUT_DIR="$ROOT/benchmarks/out"

# Google Benchmark from Debian (1.7.1 gives benchmark::benchmark_main; the PyPI wheel has no C++ lib).
if ! dpkg -s libbenchmark-dev >/dev/null 2>&1; then
  echo "microbench: installing libbenchmark-dev" >&2
  SUDO=""
  if [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q libbenchmark-dev
fi

CMAKE="$BIN/cmake"
NINJA="$BIN/ninja"
[[ -x "$CMAKE" ]] || CMAKE="$(command -v cmake)"
[[ -x "$NINJA" ]] || NINJA="$(command -v ninja)"

"$CMAKE" -S "$ROOT" -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_MAKE_PROGRAM="$NINJA" \
  -DCMAKE_BUILD_TYPE=Release \
  -DFASTDIFFEQ_MICROBENCH=ON \
  -DFASTDIFFEQ_CUDA=OFF \
  -DPython_EXECUTABLE="$PYTHON"
"$CMAKE" --build "$BUILD_DIR" --target fde_microbench

mkdir -p "$OUT_DIR"
lscpu > "$OUT_DIR/microbench_machine.txt"
echo "microbench: $(grep -m1 'Model name' "$OUT_DIR/microbench_machine.txt" | sed 's/  */ /g'), $(nproc) CPUs" >&2

# Repetitions (median reported) steady the numbers on a shared machine; extra flags override.
"$BUILD_DIR/fde_microbench" \
  --benchmark_min_time=0.05 \
  --benchmark_repetitions=5 \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$OUT_DIR/microbench.json" \
  --benchmark_out_format=json \
  "$@" | tee "$OUT_DIR/microbench.txt"

# Table: op GB/s (1e9 bytes/s, read + written) beside the copy of the same bytes and threads.
"$PYTHON" - "$OUT_DIR/microbench.json" > "$OUT_DIR/microbench_table.md" <<'EOF'
import json, sys

data = json.load(open(sys.argv[1]))
rows = {}
for b in data["benchmarks"]:
    agg = b.get("aggregate_name")
    if agg not in (None, "median"):
        continue
    name = b.get("run_name", b["name"])
    rows[name] = b

ctx = data["context"]
print(f"Machine: {ctx.get('cpu_model', '?')}, {ctx.get('cores', '?')} cores "
      f"({ctx.get('num_cpus')} CPUs at {ctx.get('mhz_per_cpu')} MHz as Google Benchmark reports), "
      f"torch {ctx.get('torch_version', '?')}, library build: {ctx.get('library_build_type')}")
print()
print("| op | layout | dtype | N (elements) | threads | GB/s | copy GB/s | % of copy |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for name, b in rows.items():
    if name.startswith("copy_for_"):
        continue
    copy = rows.get("copy_for_" + name)
    op, layout, dtype, n, threads = name.split("/")
    gbs = b["bytes_per_second"] / 1e9
    cgbs = copy["bytes_per_second"] / 1e9 if copy else float("nan")
    shape = f"{int(b['elements']):,}" + ("" if layout == "joint" else f" ([{int(b['B'])}, {int(b['elements']) // int(b['B'])}])")
    print(f"| {op} | {layout} | {dtype} | {shape} | {threads.split(':')[1]} | {gbs:.1f} | {cgbs:.1f} | {100 * gbs / cgbs:.0f} % |")
EOF
echo
cat "$OUT_DIR/microbench_table.md"
