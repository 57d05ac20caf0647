// Residual networks as discretised neural ODEs (fastdiffeq.nn.ResidualODE; core/residual.h): the loop over
// N blocks with step 1/N, forward (differentiable under grad mode: 'backprop') and the memory-free
// 'reconstruct' backward of Sander, Ablin & Peyre (NeurIPS 2022), which keeps only x_N and rebuilds each
// earlier state approximately by running the scheme backwards, then takes block n's VJP there.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "solver/vector_field.h"

namespace fde::solver {

enum class ResidualScheme { kEuler, kHeun };

// The blocks f_0 .. f_{N-1} as the loop sees them (bindings.cpp wraps Python modules).
class BlockSequence {
 public:
  virtual ~BlockSequence() = default;
  virtual int64_t size() const = 0;
  // f_n(x): a tensor of x's shape, dtype and device (the implementation validates it).
  virtual at::Tensor eval(int64_t n, const at::Tensor& x) = 0;
  // The tensors block n's gradients are taken w.r.t. (its parameters that require grad).
  virtual const std::vector<at::Tensor>& params(int64_t n) const = 0;
  // Held around the autograd engine (which must not run under Python's GIL).
  virtual std::unique_ptr<ScopedUnlock> unlock() { return nullptr; }
};

// x_N from x_0. Under grad mode autograd records the blocks and the updates (plain backprop).
// HeunNet: step n's corrector evaluates block min(n + 1, N - 1), i.e. the last step reuses block N - 1.
at::Tensor residual_forward(BlockSequence& blocks, const at::Tensor& x0, ResidualScheme scheme);

struct ResidualGradients {
  at::Tensor grad_x0;
  std::vector<std::vector<at::Tensor>> grad_params;  // per block, per BlockSequence::params(n) (zeros if unused)
  at::Tensor x0_rebuilt;                             // the reconstructed input (an approximation of x_0)
};

// The reconstruct adjoint: from x_N and dL/dx_N, walk the blocks in reverse, rebuilding x_n from x_{n+1}
// (no graph), recomputing step n there under autograd and back-propagating through it alone.
ResidualGradients residual_reconstruct_backward(BlockSequence& blocks, const at::Tensor& x_end,
                                                const at::Tensor& grad_end, ResidualScheme scheme);

}  // namespace fde::solver
