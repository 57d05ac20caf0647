// step_t / jump_t: clip a step so it ends exactly on the next grid point (torchdiffeq's semantics).
// Host-side: the loops that use it read t0 and h on the host, so only solves that ask for step_t/jump_t
// pay a synchronisation per step.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace fde::solver {

struct GridClip {
  const std::vector<double>& step_t;  // sorted in the direction of integration, strictly after t0
  const std::vector<double>& jump_t;
  size_t next_step = 0, next_jump = 0;
  bool on_step = false, on_jump = false;

  bool active() const { return !step_t.empty() || !jump_t.empty(); }

  // The step to take from t0 when the controller proposes h (same sign convention).
  double clip(double t0, double h) {
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
    return t1 - t0;
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
