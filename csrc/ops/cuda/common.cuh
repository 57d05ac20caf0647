// Shared launch helpers for the CUDA kernels of the fused ops (csrc/ops/cuda/*.cu).
//
// Conventions, shared by every kernel here:
//   - kernels run on the current stream of the input's device, under a CUDAGuard, and every launch is
//     followed by C10_CUDA_KERNEL_LAUNCH_CHECK();
//   - nothing here reads device memory from the host: h, t0, accept, status, out_index... are read by
//     the kernels; host-side values (coefficient lists, segment ends) travel to the device by value in
//     small kernel-argument structs;
//   - elementwise kernels are grid-stride loops over the flat [B, D] index, with the row b = i / D
//     computed by a fast 32-bit divider when B * D fits in int32 (the common case) and plain 64-bit
//     division otherwise;
//   - an empty range (B == 0 or D == 0) launches nothing.
#pragma once

//
// Only c10/cuda headers are used, not ATen/cuda/CUDAContext.h: that header pulls in cuBLAS, cuSPARSE and
// cuSOLVER headers, which a minimal CUDA toolkit (cudart + nvcc, as on the compile-check machine) does
// not have. at::cuda::getCurrentCUDAStream is a using-alias of c10::cuda::getCurrentCUDAStream, so the
// kernels run on exactly the stream ATen's own kernels use.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/controller.h"
#include "core/tableau.h"

namespace fde::ops::cuda {

inline constexpr int kThreads = 256;        // threads per block of every kernel here
inline constexpr int kWarp = 32;
inline constexpr int kWarpsPerBlock = kThreads / kWarp;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Streaming multiprocessors of the current device: a host-side attribute query (no device work, no
// synchronisation), cached per device after the first call.
inline int64_t current_sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  const int dev = c10::cuda::current_device();
  if (dev >= 0 && dev < kMaxDevices) {
    const int cached = cache[dev].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

// Blocks for a grid-stride loop over `work` items of `per_block` items each: enough to fill the device
// a few times over, never more than the work needs.
inline unsigned int grid_for(int64_t work, int64_t per_block = kThreads) {
  const int64_t cap = std::max<int64_t>(1, current_sm_count()) * 32;
  return static_cast<unsigned int>(std::clamp<int64_t>(ceil_div(work, per_block), 1, cap));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Row of a flat [B, D] index, 32-bit (fast magic-number division) or 64-bit.
struct RowOf32 {
  using index_t = uint32_t;
  at::cuda::detail::IntDivider<uint32_t> div;
  __device__ __forceinline__ index_t operator()(index_t i) const { return div.div(i); }
};
struct RowOf64 {
  using index_t = uint64_t;
  uint64_t cols;
  __device__ __forceinline__ index_t operator()(index_t i) const { return i / cols; }
};

// Calls fn(rows) with a RowOf32 or RowOf64 for an elementwise range of n = B * D > 0 elements.
template <class F>
void with_row_of(int64_t n, int64_t cols, F&& fn) {
  if (n <= std::numeric_limits<int32_t>::max()) {
    fn(RowOf32{at::cuda::detail::IntDivider<uint32_t>(static_cast<uint32_t>(cols))});
  } else {
    fn(RowOf64{static_cast<uint64_t>(cols)});
  }
}

// Calls fn(std::integral_constant<int, n>{}) for n in [0, kMaxStages], so the stage loop of a kernel
// unrolls with constant indices (its pointer arrays then stay in kernel-argument space).
template <class F>
void with_stage_count(int n, F&& fn) {
  static_assert(core::kMaxStages == 14, "extend with_stage_count");
  switch (n) {
    case 0: fn(std::integral_constant<int, 0>{}); break;
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    case 8: fn(std::integral_constant<int, 8>{}); break;
    case 9: fn(std::integral_constant<int, 9>{}); break;
    case 10: fn(std::integral_constant<int, 10>{}); break;
    case 11: fn(std::integral_constant<int, 11>{}); break;
    case 12: fn(std::integral_constant<int, 12>{}); break;
    case 13: fn(std::integral_constant<int, 13>{}); break;
    case 14: fn(std::integral_constant<int, 14>{}); break;
    default: TORCH_CHECK(false, "fastdiffeq: at most ", core::kMaxStages, " stages are supported, got ", n);
  }
}

// Stage pointers and their coefficients, passed to a kernel by value.
template <class T>
struct Stages {
  const T* k[core::kMaxStages];
  double coeff[core::kMaxStages];
};

// Sum over a warp; every lane gets the same value (the butterfly adds each pair in both orders, and
// floating-point addition is commutative, so all lanes hold bitwise-identical sums).
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Maximum over a warp; every lane gets the same value. NaN-free inputs (the callers' fallback paths).
__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Sum / maximum over a group of G threads (G = kWarp: a warp; G = kThreads: the block); every thread of
// the group gets the same value. For G = kThreads they synchronise the block, so every thread of the
// block must reach them (block-uniform control flow); `red` is kWarpsPerBlock doubles of shared memory.
template <int G>
__device__ __forceinline__ double group_sum(double v, double* red) {
  v = warp_sum(v);
  if constexpr (G == kWarp) {
    return v;
  } else {
    static_assert(G == kThreads, "groups are a warp or the block");
    const int warp = threadIdx.x / kWarp;
    if (threadIdx.x % kWarp == 0) red[warp] = v;
    __syncthreads();
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) total += red[w];
    __syncthreads();  // red is reused by the next call
    return total;
  }
}

template <int G>
__device__ __forceinline__ double group_max(double v, double* red) {
  v = warp_max(v);
  if constexpr (G == kWarp) {
    return v;
  } else {
    static_assert(G == kThreads, "groups are a warp or the block");
    const int warp = threadIdx.x / kWarp;
    if (threadIdx.x % kWarp == 0) red[warp] = v;
    __syncthreads();
    double total = red[0];
#pragma unroll
    for (int w = 1; w < kWarpsPerBlock; ++w) total = fmax(total, red[w]);
    __syncthreads();
    return total;
  }
}

}  // namespace fde::ops::cuda
