// A CNF's augmented field evaluated in C++ (fastdiffeq.nn.CNF with a ConcatSquashMLP: its native path). The state
// is [N, D + E] per sample: z, then (with the log-density) delta_logp and the RNODE channels. In normalised time s
// (t = s T, T = sqrt_T^2) the field is
//   dz/ds = T f(t, z),  d delta_logp/ds = -T tr(df/dz),  kinetic: T ||f||^2,  jacobian: T ||df/dz||_F^2
// with the exact trace from K = D unit tangents or Hutchinson's eps^T J eps from K = 1 tangent (the noise drawn
// for the solve). The tangents are forward-mode products through the network (core/concat_squash.h); the
// vector-Jacobian product is hand-written (second derivatives of the activation included), no autograd engine.
// eval() in grad mode is an autograd Function whose backward is that product (direct and checkpoint modes);
// its result cannot be differentiated twice. CPU only (raw loops between ATen GEMMs).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/concat_squash.h"
#include "solver/vector_field.h"

namespace fde::solver {

enum class CnfTrace { kExact, kHutchinson };

struct CnfSpec {
  // ConcatSquash layer k: a_k = (W_k h + b_k) * sigmoid(gate_w_k t + gate_b_k) + time_w_k t.
  std::vector<at::Tensor> weights;       // [out_k, in_k]
  std::vector<at::Tensor> biases;        // [out_k]
  std::vector<at::Tensor> gate_weights;  // [out_k]
  std::vector<at::Tensor> gate_biases;   // [out_k]
  std::vector<at::Tensor> time_weights;  // [out_k]
  core::Activation activation = core::Activation::kSoftplus;
  at::Tensor sqrt_T;      // 0-dim; T = sqrt_T^2
  bool train_T = false;   // sqrt_T is a parameter (the first one)
  bool with_logp = true;  // the log-density (and the RNODE channels below) are integrated
  bool with_kinetic = false;
  bool with_jacobian = false;
  CnfTrace trace = CnfTrace::kExact;
  at::Tensor noise;  // [N, D], the Hutchinson draw (trace == kHutchinson and with_logp)

  // The parameters in CNF.parameters() order: sqrt_T if train_T, then per layer W, b, gate_w, gate_b, time_w.
  std::vector<at::Tensor> params() const;
  int64_t dim() const { return weights.front().size(1); }
  // Columns per sample: D, plus delta_logp, kinetic and jacobian when integrated.
  int64_t state_width() const { return dim() + (with_logp ? 1 + with_kinetic + with_jacobian : 0); }
  // Tangent directions per sample: D (exact), 1 (Hutchinson), 0 (no log-density).
  int64_t directions() const { return with_logp ? (trace == CnfTrace::kExact ? dim() : 1) : 0; }
};

// TORCH_CHECK: layers chaining D -> ... -> D with matching vectors, one floating dtype, all on the CPU, a 0-dim
// sqrt_T, a [N, D] noise for Hutchinson.
void check_cnf_spec(const CnfSpec& spec);

class NativeCnfField : public VectorField {
 public:
  explicit NativeCnfField(CnfSpec spec);

  // t: the normalised time s (one element); y: the state, any shape with N * state_width() elements.
  at::Tensor eval(const at::Tensor& t, const at::Tensor& y) override;
  int64_t num_params() const override { return n_params_; }
  FieldVjp vjp(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v, at::Tensor& grad_params) override;

  // eval without recording a graph (the autograd Function's forward).
  at::Tensor eval_no_graph(const at::Tensor& t, const at::Tensor& y);
  const CnfSpec& spec() const { return spec_; }

 private:
  struct Workspace;  // per-layer buffers, allocated once per batch size

  void check_state(const at::Tensor& t, const at::Tensor& y, const char* what) const;
  void forward(double s, const at::Tensor& y2);  // fills ws_ for the state y2 [N, W]
  at::Tensor assemble_output(int64_t n) const;    // [N, W] from ws_

  CnfSpec spec_;
  int64_t n_params_ = 0;
  std::shared_ptr<Workspace> ws_;
};

}  // namespace fde::solver
