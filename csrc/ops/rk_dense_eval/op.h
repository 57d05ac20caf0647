// rk_dense_eval: the differentiable dense output (graph mode and checkpoint replay): the interpolant of
// one step (core::dense_weights) at times t_eval (float64 [R], shared by all samples), returned as a new
// [R, B, D] tensor. Linear in (y0, y1, ks): its autograd formula (autograd.cpp) uses rk_dense_weights.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "ops/checks.h"

namespace fde::ops {

struct RkDenseEval {
  static constexpr const char* kName = "rk_dense_eval";
  static constexpr const char* kSchema =
      "rk_dense_eval(Tensor y0, Tensor y1, Tensor[] ks, Tensor h, Tensor t0, Tensor t_eval, float[] mid_coeffs) "
      "-> Tensor";
  using Fn = at::Tensor(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                        const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs);

  static void check(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                    const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs) {
    check_state(y0, "y0");
    check_like(y1, y0, "y1");
    check_stages(ks, y0, mid_coeffs.size(), "mid_coeffs");
    TORCH_CHECK(ks.size() == mid_coeffs.size(), "fastdiffeq: mid_coeffs: rk_dense_eval needs one mid coefficient ",
                "per stage, got ", mid_coeffs.size(), " for ", ks.size(), " stages");
    check_time_vector(h, y0.size(0), y0, "h");
    check_dense_times(h, t0, t_eval, mid_coeffs.size());
  }

  static at::Tensor meta(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                         const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs) {
    check(y0, y1, ks, h, t0, t_eval, mid_coeffs);
    return at::empty({t_eval.size(0), y0.size(0), y0.size(1)}, y0.options());
  }

  static Fn cpu;
  static Fn cuda;
  static Fn autograd;
};

}  // namespace fde::ops
