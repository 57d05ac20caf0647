// C++ microbenchmarks of the fused CPU ops (DESIGN §6): bytes moved per second against a plain copy
// of the same number of bytes, with the same threading, on the same machine.
//
// Ops: (1) fde::ops::RkStage::cpu with dopri5's last row (a[6]: 6 stages, one zero coefficient);
//      (2) fde::ops::RkErrorControl::cpu with dopri5's 7 stages and error weights e (one zero).
// Layouts: joint [1, N] and per-sample [256, N/256] (N/256 rounded down; the element count actually
// used is reported as the `elements` counter). float32 for every N, float64 at N = 1e6.
// Threads: torch's intra-op threads at 1 and at the machine's core count.
//
// Bytes: what the op must read and write. Only stages with a non-zero coefficient are read:
//   rk_stage:         (y + 5 k's) read + out written      = 7 N sizeof(T)
//   rk_error_control: (y0 + y1 + 6 k's) read, [B] outputs = 8 N sizeof(T)  (+ 17 B per row, ignored)
// Each op has a copy baseline (copy_for_<op>/<same case>) that copies bytes/2 from a source to a
// destination buffer (std::memcpy, glibc), so its bytes read + written equal the op's bytes. It
// splits the work with at::parallel_for over the same element range and grain as the kernels
// (fde::ops::cpu::kGrain), so both run serially or on the same number of threads at the same sizes.
//
// Times are wall-clock (UseRealTime); Google Benchmark's bytes_per_second is bytes / real time.
// The op's time includes everything the call does: argument checks and allocating its outputs
// (rk_stage allocates a fresh [B, D] tensor per call; above glibc's 32 MB mmap threshold that is a
// fresh mapping each call, paid for in first-touch page faults). The copy writes into a preallocated
// buffer. run_microbench.sh runs the benchmarks with repetitions in random interleaved order and
// reports medians.
#include <benchmark/benchmark.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/tableau.h"
#include "core/controller.h"
#include "ops/cpu/row_chunks.h"
#include "ops/rk_error_control/op.h"
#include "ops/rk_stage/op.h"

#ifndef _OPENMP
#error "ops_bench.cpp must be compiled with OpenMP: at::parallel_for is serial in a TU without it"
#endif

namespace {

using fde::core::kDopri5;

enum class Op { kStage, kErrorControl };
enum class Layout { kJoint, kPerSample };

constexpr int64_t kPerSampleRows = 256;

struct Case {
  Op op;
  Layout layout;
  at::ScalarType dtype;
  int64_t n;  // nominal element count
  int threads;

  int64_t rows() const { return layout == Layout::kJoint ? 1 : kPerSampleRows; }
  int64_t cols() const { return n / rows(); }
  int64_t elements() const { return rows() * cols(); }
  int64_t itemsize() const { return dtype == at::kDouble ? 8 : 4; }
};

// Coefficients exactly as the solver passes them.
at::ArrayRef<double> stage_coeffs() { return at::ArrayRef<double>(kDopri5.a[6], 6); }
at::ArrayRef<double> error_coeffs() { return at::ArrayRef<double>(kDopri5.e, kDopri5.stages); }

int64_t count_nonzero(at::ArrayRef<double> c) {
  int64_t n = 0;
  for (double v : c) n += v != 0.0;
  return n;
}

// Arrays of N elements moved per call (see the header comment).
int64_t arrays_moved(Op op) {
  return op == Op::kStage ? 1 + count_nonzero(stage_coeffs()) + 1 : 2 + count_nonzero(error_coeffs());
}

int64_t bytes_per_element(const Case& c) { return arrays_moved(c.op) * c.itemsize(); }

// Inputs are built once per (B, D, dtype) and kept for the whole run (about 1 GB in all), so the
// benchmarks can run in any order (--benchmark_enable_random_interleaving) without rebuilding them.
struct Inputs {
  at::Tensor y0, y1, h, rtol, atol;
  std::vector<at::Tensor> ks;
};

Inputs& inputs(int64_t rows, int64_t cols, at::ScalarType dtype) {
  static std::map<std::tuple<int64_t, int64_t, int>, Inputs> cache;
  const auto key = std::make_tuple(rows, cols, static_cast<int>(dtype));
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  auto opts = at::TensorOptions().dtype(dtype);
  Inputs in;
  in.y0 = at::randn({rows, cols}, gen, opts);
  for (int j = 0; j < kDopri5.stages; ++j) in.ks.push_back(at::randn({rows, cols}, gen, opts));
  in.h = at::full({rows}, 0.01, at::kDouble);
  in.y1 = in.y0 + 0.01 * in.ks[0];
  in.rtol = at::full({1}, 1e-3, at::kDouble);
  in.atol = at::full({1}, 1e-6, at::kDouble);
  return cache.emplace(key, std::move(in)).first->second;
}

// One source and one destination buffer for every copy baseline, sized for the largest; a baseline
// copies a prefix. Pages are touched once, before any timing.
struct CopyBuffers {
  at::Tensor src, dst;
};

int64_t g_max_copy_bytes = 0;  // set while registering

CopyBuffers& copy_buffers() {
  static CopyBuffers buf{at::full({g_max_copy_bytes}, 1, at::kByte), at::zeros({g_max_copy_bytes}, at::kByte)};
  return buf;
}

std::string dtype_name(at::ScalarType t) { return t == at::kDouble ? "f64" : "f32"; }
std::string layout_name(Layout l) { return l == Layout::kJoint ? "joint" : "per_sample"; }
std::string op_name(Op o) { return o == Op::kStage ? "rk_stage" : "rk_error_control"; }

std::string case_suffix(const Case& c) {
  return "/" + layout_name(c.layout) + "/" + dtype_name(c.dtype) + "/N:" + std::to_string(c.n) +
         "/threads:" + std::to_string(c.threads);
}

void set_common_counters(benchmark::State& state, const Case& c, int64_t bytes) {
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["elements"] = static_cast<double>(c.elements());
  state.counters["B"] = static_cast<double>(c.rows());
  state.counters["threads"] = c.threads;
  state.counters["bytes_per_call"] = static_cast<double>(bytes);
  state.SetLabel("[" + std::to_string(c.rows()) + "," + std::to_string(c.cols()) + "] " +
                 dtype_name(c.dtype) + " threads=" + std::to_string(c.threads));
}

void run_op(benchmark::State& state, Case c) {
  at::set_num_threads(c.threads);
  Inputs& in = inputs(c.rows(), c.cols(), c.dtype);
  const int64_t bytes = c.elements() * bytes_per_element(c);
  if (c.op == Op::kStage) {
    const at::TensorList ks(in.ks.data(), 6);
    for (auto _ : state) {
      at::Tensor out = fde::ops::RkStage::cpu(in.y0, ks, in.h, stage_coeffs());
      benchmark::DoNotOptimize(out.data_ptr());
      benchmark::ClobberMemory();
    }
  } else {
    const at::TensorList ks(in.ks);
    const std::vector<int64_t> segment_ends{c.cols()};
    fde::core::ControllerParams params;
    params.exponent = 1.0 / kDopri5.order;
    const fde::core::PackedControl control = fde::core::pack(params);
    for (auto _ : state) {
      auto res = fde::ops::RkErrorControl::cpu(in.y0, in.y1, ks, in.h, error_coeffs(), in.rtol, in.atol,
                                               segment_ends, control);
      benchmark::DoNotOptimize(std::get<0>(res).data_ptr());
      benchmark::ClobberMemory();
    }
  }
  set_common_counters(state, c, bytes);
}

// Copies bytes/2 with the same parallel decomposition as the kernels: at::parallel_for over the
// element range [0, elements) with grain kGrain; element i maps to bytes/(2 elements) bytes.
void run_copy(benchmark::State& state, Case c) {
  at::set_num_threads(c.threads);
  const int64_t bytes = c.elements() * bytes_per_element(c);
  const int64_t per_elem = bytes_per_element(c) / 2;  // an integer: 7 or 8 arrays, even itemsize
  CopyBuffers& buf = copy_buffers();
  const uint8_t* src = buf.src.data_ptr<uint8_t>();
  uint8_t* dst = buf.dst.data_ptr<uint8_t>();
  for (auto _ : state) {
    at::parallel_for(0, c.elements(), fde::ops::cpu::kGrain, [&](int64_t i0, int64_t i1) {
      std::memcpy(dst + i0 * per_elem, src + i0 * per_elem, static_cast<size_t>((i1 - i0) * per_elem));
    });
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
  }
  set_common_counters(state, c, bytes);
}

std::string read_cpu_model() {
  FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (!f) return "unknown";
  char line[512];
  std::string model = "unknown";
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "model name", 10) == 0) {
      const char* colon = std::strchr(line, ':');
      if (colon) {
        model = colon + 1;
        while (!model.empty() && (model.front() == ' ' || model.front() == '\t')) model.erase(0, 1);
        while (!model.empty() && (model.back() == '\n' || model.back() == ' ')) model.pop_back();
      }
      break;
    }
  }
  std::fclose(f);
  return model;
}

void register_case(const Case& c) {
  const std::string suffix = case_suffix(c);
  g_max_copy_bytes = std::max(g_max_copy_bytes, c.elements() * bytes_per_element(c) / 2);
  benchmark::RegisterBenchmark((op_name(c.op) + suffix).c_str(), run_op, c)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("copy_for_" + op_name(c.op) + suffix).c_str(), run_copy, c)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

const int kRegistered = [] {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> thread_counts{1};
  if (cores > 1) thread_counts.push_back(cores);
  benchmark::AddCustomContext("cpu_model", read_cpu_model());
  benchmark::AddCustomContext("cores", std::to_string(cores));
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("grain_elements", std::to_string(fde::ops::cpu::kGrain));

  // Grouped by input shape; both ops read the same tensors.
  struct Shape {
    Layout layout;
    at::ScalarType dtype;
    int64_t n;
  };
  std::vector<Shape> shapes;
  for (int64_t n : {1000, 10000, 100000, 1000000, 10000000}) {
    shapes.push_back({Layout::kJoint, at::kFloat, n});
    if (n >= 10000) shapes.push_back({Layout::kPerSample, at::kFloat, n});
    if (n == 1000000) {
      shapes.push_back({Layout::kJoint, at::kDouble, n});
      shapes.push_back({Layout::kPerSample, at::kDouble, n});
    }
  }
  for (const Shape& s : shapes)
    for (Op op : {Op::kStage, Op::kErrorControl})
      for (int t : thread_counts) register_case({op, s.layout, s.dtype, s.n, t});
  return 0;
}();

}  // namespace
