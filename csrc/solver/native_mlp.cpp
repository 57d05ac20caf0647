#include "solver/native_mlp.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>

namespace fde::solver {
namespace {

// torch.nn.functional's defaults: softplus beta 1, threshold 20 (linear above); elu alpha 1.
constexpr double kSoftplusThreshold = 20.0;

at::Tensor activate(MlpActivation a, const at::Tensor& x) {
  switch (a) {
    case MlpActivation::kTanh: return at::tanh(x);
    case MlpActivation::kSoftplus: return at::softplus(x, 1.0, kSoftplusThreshold);
    case MlpActivation::kRelu: return at::relu(x);
    case MlpActivation::kElu: return at::elu(x);
    case MlpActivation::kSigmoid: return at::sigmoid(x);
    case MlpActivation::kSilu: return at::silu(x);
  }
  TORCH_CHECK(false, "fastdiffeq: unknown activation");
}

// d act / dx from the input x and the output y (the same formulas torch's backward uses).
at::Tensor activation_derivative(MlpActivation a, const at::Tensor& x, const at::Tensor& y) {
  switch (a) {
    case MlpActivation::kTanh: return 1 - y * y;
    case MlpActivation::kSoftplus: return at::where(x > kSoftplusThreshold, at::ones_like(x), at::sigmoid(x));
    case MlpActivation::kRelu: return (x > 0).to(x.scalar_type());
    case MlpActivation::kElu: return at::where(x > 0, at::ones_like(x), y + 1);
    case MlpActivation::kSigmoid: return y * (1 - y);
    case MlpActivation::kSilu: {
      const at::Tensor s = at::sigmoid(x);
      return s * (1 + x * (1 - s));
    }
  }
  TORCH_CHECK(false, "fastdiffeq: unknown activation");
}

}  // namespace

MlpActivation parse_mlp_activation(const std::string& name) {
  if (name == "tanh") return MlpActivation::kTanh;
  if (name == "softplus") return MlpActivation::kSoftplus;
  if (name == "relu") return MlpActivation::kRelu;
  if (name == "elu") return MlpActivation::kElu;
  if (name == "sigmoid") return MlpActivation::kSigmoid;
  if (name == "silu") return MlpActivation::kSilu;
  TORCH_CHECK_VALUE(false, "fastdiffeq: activation must be one of tanh, softplus, relu, elu, sigmoid, silu; got '",
                    name, "'");
}

std::vector<at::Tensor> MlpSpec::params() const {
  std::vector<at::Tensor> out;
  for (size_t k = 0; k < weights.size(); ++k) {
    out.push_back(weights[k]);
    out.push_back(biases[k]);
  }
  return out;
}

void check_mlp_spec(const MlpSpec& spec) {
  TORCH_CHECK_VALUE(!spec.weights.empty(), "fastdiffeq: an MLP needs at least one layer");
  TORCH_CHECK_VALUE(spec.weights.size() == spec.biases.size(), "fastdiffeq: an MLP needs one bias per weight, got ",
              spec.weights.size(), " weights and ", spec.biases.size(), " biases");
  const at::Tensor& first = spec.weights.front();
  for (size_t k = 0; k < spec.weights.size(); ++k) {
    const at::Tensor& W = spec.weights[k];
    const at::Tensor& b = spec.biases[k];
    TORCH_CHECK_VALUE(W.defined() && b.defined(), "fastdiffeq: MLP layer ", k, " has an undefined weight or bias");
    TORCH_CHECK_VALUE(W.dim() == 2, "fastdiffeq: MLP weight ", k, " must be 2-D, got ", W.dim(), "-D");
    TORCH_CHECK_VALUE(W.size(0) > 0 && W.size(1) > 0, "fastdiffeq: MLP weight ", k,
                      " must have at least one row and one column, got ", W.sizes());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == W.size(0), "fastdiffeq: MLP bias ", k, " must have shape [",
                W.size(0), "], got ", b.sizes());
    TORCH_CHECK_VALUE(k == 0 || W.size(1) == spec.weights[k - 1].size(0), "fastdiffeq: MLP weight ", k, " takes ",
                W.size(1), " inputs but layer ", k - 1, " has ", spec.weights[k - 1].size(0), " outputs");
    TORCH_CHECK_TYPE(W.scalar_type() == first.scalar_type() && b.scalar_type() == first.scalar_type(),
                "fastdiffeq: MLP parameters must share one dtype");
    TORCH_CHECK_VALUE(W.device() == first.device() && b.device() == first.device(),
                "fastdiffeq: MLP parameters must be on one device");
  }
}

NativeMlpField::NativeMlpField(MlpSpec spec) : spec_(std::move(spec)) {
  check_mlp_spec(spec_);
  for (const at::Tensor& q : spec_.params()) n_params_ += q.numel();
}

void NativeMlpField::check_input(const at::Tensor& x, const char* what) const {
  const at::Tensor& W = spec_.weights.front();
  TORCH_CHECK_VALUE(x.defined(), "fastdiffeq: the MLP's ", what, " is undefined");
  TORCH_CHECK_TYPE(x.scalar_type() == W.scalar_type(), "fastdiffeq: the MLP's parameters are ", W.scalar_type(),
                   " but the ", what, " is ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == W.device(), "fastdiffeq: the MLP's parameters are on ", W.device(), " but the ",
                    what, " is on ", x.device());
}

at::Tensor NativeMlpField::eval(const at::Tensor& /*t*/, const at::Tensor& y) {
  const int64_t in = in_features();
  TORCH_CHECK_VALUE(y.numel() % in == 0, "fastdiffeq: the MLP takes ", in, " features, the state has ", y.numel(),
              " elements");
  check_input(y, "state");
  at::Tensor h = y.reshape({-1, in});
  const size_t L = spec_.weights.size();
  for (size_t k = 0; k < L; ++k) {
    h = at::addmm(spec_.biases[k], h, spec_.weights[k].t());
    if (k + 1 < L) h = activate(spec_.activation, h);
  }
  return h.reshape(y.sizes()).contiguous();
}

FieldVjp NativeMlpField::vjp(const at::Tensor& /*t*/, const at::Tensor& y, const at::Tensor& v,
                             at::Tensor& grad_params) {
  at::NoGradGuard no_grad;  // by hand: nothing here is recorded
  const int64_t in = in_features();
  TORCH_CHECK_VALUE(y.numel() % in == 0, "fastdiffeq: the MLP takes ", in, " features, the state has ", y.numel(),
                    " elements");
  check_input(y, "state");
  check_input(v, "cotangent");
  TORCH_CHECK_VALUE(v.sizes() == y.sizes(), "fastdiffeq: the MLP's cotangent has shape ", v.sizes(),
                    ", the state ", y.sizes());
  const size_t L = spec_.weights.size();
  // Forward, keeping each layer's input and (hidden layers) pre-activation.
  std::vector<at::Tensor> inputs(L), pre(L);
  at::Tensor h = y.reshape({-1, in});
  for (size_t k = 0; k < L; ++k) {
    inputs[k] = h;
    h = at::addmm(spec_.biases[k], h, spec_.weights[k].t());
    if (k + 1 < L) {
      pre[k] = h;
      h = activate(spec_.activation, h);
    }
  }
  const at::Tensor f = h.reshape(y.sizes()).contiguous();
  // Backward: g is the cotangent of layer k's output (after its activation for hidden layers).
  std::vector<int64_t> offsets(L);
  int64_t offset = 0;
  for (size_t k = 0; k < L; ++k) {
    offsets[k] = offset;
    offset += spec_.weights[k].numel() + spec_.biases[k].numel();
  }
  at::Tensor g = v.reshape({-1, spec_.weights.back().size(0)});
  for (size_t k = L; k-- > 0;) {
    if (k + 1 < L) g = g * activation_derivative(spec_.activation, pre[k], inputs[k + 1]);
    const at::Tensor& W = spec_.weights[k];
    if (n_params_ > 0 && grad_params.defined()) {
      at::Tensor gW = grad_params.narrow(0, offsets[k], W.numel()).view(W.sizes());
      gW.addmm_(g.t(), inputs[k]);
      grad_params.narrow(0, offsets[k] + W.numel(), W.size(0)).add_(g.sum(0));
    }
    g = g.mm(W);
  }
  return {f, g.reshape(y.sizes()).contiguous()};
}

}  // namespace fde::solver
