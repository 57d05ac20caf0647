#!/usr/bin/env bash
# C++ microbenchmarks of the fused CPU ops (`make microbench`).
# Usage: bash benchmarks/cpp/run_microbench.sh PYTHON [extra Google Benchmark flags...]
#   PYTHON: the interpreter whose torch the kernels are built against (the venv's; cmake and ninja are
#   taken from the same bin directory).
# Writes under benchmarks/out/: microbench.txt and microbench.json (console and Google Benchmark JSON),
# microbench_thp.{txt,json} (the N = 1e7 rows again with THP_MEM_ALLOC_ENABLE=1), microbench_machine.txt
# (lscpu) and microbench_table.md (the tables for benchmarks/RESULTS.md).
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

# Memory-bandwidth numbers are only meaningful on an otherwise idle machine: warn when the CPUs are busy.
read -r _ u n s i w x y z _ < /proc/stat; t1=$((u + n + s + i + w + x + y + z)); i1=$i
sleep 1
read -r _ u n s i w x y z _ < /proc/stat; t2=$((u + n + s + i + w + x + y + z)); i2=$i
IDLE=$((100 * (i2 - i1) / (t2 - t1 > 0 ? t2 - t1 : 1)))
if ((IDLE < 90)); then
  echo "microbench: WARNING: the CPUs were only ${IDLE}% idle before the run; other processes will distort the numbers" >&2
fi

# Repetitions, randomly interleaved across benchmarks, with the median reported: a burst of load from
# elsewhere then hits a few repetitions of many benchmarks instead of every repetition of one.
# Extra flags given to this script come last and override these.
"$BUILD_DIR/fde_microbench" \
  --benchmark_min_time=0.05 \
  --benchmark_repetitions=5 \
  --benchmark_enable_random_interleaving=true \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$OUT_DIR/microbench.json" \
  --benchmark_out_format=json \
  "$@" | tee "$OUT_DIR/microbench.txt"

# The 1e7-element rows again with PyTorch's THP_MEM_ALLOC_ENABLE=1 (c10 then advises transparent huge
# pages for allocations >= 2 MB): rk_stage returns a fresh 40 MB tensor per call, which glibc maps
# anew each time, and the 4 KB first-touch page faults dominate that op's time by default.
THP_MEM_ALLOC_ENABLE=1 "$BUILD_DIR/fde_microbench" \
  --benchmark_filter='/N:10000000/' \
  --benchmark_min_time=0.05 \
  --benchmark_repetitions=5 \
  --benchmark_enable_random_interleaving=true \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$OUT_DIR/microbench_thp.json" \
  --benchmark_out_format=json \
  "$@" | tee "$OUT_DIR/microbench_thp.txt"

# Tables: op GB/s (1e9 bytes/s, read + written; medians of the repetitions) beside the copy of the
# same bytes with the same threads.
"$PYTHON" - "$OUT_DIR/microbench.json" "$OUT_DIR/microbench_thp.json" > "$OUT_DIR/microbench_table.md" <<'EOF'
import json, sys

ORDER = {"rk_stage": 0, "rk_error_control": 1, "joint": 0, "per_sample": 1, "f32": 0, "f64": 1}


def key(name):
    op, layout, dtype, n, threads = name.split("/")
    return (int(n.split(":")[1]), ORDER[dtype], ORDER[layout], ORDER[op], int(threads.split(":")[1]))


def table(path, title):
    data = json.load(open(path))
    rows = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") not in (None, "median"):
            continue
        rows[b.get("run_name", b["name"]).removesuffix("/real_time")] = b
    ctx = data["context"]
    load = ", ".join(f"{x:.2f}" for x in ctx.get("load_avg", []))
    print(f"### {title}")
    print()
    print(f"{ctx.get('cpu_model', '?')}, {ctx.get('cores', '?')} cores, torch {ctx.get('torch_version', '?')}, "
          f"{ctx['date']}, load average at start {load}")
    print()
    print("| op | layout | dtype | N (elements) | threads | GB/s | copy GB/s | % of copy |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in sorted((n for n in rows if not n.startswith("copy_for_")), key=key):
        b, copy = rows[name], rows.get("copy_for_" + name)
        op, layout, dtype, n, threads = name.split("/")
        gbs = b["bytes_per_second"] / 1e9
        cgbs = copy["bytes_per_second"] / 1e9 if copy else float("nan")
        elements, nrows = int(b["elements"]), int(b["B"])
        shape = f"{elements:,}" + ("" if layout == "joint" else f" ([{nrows}, {elements // nrows}])")
        print(f"| {op} | {layout} | {dtype} | {shape} | {threads.split(':')[1]} | {gbs:.1f} | {cgbs:.1f} | "
              f"{100 * gbs / cgbs:.0f} % |")
    print()


table(sys.argv[1], "Default allocator")
table(sys.argv[2], "N = 1e7 with THP_MEM_ALLOC_ENABLE=1")
EOF
echo
cat "$OUT_DIR/microbench_table.md"
