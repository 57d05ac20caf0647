// Dense output: the quartic p(x), x = (t - t0)/h in [0, 1], with p(0) = y0, p(1) = y1,
// p(1/2) = y_mid, p'(0) = h f0 and p'(1) = h f1 (the interpolant torchdiffeq evaluates).
#pragma once

#include "core/macros.h"

namespace fde::core {

template <class T>
FDE_INLINE T dense_quartic(T y0, T y1, T y_mid, T hf0, T hf1, T x) {
  // Coefficients of p(x) = y0 + hf0 x + c x^2 + b x^3 + a x^4 from the five conditions above.
  const T a = T(2) * (hf1 - hf0) - T(8) * (y1 + y0) + T(16) * y_mid;
  const T b = (T(5) * hf0 - T(3) * hf1) + T(18) * y0 + T(14) * y1 - T(32) * y_mid;
  const T c = (hf1 - T(4) * hf0) - T(11) * y0 - T(5) * y1 + T(16) * y_mid;
  return y0 + x * (hf0 + x * (c + x * (b + x * a)));
}

}  // namespace fde::core
