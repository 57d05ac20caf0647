// Output times between two grid points of a fixed-grid solve, as torchdiffeq's fixed-grid solvers
// interpolate them: linearly between y0 and y1, or by the cubic Hermite polynomial through (y0, f0) and
// (y1, f1). Weights only; the solver applies them to the state tensors.
#pragma once

#include "core/macros.h"

namespace fde::core {

// y(t) = y0 + s (y1 - y0), s = (t - t0) / (t1 - t0).
FDE_INLINE double linear_slope(double t, double t0, double t1) { return (t - t0) / (t1 - t0); }

// y(t) = w.y0 y0 + w.hf0 f0 + w.y1 y1 + w.hf1 f1 (the slopes' weights include the step t1 - t0).
struct HermiteWeights {
  double y0, hf0, y1, hf1;
};

FDE_INLINE HermiteWeights cubic_hermite_weights(double t, double t0, double t1) {
  const double dt = t1 - t0;
  const double s = (t - t0) / dt;
  HermiteWeights w;
  w.y0 = (1 + 2 * s) * (1 - s) * (1 - s);
  w.hf0 = s * (1 - s) * (1 - s) * dt;
  w.y1 = s * s * (3 - 2 * s);
  w.hf1 = s * s * (s - 1) * dt;
  return w;
}

}  // namespace fde::core
