// rk_dense_weights: the interpolant's weights (core::dense_weights), float64 [R, B, 2 + S]: on y0, y1 and
// each of the S stages, at x = (t_eval[r] - t0[b]) / h[b]. The VJP of rk_dense_eval uses them.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "ops/checks.h"

namespace fde::ops {

struct RkDenseWeights {
  static constexpr const char* kName = "rk_dense_weights";
  static constexpr const char* kSchema =
      "rk_dense_weights(Tensor h, Tensor t0, Tensor t_eval, float[] mid_coeffs) -> Tensor";
  using Fn = at::Tensor(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                        at::ArrayRef<double> mid_coeffs);

  static void check(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                    at::ArrayRef<double> mid_coeffs) {
    check_dense_times(h, t0, t_eval, mid_coeffs.size());
  }

  static at::Tensor meta(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                         at::ArrayRef<double> mid_coeffs) {
    check(h, t0, t_eval, mid_coeffs);
    return at::empty({t_eval.size(0), h.size(0), static_cast<int64_t>(mid_coeffs.size()) + 2}, h.options());
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
