// One element's contribution to the error ratio: (err / (atol + rtol * max(|y0|, |y1|)))^2.
// The ratio of a group (the whole state in joint mode, one sample in per-sample mode) is the square
// root of the mean of these over the group; with several tolerance segments (tuple states) it is the
// maximum of the per-segment RMS values (torchdiffeq's mixed norm).
#pragma once

#include <cmath>

#include "core/macros.h"

namespace fde::core {

FDE_INLINE double scaled_error_sq(double err, double y0, double y1, double atol, double rtol) {
  const double tol = atol + rtol * fmax(fabs(y0), fabs(y1));
  const double r = err / tol;
  return r * r;
}

// Solver status codes, shared by the kernels, the solver loop and Python.
enum Status : int {
  kRunning = 0,
  kSuccess = 1,
  kMaxSteps = 2,
  kStepUnderflow = 3,
  kNonFinite = 4,
};

// After this many consecutive attempts with a non-finite error estimate the solve stops with kNonFinite.
inline constexpr int kMaxNonFiniteRetries = 10;

}  // namespace fde::core
