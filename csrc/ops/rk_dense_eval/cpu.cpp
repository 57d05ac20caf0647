// rk_dense_eval on the CPU: the interpolant as weights on (y0, y1, k) (rk_dense_weights), evaluated out of
// place with one vectorised pass per output row (cpu::weighted_sum).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "ops/cpu/row_chunks.h"
#include "ops/cpu/weighted_sum.h"
#include "ops/rk_dense_eval/op.h"
#include "ops/rk_dense_weights/op.h"

namespace fde::ops {

at::Tensor RkDenseEval::cpu(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                            const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs) {
  check(y0, y1, ks, h, t0, t_eval, mid_coeffs);
  const at::Tensor w = RkDenseWeights::cpu(h, t0, t_eval, mid_coeffs);
  const int64_t R = t_eval.size(0), B = y0.size(0), D = y0.size(1);
  const int S = static_cast<int>(ks.size());
  auto out = at::empty({R, B, D}, y0.options());
  const double* wp = w.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_dense_eval cpu", [&] {
    const scalar_t* y0p = y0.data_ptr<scalar_t>();
    const scalar_t* y1p = y1.data_ptr<scalar_t>();
    const scalar_t* k[core::kMaxStages];
    for (int j = 0; j < S; ++j) k[j] = ks[j].data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t r = 0; r < R; ++r) {
      cpu::for_each_row_chunk(B, D, [&](int64_t b, int64_t d0, int64_t d1) {
        const int64_t off = b * D + d0;
        const scalar_t* kb[core::kMaxStages];
        for (int j = 0; j < S; ++j) kb[j] = k[j] + off;
        cpu::weighted_sum(op + (r * B + b) * D + d0, y0p + off, y1p + off, kb, wp + (r * B + b) * (S + 2), S,
                          d1 - d0);
      });
    }
  });
  return out;
}

}  // namespace fde::ops
