// rk_dense_weights on CUDA: one thread per (r, b) pair of the [R, B, 2 + S] float64 result (grid-stride),
// core::dense_weights at x = (t_eval[r] - t0[b]) / h[b], mid coefficients by value. No host sync.
#include <ATen/ops/empty.h>

#include "core/dense_output.h"
#include "ops/cuda/common.cuh"
#include "ops/rk_dense_weights/op.h"

namespace fde::ops {
namespace {

struct MidCoeffs {
  double mid[core::kMaxStages];
};

template <int S>
__global__ void __launch_bounds__(cuda::kThreads)
    dense_weights_kernel(double* __restrict__ w, const double* __restrict__ h, const double* __restrict__ t0,
                         const double* __restrict__ t_eval, MidCoeffs mc, int64_t R, int64_t B) {
  double mid[S];
#pragma unroll
  for (int j = 0; j < S; ++j) mid[j] = mc.mid[j];
  const int64_t n = R * B;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / B;
    const int64_t b = i - r * B;
    const core::DenseWeights dw = core::dense_weights((t_eval[r] - t0[b]) / h[b], h[b], mid, S);
    double* row = w + i * (S + 2);  // i == r * B + b
    row[0] = dw.y0;
    row[1] = dw.y1;
#pragma unroll
    for (int j = 0; j < S; ++j) row[2 + j] = dw.k[j];
  }
}

}  // namespace

at::Tensor RkDenseWeights::cuda(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                                at::ArrayRef<double> mid_coeffs) {
  check(h, t0, t_eval, mid_coeffs);
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t R = t_eval.size(0), B = h.size(0);
  const int S = static_cast<int>(mid_coeffs.size());
  auto w = at::empty({R, B, S + 2}, h.options());
  if (R * B == 0) return w;
  MidCoeffs mc{};
  for (int j = 0; j < S; ++j) mc.mid[j] = mid_coeffs[j];
  const cudaStream_t stream = cuda::current_stream();
  cuda::with_stage_count(S, [&](auto SC) {
    constexpr int kS = decltype(SC)::value;
    if constexpr (kS >= 2) {  // checked above
      dense_weights_kernel<kS><<<cuda::grid_for(R * B), cuda::kThreads, 0, stream>>>(
          w.data_ptr<double>(), h.data_ptr<double>(), t0.data_ptr<double>(), t_eval.data_ptr<double>(), mc, R, B);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return w;
}

}  // namespace fde::ops
