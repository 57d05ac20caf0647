// step_size_control: the controller alone (core::control_row), for error ratios computed elsewhere (a
// user-supplied norm). ratio and h: float64 [B]; control: core::ControllerParams packed.
// Returns (accept [B] bool, h_next [B] f64 with h's sign).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

#include "ops/checks.h"

namespace fde::ops {

struct StepSizeControl {
  static constexpr const char* kName = "step_size_control";
  static constexpr const char* kSchema =
      "step_size_control(Tensor ratio, Tensor h, float[] control) -> (Tensor accept, Tensor h_next)";
  using Fn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& ratio, const at::Tensor& h,
                                                at::ArrayRef<double> control);

  static core::ControllerParams check(const at::Tensor& ratio, const at::Tensor& h, at::ArrayRef<double> control) {
    const int64_t B = check_batch_vector(h, "h");
    check_time_vector(ratio, B, h, "ratio");
    return check_control(control);
  }

  static std::tuple<at::Tensor, at::Tensor> meta(const at::Tensor& ratio, const at::Tensor& h,
                                                 at::ArrayRef<double> control) {
    check(ratio, h, control);
    return {at::empty_like(h, h.options().dtype(at::kBool)), at::empty_like(h)};
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
