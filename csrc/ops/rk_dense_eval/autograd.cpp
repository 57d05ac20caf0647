// rk_dense_eval's autograd formula, registered for every device at the Autograd key. Linear in
// (y0, y1, ks): out[r] = w_y0(r) y0 + w_y1(r) y1 + sum_j w_k(r, j) k_j  =>  dL/dy0 = sum_r w_y0(r) g[r],
// etc., with the weights from rk_dense_weights. h, t0 and the times are constants of the discrete solve.
#include <ATen/ops/bmm.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

#include "ops/autograd_util.h"
#include "ops/registry.h"

namespace fde::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
    return call<RkDenseEval>(y0, y1, ks, h, t0, t_eval, mid);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& g = grad_outputs[0];  // [R, B, D]
    const auto mid = ctx->saved_data["mid"].toDoubleVector();
    const int64_t S = static_cast<int64_t>(mid.size());
    variable_list grads(2 + S + 4);
    if (!g.defined()) return grads;
    // [R, B, 2 + S] weights in the state dtype; each gradient is sum_r w[r, b, i] * g[r, b, :].
    const at::Tensor w = call<RkDenseWeights>(ctx->saved_data["h"].toTensor(), ctx->saved_data["t0"].toTensor(),
                                              ctx->saved_data["t_eval"].toTensor(), at::ArrayRef<double>(mid))
                             .to(g.scalar_type());
    // [B, 2 + S, D] = per sample b: w[:, b, :]^T @ g[:, b, :]
    const at::Tensor all = at::bmm(w.permute({1, 2, 0}), g.permute({1, 0, 2}));
    for (int64_t i = 0; i < 2 + S; ++i) grads[i] = all.select(1, i);
    return grads;  // h, t0, t_eval, mid: no gradient
  }
};

}  // namespace

at::Tensor RkDenseEval::autograd(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                                 const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid) {
  if (!any_requires_grad({&y0, &y1}, ks)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call<RkDenseEval>(y0, y1, ks, h, t0, t_eval, mid);
  }
  return RkDenseEvalFunction::apply(y0, y1, ks, h, t0, t_eval, mid);
}

}  // namespace fde::ops
