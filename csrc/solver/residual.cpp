#include "solver/residual.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>

#include "core/residual.h"

namespace fde::solver {
namespace {

void check_args(const BlockSequence& blocks, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(blocks.size() >= 1, "fastdiffeq: blocks must hold at least one block");
  TORCH_CHECK_VALUE(x.defined() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                    "fastdiffeq: ", name, " must be a float32/float64 tensor");
}

// One forward step n of the scheme (differentiable when x or the blocks' parameters require grad).
at::Tensor forward_step(BlockSequence& blocks, int64_t n, const at::Tensor& x, ResidualScheme scheme, double inv_n) {
  const at::Tensor f = blocks.eval(n, x);
  if (scheme == ResidualScheme::kEuler) return core::residual_euler(x, f, inv_n);
  const at::Tensor u = core::residual_euler(x, f, inv_n);
  const int64_t next = std::min(n + 1, blocks.size() - 1);
  return core::residual_heun(x, f, blocks.eval(next, u), inv_n);
}

// x_n rebuilt from x_{n+1} by running step n backwards (REFERENCE §6); no graph.
at::Tensor reverse_step(BlockSequence& blocks, int64_t n, const at::Tensor& x1, ResidualScheme scheme, double inv_n) {
  if (scheme == ResidualScheme::kEuler) return core::residual_euler(x1, blocks.eval(n, x1), inv_n, -1.0);
  const int64_t next = std::min(n + 1, blocks.size() - 1);
  const at::Tensor f1 = blocks.eval(next, x1);
  const at::Tensor u = core::residual_euler(x1, f1, inv_n, -1.0);
  return core::residual_heun(x1, f1, blocks.eval(n, u), inv_n, -1.0);
}

}  // namespace

at::Tensor residual_forward(BlockSequence& blocks, const at::Tensor& x0, ResidualScheme scheme) {
  check_args(blocks, x0, "x");
  const int64_t N = blocks.size();
  const double inv_n = 1.0 / static_cast<double>(N);
  at::Tensor x = x0;
  for (int64_t n = 0; n < N; ++n) x = forward_step(blocks, n, x, scheme, inv_n);
  return x;
}

ResidualGradients residual_reconstruct_backward(BlockSequence& blocks, const at::Tensor& x_end,
                                                const at::Tensor& grad_end, ResidualScheme scheme) {
  check_args(blocks, x_end, "x_end");
  TORCH_CHECK_VALUE(grad_end.defined() && grad_end.sizes() == x_end.sizes() &&
                        grad_end.scalar_type() == x_end.scalar_type() && grad_end.device() == x_end.device(),
                    "fastdiffeq: grad_end must have x_end's shape, dtype and device");
  const int64_t N = blocks.size();
  const double inv_n = 1.0 / static_cast<double>(N);
  ResidualGradients out;
  out.grad_params.resize(N);
  for (int64_t n = 0; n < N; ++n) {
    const auto& ps = blocks.params(n);
    for (size_t i = 0; i < ps.size(); ++i) {
      TORCH_CHECK_VALUE(ps[i].defined() && ps[i].requires_grad(), "fastdiffeq: params[", n, "][", i,
                        "] must be a tensor that requires grad (pass only the parameters to differentiate)");
      out.grad_params[n].push_back(at::zeros_like(ps[i]));
    }
  }
  at::Tensor x = x_end.detach();
  at::Tensor a = grad_end;
  for (int64_t n = N - 1; n >= 0; --n) {
    at::Tensor xn;
    {
      at::NoGradGuard no_grad;
      xn = reverse_step(blocks, n, x, scheme, inv_n);
    }
    // Step n replayed under autograd at the rebuilt state; its graph reaches blocks n (and n + 1 for Heun).
    const at::Tensor xr = xn.detach().requires_grad_(true);
    at::Tensor x1;
    {
      at::AutoGradMode grad_mode(true);
      x1 = forward_step(blocks, n, xr, scheme, inv_n);
    }
    std::vector<at::Tensor> inputs{xr};
    std::vector<std::pair<int64_t, size_t>> where;  // (block, parameter index) of each input after xr
    const int64_t last = scheme == ResidualScheme::kHeun ? std::min(n + 1, N - 1) : n;
    for (int64_t m = n; m <= last; ++m) {
      const auto& ps = blocks.params(m);
      for (size_t i = 0; i < ps.size(); ++i) {
        inputs.push_back(ps[i]);
        where.emplace_back(m, i);
      }
    }
    std::vector<at::Tensor> grads;
    if (x1.requires_grad()) {
      auto unlock = blocks.unlock();
      grads = torch::autograd::grad({x1}, inputs, {a}, /*retain_graph=*/false, /*create_graph=*/false,
                                    /*allow_unused=*/true);
    } else {
      grads.resize(inputs.size());
    }
    for (size_t k = 0; k < where.size(); ++k)
      if (grads[1 + k].defined()) out.grad_params[where[k].first][where[k].second].add_(grads[1 + k]);
    a = grads[0].defined() ? grads[0] : at::zeros_like(a);
    x = xn;
  }
  out.grad_x0 = a;
  out.x0_rebuilt = x;
  return out;
}

}  // namespace fde::solver
