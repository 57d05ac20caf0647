// Checkpoint gradients: replay each recorded accepted step under autograd, in reverse, and
// back-propagate through it alone. Exact gradients of the discrete solve (step sizes are constants),
// memory O(steps x state) for the tape plus one step's graph.
#include <ATen/ops/zeros_like.h>
#include <ATen/TensorOperators.h>
#include <torch/csrc/autograd/autograd.h>

#include "solver/autograd_vjp.h"
#include "solver/grid_clip.h"
#include "ops/registry.h"
#include "solver/rk_solve.h"
#include "solver/rk_step.h"
#include "solver/solve_args.h"

namespace fde::solver {

CheckpointGradients rk_checkpoint_backward(VectorField& field, const RkTape& tape, const at::Tensor& grad_ys,
                                           const std::vector<at::Tensor>& params) {
  check_checkpoint_args(tape, grad_ys, params);
  const core::Tableau& tab = *tape.tableau;
  const auto dtype = tape.y0.scalar_type();
  const auto dev = tape.y0.device();
  const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(dev);
  const at::ArrayRef<double> mid(tab.mid, tab.stages);
  CheckpointGradients out;
  out.grad_params.reserve(params.size());
  for (const auto& p : params) out.grad_params.push_back(at::zeros_like(p));
  auto accumulate = [&](const std::vector<at::Tensor>& grads, size_t first) {
    for (size_t i = 0; i < params.size(); ++i) out.grad_params[i].add_(grads[first + i]);
  };

  // Cotangents of the state and of the FSAL derivative at the end of the step being replayed.
  at::Tensor a_y = at::zeros_like(tape.y0);
  at::Tensor a_k = at::zeros_like(tape.y0);
  at::AutoGradMode grad_mode(true);
  for (auto it = tape.steps.rbegin(); it != tape.steps.rend(); ++it) {
    const RecordedStep& s = *it;
    const at::Tensor y = s.y.detach().requires_grad_(true);
    const at::Tensor k0 = s.k0.detach().requires_grad_(true);
    const at::Tensor t0 = at::full({1}, s.t0, time_opts);
    const at::Tensor h = at::full({1}, s.h, time_opts);
    StepStages st = rk_stages(field, tab, y, k0, t0, h, out.nfe);
    at::Tensor k_last = st.ks.back();
    if (s.jump) {
      k_last = field.eval(after_jump_time(s.t0 + s.h, tape.direction, dtype, dev), st.y1);
      ++out.nfe;
    }
    std::vector<at::Tensor> outputs{st.y1, k_last};
    std::vector<at::Tensor> cotangents{a_y, a_k};
    if (s.out_last > s.out_first) {
      outputs.push_back(
          ops::call<ops::RkDenseEval>(y, st.y1, st.ks, h, t0, tape.t_out.slice(0, s.out_first, s.out_last), mid));
      cotangents.push_back(grad_ys.slice(0, s.out_first, s.out_last));
    }
    std::vector<at::Tensor> inputs{y, k0};
    inputs.insert(inputs.end(), params.begin(), params.end());
    const auto grads = engine_grad(field, outputs, cotangents, inputs);
    a_y = grads[0];
    a_k = grads[1];
    accumulate(grads, 2);
  }
  // The first derivative f(t0, y0) fed the first step's k0.
  const auto grads = first_derivative_vjp(field, at::full({1}, tape.t0, time_opts).to(dtype), tape.y0, a_k, params, out.nfe);
  accumulate(grads, 1);
  out.grad_y0 = a_y + grads[0] + grad_ys.select(0, 0);
  return out;
}

}  // namespace fde::solver
