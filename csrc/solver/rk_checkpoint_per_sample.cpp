// Per-sample checkpoint gradients: replay each recorded iteration of the per-sample loop under autograd, in
// reverse, and back-propagate through it alone. A rejected (or finished) sample passes its state and FSAL
// derivative through unchanged, as the forward's masked commit did.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/TensorOperators.h>
#include <c10/util/Exception.h>

#include "solver/autograd_vjp.h"
#include "solver/rk_per_sample.h"
#include "solver/rk_step.h"

namespace fde::solver {

CheckpointGradients rk_checkpoint_backward_per_sample(VectorField& field, const SampleTape& tape,
                                                      const at::Tensor& grad_ys,
                                                      const std::vector<at::Tensor>& params) {
  TORCH_CHECK_VALUE(tape.tableau != nullptr && tape.y0.defined(), "fastdiffeq: an empty per-sample tape");
  const int64_t B = tape.y0.size(0), D = tape.y0.size(1);
  TORCH_CHECK_VALUE(grad_ys.dim() == 3 && grad_ys.size(0) == tape.T && grad_ys.size(1) == B && grad_ys.size(2) == D,
                    "fastdiffeq: grad_ys must be [", tape.T, ", ", B, ", ", D, "], got ", grad_ys.sizes());
  TORCH_CHECK_VALUE(grad_ys.scalar_type() == tape.y0.scalar_type() && grad_ys.device() == tape.y0.device(),
                    "fastdiffeq: grad_ys must have the state's dtype and device");
  const core::Tableau& tab = *tape.tableau;
  CheckpointGradients out;
  out.grad_params.reserve(params.size());
  for (const auto& q : params) out.grad_params.push_back(at::zeros_like(q));
  auto accumulate = [&](const std::vector<at::Tensor>& grads, size_t first) {
    for (size_t i = 0; i < params.size(); ++i) out.grad_params[i].add_(grads[first + i]);
  };

  LiveRowsField live_field(field);  // only the accepted samples move in a replayed iteration
  at::Tensor a_y = at::zeros_like(tape.y0);  // cotangents of the state and FSAL derivative after the iteration
  at::Tensor a_k = at::zeros_like(tape.y0);
  at::AutoGradMode grad_mode(true);
  for (auto it = tape.steps.rbegin(); it != tape.steps.rend(); ++it) {
    const SampleStep& s = *it;
    const at::Tensor y = s.y.detach().requires_grad_(true);
    const at::Tensor k0 = s.k0.detach().requires_grad_(true);
    live_field.set_live(s.accept);
    StepStages st = rk_stages(live_field, tab, y, k0, s.t0, s.h, out.nfe);
    std::vector<at::Tensor> outputs{at::where(s.accept, st.y1, y), at::where(s.accept, st.ks.back(), k0)};
    std::vector<at::Tensor> cotangents{a_y, a_k};
    if (s.out_sample.defined()) {
      outputs.push_back(dense_at_pairs(y, st.y1, st.ks, s.t0, s.h, s.out_sample, s.out_t, tab));
      cotangents.push_back(at::index(grad_ys, c10::List<std::optional<at::Tensor>>({s.out_row, s.out_sample})));
    }
    std::vector<at::Tensor> inputs{y, k0};
    inputs.insert(inputs.end(), params.begin(), params.end());
    const auto grads = engine_grad(field, outputs, cotangents, inputs);
    a_y = grads[0];
    a_k = grads[1];
    accumulate(grads, 2);
  }
  // The first derivative f(t0, y0) fed the first iteration's k0.
  const auto grads = first_derivative_vjp(field, tape.t0.to(tape.y0.scalar_type()), tape.y0, a_k, params, out.nfe);
  accumulate(grads, 1);
  out.grad_y0 = a_y + grads[0] + grad_ys.select(0, 0);
  return out;
}

}  // namespace fde::solver
