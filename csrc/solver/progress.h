// How far a solve has come, for a progress bar on long solves (odeint(..., progress=True)).
//
// A loop reports the time it reached; ProgressReporter turns it into the fraction of the integration span
// done (over a batch: the least advanced sample's) and passes it to an optional ProgressSink (bindings.cpp
// wraps a Python callable), at most once every ProgressSink::min_interval_s seconds. Without a sink nothing
// is read, computed or called. The masked loop on CUDA reports only where it synchronises anyway (its "all
// done" check): it queues a copy of t into pinned host memory before that synchronisation and reads it
// after, so progress never adds a synchronisation.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <vector>

namespace fde::solver {

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  // fraction: of the integration span done, in [0, 1]; t: the time of the sample that fraction belongs to.
  virtual void update(double fraction, double t) = 0;
  double min_interval_s = 0.1;  // the most often update is called
};

class ProgressReporter {
 public:
  // t_out_host: the output times on the CPU, float64 [T] or [B, T] (each row's first to last time is that
  // sample's span). A null sink makes every call a no-op.
  ProgressReporter(ProgressSink* sink, const at::Tensor& t_out_host);

  bool active() const { return sink_ != nullptr; }

  // A host-driven loop (B == 1): the time it reached.
  void report(double t);

  // The masked loop: stage(t0) just before a synchronisation (CUDA: a non-blocking copy into pinned memory;
  // CPU: nothing to copy), report_staged() after it.
  void stage(const at::Tensor& t0);
  void report_staged();

 private:
  bool due();
  void emit(const double* t, int64_t n);

  ProgressSink* sink_;
  std::vector<double> start_, end_;  // each sample's span (one entry when all share t_out)
  at::Tensor staged_;                // t0 (CPU) or its pinned host copy (CUDA)
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace fde::solver
