// rk_stage on CUDA: out = y + h * sum_j a_j k_j in one pass over memory.
//
// Grid: a grid-stride loop over the B * D elements, kThreads per block. Each thread reads h[b] of its
// row (a cached broadcast load) and forms the weights h[b] * a_j in double, cast to the state's dtype,
// then accumulates in the state's dtype over the stages with a non-zero coefficient, in order, as
// RkStage::cpu does. The stage count is a template parameter so the loop unrolls.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>

#include "ops/cuda/common.cuh"
#include "ops/rk_stage/op.h"

namespace fde::ops {
namespace {

template <class T, int S, class RowOf>
__global__ void __launch_bounds__(cuda::kThreads)
    rk_stage_kernel(T* __restrict__ out, const T* __restrict__ y, const double* __restrict__ h,
                    cuda::Stages<T> st, RowOf row_of, typename RowOf::index_t n) {
  using index_t = typename RowOf::index_t;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double hb = h[row_of(i)];
    T acc = T(0);
#pragma unroll
    for (int j = 0; j < S; ++j) acc += static_cast<T>(hb * st.coeff[j]) * st.k[j][i];
    out[i] = y[i] + acc;
  }
}

}  // namespace

at::Tensor RkStage::cuda(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
  check(y, ks, h, coeffs);
  const c10::cuda::CUDAGuard guard(y.device());
  auto out = at::empty_like(y);
  const int64_t B = y.size(0), D = y.size(1), n = B * D;
  if (n == 0) return out;

  // Only the stages with a non-zero coefficient are read.
  int nz[core::kMaxStages];
  int s = 0;
  for (size_t j = 0; j < coeffs.size(); ++j)
    if (coeffs[j] != 0.0) nz[s++] = static_cast<int>(j);

  const cudaStream_t stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rk_stage cuda", [&] {
    cuda::Stages<scalar_t> st{};
    for (int j = 0; j < s; ++j) {
      st.k[j] = ks[nz[j]].data_ptr<scalar_t>();
      st.coeff[j] = coeffs[nz[j]];
    }
    const scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const double* hp = h.data_ptr<double>();
    cuda::with_stage_count(s, [&](auto S) {
      cuda::with_row_of(n, D, [&](auto row_of) {
        using RowOf = decltype(row_of);
        rk_stage_kernel<scalar_t, decltype(S)::value, RowOf>
            <<<cuda::grid_for(n), cuda::kThreads, 0, stream>>>(op, yp, hp, st, row_of,
                                                              static_cast<typename RowOf::index_t>(n));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return out;
}

}  // namespace fde::ops
