// rk_stage_times on CUDA: t0 + c_i h, cast to the state's dtype as the vector field receives them.
//
// Grid: one thread per output element of the [S, B] result (grid-stride loop). The c_i travel by
// value, kMaxTimesPerLaunch at a time (one launch for every tableau here; longer lists take more).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "ops/cuda/common.cuh"
#include "ops/rk_stage_times/op.h"

namespace fde::ops {
namespace {

constexpr int kMaxTimesPerLaunch = 16;

struct StageFractions {
  double c[kMaxTimesPerLaunch];
  int n;  // stages in this launch
};

__device__ __forceinline__ float next_toward(float from, float to) { return nextafterf(from, to); }
__device__ __forceinline__ double next_toward(double from, double to) { return nextafter(from, to); }

// out: the first of this launch's rows of the [S, B] result.
template <class T>
__global__ void __launch_bounds__(cuda::kThreads)
    stage_times_kernel(T* __restrict__ out, const double* __restrict__ t0, const double* __restrict__ h,
                       StageFractions fr, int64_t B) {
  const int64_t n = fr.n * B;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int s = static_cast<int>(i / B);
    const int64_t b = i - s * B;
    double c = 0.0;
#pragma unroll
    for (int j = 0; j < kMaxTimesPerLaunch; ++j)
      if (j == s) c = fr.c[j];  // constant indices: fr stays in kernel-argument space
    if (c == 1.0) {
      // One ulp before t0 + h, towards t0, in the output dtype (RkStageTimes::cpu).
      out[i] = next_toward(static_cast<T>(t0[b] + h[b]), static_cast<T>(t0[b]));
    } else {
      // Rounded multiply then add, never contracted to an FMA: the same double as the CPU kernel (and
      // torchdiffeq's t0 + c * h), so stage times agree bit for bit across devices.
      out[i] = static_cast<T>(__dadd_rn(t0[b], __dmul_rn(c, h[b])));
    }
  }
}

}  // namespace

at::Tensor RkStageTimes::cuda(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c,
                              at::ScalarType dtype) {
  check(t0, h, c, dtype);
  const c10::cuda::CUDAGuard guard(t0.device());
  const int64_t B = t0.size(0);
  const int64_t S = static_cast<int64_t>(c.size());
  auto out = at::empty({S, B}, t0.options().dtype(dtype));
  if (S == 0 || B == 0) return out;

  const cudaStream_t stream = cuda::current_stream();
  const double* tp = t0.data_ptr<double>();
  const double* hp = h.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(dtype, "rk_stage_times cuda", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t s0 = 0; s0 < S; s0 += kMaxTimesPerLaunch) {
      StageFractions fr{};
      fr.n = static_cast<int>(std::min<int64_t>(kMaxTimesPerLaunch, S - s0));
      for (int j = 0; j < fr.n; ++j) fr.c[j] = c[s0 + j];
      stage_times_kernel<scalar_t>
          <<<cuda::grid_for(fr.n * B), cuda::kThreads, 0, stream>>>(op + s0 * B, tp, hp, fr, B);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace fde::ops
