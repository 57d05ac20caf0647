// rk_stage: one Runge-Kutta stage input in one pass over memory,
//   out[b, :] = y[b, :] + h[b] * sum_j coeffs[j] * ks[j][b, :]    (len(coeffs) <= len(ks)).
// Only the stages with a non-zero coefficient are read. Linear in (y, ks): differentiable (autograd.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include "ops/checks.h"

namespace fde::ops {

struct RkStage {
  static constexpr const char* kName = "rk_stage";
  static constexpr const char* kSchema = "rk_stage(Tensor y, Tensor[] ks, Tensor h, float[] coeffs) -> Tensor";
  using Fn = at::Tensor(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs);

  static void check(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
    check_state(y, "y");
    check_stages(ks, y, coeffs.size(), "coeffs");
    check_time_vector(h, y.size(0), y, "h");
  }

  static at::Tensor meta(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
    check(y, ks, h, coeffs);
    return at::empty_like(y);
  }

  static Fn cpu;
  static Fn cuda;
  static Fn autograd;
};

}  // namespace fde::ops
