#include "solver/autograd_vjp.h"

#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/autograd.h>

namespace fde::solver {

std::vector<at::Tensor> engine_grad(VectorField& field, const std::vector<at::Tensor>& outputs,
                                    const std::vector<at::Tensor>& cotangents, const std::vector<at::Tensor>& inputs) {
  std::vector<at::Tensor> outs, cots;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].defined() && outputs[i].requires_grad() && cotangents[i].defined()) {
      outs.push_back(outputs[i]);
      cots.push_back(cotangents[i]);
    }
  }
  std::vector<at::Tensor> grads(inputs.size());
  if (!outs.empty()) {
    auto unlock = field.unlock();  // the autograd engine must not run under the GIL
    grads = torch::autograd::grad(outs, inputs, cots, /*retain_graph=*/false, /*create_graph=*/false,
                                  /*allow_unused=*/true);
  }
  for (size_t i = 0; i < inputs.size(); ++i)
    if (!grads[i].defined()) grads[i] = at::zeros_like(inputs[i]);
  return grads;
}

int64_t count_params(const std::vector<at::Tensor>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.numel();
  return n;
}

FieldVjp autograd_vjp(VectorField& field, const std::vector<at::Tensor>& params, const at::Tensor& t,
                      const at::Tensor& y, const at::Tensor& v, at::Tensor& grad_params) {
  const at::Tensor y_in = y.detach().requires_grad_(true);
  at::Tensor f;
  {
    at::AutoGradMode enable(true);
    f = field.eval(t, y_in);
  }
  std::vector<at::Tensor> inputs{y_in};
  inputs.insert(inputs.end(), params.begin(), params.end());
  std::vector<at::Tensor> grads;
  if (f.requires_grad()) {
    auto unlock = field.unlock();
    grads = torch::autograd::grad({f}, inputs, {v}, /*retain_graph=*/false, /*create_graph=*/false,
                                  /*allow_unused=*/true);
  } else {
    grads.resize(inputs.size());  // f depends on neither y nor the parameters
  }
  int64_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    if (grads[1 + i].defined()) grad_params.narrow(0, offset, n).add_(grads[1 + i].reshape({n}));
    offset += n;
  }
  at::Tensor grad_y = grads[0].defined() ? grads[0] : at::zeros_like(y);
  return {f.detach(), grad_y};
}

}  // namespace fde::solver
