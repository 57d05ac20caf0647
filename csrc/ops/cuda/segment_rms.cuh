// The error norm over one row's tolerance segments on CUDA, by one block: max over the non-empty
// segments of the overflow-free RMS (core::robust_rms, core::worse_ratio) of elem(i, s), i in segment s.
// Used by the initial-step kernels (once per solve; one block per row). Every thread of the block must
// call it (it synchronises); every thread gets the result.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/error_norm.h"
#include "ops/cuda/common.cuh"

namespace fde::ops::cuda {

template <class Elem>  // double elem(int64_t i, int s)
__device__ double block_segment_rms(const int64_t* __restrict__ ends, int S, Elem&& elem, double* red) {
  double worst = 0.0;
  for (int s = 0; s < S; ++s) {
    const int64_t begin = s == 0 ? 0 : ends[s - 1], end = ends[s];
    if (end == begin) continue;
    double sum = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const double x = elem(i, s);
      sum += x * x;
    }
    sum = group_sum<kThreads>(sum, red);
    const double rms = core::robust_rms(
        sum, end - begin,
        [&] {
          double m = 0.0;
          for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) m = fmax(m, fabs(elem(i, s)));
          return group_max<kThreads>(m, red);
        },
        [&](double m) {
          double ss = 0.0;
          for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
            const double q = elem(i, s) / m;
            ss += q * q;
          }
          return group_sum<kThreads>(ss, red);
        });
    worst = core::worse_ratio(worst, rms);
  }
  return worst;
}

// segment_ends as an int64 tensor on `device`, copied asynchronously from pinned host memory on the
// current stream (the caching host allocator keeps the pinned block alive until the copy has run): no
// synchronisation.
inline at::Tensor segment_ends_on(at::IntArrayRef segment_ends, const at::Device& device) {
  const int64_t S = static_cast<int64_t>(segment_ends.size());
  auto pinned = at::empty({S}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::copy(segment_ends.begin(), segment_ends.end(), pinned.data_ptr<int64_t>());
  return pinned.to(device, /*non_blocking=*/true);
}

}  // namespace fde::ops::cuda
