// rk_dense_output on CUDA: the outputs that fall inside an accepted step.
//
// Grid: a grid-stride loop over the B * D state elements, one thread per element (b, d). When a thread
// enters a row it reads the row's accept flag, t0, h and out_index (cached broadcast loads) and finds the
// rows [r0, r1) the step passes with core::outputs_passed itself: there are only a few per step, usually
// none, in which case the state is not read at all. For each such row it evaluates the interpolant as
// core::dense_weights on (y0, y1, k) in double (the CPU kernel's weights and order of accumulation) and
// writes out[r, b, d] (coalesced over d). Nothing is decided on the host.
// An out_index outside [0, T] (which the host cannot check without a synchronisation) makes the sample
// write nothing; the rk_commit that follows marks it core::kInvalidIndex.
#include <ATen/Dispatch.h>

#include "core/dense_output.h"
#include "core/step_commit.h"
#include "ops/cuda/common.cuh"
#include "ops/rk_dense_output/op.h"

namespace fde::ops {
namespace {

template <class T, int S>
struct DenseArgs {
  T* out;  // [T, B, D]
  const T* y0;
  const T* y1;
  const T* k[S];
  double mid[S];  // zeros past mid_coeffs
  const double* h;
  const double* t0;
  const bool* accept;
  const double* t_out;  // [T] (t_stride 0) or [B, T] (t_stride T)
  const int64_t* out_index;
  int64_t B, D, n_out, t_stride;
};

template <class T, int S, class RowOf>
__global__ void __launch_bounds__(cuda::kThreads)
    dense_output_kernel(DenseArgs<T, S> a, RowOf row_of, typename RowOf::index_t n) {
  using index_t = typename RowOf::index_t;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  // The row's step, cached across the grid-stride iterations of this thread that stay in the same row
  // (all of them in joint mode, B = 1).
  int64_t cur_b = -1;
  int64_t r0 = 0, r1 = 0;  // the output rows this row's step passes
  double hb = 0.0, tb0 = 0.0;
  const double* tb = nullptr;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = static_cast<int64_t>(row_of(i));
    if (b != cur_b) {
      cur_b = b;
      r0 = r1 = 0;
      const int64_t first = a.out_index[b];
      if (a.accept[b] && first >= 0 && first <= a.n_out) {
        hb = a.h[b];
        tb0 = a.t0[b];
        tb = a.t_out + b * a.t_stride;
        r0 = first;
        r1 = core::outputs_passed(tb, a.n_out, first, tb0, hb);
      }
    }
    if (r1 == r0) continue;  // rejected, or no output time inside this step: the state is not read

    const double ya = static_cast<double>(a.y0[i]), yb = static_cast<double>(a.y1[i]);
    double kv[S];
#pragma unroll
    for (int j = 0; j < S; ++j) kv[j] = static_cast<double>(a.k[j][i]);
    const int64_t d = static_cast<int64_t>(i) - b * a.D;
    for (int64_t r = r0; r < r1; ++r) {
      const core::DenseWeights w = core::dense_weights((tb[r] - tb0) / hb, hb, a.mid, S);
      double acc = w.y0 * ya + w.y1 * yb;
#pragma unroll
      for (int j = 0; j < S; ++j) acc += w.k[j] * kv[j];
      a.out[(r * a.B + b) * a.D + d] = static_cast<T>(acc);
    }
  }
}

}  // namespace

void RkDenseOutput::cuda(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                         const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept, const at::Tensor& t_out,
                         const at::Tensor& out_index, at::ArrayRef<double> mid_coeffs) {
  const int64_t T = check(out, y0, y1, ks, h, t0, accept, t_out, out_index, mid_coeffs);
  const int64_t B = y0.size(0), D = y0.size(1);
  const c10::cuda::CUDAGuard guard(y0.device());
  const int64_t n = B * D;
  if (n == 0 || T == 0) return;

  const cudaStream_t stream = cuda::current_stream();
  const int S = static_cast<int>(ks.size());
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_dense_output cuda", [&] {
    cuda::with_stage_count(S, [&](auto SC) {
      constexpr int kS = decltype(SC)::value;
      if constexpr (kS >= 2) {  // checked by RkDenseOutput::check
        DenseArgs<scalar_t, kS> a{};
        a.out = out.data_ptr<scalar_t>();
        a.y0 = y0.data_ptr<scalar_t>();
        a.y1 = y1.data_ptr<scalar_t>();
        for (int j = 0; j < kS; ++j) {
          a.k[j] = ks[j].data_ptr<scalar_t>();
          a.mid[j] = j < static_cast<int>(mid_coeffs.size()) ? mid_coeffs[j] : 0.0;
        }
        a.h = h.data_ptr<double>();
        a.t0 = t0.data_ptr<double>();
        a.accept = accept.data_ptr<bool>();
        a.t_out = t_out.data_ptr<double>();
        a.out_index = out_index.data_ptr<int64_t>();
        a.B = B;
        a.D = D;
        a.n_out = T;
        a.t_stride = t_out.dim() == 2 ? T : 0;
        cuda::with_row_of(n, D, [&](auto row_of) {
          using RowOf = decltype(row_of);
          dense_output_kernel<scalar_t, kS, RowOf><<<cuda::grid_for(n), cuda::kThreads, 0, stream>>>(
              a, row_of, static_cast<typename RowOf::index_t>(n));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
  });
}

}  // namespace fde::ops
