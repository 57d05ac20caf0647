// step_size_control on CUDA: one thread per group (grid-stride), core::control_row. No host sync.
#include <ATen/ops/empty.h>

#include "core/controller.h"
#include "ops/cuda/common.cuh"
#include "ops/step_size_control/op.h"

namespace fde::ops {
namespace {

__global__ void __launch_bounds__(cuda::kThreads)
    step_size_control_kernel(const double* __restrict__ ratio, const double* __restrict__ h, int64_t B,
                             core::ControllerParams p, bool* __restrict__ accept, double* __restrict__ h_next) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < B; b += stride)
    core::control_row(ratio[b], h[b], p, accept + b, h_next + b);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> StepSizeControl::cuda(const at::Tensor& ratio, const at::Tensor& h,
                                                         at::ArrayRef<double> control) {
  const core::ControllerParams params = check(ratio, h, control);
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t B = h.size(0);
  auto accept = at::empty({B}, h.options().dtype(at::kBool));
  auto h_next = at::empty({B}, h.options());
  if (B == 0) return {accept, h_next};
  step_size_control_kernel<<<cuda::grid_for(B), cuda::kThreads, 0, cuda::current_stream()>>>(
      ratio.data_ptr<double>(), h.data_ptr<double>(), B, params, accept.data_ptr<bool>(), h_next.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {accept, h_next};
}

}  // namespace fde::ops
