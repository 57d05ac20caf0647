// initial_step_probe on CUDA, two kernels on the current stream, no host synchronisation:
//   probe_norms_kernel: one block per row (grid-stride over rows): d0 and d1 by cuda::block_segment_rms
//     over core/initial_step.h's elements, then thread 0 writes h0, d1 and t_probe.
//   probe_point_kernel: grid-stride over the B * D elements: y_probe = core::probe_point with the row's
//     h0 (stream order puts it after the norms).
// Once per solve: one block per row is enough (joint mode, B = 1, reads the state with one block).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "core/initial_step.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/segment_rms.cuh"
#include "ops/initial_step_probe/op.h"

namespace fde::ops {
namespace {

template <class T>
__global__ void __launch_bounds__(cuda::kThreads)
    probe_norms_kernel(const T* __restrict__ y0, const T* __restrict__ f0, const double* __restrict__ t0,
                       const double* __restrict__ rtol, const double* __restrict__ atol,
                       const int64_t* __restrict__ ends, int S, double direction, int64_t B, int64_t D,
                       double* __restrict__ h0, double* __restrict__ d1, T* __restrict__ t_probe) {
  __shared__ double red[cuda::kWarpsPerBlock];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {  // block-uniform
    const T* y = y0 + b * D;
    const T* f = f0 + b * D;
    const double d0v = cuda::block_segment_rms(
        ends, S,
        [&](int64_t i, int s) { return core::scaled_by<T>(y[i], core::initial_scale<T>(y[i], atol[s], rtol[s])); },
        red);
    const double d1v = cuda::block_segment_rms(
        ends, S,
        [&](int64_t i, int s) { return core::scaled_by<T>(f[i], core::initial_scale<T>(y[i], atol[s], rtol[s])); },
        red);
    if (threadIdx.x == 0) {
      const double h0v = core::initial_h0<T>(d0v, d1v);
      h0[b] = h0v;
      d1[b] = d1v;
      t_probe[b] = static_cast<T>(core::add_rn(t0[b], h0v * direction));
    }
  }
}

template <class T, class RowOf>
__global__ void __launch_bounds__(cuda::kThreads)
    probe_point_kernel(const T* __restrict__ y0, const T* __restrict__ f0, const double* __restrict__ h0,
                       double direction, T* __restrict__ out, RowOf row_of, typename RowOf::index_t n) {
  using index_t = typename RowOf::index_t;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T signed_h0 = static_cast<T>(h0[row_of(i)] * direction);
    out[i] = core::probe_point<T>(y0[i], f0[i], signed_h0);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> InitialStepProbe::cuda(
    const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& t0, double direction, const at::Tensor& rtol,
    const at::Tensor& atol, at::IntArrayRef segment_ends) {
  check(y0, f0, t0, direction, rtol, atol, segment_ends);
  const c10::cuda::CUDAGuard guard(y0.device());
  const int64_t B = y0.size(0), D = y0.size(1);
  auto h0 = at::empty({B}, t0.options());
  auto d1 = at::empty({B}, t0.options());
  auto y_probe = at::empty_like(y0);
  auto t_probe = at::empty({B}, y0.options());
  if (B == 0) return {h0, d1, y_probe, t_probe};
  const at::Tensor ends = cuda::segment_ends_on(segment_ends, y0.device());
  const int S = static_cast<int>(segment_ends.size());
  const cudaStream_t stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "initial_step_probe cuda", [&] {
    probe_norms_kernel<scalar_t><<<cuda::grid_for(B, 1), cuda::kThreads, 0, stream>>>(
        y0.data_ptr<scalar_t>(), f0.data_ptr<scalar_t>(), t0.data_ptr<double>(), rtol.data_ptr<double>(),
        atol.data_ptr<double>(), ends.data_ptr<int64_t>(), S, direction, B, D, h0.data_ptr<double>(),
        d1.data_ptr<double>(), t_probe.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t n = B * D;
    if (n > 0) {
      cuda::with_row_of(n, D, [&](auto row_of) {
        using RowOf = decltype(row_of);
        probe_point_kernel<scalar_t, RowOf><<<cuda::grid_for(n), cuda::kThreads, 0, stream>>>(
            y0.data_ptr<scalar_t>(), f0.data_ptr<scalar_t>(), h0.data_ptr<double>(), direction,
            y_probe.data_ptr<scalar_t>(), row_of, static_cast<typename RowOf::index_t>(n));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return {h0, d1, y_probe, t_probe};
}

}  // namespace fde::ops
