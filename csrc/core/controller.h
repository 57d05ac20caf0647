// Step-size control and initial-step selection: scalar formulas shared by CPU and CUDA, and the one
// definition of the controller's parameters.
#pragma once

#include <array>
#include <cmath>
#include <optional>

#include "core/macros.h"

namespace fde::core {

// Integral controller with torchdiffeq's conventions (REFERENCE §1, DESIGN §4).
struct ControllerParams {
  double safety = 0.9;
  double ifactor = 10.0;
  double dfactor = 0.2;
  double exponent = 0.2;  // 1 / order of the propagated solution
  double min_step = 0.0;  // bounds on |h|
  double max_step = INFINITY;
};

// The packed form, an op's `float[] control` argument: the fields in this order. The only place the
// order is written; pack/unpack, the Python class (bindings.cpp) and its field names derive from it.
struct ControllerField {
  const char* name;
  double ControllerParams::*member;
};
inline constexpr ControllerField kControllerFields[] = {
    {"safety", &ControllerParams::safety},     {"ifactor", &ControllerParams::ifactor},
    {"dfactor", &ControllerParams::dfactor},   {"exponent", &ControllerParams::exponent},
    {"min_step", &ControllerParams::min_step}, {"max_step", &ControllerParams::max_step},
};
inline constexpr int kNumControllerFields = sizeof(kControllerFields) / sizeof(kControllerFields[0]);
using PackedControl = std::array<double, kNumControllerFields>;

inline PackedControl pack(const ControllerParams& p) {
  PackedControl v{};
  for (int i = 0; i < kNumControllerFields; ++i) v[i] = p.*kControllerFields[i].member;
  return v;
}

// `v` holds kNumControllerFields values in the packed order.
inline ControllerParams unpack(const double* v) {
  ControllerParams p;
  for (int i = 0; i < kNumControllerFields; ++i) p.*kControllerFields[i].member = v[i];
  return p;
}

// The range rules, in one place: safety in (0, 1], 0 < dfactor < 1 < ifactor (finite), exponent > 0
// (finite), 0 <= min_step <= max_step (min_step finite), max_step > 0. NaN fails every rule. Returns
// the first violated rule (the field it names, what it requires, the offending value), or nothing.
struct ControllerIssue {
  const char* field;
  const char* requirement;
  double value;
};

inline std::optional<ControllerIssue> check_controller(const ControllerParams& p) {
  using std::isfinite;
  if (!(p.safety > 0 && p.safety <= 1)) return ControllerIssue{"safety", "in (0, 1]", p.safety};
  if (!(p.dfactor > 0 && p.dfactor < 1)) return ControllerIssue{"dfactor", "in (0, 1)", p.dfactor};
  if (!(p.ifactor > 1 && isfinite(p.ifactor))) return ControllerIssue{"ifactor", "> 1 and finite", p.ifactor};
  if (!(p.exponent > 0 && isfinite(p.exponent)))
    return ControllerIssue{"exponent", "> 0 and finite", p.exponent};
  if (!(p.min_step >= 0 && isfinite(p.min_step)))
    return ControllerIssue{"min_step", ">= 0 and finite", p.min_step};
  if (!(p.max_step > 0)) return ControllerIssue{"max_step", "> 0", p.max_step};
  if (!(p.max_step >= p.min_step)) return ControllerIssue{"max_step", ">= min_step", p.max_step};
  return std::nullopt;
}

// A step is accepted when its error ratio is <= 1. |h| above max_step is always rejected and |h| at or
// below min_step always accepted, except that a non-finite ratio (NaN/inf in the stages) is never
// accepted: the step is retried smaller instead.
FDE_INLINE bool accept_step(double abs_h, double ratio, const ControllerParams& p) {
  if (!isfinite(ratio)) return false;
  bool accept = ratio <= 1.0;
  if (abs_h > p.max_step) accept = false;
  if (abs_h <= p.min_step) accept = true;
  return accept;
}

// Next |h|: h * clamp(safety * ratio^(-exponent), dfactor, ifactor), no shrink after an accepted
// step, ifactor when the error is exactly zero, dfactor when it is not finite; then clamped to
// [min_step, max_step].
FDE_INLINE double next_step_size(double abs_h, double ratio, const ControllerParams& p) {
  double factor;
  if (!isfinite(ratio)) {
    factor = p.dfactor;
  } else if (ratio == 0.0) {
    factor = p.ifactor;
  } else {
    const double floor = ratio < 1.0 ? 1.0 : p.dfactor;
    factor = fmin(p.ifactor, fmax(p.safety / pow(ratio, p.exponent), floor));
  }
  return fmin(fmax(abs_h * factor, p.min_step), p.max_step);
}

// One group's decision: accept flag and the next step size with h's sign.
FDE_INLINE void control_row(double ratio, double h, const ControllerParams& p, bool* accept, double* h_next) {
  const double abs_h = fabs(h);
  *accept = accept_step(abs_h, ratio, p);
  const double next = next_step_size(abs_h, ratio, p);
  *h_next = h >= 0 ? next : -next;
}

// Hairer, Norsett & Wanner, Solving ODEs I, II.4: first guess from d0 = ||y0/scale||, d1 = ||f0/scale||.
FDE_INLINE double initial_step_guess(double d0, double d1) {
  return (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
}

// ... refined with d2 = ||(f(t0 + h0, y0 + h0 f0) - f0)/scale|| / h0. `order` is the method's order
// minus one, as torchdiffeq passes it (exponent 1/(order+1)).
FDE_INLINE double initial_step_final(double h0, double d1, double d2, int order) {
  double h1;
  if (d1 <= 1e-15 && d2 <= 1e-15) {
    h1 = fmax(1e-6, h0 * 1e-3);
  } else {
    h1 = pow(0.01 / fmax(d1, d2), 1.0 / (order + 1));
  }
  return fmin(100.0 * h0, h1);
}

}  // namespace fde::core
