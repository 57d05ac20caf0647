#include "solver/native_mlp.h"

#include "core/concat_squash.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace fde::solver {
namespace {

// torch.nn.functional's defaults: softplus beta 1, threshold 20 (linear above); elu alpha 1.
using core::kSoftplusThreshold;

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

// The activation in place on a fast-path buffer, with ATen's operator (those mlp::bias_activation does not fuse).
void activate_inplace(MlpActivation a, at::Tensor& x) { activation_out(a, x, x); }


// out = h W^T + b into a preallocated contiguous CPU buffer. Float32: a plain GEMM (mm, ~10% cheaper than addmm at
// these shapes) and the bias in one pass over its output, fused with the activation when `activate`. Float64: ATen's
// addmm, the operator nn.Linear calls, so values are bit-identical to the module's (solves in tests compare to
// 1e-13; a bias added after the GEMM rounds differently) -- float64 is for tests and references, not speed.
// A float32 layer with a narrow input or output (a field's D-wide first and last layers) takes the narrow-product
// loops instead of BLAS (mlp::narrow_*), with the bias; wt is W^T [in, out] contiguous (the field's cache) for a
// narrow input.
void linear_into(at::Tensor& out, const at::Tensor& h, const at::Tensor& W, const at::Tensor& wt, const at::Tensor& b,
                 bool activate, MlpActivation a) {
  if (out.scalar_type() == at::kFloat) {
    const at::Tensor bc = b.contiguous();  // b itself unless the spec holds a strided view
    const int64_t rows = out.size(0), in = W.size(1), o = W.size(0);
    if (in <= core::kNarrowWidth || o <= core::kNarrowWidth) {
      const at::Tensor hc = h.contiguous();
      if (in <= core::kNarrowWidth) {
        mlp::narrow_inner_matmul(hc.const_data_ptr<float>(), wt.const_data_ptr<float>(), bc.const_data_ptr<float>(),
                                 rows, in, o, out.data_ptr<float>());
      } else {
        const at::Tensor Wc = W.contiguous();
        mlp::narrow_outer_matmul(hc.const_data_ptr<float>(), Wc.const_data_ptr<float>(), bc.const_data_ptr<float>(),
                                 rows, in, o, out.data_ptr<float>());
      }
      if (activate) mlp::bias_activation(out.data_ptr<float>(), nullptr, rows, o, true, a);
      return;
    }
    at::mm_out(out, h, W.t());
    mlp::bias_activation(out.data_ptr<float>(), bc.const_data_ptr<float>(), out.size(0), out.size(1), activate, a);
  } else {
    TORCH_CHECK(!activate, "fastdiffeq: internal error: no fused float64 activation");
    at::addmm_out(out, b, h, W.t());
  }
}

// out [R, in] = g [R, out] W for a float32 layer with a narrow side, by the narrow loops.
void gW_times(const at::Tensor& g, const at::Tensor& W, const at::Tensor& wt, at::Tensor& out) {
  const int64_t rows = g.size(0), in = W.size(1), o = W.size(0);
  if (o <= core::kNarrowWidth) {
    const at::Tensor Wc = W.contiguous();
    mlp::narrow_inner_matmul(g.const_data_ptr<float>(), Wc.const_data_ptr<float>(), nullptr, rows, o, in,
                             out.data_ptr<float>());
  } else {
    mlp::narrow_outer_matmul(g.const_data_ptr<float>(), wt.const_data_ptr<float>(), nullptr, rows, o, in,
                             out.data_ptr<float>());
  }
}

}  // namespace

void activation_out(MlpActivation a, const at::Tensor& x, at::Tensor& y) {
  switch (a) {
    case MlpActivation::kTanh: at::tanh_out(y, x); return;
    case MlpActivation::kSoftplus: at::softplus_out(y, x, 1.0, kSoftplusThreshold); return;
    case MlpActivation::kRelu: at::clamp_min_out(y, x, 0.0); return;  // propagates NaN, as relu
    case MlpActivation::kElu: at::elu_out(y, x, 1.0, 1.0, 1.0); return;
    case MlpActivation::kSigmoid: at::sigmoid_out(y, x); return;
    case MlpActivation::kSilu: at::silu_out(y, x); return;
  }
  TORCH_CHECK(false, "fastdiffeq: unknown activation");
}

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

bool NativeMlpField::fast_path(const at::Tensor& x) const {
  return x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

bool NativeMlpField::recorded(const at::Tensor& y) const {
  if (!at::GradMode::is_enabled()) return false;
  // Forward-mode AD (a dual state) needs ATen's operators too: the fast path's out= kernels carry no tangents.
  if (y.requires_grad() || y._fw_grad(/*level=*/0).defined()) return true;
  for (size_t k = 0; k < spec_.weights.size(); ++k)
    if (spec_.weights[k].requires_grad() || spec_.biases[k].requires_grad()) return true;
  return false;
}

void NativeMlpField::ensure_workspace(int64_t rows, const at::Tensor& x) {
  if (rows == ws_rows_ && colsum_.scalar_type() == x.scalar_type() && colsum_.device() == x.device()) return;
  const size_t hidden = spec_.weights.size() - 1;
  const at::TensorOptions opts = x.options();
  post_.assign(hidden, at::Tensor());
  pre_.assign(hidden, at::Tensor());   // allocated on first use (the VJP of softplus / silu)
  grad_.assign(hidden, at::Tensor());  // allocated on first use (the VJP)
  int64_t widest = spec_.weights.back().size(0);
  for (size_t k = 0; k < hidden; ++k) {
    const int64_t w = spec_.weights[k].size(0);
    widest = std::max(widest, w);
    post_[k] = at::empty({rows, w}, opts);
  }
  sig_ = at::Tensor();
  colsum_ = at::empty({widest}, opts);
  // float32's narrow-input layers read W^T (mlp::narrow_inner_matmul); the weights do not change during a solve.
  wt_.assign(spec_.weights.size(), at::Tensor());
  int64_t largest = 0;
  for (size_t k = 0; k < spec_.weights.size(); ++k) {
    const at::Tensor& W = spec_.weights[k];
    largest = std::max(largest, W.numel());
    if (x.scalar_type() == at::kFloat && W.size(1) <= core::kNarrowWidth) wt_[k] = W.detach().t().contiguous();
  }
  gram_ = x.scalar_type() == at::kFloat ? at::empty({largest}, opts) : at::Tensor();
  ws_rows_ = rows;
}

void NativeMlpField::hidden_layer_fast(size_t k, const at::Tensor& h, bool keep_pre) {
  const at::Tensor& W = spec_.weights[k];
  const at::Tensor& b = spec_.biases[k];
  const MlpActivation a = spec_.activation;
  at::Tensor& post = post_[k];
  if (post.scalar_type() == at::kFloat && mlp::fuses_activation(a)) {
    linear_into(post, h, W, wt_[k], b, /*activate=*/true, a);  // one pass over the GEMM's output: bias and activation
  } else if (keep_pre && core::activation_needs_sigmoid(a)) {
    if (!pre_[k].defined()) pre_[k] = at::empty_like(post);
    linear_into(pre_[k], h, W, wt_[k], b, /*activate=*/false, a);
    if (a == MlpActivation::kSoftplus) {
      at::softplus_out(post, pre_[k], 1.0, kSoftplusThreshold);
    } else {
      at::silu_out(post, pre_[k]);
    }
  } else {
    linear_into(post, h, W, wt_[k], b, /*activate=*/false, a);
    activate_inplace(a, post);
  }
}

at::Tensor NativeMlpField::eval_aten(const at::Tensor& y2) const {
  at::Tensor h = y2;
  const size_t L = spec_.weights.size();
  for (size_t k = 0; k < L; ++k) {
    h = at::addmm(spec_.biases[k], h, spec_.weights[k].t());
    if (k + 1 < L) h = activate(spec_.activation, h);
  }
  return h;
}

at::Tensor NativeMlpField::eval_fast(const at::Tensor& y2) {
  at::NoGradGuard no_grad;
  const int64_t rows = y2.size(0);
  ensure_workspace(rows, y2);
  const size_t L = spec_.weights.size();
  at::Tensor h = y2;
  for (size_t k = 0; k + 1 < L; ++k) {
    hidden_layer_fast(k, h, /*keep_pre=*/false);
    h = post_[k];
  }
  at::Tensor out = at::empty({rows, spec_.weights.back().size(0)}, y2.options());  // fresh: the loops keep it
  linear_into(out, h, spec_.weights.back(), wt_.back(), spec_.biases.back(), /*activate=*/false,
              spec_.activation);
  return out;
}

at::Tensor NativeMlpField::eval(const at::Tensor& /*t*/, const at::Tensor& y) {
  const int64_t in = in_features();
  TORCH_CHECK_VALUE(y.numel() % in == 0, "fastdiffeq: the MLP takes ", in, " features, the state has ", y.numel(),
              " elements");
  check_input(y, "state");
  const at::Tensor y2 = y.reshape({-1, in});
  // In grad mode with something to differentiate, autograd must record the evaluation: ATen's operators (so
  // direct backprop also supports create_graph / second derivatives through the field).
  const at::Tensor out = fast_path(y) && !recorded(y) ? eval_fast(y2) : eval_aten(y2);
  return out.reshape(y.sizes()).contiguous();
}

FieldVjp NativeMlpField::vjp_aten(const at::Tensor& y2, const at::Tensor& v2, at::Tensor& grad_params) const {
  at::NoGradGuard no_grad;  // by hand: nothing here is recorded
  const size_t L = spec_.weights.size();
  // Forward, keeping each layer's input and (hidden layers) pre-activation.
  std::vector<at::Tensor> inputs(L), pre(L);
  at::Tensor h = y2;
  for (size_t k = 0; k < L; ++k) {
    inputs[k] = h;
    h = at::addmm(spec_.biases[k], h, spec_.weights[k].t());
    if (k + 1 < L) {
      pre[k] = h;
      h = activate(spec_.activation, h);
    }
  }
  const at::Tensor f = h;
  // Backward: g is the cotangent of layer k's output (after its activation for hidden layers).
  int64_t offset = n_params_;
  at::Tensor g = v2;
  for (size_t k = L; k-- > 0;) {
    if (k + 1 < L) g = g * activation_derivative(spec_.activation, pre[k], inputs[k + 1]);
    const at::Tensor& W = spec_.weights[k];
    offset -= W.numel() + W.size(0);
    if (n_params_ > 0 && grad_params.defined()) {
      at::Tensor gW = grad_params.narrow(0, offset, W.numel()).view(W.sizes());
      gW.addmm_(g.t(), inputs[k]);
      grad_params.narrow(0, offset + W.numel(), W.size(0)).add_(g.sum(0));
    }
    g = g.mm(W);
  }
  return {f, g};
}

FieldVjp NativeMlpField::vjp_fast(const at::Tensor& y2, const at::Tensor& v2, at::Tensor& grad_params) {
  at::NoGradGuard no_grad;  // by hand: nothing here is recorded
  const int64_t rows = y2.size(0);
  const size_t L = spec_.weights.size();
  const MlpActivation a = spec_.activation;
  const bool keep_pre = core::activation_needs_sigmoid(a);  // softplus / silu differentiate from the pre-activation
  const bool params = n_params_ > 0 && grad_params.defined();
  if (params) {
    TORCH_CHECK(grad_params.is_contiguous() && grad_params.scalar_type() == y2.scalar_type() &&
                    grad_params.numel() == n_params_,
                "fastdiffeq: internal error: the MLP's parameter cotangent buffer must be contiguous, of the state's "
                "dtype and num_params() long");
  }
  ensure_workspace(rows, y2);
  // Forward into the workspaces, keeping each hidden layer's output (and pre-activation where the derivative
  // needs it).
  at::Tensor h = y2;
  for (size_t k = 0; k + 1 < L; ++k) {
    hidden_layer_fast(k, h, keep_pre);
    h = post_[k];
  }
  at::Tensor f = at::empty({rows, spec_.weights.back().size(0)}, y2.options());
  linear_into(f, h, spec_.weights.back(), wt_.back(), spec_.biases.back(), /*activate=*/false, a);
  // Backward: g is the cotangent of layer k's pre-activation (the caller's v for the last layer: never written).
  at::Tensor g = v2.contiguous();
  at::Tensor grad_y;
  int64_t offset = n_params_;
  const bool is_float = y2.scalar_type() == at::kFloat;
  for (size_t k = L; k-- > 0;) {
    const at::Tensor& W = spec_.weights[k];
    const int64_t out_k = W.size(0);
    offset -= W.numel() + out_k;
    const at::Tensor& input = k == 0 ? y2 : post_[k - 1];
    const bool narrow = is_float && (W.size(1) <= core::kNarrowWidth || out_k <= core::kNarrowWidth);
    if (params) {
      at::Tensor gW = grad_params.narrow(0, offset, W.numel()).view(W.sizes());
      if (narrow) {  // g^T input by the narrow loops into a scratch, then added (transposed for a narrow input)
        const at::Tensor gc = g.contiguous(), xc = input.contiguous();
        float* t = gram_.data_ptr<float>();
        if (out_k <= core::kNarrowWidth) {
          mlp::narrow_gram(gc.const_data_ptr<float>(), xc.const_data_ptr<float>(), rows, out_k, W.size(1), t);
          gW.add_(gram_.narrow(0, 0, W.numel()).view(W.sizes()));
        } else {
          mlp::narrow_gram(xc.const_data_ptr<float>(), gc.const_data_ptr<float>(), rows, W.size(1), out_k, t);
          gW.add_(gram_.narrow(0, 0, W.numel()).view({W.size(1), out_k}).t());
        }
      } else {
        gW.addmm_(g.t(), input);
      }
      if (is_float) {
        mlp::add_column_sums(grad_params.data_ptr<float>() + offset + W.numel(), g.const_data_ptr<float>(), rows,
                             out_k, colsum_.data_ptr<float>());
      } else {
        mlp::add_column_sums(grad_params.data_ptr<double>() + offset + W.numel(), g.const_data_ptr<double>(), rows,
                             out_k, colsum_.data_ptr<double>());
      }
    }
    if (k == 0) {
      if (narrow) {
        grad_y = at::empty({rows, W.size(1)}, y2.options());  // fresh: returned
        gW_times(g.contiguous(), W, wt_[0], grad_y);
      } else {
        grad_y = at::mm(g, W);  // fresh: returned
      }
      break;
    }
    // The cotangent of hidden layer k-1's output, then through its activation.
    at::Tensor& gk = grad_[k - 1];
    if (!gk.defined()) gk = at::empty_like(post_[k - 1]);
    if (narrow) {
      gW_times(g.contiguous(), W, wt_[k], gk);
    } else {
      at::mm_out(gk, g, W);
    }
    const int64_t n = gk.numel();
    at::Tensor s;
    if (keep_pre) {
      if (!sig_.defined() || sig_.numel() < n) sig_ = at::empty({n}, gk.options());
      s = sig_.narrow(0, 0, n).view(gk.sizes());
      at::sigmoid_out(s, pre_[k - 1]);
    }
    if (is_float) {
      mlp::activation_grad(gk.data_ptr<float>(), keep_pre ? pre_[k - 1].const_data_ptr<float>() : nullptr,
                           post_[k - 1].const_data_ptr<float>(), keep_pre ? s.const_data_ptr<float>() : nullptr, n, a);
    } else {
      mlp::activation_grad(gk.data_ptr<double>(), keep_pre ? pre_[k - 1].const_data_ptr<double>() : nullptr,
                           post_[k - 1].const_data_ptr<double>(), keep_pre ? s.const_data_ptr<double>() : nullptr, n,
                           a);
    }
    g = gk;
  }
  return {f, grad_y};
}

FieldVjp NativeMlpField::vjp(const at::Tensor& /*t*/, const at::Tensor& y, const at::Tensor& v,
                             at::Tensor& grad_params) {
  const int64_t in = in_features();
  TORCH_CHECK_VALUE(y.numel() % in == 0, "fastdiffeq: the MLP takes ", in, " features, the state has ", y.numel(),
                    " elements");
  check_input(y, "state");
  check_input(v, "cotangent");
  TORCH_CHECK_VALUE(v.sizes() == y.sizes(), "fastdiffeq: the MLP's cotangent has shape ", v.sizes(),
                    ", the state ", y.sizes());
  const at::Tensor y2 = y.reshape({-1, in});
  const at::Tensor v2 = v.reshape({-1, spec_.weights.back().size(0)});
  FieldVjp r = fast_path(y) ? vjp_fast(y2, v2, grad_params) : vjp_aten(y2, v2, grad_params);
  return {r.f.reshape(y.sizes()).contiguous(), r.grad_y.reshape(y.sizes()).contiguous()};
}

at::Tensor native_mlp_activation(MlpActivation a, const at::Tensor& x) {
  at::NoGradGuard no_grad;
  if (!(x.device().is_cpu() && x.scalar_type() == at::kFloat && mlp::fuses_activation(a))) return activate(a, x);
  at::Tensor out = x.contiguous().clone();
  // One row: the loop runs along it, vectorised.
  mlp::bias_activation(out.data_ptr<float>(), nullptr, 1, out.numel(), /*activate=*/true, a);
  return out;
}

}  // namespace fde::solver
