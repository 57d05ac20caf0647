// Which output times a step passes, and the per-sample bookkeeping after a step attempt: shared by the
// CPU and CUDA kernels (rk_dense_output, rk_commit) and the host-driven loops (solver/rk_solve.cpp,
// solver/rk_adjoint.cpp).
#pragma once

#include <cstdint>

#include "core/macros.h"
#include "core/status.h"

namespace fde::core {

// The output rows [first, last) that the step from t0 to t1 passes: t_out_b[i] in (t0, t1] in the
// direction of the step (rows before `first` were passed by earlier steps). Returns last. A step that does
// not move t (t1 == t0) passes none. Requires 0 <= first <= n_out; t_out_b is this sample's row of output
// times (stride 1). t1 is t0 + h, or exactly the grid point a step was cut to (the host-driven loops).
FDE_INLINE int64_t outputs_passed_to(const double* t_out_b, int64_t n_out, int64_t first, double t0, double t1) {
  if (t1 == t0) return first;
  const double dir = t1 > t0 ? 1.0 : -1.0;
  int64_t i = first;
  while (i < n_out && dir * (t_out_b[i] - t1) <= 0.0) ++i;
  return i;
}

// ... for the step from t0 by h.
FDE_INLINE int64_t outputs_passed(const double* t_out_b, int64_t n_out, int64_t first, double t0, double h) {
  return outputs_passed_to(t_out_b, n_out, first, t0, t0 + h);
}

// Only called for samples still running; the attempted step went from t0 to t1 with size h. An out_index
// outside [0, n_out] sets kInvalidIndex and changes nothing else (the CPU kernel raises before it gets here;
// CUDA kernels cannot).
FDE_INLINE void commit_sample_to(double& t0, double t1, double& h, int32_t& status, int64_t* counters,
                                 int64_t& out_index, bool accept, double ratio, double h_next,
                                 const double* t_out_b, int64_t n_out, int64_t max_num_steps) {
  if (out_index < 0 || out_index > n_out) {
    status = kInvalidIndex;
    return;
  }
  counters[kAttemptsSinceOutput] += 1;
  bool stalled = false;  // an accepted step that did not move t: no progress, never success
  if (accept) {
    stalled = t1 == t0;
    const int64_t i = outputs_passed_to(t_out_b, n_out, out_index, t0, t1);
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
  } else if (stalled || t0 + h == t0) {
    // Shrinking on non-finite stages until h underflows is a non-finite failure, not a stiffness one.
    status = counters[kNonFiniteStreak] > 0 ? kNonFinite : kStepUnderflow;
  } else if (counters[kAttemptsSinceOutput] >= max_num_steps) {
    status = kMaxSteps;
  }
  // A sample that stops stops moving: with h = 0 the masked loop's later iterations (other samples still
  // running, or up to check_every - 1 iterations on CUDA) neither write its outputs (a step of size 0 passes
  // none) nor evaluate the field beyond where it stopped.
  if (status != kRunning) h = 0.0;
}

// ... for the step from t0 by h (the fused commit kernels).
FDE_INLINE void commit_sample(double& t0, double& h, int32_t& status, int64_t* counters, int64_t& out_index,
                              bool accept, double ratio, double h_next, const double* t_out_b, int64_t n_out,
                              int64_t max_num_steps) {
  commit_sample_to(t0, t0 + h, h, status, counters, out_index, accept, ratio, h_next, t_out_b, n_out,
                   max_num_steps);
}

}  // namespace fde::core
