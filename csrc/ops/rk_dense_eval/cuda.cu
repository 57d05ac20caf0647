// rk_dense_eval on CUDA: the interpolant as weights on (y0, y1, k) (rk_dense_weights), evaluated out of
// place.
//
//   dense_eval_kernel: grid-stride over the B * D state elements; each thread loads y0, y1 and the S
//     stages of its element once, then writes all R rows out[r, b, d] = w_y0 y0 + w_y1 y1 + sum_j w_j k_j
//     (double accumulation in the CPU kernel's order), reading the weights of (r, b) as broadcast loads.
// The stage count S is a template parameter (constant indices, no local memory). No host sync.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "ops/cuda/common.cuh"
#include "ops/rk_dense_eval/op.h"
#include "ops/rk_dense_weights/op.h"

namespace fde::ops {
namespace {

template <class T, int S>
struct EvalArgs {
  T* out;  // [R, B, D]
  const T* y0;
  const T* y1;
  const T* k[S];
  const double* w;  // [R, B, 2 + S]
  int64_t R, B, D;
};

template <class T, int S, class RowOf>
__global__ void __launch_bounds__(cuda::kThreads)
    dense_eval_kernel(EvalArgs<T, S> a, RowOf row_of, typename RowOf::index_t n) {
  using index_t = typename RowOf::index_t;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = static_cast<int64_t>(row_of(i));
    const int64_t d = static_cast<int64_t>(i) - b * a.D;
    const double ya = static_cast<double>(a.y0[i]), yb = static_cast<double>(a.y1[i]);
    double kv[S];
#pragma unroll
    for (int j = 0; j < S; ++j) kv[j] = static_cast<double>(a.k[j][i]);
    for (int64_t r = 0; r < a.R; ++r) {
      const double* row = a.w + (r * a.B + b) * (S + 2);
      double acc = row[0] * ya + row[1] * yb;
#pragma unroll
      for (int j = 0; j < S; ++j) acc += row[2 + j] * kv[j];
      a.out[(r * a.B + b) * a.D + d] = static_cast<T>(acc);
    }
  }
}

}  // namespace

at::Tensor RkDenseEval::cuda(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                             const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs) {
  check(y0, y1, ks, h, t0, t_eval, mid_coeffs);
  const c10::cuda::CUDAGuard guard(y0.device());
  const at::Tensor w = RkDenseWeights::cuda(h, t0, t_eval, mid_coeffs);  // stream-ordered before the eval
  const int64_t R = t_eval.size(0), B = y0.size(0), D = y0.size(1);
  const int S = static_cast<int>(ks.size());
  auto out = at::empty({R, B, D}, y0.options());
  const int64_t n = B * D;
  if (R == 0 || n == 0) return out;

  const cudaStream_t stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_dense_eval cuda", [&] {
    cuda::with_stage_count(S, [&](auto SC) {
      constexpr int kS = decltype(SC)::value;
      if constexpr (kS >= 2) {  // checked by RkDenseEval::check
        EvalArgs<scalar_t, kS> a{};
        a.out = out.data_ptr<scalar_t>();
        a.y0 = y0.data_ptr<scalar_t>();
        a.y1 = y1.data_ptr<scalar_t>();
        for (int j = 0; j < kS; ++j) a.k[j] = ks[j].data_ptr<scalar_t>();
        a.w = w.data_ptr<double>();
        a.R = R;
        a.B = B;
        a.D = D;
        cuda::with_row_of(n, D, [&](auto row_of) {
          using RowOf = decltype(row_of);
          dense_eval_kernel<scalar_t, kS, RowOf><<<cuda::grid_for(n), cuda::kThreads, 0, stream>>>(
              a, row_of, static_cast<typename RowOf::index_t>(n));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
  });
  return out;
}

}  // namespace fde::ops
