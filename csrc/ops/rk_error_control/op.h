// rk_error_control: error estimate err = h sum_j e_j k_j, error ratio = max over tolerance segments of
// the RMS of err / (atol + rtol max(|y0|, |y1|)) (core/error_norm.h, overflow-free), accept decision and
// next step size (core::control_row), in one pass.
// rtol/atol: float64 [S]; segment_ends: the S non-decreasing end offsets of the segments along D (empty
// segments are skipped); control: core::ControllerParams packed (core::pack).
// Returns (ratio [B] f64, accept [B] bool, h_next [B] f64 with h's sign).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "ops/checks.h"

namespace fde::ops {

struct RkErrorControl {
  static constexpr const char* kName = "rk_error_control";
  static constexpr const char* kSchema =
      "rk_error_control(Tensor y0, Tensor y1, Tensor[] ks, Tensor h, float[] err_coeffs, Tensor rtol, "
      "Tensor atol, int[] segment_ends, float[] control) -> (Tensor ratio, Tensor accept, Tensor h_next)";
  using Fn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
      at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends,
      at::ArrayRef<double> control);

  static core::ControllerParams check(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                                      const at::Tensor& h, at::ArrayRef<double> err_coeffs, const at::Tensor& rtol,
                                      const at::Tensor& atol, at::IntArrayRef segment_ends,
                                      at::ArrayRef<double> control) {
    check_state(y0, "y0");
    check_like(y1, y0, "y1");
    check_stages(ks, y0, err_coeffs.size(), "err_coeffs");
    check_time_vector(h, y0.size(0), y0, "h");
    check_segments(rtol, atol, segment_ends, y0.size(1), y0);
    return check_control(control);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> meta(const at::Tensor& y0, const at::Tensor& y1,
                                                             at::TensorList ks, const at::Tensor& h,
                                                             at::ArrayRef<double> err_coeffs, const at::Tensor& rtol,
                                                             const at::Tensor& atol, at::IntArrayRef segment_ends,
                                                             at::ArrayRef<double> control) {
    check(y0, y1, ks, h, err_coeffs, rtol, atol, segment_ends, control);
    const int64_t B = y0.size(0);
    return {at::empty({B}, h.options()), at::empty({B}, h.options().dtype(at::kBool)), at::empty({B}, h.options())};
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
