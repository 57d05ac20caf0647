#include "solver/vector_field.h"

#include <ATen/ops/empty.h>
#include <ATen/TensorOperators.h>

namespace fde::solver {

FieldVjp VectorField::vjp_deferred(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v, bool want_grad_y) {
  FieldVjp r;
  if (want_grad_y) {
    at::Tensor scratch = at::empty({num_params()}, y.options());  // the parameter part comes later
    r = vjp(t, y, v, scratch);
  } else {
    r.f = eval(t, y);
  }
  deferred_.push_back({t, y, v, {}});
  return r;
}

void VectorField::accumulate_deferred(const std::vector<at::Tensor>& weights, at::Tensor& grad_params) {
  TORCH_CHECK(weights.size() == deferred_.size(), "fastdiffeq: accumulate_deferred got ", weights.size(),
              " weights for ", deferred_.size(), " deferred products");
  std::vector<DeferredVjp> pending = std::move(deferred_);
  deferred_.clear();
  for (size_t k = 0; k < pending.size(); ++k) {
    if (!weights[k].defined()) continue;
    const DeferredVjp& d = pending[k];
    vjp(d.t, d.y, d.v * weights[k].unsqueeze(1), grad_params);
  }
}

}  // namespace fde::solver
