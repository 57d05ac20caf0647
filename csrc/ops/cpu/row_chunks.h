// Parallel iteration over a [B, D] row-major range in chunks that never straddle a row, so a kernel
// can hoist per-row values (h[b], coefficients) out of its inner, vectorisable loop. Parallel over
// elements, so joint mode (B = 1, large D) uses every thread too.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fde::ops::cpu {

inline constexpr int64_t kGrain = 16384;

template <class F>  // F(int64_t b, int64_t d_begin, int64_t d_end)
void for_each_row_chunk(int64_t rows, int64_t cols, F&& fn) {
  if (rows == 0 || cols == 0) return;
  at::parallel_for(0, rows * cols, kGrain, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t b = begin / cols;
      const int64_t d0 = begin - b * cols;
      const int64_t d1 = std::min(cols, d0 + (end - begin));
      fn(b, d0, d1);
      begin += d1 - d0;
    }
  });
}

}  // namespace fde::ops::cpu
