// Dense output: the quartic p(x), x = (t - t0)/h in [0, 1], with p(0) = y0, p(1) = y1,
// p(1/2) = y_mid, p'(0) = h f0 and p'(1) = h f1 (the interpolant torchdiffeq evaluates), written as
// weights on the step's inputs: p(x) = w_y0 y0 + w_y1 y1 + sum_j w_k[j] k_j, with
// y_mid = y0 + h sum_j mid_j k_j, hf0 = h k_0 and hf1 = h k_{S-1}. Linear in (y0, y1, k), so the VJP of
// the differentiable dense output uses the same weights. The one form every kernel (CPU, CUDA, in-place
// and out-of-place) evaluates.
#pragma once

#include "core/macros.h"
#include "core/tableau.h"

namespace fde::core {

struct DenseWeights {
  double y0, y1, k[kMaxStages];
};

// mid: the S = `stages` midpoint weights (zeros past the tableau's own).
FDE_INLINE DenseWeights dense_weights(double x, double h, const double* mid, int stages) {
  const double x2 = x * x, x3 = x2 * x, x4 = x3 * x;
  const double w_y0 = 1.0 - 11.0 * x2 + 18.0 * x3 - 8.0 * x4;
  const double w_y1 = -5.0 * x2 + 14.0 * x3 - 8.0 * x4;
  const double w_mid = 16.0 * x2 - 32.0 * x3 + 16.0 * x4;
  const double w_hf0 = x - 4.0 * x2 + 5.0 * x3 - 2.0 * x4;
  const double w_hf1 = x2 - 3.0 * x3 + 2.0 * x4;
  DenseWeights w{};
  w.y0 = w_y0 + w_mid;  // y_mid contains y0
  w.y1 = w_y1;
  for (int j = 0; j < stages; ++j) w.k[j] = h * w_mid * mid[j];
  w.k[0] += h * w_hf0;
  w.k[stages - 1] += h * w_hf1;
  return w;
}

}  // namespace fde::core
