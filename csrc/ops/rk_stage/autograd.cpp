// rk_stage's autograd formula, registered for every device at the Autograd key. Linear in (y, ks):
// out = y + h * sum_j a_j k_j  =>  dL/dy = g, dL/dk_j = (h a_j) g (per row). h and the coefficients are
// constants of the discrete solve (DESIGN §4): no gradient.
#include <ATen/TensorOperators.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

#include "ops/autograd_util.h"
#include "ops/registry.h"

namespace fde::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RkStageFunction : public torch::autograd::Function<RkStageFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, at::TensorList ks, const at::Tensor& h,
                            at::ArrayRef<double> coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["h"] = h;
    ctx->saved_data["coeffs"] = std::vector<double>(coeffs.begin(), coeffs.end());
    ctx->saved_data["n_stages"] = static_cast<int64_t>(ks.size());
    return call<RkStage>(y, ks, h, coeffs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& g = grad_outputs[0];
    const at::Tensor h = ctx->saved_data["h"].toTensor();
    const auto coeffs = ctx->saved_data["coeffs"].toDoubleVector();
    const int64_t n = ctx->saved_data["n_stages"].toInt();
    variable_list grads;
    grads.reserve(n + 3);
    grads.push_back(g);
    for (int64_t j = 0; j < n; ++j) {
      if (j < static_cast<int64_t>(coeffs.size()) && coeffs[j] != 0.0 && g.defined()) {
        // The forward's weight h * a_j, formed in float64 then rounded to the state's dtype (RkStage::cpu).
        grads.push_back(g * h.mul(coeffs[j]).to(g.scalar_type()).unsqueeze(1));
      } else {
        grads.emplace_back();
      }
    }
    grads.emplace_back();  // h
    grads.emplace_back();  // coeffs
    return grads;
  }
};

}  // namespace

at::Tensor RkStage::autograd(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
  // Without a graph to record, skip the autograd Function's bookkeeping (the solver's no-grad loop calls
  // this op several times per step).
  if (!any_requires_grad({&y}, ks)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call<RkStage>(y, ks, h, coeffs);
  }
  return RkStageFunction::apply(y, ks, h, coeffs);
}

}  // namespace fde::ops
