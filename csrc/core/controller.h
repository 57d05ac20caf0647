// Step-size control and initial-step selection: scalar formulas shared by CPU and CUDA.
#pragma once

#include <cmath>

#include "core/macros.h"

namespace fde::core {

// Integral controller with torchdiffeq's conventions (REFERENCE §1, DESIGN §4).
struct ControllerParams {
  double safety = 0.9;
  double ifactor = 10.0;
  double dfactor = 0.2;
  double exponent = 0.2;  // 1 / order of the propagated solution
  double min_step = 0.0;  // bounds on |h|
  double max_step = INFINITY;
};

// A step is accepted when its error ratio is <= 1. |h| above max_step is always rejected and |h| at or
// below min_step always accepted, except that a non-finite ratio (NaN/inf in the stages) is never
// accepted: the step is retried smaller instead.
FDE_INLINE bool accept_step(double abs_h, double ratio, const ControllerParams& p) {
  if (!isfinite(ratio)) return false;
  bool accept = ratio <= 1.0;
  if (abs_h > p.max_step) accept = false;
  if (abs_h <= p.min_step) accept = true;
  return accept;
}

// Next |h|: h * clamp(safety * ratio^(-exponent), dfactor, ifactor), no shrink after an accepted
// step, ifactor when the error is exactly zero, dfactor when it is not finite; then clamped to
// [min_step, max_step].
FDE_INLINE double next_step_size(double abs_h, double ratio, const ControllerParams& p) {
  double factor;
  if (!isfinite(ratio)) {
    factor = p.dfactor;
  } else if (ratio == 0.0) {
    factor = p.ifactor;
  } else {
    const double floor = ratio < 1.0 ? 1.0 : p.dfactor;
    factor = fmin(p.ifactor, fmax(p.safety / pow(ratio, p.exponent), floor));
  }
  return fmin(fmax(abs_h * factor, p.min_step), p.max_step);
}

// Hairer, Norsett & Wanner, Solving ODEs I, II.4: first guess from d0 = ||y0/scale||, d1 = ||f0/scale||.
FDE_INLINE double initial_step_guess(double d0, double d1) {
  return (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
}

// ... refined with d2 = ||(f(t0 + h0, y0 + h0 f0) - f0)/scale|| / h0. `order` is the method's order
// minus one, as torchdiffeq passes it (exponent 1/(order+1)).
FDE_INLINE double initial_step_final(double h0, double d1, double d2, int order) {
  double h1;
  if (d1 <= 1e-15 && d2 <= 1e-15) {
    h1 = fmax(1e-6, h0 * 1e-3);
  } else {
    h1 = pow(0.01 / fmax(d1, d2), 1.0 / (order + 1));
  }
  return fmin(100.0 * h0, h1);
}

}  // namespace fde::core
