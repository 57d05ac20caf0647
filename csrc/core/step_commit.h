// Per-sample bookkeeping after a step attempt, shared by the CPU and CUDA commit kernels.
#pragma once

#include <cstdint>

#include "core/error_norm.h"
#include "core/macros.h"

namespace fde::core {

// Indices into a sample's row of the int64 counters tensor [B, 4].
enum Counter : int { kAccepted = 0, kRejected = 1, kAttemptsSinceOutput = 2, kNonFiniteStreak = 3 };
inline constexpr int kNumCounters = 4;

// The output rows [first, last) that a step ending at t1 passes (dir = +1 forward in time, -1 backward):
// those with dir * (t_out_b[i] - t1) <= 0, starting at row `first`.
FDE_INLINE int64_t outputs_through(const double* t_out_b, int64_t n_out, int64_t first, double t1, double dir) {
  int64_t i = first;
  while (i < n_out && dir * (t_out_b[i] - t1) <= 0.0) ++i;
  return i;
}

// t_out_b: this sample's output times (stride 1), T of them. Only called for samples still running.
// t1: where the attempted step ends (t0 + h, or exactly the grid point a clipped step was cut to).
FDE_INLINE void commit_sample_to(double& t0, double t1, double& h, int32_t& status, int64_t* counters,
                                 int64_t& out_index, bool accept, double ratio, double h_next,
                                 const double* t_out_b, int64_t n_out, int64_t max_num_steps) {
  counters[kAttemptsSinceOutput] += 1;
  if (accept) {
    const int64_t i = outputs_through(t_out_b, n_out, out_index, t1, h > 0 ? 1.0 : -1.0);
    if (i != out_index) counters[kAttemptsSinceOutput] = 0;
    out_index = i;
    t0 = t1;
    counters[kAccepted] += 1;
    counters[kNonFiniteStreak] = 0;
  } else {
    counters[kRejected] += 1;
    if (!isfinite(ratio)) counters[kNonFiniteStreak] += 1;
  }
  h = h_next;
  if (out_index >= n_out) {
    status = kSuccess;
  } else if (counters[kNonFiniteStreak] >= kMaxNonFiniteRetries) {
    status = kNonFinite;
  } else if (t0 + h == t0) {
    // Shrinking on non-finite stages until h underflows is a non-finite failure, not a stiffness one.
    status = counters[kNonFiniteStreak] > 0 ? kNonFinite : kStepUnderflow;
  } else if (counters[kAttemptsSinceOutput] >= max_num_steps) {
    status = kMaxSteps;
  }
}

FDE_INLINE void commit_sample(double& t0, double& h, int32_t& status, int64_t* counters, int64_t& out_index,
                              bool accept, double ratio, double h_next, const double* t_out_b, int64_t n_out,
                              int64_t max_num_steps) {
  commit_sample_to(t0, t0 + h, h, status, counters, out_index, accept, ratio, h_next, t_out_b, n_out,
                   max_num_steps);
}

}  // namespace fde::core
