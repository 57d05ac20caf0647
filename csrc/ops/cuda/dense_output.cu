// (3) Dense output at the output times that fall inside an accepted step (CUDA).
//
// Grid: a grid-stride loop over the B * D state elements, one thread per element (b, d). Each thread
// reads its row's accept flag, t0, h and out_index (cached broadcast loads, once per row it visits) and
// scans the output rows r = out_index[b], ... while dir * (t_out_b[r] - (t0 + h)) <= 0, itself: there
// are only a few per step, usually none, in which case the state is not read at all. For each such row it evaluates core::dense_quartic in double with
// y_mid = y0 + h * sum_j mid_j k_j (every mid coefficient, zeros included, as rk_dense_output_cpu) and
// writes out[r, b, d] (coalesced over d). Nothing is decided on the host.
#include <ATen/Dispatch.h>

#include "core/dense_output.h"
#include "ops/checks.h"
#include "ops/cuda/common.cuh"
#include "ops/ops.h"

namespace fde::ops {
namespace {

template <class T>
struct DenseArgs {
  T* out;  // [T, B, D]
  const T* y0;
  const T* y1;
  const T* k0;
  const T* k_last;
  cuda::Stages<T> mid;  // ks[0..n_mid) and mid_coeffs
  const double* h;
  const double* t0;
  const bool* accept;
  const double* t_out;  // [T] (t_stride 0) or [B, T] (t_stride T)
  const int64_t* out_index;
  int64_t B, D, n_out, t_stride;
};

template <class T, int NM, class RowOf>
__global__ void __launch_bounds__(cuda::kThreads)
    dense_output_kernel(DenseArgs<T> a, RowOf row_of, typename RowOf::index_t n) {
  using index_t = typename RowOf::index_t;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  // The row's step, cached across the grid-stride iterations of this thread that stay in the same row
  // (all of them in joint mode, B = 1).
  int64_t cur_b = -1;
  bool any = false;  // does the row write any output in this step?
  double hb = 0.0, tb0 = 0.0, t1 = 0.0, dir = 1.0;
  const double* tb = nullptr;
  int64_t r0 = 0;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = static_cast<int64_t>(row_of(i));
    if (b != cur_b) {
      cur_b = b;
      any = false;
      if (a.accept[b]) {
        hb = a.h[b];
        tb0 = a.t0[b];
        t1 = tb0 + hb;
        dir = hb > 0 ? 1.0 : -1.0;
        tb = a.t_out + b * a.t_stride;
        r0 = a.out_index[b];
        any = r0 < a.n_out && dir * (tb[r0] - t1) <= 0.0;
      }
    }
    if (!any) continue;  // rejected, or no output time inside this step: the state is not read

    double mid = 0.0;
#pragma unroll
    for (int j = 0; j < NM; ++j) mid += a.mid.coeff[j] * static_cast<double>(a.mid.k[j][i]);
    const double ya = static_cast<double>(a.y0[i]), yb = static_cast<double>(a.y1[i]);
    const double y_mid = ya + hb * mid;
    const double hf0 = hb * static_cast<double>(a.k0[i]);
    const double hf1 = hb * static_cast<double>(a.k_last[i]);
    const int64_t d = static_cast<int64_t>(i) - b * a.D;
    for (int64_t r = r0; r < a.n_out && dir * (tb[r] - t1) <= 0.0; ++r) {
      const double x = (tb[r] - tb0) / hb;
      a.out[(r * a.B + b) * a.D + d] = static_cast<T>(core::dense_quartic(ya, yb, y_mid, hf0, hf1, x));
    }
  }
}

}  // namespace

void rk_dense_output_cuda(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                          const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept,
                          const at::Tensor& t_out, const at::Tensor& out_index,
                          at::ArrayRef<double> mid_coeffs) {
  const int64_t T = check_dense_output_args(out, y0, y1, ks, h, t0, accept, t_out, out_index, mid_coeffs);
  const int64_t B = y0.size(0), D = y0.size(1);
  const c10::cuda::CUDAGuard guard(y0.device());
  const int64_t n = B * D;
  if (n == 0 || T == 0) return;

  const cudaStream_t stream = cuda::current_stream();
  const int n_mid = static_cast<int>(mid_coeffs.size());
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_dense_output_cuda", [&] {
    DenseArgs<scalar_t> a{};
    a.out = out.data_ptr<scalar_t>();
    a.y0 = y0.data_ptr<scalar_t>();
    a.y1 = y1.data_ptr<scalar_t>();
    a.k0 = ks[0].data_ptr<scalar_t>();
    a.k_last = ks[ks.size() - 1].data_ptr<scalar_t>();
    for (int j = 0; j < n_mid; ++j) {
      a.mid.k[j] = ks[j].data_ptr<scalar_t>();
      a.mid.coeff[j] = mid_coeffs[j];
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
    cuda::with_stage_count(n_mid, [&](auto NM) {
      cuda::with_row_of(n, D, [&](auto row_of) {
        using RowOf = decltype(row_of);
        dense_output_kernel<scalar_t, decltype(NM)::value, RowOf>
            <<<cuda::grid_for(n), cuda::kThreads, 0, stream>>>(a, row_of, static_cast<typename RowOf::index_t>(n));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

}  // namespace fde::ops
