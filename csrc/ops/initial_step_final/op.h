// initial_step_final: the second half of Hairer's initial step (core/initial_step.h), after the field's
// evaluation f1 = f(t_probe, y_probe). Per error group b, with scale = atol + |y0| rtol as in the probe:
//   d2 = ||(f1 - f0) / scale|| (overflow-free RMS, max over segments),
//   h = initial_step_final(h0, d1, d2 / h0, order) rounded to the state's dtype, clamped to
//   [min_step, max_step] and signed by `direction`: the first step the solver takes.
// h0, d1: initial_step_probe's; order: the method's order minus one (torchdiffeq's convention);
// control: core::ControllerParams packed (only min_step and max_step are used; all are checked).
// Returns h [B] f64.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include "ops/checks.h"

namespace fde::ops {

struct InitialStepFinal {
  static constexpr const char* kName = "initial_step_final";
  static constexpr const char* kSchema =
      "initial_step_final(Tensor y0, Tensor f0, Tensor f1, Tensor h0, Tensor d1, float direction, Tensor rtol, "
      "Tensor atol, int[] segment_ends, int order, float[] control) -> Tensor";
  using Fn = at::Tensor(const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& f1, const at::Tensor& h0,
                        const at::Tensor& d1, double direction, const at::Tensor& rtol, const at::Tensor& atol,
                        at::IntArrayRef segment_ends, int64_t order, at::ArrayRef<double> control);

  static core::ControllerParams check(const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& f1,
                                      const at::Tensor& h0, const at::Tensor& d1, double direction,
                                      const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends,
                                      int64_t order, at::ArrayRef<double> control) {
    check_state(y0, "y0");
    check_like(f0, y0, "f0");
    check_like(f1, y0, "f1");
    check_time_vector(h0, y0.size(0), y0, "h0");
    check_time_vector(d1, y0.size(0), y0, "d1");
    check_direction(direction);
    check_segments(rtol, atol, segment_ends, y0.size(1), y0);
    TORCH_CHECK(order >= 0 && order < 64, "fastdiffeq: order must be in [0, 64), got ", order);
    return check_control(control);
  }

  static at::Tensor meta(const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& f1, const at::Tensor& h0,
                         const at::Tensor& d1, double direction, const at::Tensor& rtol, const at::Tensor& atol,
                         at::IntArrayRef segment_ends, int64_t order, at::ArrayRef<double> control) {
    check(y0, f0, f1, h0, d1, direction, rtol, atol, segment_ends, order, control);
    return at::empty_like(h0);
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
