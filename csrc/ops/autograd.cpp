// Autograd formulas of the differentiable ops, registered for every device at the Autograd key.
// rk_stage and rk_dense_eval are linear in their state inputs (y, y0, y1, k); step sizes and times are
// constants of the discrete solve (DESIGN §4), so they get no gradient.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_rk_stage(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdiffeq::rk_stage", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, const at::Tensor&, at::ArrayRef<double>)>();
  return op.call(y, ks, h, coeffs);
}

at::Tensor call_rk_dense_eval(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                              const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdiffeq::rk_dense_eval", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, at::ArrayRef<double>)>();
  return op.call(y0, y1, ks, h, t0, t_eval, mid);
}

at::Tensor call_rk_dense_weights(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                                 at::ArrayRef<double> mid) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdiffeq::rk_dense_weights", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         at::ArrayRef<double>)>();
  return op.call(h, t0, t_eval, mid);
}

// out = y + h * sum_j a_j k_j  =>  dL/dy = g, dL/dk_j = (h a_j) g (per row).
class RkStageFunction : public torch::autograd::Function<RkStageFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, at::TensorList ks, const at::Tensor& h,
                            at::ArrayRef<double> coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["h"] = h;
    ctx->saved_data["coeffs"] = std::vector<double>(coeffs.begin(), coeffs.end());
    ctx->saved_data["n_stages"] = static_cast<int64_t>(ks.size());
    return call_rk_stage(y, ks, h, coeffs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& g = grad_outputs[0];
    const at::Tensor h = ctx->saved_data["h"].toTensor();
    const auto coeffs = ctx->saved_data["coeffs"].toDoubleVector();
    const int64_t n = ctx->saved_data["n_stages"].toInt();
    variable_list grads;
    grads.reserve(n + 3);
    grads.push_back(g);
    const at::Tensor h_col = h.to(g.scalar_type()).unsqueeze(1);
    for (int64_t j = 0; j < n; ++j) {
      if (j < static_cast<int64_t>(coeffs.size()) && coeffs[j] != 0.0 && g.defined()) {
        grads.push_back(g * h_col.mul(coeffs[j]));
      } else {
        grads.emplace_back();
      }
    }
    grads.emplace_back();  // h
    grads.emplace_back();  // coeffs
    return grads;
  }
};

// out[r] = w_y0(r) y0 + w_y1(r) y1 + sum_j w_k(r, j) k_j  =>  dL/dy0 = sum_r w_y0(r) g[r], etc.
class RkDenseEvalFunction : public torch::autograd::Function<RkDenseEvalFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                            const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                            at::ArrayRef<double> mid) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["h"] = h;
    ctx->saved_data["t0"] = t0;
    ctx->saved_data["t_eval"] = t_eval;
    ctx->saved_data["mid"] = std::vector<double>(mid.begin(), mid.end());
    return call_rk_dense_eval(y0, y1, ks, h, t0, t_eval, mid);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& g = grad_outputs[0];  // [R, B, D]
    const auto mid = ctx->saved_data["mid"].toDoubleVector();
    const int64_t S = static_cast<int64_t>(mid.size());
    variable_list grads(2 + S + 4);
    if (!g.defined()) return grads;
    // [R, B, 2 + S] weights in the state dtype; each gradient is sum_r w[r, b, i] * g[r, b, :].
    const at::Tensor w = call_rk_dense_weights(ctx->saved_data["h"].toTensor(), ctx->saved_data["t0"].toTensor(),
                                               ctx->saved_data["t_eval"].toTensor(), mid)
                             .to(g.scalar_type());
    // [B, 2 + S, D] = per sample b: w[:, b, :]^T @ g[:, b, :]
    const at::Tensor all = at::bmm(w.permute({1, 2, 0}), g.permute({1, 0, 2}));
    for (int64_t i = 0; i < 2 + S; ++i) grads[i] = all.select(1, i);
    return grads;  // h, t0, t_eval, mid: no gradient
  }
};

// Without a graph to record, skip the autograd Function's bookkeeping (the solver's no-grad loop calls
// these ops several times per step).
bool any_requires_grad(std::initializer_list<const at::Tensor*> ts, at::TensorList ks) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t->requires_grad()) return true;
  for (const at::Tensor& k : ks)
    if (k.requires_grad()) return true;
  return false;
}

at::Tensor rk_stage_autograd(const at::Tensor& y, at::TensorList ks, const at::Tensor& h,
                             at::ArrayRef<double> coeffs) {
  if (!any_requires_grad({&y}, ks)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_rk_stage(y, ks, h, coeffs);
  }
  return RkStageFunction::apply(y, ks, h, coeffs);
}

at::Tensor rk_dense_eval_autograd(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                                  const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid) {
  if (!any_requires_grad({&y0, &y1}, ks)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_rk_dense_eval(y0, y1, ks, h, t0, t_eval, mid);
  }
  return RkDenseEvalFunction::apply(y0, y1, ks, h, t0, t_eval, mid);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiffeq, Autograd, m) {
  m.impl("rk_stage", &rk_stage_autograd);
  m.impl("rk_dense_eval", &rk_dense_eval_autograd);
}
