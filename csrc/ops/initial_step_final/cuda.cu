// initial_step_final on CUDA: one block per row (grid-stride over rows), d2 by cuda::block_segment_rms
// over core/initial_step.h's element, then thread 0 writes the signed, clamped first step
// (core::initial_h). One kernel on the current stream, no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "core/initial_step.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/segment_rms.cuh"
#include "ops/initial_step_final/op.h"

namespace fde::ops {
namespace {

template <class T>
__global__ void __launch_bounds__(cuda::kThreads)
    final_step_kernel(const T* __restrict__ y0, const T* __restrict__ f0, const T* __restrict__ f1,
                      const double* __restrict__ h0, const double* __restrict__ d1, const double* __restrict__ rtol,
                      const double* __restrict__ atol, const int64_t* __restrict__ ends, int S, int order,
                      double direction, core::ControllerParams p, int64_t B, int64_t D, double* __restrict__ h) {
  __shared__ double red[cuda::kWarpsPerBlock];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {  // block-uniform
    const T* y = y0 + b * D;
    const T* fa = f0 + b * D;
    const T* fb = f1 + b * D;
    const double d2 = cuda::block_segment_rms(
        ends, S,
        [&](int64_t i, int s) {
          return core::scaled_difference<T>(fb[i], fa[i], core::initial_scale<T>(y[i], atol[s], rtol[s]));
        },
        red);
    if (threadIdx.x == 0) h[b] = core::initial_h<T>(h0[b], d1[b], d2, order, direction, p);
  }
}

}  // namespace

at::Tensor InitialStepFinal::cuda(const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& f1,
                                  const at::Tensor& h0, const at::Tensor& d1, double direction,
                                  const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends,
                                  int64_t order, at::ArrayRef<double> control) {
  const core::ControllerParams params =
      check(y0, f0, f1, h0, d1, direction, rtol, atol, segment_ends, order, control);
  const c10::cuda::CUDAGuard guard(y0.device());
  const int64_t B = y0.size(0), D = y0.size(1);
  auto h = at::empty({B}, h0.options());
  if (B == 0) return h;
  const at::Tensor ends = cuda::segment_ends_on(segment_ends, y0.device());
  const int S = static_cast<int>(segment_ends.size());
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "initial_step_final cuda", [&] {
    final_step_kernel<scalar_t><<<cuda::grid_for(B, 1), cuda::kThreads, 0, cuda::current_stream()>>>(
        y0.data_ptr<scalar_t>(), f0.data_ptr<scalar_t>(), f1.data_ptr<scalar_t>(), h0.data_ptr<double>(),
        d1.data_ptr<double>(), rtol.data_ptr<double>(), atol.data_ptr<double>(), ends.data_ptr<int64_t>(), S,
        static_cast<int>(order), direction, params, B, D, h.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return h;
}

}  // namespace fde::ops
