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

#include "solver/vector_field.h"

namespace fde::solver {

enum class MlpActivation { kTanh, kSoftplus, kRelu, kElu, kSigmoid, kSilu };

// TORCH_CHECK-fails on an unknown name; the names are fastdiffeq.nn.ACTIVATIONS'.
MlpActivation parse_mlp_activation(const std::string& name);

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

  MlpSpec spec_;
  int64_t n_params_ = 0;
};

}  // namespace fde::solver
