// initial_step_probe: the first half of Hairer's initial step (core/initial_step.h), before the field's
// second evaluation. Per error group b (a row of the [B, D] state), with scale = atol + |y0| rtol:
//   d0 = ||y0 / scale||, d1 = ||f0 / scale|| (the overflow-free RMS of core/error_norm.h, max over the
//   tolerance segments), h0 = initial_step_guess(d0, d1) rounded to the state's dtype,
//   y_probe = y0 + (h0 * direction) f0 and t_probe = t0 + h0 * direction, both in the state's dtype (what
//   the field is evaluated at next).
// y0, f0: [B, D]; t0: float64 [B]; direction: +1 or -1; rtol/atol/segment_ends as rk_error_control's.
// Returns (h0 [B] f64 unsigned, d1 [B] f64, y_probe [B, D], t_probe [B] in the state's dtype).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

#include "ops/checks.h"

namespace fde::ops {

struct InitialStepProbe {
  static constexpr const char* kName = "initial_step_probe";
  static constexpr const char* kSchema =
      "initial_step_probe(Tensor y0, Tensor f0, Tensor t0, float direction, Tensor rtol, Tensor atol, "
      "int[] segment_ends) -> (Tensor h0, Tensor d1, Tensor y_probe, Tensor t_probe)";
  using Fn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& t0, double direction, const at::Tensor& rtol,
      const at::Tensor& atol, at::IntArrayRef segment_ends);

  static void check(const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& t0, double direction,
                    const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends) {
    check_state(y0, "y0");
    check_like(f0, y0, "f0");
    check_time_vector(t0, y0.size(0), y0, "t0");
    check_direction(direction);
    check_segments(rtol, atol, segment_ends, y0.size(1), y0);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> meta(
      const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& t0, double direction, const at::Tensor& rtol,
      const at::Tensor& atol, at::IntArrayRef segment_ends) {
    check(y0, f0, t0, direction, rtol, atol, segment_ends);
    const int64_t B = y0.size(0);
    return {at::empty({B}, t0.options()), at::empty({B}, t0.options()), at::empty_like(y0),
            at::empty({B}, y0.options())};
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
