// out = w[0] y0 + w[1] y1 + sum_j w[2 + j] k_j over one contiguous run of elements: the dense output as
// weights (core::dense_weights), shared by rk_dense_output and rk_dense_eval. Accumulates in double.
#pragma once

#include <cstdint>

#include "ops/cpu/stage_count.h"

namespace fde::ops::cpu {

template <class T, int S>
inline void weighted_sum_fixed(T* __restrict out, const T* __restrict y0, const T* __restrict y1, const T* const* k,
                               const double* w, int64_t n) {
  const T* kk[S > 0 ? S : 1];
  double wk[S > 0 ? S : 1];
  for (int j = 0; j < S; ++j) {
    kk[j] = k[j];
    wk[j] = w[2 + j];
  }
  const double w0 = w[0], w1 = w[1];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    double acc = w0 * static_cast<double>(y0[i]) + w1 * static_cast<double>(y1[i]);
    for (int j = 0; j < S; ++j) acc += wk[j] * static_cast<double>(kk[j][i]);
    out[i] = static_cast<T>(acc);
  }
}

template <class T>
inline void weighted_sum(T* out, const T* y0, const T* y1, const T* const* k, const double* w, int S, int64_t n) {
  with_stage_count(S, [&](auto s) { weighted_sum_fixed<T, decltype(s)::value>(out, y0, y1, k, w, n); });
}

}  // namespace fde::ops::cpu
