// step_t / jump_t: clip a step so it ends exactly on the next grid point (torchdiffeq's semantics).
// Host-side: the loops that use it read t0 and h on the host, so only solves that ask for step_t/jump_t
// pay a synchronisation per step.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/nextafter.h>
#include <ATen/TensorOperators.h>

#include <cmath>
#include <vector>

namespace fde::solver {

// A step [t0, t1] of signed size h. When a step is cut to end on a given time t1, h = t1 - t0, never
// larger in magnitude than the step that was proposed (the subtraction may round up).
struct ClippedStep {
  double t1, h;
};

inline ClippedStep cut_to(double t0, double t1, double h_proposed) {
  const double h = t1 - t0;
  return {t1, std::fabs(h) <= std::fabs(h_proposed) ? h : h_proposed};
}

struct GridClip {
  const std::vector<double>& step_t;  // sorted in the direction of integration, strictly after t0
  const std::vector<double>& jump_t;
  size_t next_step = 0, next_jump = 0;
  bool on_step = false, on_jump = false;

  bool active() const { return !step_t.empty() || !jump_t.empty(); }

  // The step from t0 when the controller proposes h: unchanged when no grid point comes first (end
  // t0 + h), else cut to end exactly on the next grid point (on_step / on_jump say which kind).
  ClippedStep clip(double t0, double h) {
    const double dir = h > 0 ? 1.0 : -1.0;
    double t1 = t0 + h;
    on_step = on_jump = false;
    if (next_step < step_t.size()) {
      const double g = step_t[next_step];
      if (dir * (g - t0) > 0 && dir * (t1 - g) > 0) {
        on_step = true;
        t1 = g;
      }
    }
    if (next_jump < jump_t.size()) {
      const double g = jump_t[next_jump];
      if (dir * (g - t0) > 0 && dir * (t1 - g) > 0) {
        on_jump = true;
        on_step = false;
        t1 = g;
      }
    }
    return (on_step || on_jump) ? cut_to(t0, t1, h) : ClippedStep{t0 + h, h};
  }

  // After an accepted step; torchdiffeq keeps pointing at the last grid point once it has passed it.
  void accepted() {
    if (on_step && next_step + 1 < step_t.size()) ++next_step;
    if (on_jump && next_jump + 1 < jump_t.size()) ++next_jump;
  }
};

// The time at which f is re-evaluated after a jump at t1: one ulp past it (in the state's dtype), on the
// new side of the discontinuity.
inline at::Tensor after_jump_time(double t1, double direction, at::ScalarType dtype, at::Device device) {
  auto t = at::full({1}, t1, at::TensorOptions().dtype(at::kDouble).device(device)).to(dtype);
  return at::nextafter(t, t + direction);
}

}  // namespace fde::solver
