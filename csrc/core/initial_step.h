// Hairer's initial step (Hairer, Norsett & Wanner I, II.4) as torchdiffeq computes it, element by element,
// for the fused ops initial_step_probe / initial_step_final (CPU and CUDA) with the roundings of the
// unfused reference (solver/initial_step.cpp): scale, y/scale and the probe in the state's dtype T, the
// norms in float64 (core::robust_rms over each tolerance segment, max over segments), h0 and h rounded
// to T.
#pragma once

#include <cstdint>

#include "core/controller.h"
#include "core/macros.h"
#include "core/rounding.h"

namespace fde::core {

// scale = atol + |y0| * rtol, in float64 (the tolerances are float64), rounded to T.
template <class T>
FDE_INLINE T initial_scale(T y0, double atol, double rtol) {
  return static_cast<T>(add_rn(atol, mul_rn(static_cast<double>(fabs(y0)), rtol)));
}

// x / scale in T, as float64 (the norm's element).
template <class T>
FDE_INLINE double scaled_by(T x, T scale) {
  return static_cast<double>(div_rn(x, scale));
}

// The probe point y0 + (h0 * direction) f0 in T, the signed step rounded to T first.
template <class T>
FDE_INLINE T probe_point(T y0, T f0, T signed_h0) {
  return add_rn(y0, mul_rn(signed_h0, f0));
}

// (f1 - f0) / scale in T, as float64.
template <class T>
FDE_INLINE double scaled_difference(T f1, T f0, T scale) {
  return static_cast<double>(div_rn(sub_rn(f1, f0), scale));
}

// |h0| from d0 = ||y0/scale||, d1 = ||f0/scale||, rounded to T.
template <class T>
FDE_INLINE double initial_h0(double d0, double d1) {
  return round_to<T>(initial_step_guess(d0, d1));
}

// The signed first step from h0, d1 and the probe's norm d2 = ||(f1 - f0)/scale||: rounded to T, clamped
// to [min_step, max_step], with the direction's sign. `order` is the method's order minus one.
template <class T>
FDE_INLINE double initial_h(double h0, double d1, double d2, int order, double direction,
                            const ControllerParams& p) {
  const double h = round_to<T>(initial_step_final(h0, d1, d2 / h0, order));
  return fmin(fmax(h, p.min_step), p.max_step) * direction;
}

}  // namespace fde::core
