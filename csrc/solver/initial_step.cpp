// The unfused initial step: the reference the fused ops (initial_step_probe / initial_step_final) reproduce,
// and the path taken with a user-supplied norm.
#include "solver/initial_step.h"

#include <ATen/ops/empty.h>
#include <ATen/TensorOperators.h>

#include "core/controller.h"
#include "core/rounding.h"
#include "solver/norms.h"

namespace fde::solver {

at::Tensor select_initial_step(VectorField& field, ErrorNorm* norm, const InitialStepInput& in) {
  const auto dtype = in.y0.scalar_type();
  const int64_t B = in.y0.size(0);
  // torchdiffeq does this in the state's dtype; float32 states get float32-rounded step sizes.
  auto round_to_state = [&](double v) { return dtype == at::kFloat ? core::round_to<float>(v) : v; };
  auto scale = (in.atol + in.y0.abs() * in.rtol).to(dtype);
  // d0, d1, d2 and h0 are per-group scalars: read and written on the host through data pointers (element
  // indexing would be one dispatched op each).
  const auto d0 = group_norm(in.y0 / scale, in.segment_ends, norm).cpu().contiguous();
  const auto d1 = group_norm(in.f0 / scale, in.segment_ends, norm).cpu().contiguous();
  auto h0 = at::empty({B}, at::kDouble);
  double* h0p = h0.data_ptr<double>();
  const double* d0p = d0.data_ptr<double>();
  const double* d1p = d1.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) h0p[b] = round_to_state(core::initial_step_guess(d0p[b], d1p[b]));
  const auto h0_dev = h0.to(in.y0.device());
  const auto signed_h0 = (h0_dev * in.direction).unsqueeze(1);
  const auto y1 = in.y0 + signed_h0.to(dtype) * in.f0;
  const auto f1 = field.eval((in.t0 + h0_dev * in.direction).to(dtype), y1);
  const auto d2 = group_norm((f1 - in.f0) / scale, in.segment_ends, norm).cpu().contiguous();
  const double* d2p = d2.data_ptr<double>();
  auto h = at::empty({B}, at::kDouble);
  double* hp = h.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    hp[b] = round_to_state(core::initial_step_final(h0p[b], d1p[b], d2p[b] / h0p[b], in.order));
  return h.to(in.y0.device());
}

}  // namespace fde::solver
