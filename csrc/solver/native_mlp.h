// A multilayer perceptron evaluated in C++ (fastdiffeq.nn.MLP's native path): no Python call per evaluation,
// and a hand-written vector-Jacobian product (no autograd engine) for the adjoint.
//
// f(t, y) = W_L act(... act(W_1 y + b_1) ...) + b_L applied to the last dimension of the state (t is ignored:
// an autonomous field). Values come from ATen operators, so in grad mode (direct backprop, checkpoint
// replay) autograd records them like any torch code; vjp() differentiates by hand and keeps no graph.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "solver/mlp_kernels.h"  // MlpActivation
#include "solver/vector_field.h"

namespace fde::solver {

// TORCH_CHECK-fails on an unknown name; the names are fastdiffeq.nn.ACTIVATIONS'.
MlpActivation parse_mlp_activation(const std::string& name);

// y = act(x) by ATen's operator (vectorised, torch's own values), into a preallocated y (which may alias x).
void activation_out(MlpActivation a, const at::Tensor& x, at::Tensor& y);

struct MlpSpec {
  std::vector<at::Tensor> weights;  // [out_k, in_k], in_{k+1} == out_k
  std::vector<at::Tensor> biases;   // [out_k]
  MlpActivation activation = MlpActivation::kTanh;

  // The parameters in nn.Module order: W_1, b_1, W_2, b_2, ... (the order of grad_params in vjp()).
  std::vector<at::Tensor> params() const;
};

// TORCH_CHECK: at least one layer, 2-D weights chaining in -> out, matching biases, one dtype and device.
void check_mlp_spec(const MlpSpec& spec);

class NativeMlpField : public VectorField {
 public:
  explicit NativeMlpField(MlpSpec spec);

  at::Tensor eval(const at::Tensor& t, const at::Tensor& y) override;
  int64_t num_params() const override { return n_params_; }
  FieldVjp vjp(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v, at::Tensor& grad_params) override;

  int64_t in_features() const { return spec_.weights.front().size(1); }

 private:
  // The state (and a cotangent) against the parameters: feature count, dtype and device, with errors naming them.
  void check_input(const at::Tensor& x, const char* what) const;

  // Whether x takes the fast path: CPU float32/float64 (other devices and dtypes stay on plain ATen operators).
  bool fast_path(const at::Tensor& x) const;
  // Whether autograd must record eval(): grad mode on and the state or a parameter requiring grad.
  bool recorded(const at::Tensor& y) const;
  // The ATen evaluation (fresh tensors, recorded by autograd in grad mode) and the fast one (workspaces).
  at::Tensor eval_aten(const at::Tensor& y2) const;
  at::Tensor eval_fast(const at::Tensor& y2);
  FieldVjp vjp_aten(const at::Tensor& y2, const at::Tensor& v2, at::Tensor& grad_params) const;
  FieldVjp vjp_fast(const at::Tensor& y2, const at::Tensor& v2, at::Tensor& grad_params);
  // Hidden layer k of the fast path: post_[k] = act(h W_k^T + b_k) (pre_[k] keeps the pre-activation when keep_pre).
  void hidden_layer_fast(size_t k, const at::Tensor& h, bool keep_pre);

  // (Re)allocates the workspaces for `rows` rows of x's dtype and device when they differ from the last call.
  void ensure_workspace(int64_t rows, const at::Tensor& x);

  MlpSpec spec_;
  int64_t n_params_ = 0;

  // Workspaces of the fast path, allocated once per solve (the field lives for one solve) and reused while the
  // row count, dtype and device stay the same. Only internal values live here: eval()'s result, vjp()'s f and
  // grad_y are fresh tensors (the loops keep them as stages), and the recorded path never touches these.
  int64_t ws_rows_ = -1;
  std::vector<at::Tensor> post_;  // [rows, out_k] hidden layer k's output (after the activation)
  std::vector<at::Tensor> pre_;   // [rows, out_k] its pre-activation (vjp, activations whose derivative needs x)
  std::vector<at::Tensor> grad_;  // [rows, out_k] the cotangent of hidden layer k's output (vjp)
  at::Tensor sig_;                // [rows, max out_k] sigmoid(pre) for the softplus / silu derivatives
  at::Tensor colsum_;             // [max out_k] scratch of the bias cotangent's column sums
  std::vector<at::Tensor> wt_;    // float32 layers with a narrow input: W^T [in_k, out_k] (else undefined)
  at::Tensor gram_;               // float32: [max numel W_k] scratch of a narrow layer's weight cotangent
};

// Applies the native MLP's activation to x (a fresh tensor; the fast path's loop for CPU float32/float64, ATen's
// operator otherwise): what a hidden layer computes after its GEMM and bias. For tests of the fused kernels.
at::Tensor native_mlp_activation(MlpActivation a, const at::Tensor& x);

}  // namespace fde::solver
