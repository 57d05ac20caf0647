#include "solver/autograd_vjp.h"

#include <ATen/ops/zeros_like.h>
#include <ATen/TensorOperators.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>

namespace fde::solver {
namespace {

void add_param_grads(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads, size_t first,
                     at::Tensor& grad_params) {
  int64_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    if (grads[first + i].defined()) grad_params.narrow(0, offset, n).add_(grads[first + i].reshape({n}));
    offset += n;
  }
}

}  // namespace

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

std::vector<at::Tensor> first_derivative_vjp(VectorField& field, const at::Tensor& t0, const at::Tensor& y0,
                                             const at::Tensor& a_k, const std::vector<at::Tensor>& params,
                                             int64_t& nfe) {
  const at::Tensor y = y0.detach().requires_grad_(true);
  at::Tensor k0;
  {
    at::AutoGradMode enable(true);
    k0 = field.eval(t0, y);
  }
  ++nfe;
  std::vector<at::Tensor> inputs{y};
  inputs.insert(inputs.end(), params.begin(), params.end());
  return engine_grad(field, {k0}, {a_k}, inputs);
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
  add_param_grads(params, grads, 1, grad_params);
  at::Tensor grad_y = grads[0].defined() ? grads[0] : at::zeros_like(y);
  return {f.detach(), grad_y};
}


FieldVjp autograd_vjp_deferred(VectorField& field, const std::vector<at::Tensor>& params,
                               std::vector<DeferredVjp>& store, const at::Tensor& t, const at::Tensor& y,
                               const at::Tensor& v, bool want_grad_y) {
  const at::Tensor y_in = y.detach().requires_grad_(want_grad_y);
  at::Tensor f;
  {
    at::AutoGradMode enable(true);
    f = field.eval(t, y_in);
  }
  FieldVjp r;
  const bool keep = !params.empty() && f.requires_grad();
  if (want_grad_y) {
    at::Tensor g;
    if (f.requires_grad()) {
      auto unlock = field.unlock();
      g = torch::autograd::grad({f}, {y_in}, {v}, /*retain_graph=*/keep, /*create_graph=*/false,
                                /*allow_unused=*/true)[0];
    }
    r.grad_y = g.defined() ? g : at::zeros_like(y);
  }
  r.f = f.detach();
  store.push_back({at::Tensor(), at::Tensor(), v, keep ? f : at::Tensor()});
  return r;
}

void autograd_accumulate_deferred(VectorField& field, const std::vector<at::Tensor>& params,
                                  std::vector<DeferredVjp>& store, const std::vector<at::Tensor>& weights,
                                  at::Tensor& grad_params) {
  TORCH_CHECK(weights.size() == store.size(), "fastdiffeq: accumulate_deferred got ", weights.size(),
              " weights for ", store.size(), " deferred products");
  std::vector<DeferredVjp> pending = std::move(store);
  store.clear();
  std::vector<at::Tensor> outs, cots;
  for (size_t k = 0; k < pending.size(); ++k) {
    if (!weights[k].defined() || !pending[k].f.defined()) continue;
    outs.push_back(pending[k].f);
    cots.push_back(pending[k].v * weights[k].unsqueeze(1));
  }
  if (outs.empty()) return;
  std::vector<at::Tensor> grads;
  {
    auto unlock = field.unlock();
    grads = torch::autograd::grad(outs, params, cots, /*retain_graph=*/false, /*create_graph=*/false,
                                  /*allow_unused=*/true);
  }
  add_param_grads(params, grads, 0, grad_params);
}

}  // namespace fde::solver
