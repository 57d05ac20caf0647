#include "solver/initial_step.h"

#include "core/controller.h"
#include "solver/norms.h"

namespace fde::solver {

at::Tensor select_initial_step(VectorField& field, ErrorNorm* norm, const InitialStepInput& in) {
  const auto dtype = in.y0.scalar_type();
  const int64_t B = in.y0.size(0);
  // torchdiffeq does this in the state's dtype; float32 states get float32-rounded step sizes.
  auto round_to_state = [&](double v) { return dtype == at::kFloat ? static_cast<double>(static_cast<float>(v)) : v; };
  auto scale = (in.atol + in.y0.abs() * in.rtol).to(dtype);
  auto d0 = group_norm(in.y0 / scale, in.segment_ends, norm).cpu();
  auto d1 = group_norm(in.f0 / scale, in.segment_ends, norm).cpu();
  auto h0 = at::empty({B}, at::kDouble);
  for (int64_t b = 0; b < B; ++b)
    h0[b] = round_to_state(core::initial_step_guess(d0[b].item<double>(), d1[b].item<double>()));
  auto h0_dev = h0.to(in.y0.device());
  auto signed_h0 = (h0_dev * in.direction).unsqueeze(1);
  auto y1 = in.y0 + signed_h0.to(dtype) * in.f0;
  auto f1 = field.eval((in.t0 + h0_dev * in.direction).to(dtype), y1);
  auto d2 = (group_norm((f1 - in.f0) / scale, in.segment_ends, norm).cpu() / h0).contiguous();
  auto h = at::empty({B}, at::kDouble);
  for (int64_t b = 0; b < B; ++b)
    h[b] = round_to_state(core::initial_step_final(h0[b].item<double>(), d1[b].item<double>(),
                                                   d2[b].item<double>(), in.order));
  return h.to(in.y0.device());
}

}  // namespace fde::solver
