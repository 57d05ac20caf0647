// Terminal events of per-sample solves: the root of each sample's event function inside one accepted step,
// by bisection on the step's dense output.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/tableau.h"
#include "solver/vector_field.h"

namespace fde::solver {

// One step of every sample: y, y1, ks [B, D] and its times t0, h (float64 [B] on y's device).
struct StepSpan {
  const at::Tensor& y;
  const at::Tensor& y1;
  const std::vector<at::Tensor>& ks;
  const at::Tensor& t0;
  const at::Tensor& h;
  const core::Tableau& tab;
};

// For each sample in `samples` (whose event changed sign over its step [t0, t0 + h]), the first time at which
// the event's sign differs from sign0[b] (float64 resolution, at most max_iter bisections): the end of the
// last bisection interval, so the event has happened at the returned time. The event is evaluated for all B
// samples at once (the others at their step's end). Adds the number of event calls to n_calls.
std::vector<double> locate_events(EventFunction& event, const StepSpan& step, const std::vector<int64_t>& samples,
                                  const std::vector<double>& t0, const std::vector<double>& t1,
                                  const std::vector<double>& sign0, int64_t max_iter, int64_t& n_calls);

// The sign of an event value: -1, 0 or +1 (NaN counts as 0: a NaN event value stops the sample).
inline double event_sign(double v) { return v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0); }

}  // namespace fde::solver
