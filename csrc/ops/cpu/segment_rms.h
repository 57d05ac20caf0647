// The error norm over one row's tolerance segments on the CPU: max over the non-empty segments of the
// overflow-free RMS (core::robust_rms, core::worse_ratio) of elem(i, s), i in the segment s. A plain loop
// (the initial step's norms run once per solve; the per-step error norm has its own vectorised loop).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error_norm.h"

namespace fde::ops::cpu {

template <class Elem>  // double elem(int64_t i, int64_t s)
double segment_rms(at::IntArrayRef segment_ends, Elem&& elem) {
  double worst = 0.0;
  for (int64_t s = 0; s < static_cast<int64_t>(segment_ends.size()); ++s) {
    const int64_t begin = s == 0 ? 0 : segment_ends[s - 1], end = segment_ends[s];
    if (end == begin) continue;
    double sum = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const double x = elem(i, s);
      sum += x * x;
    }
    const double rms = core::robust_rms(
        sum, end - begin,
        [&] {
          double m = 0.0;
          for (int64_t i = begin; i < end; ++i) m = std::max(m, std::fabs(elem(i, s)));
          return m;
        },
        [&](double m) {
          double ss = 0.0;
          for (int64_t i = begin; i < end; ++i) {
            const double q = elem(i, s) / m;
            ss += q * q;
          }
          return ss;
        });
    worst = core::worse_ratio(worst, rms);
  }
  return worst;
}

}  // namespace fde::ops::cpu
