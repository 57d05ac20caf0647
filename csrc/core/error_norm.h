// The error norm: one element's scaled error err / (atol + rtol * max(|y0|, |y1|)), and the RMS of a
// group of them without overflow. The ratio of a group (the whole state in joint mode, one sample in
// per-sample mode) is the RMS over the group; with several tolerance segments (tuple states) it is the
// maximum of the per-segment RMS values (torchdiffeq's mixed norm). The initial step's norms
// (core/initial_step.h) are the same RMS over other elements.
//
// Overflow: the fast path is the plain sum of squares. Squares of finite elements above ~1e154 overflow
// it to inf; only then (the sum is inf while no element is NaN, which would have made it NaN) is the RMS
// recomputed in two more passes as m * sqrt(sum((x / m)^2) / n), m = max |x|, which cannot overflow. An
// element that is itself inf or NaN still gives a non-finite RMS (inf or NaN). Results of the fast path
// are unchanged by this rule.
#pragma once

#include <cstdint>

#include "core/macros.h"

namespace fde::core {

// max(|y0|, |y1|) written as a select (the CPU element loop vectorises it, GCC does not vectorise
// fmax); the same value and NaN rule as fmax: a NaN argument yields the other one.
// A non-finite propagated state (y1 overflowed, or NaN) makes the element NaN, so such a step is never
// accepted, even where the tolerance is infinite (the seminorm's channels) or the error estimate is exactly
// 0 (a constant field: every stage agrees, and inf / inf tolerance gave 0). y1 - y1 is 0 for finite y1.
FDE_INLINE double scaled_error(double err, double y0, double y1, double atol, double rtol) {
  const double a0 = fabs(y0), a1 = fabs(y1);
  const double m = (a0 > a1 || a1 != a1) ? a0 : a1;
  const double tol = atol + rtol * m;
  return (err + (y1 - y1)) / tol;
}

FDE_INLINE double scaled_error_sq(double err, double y0, double y1, double atol, double rtol) {
  const double r = scaled_error(err, y0, y1, atol, rtol);
  return r * r;
}

// RMS of n elements from the plain sum of their squares, falling back to the scaled form when the sum
// overflowed. max_abs() returns max |x| over the elements; scaled_sumsq(m) returns sum (x / m)^2. Both
// are only called on the fallback path (the callers' passes over the data).
template <class MaxAbs, class ScaledSumSq>
FDE_INLINE double robust_rms(double sum, int64_t n, MaxAbs&& max_abs, ScaledSumSq&& scaled_sumsq) {
  if (!isinf(sum)) return sqrt(sum / static_cast<double>(n));  // NaN stays NaN
  const double m = max_abs();
  if (!isfinite(m)) return m;  // an inf element (a NaN one would have made the sum NaN)
  return m * sqrt(scaled_sumsq(m) / static_cast<double>(n));
}

// The mixed norm's combination: the worse of two segment ratios, NaN winning (a NaN stage makes the whole
// step non-finite).
FDE_INLINE double worse_ratio(double worst, double rms) { return (isnan(rms) || rms > worst) ? rms : worst; }

}  // namespace fde::core
