#include "solver/reversible.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "core/controller.h"
#include "core/fixed_grid_interp.h"
#include "core/reversible.h"
#include "core/status.h"
#include "ops/registry.h"
#include "solver/autograd_vjp.h"
#include "solver/finite.h"
#include "solver/rk_problem.h"
#include "solver/rk_step.h"
#include "solver/reversible_step.h"

namespace fde::solver {
namespace {

at::Tensor eval_at(VectorField& field, double t, const at::Tensor& y, int64_t& nfe) {
  ++nfe;
  return field.eval(at::full({y.size(0)}, t, y.options()), y);
}

// The outputs as [T, B, D], NaN where a row was never reached.
at::Tensor stack_outputs(std::vector<at::Tensor>& rows, const at::Tensor& like) {
  for (auto& r : rows) {
    if (!r.defined()) r = at::full_like(like, std::numeric_limits<double>::quiet_NaN());
  }
  return at::stack(rows, 0);
}

// The output rows [first, last) with times in (t0, t1] (in the direction of integration), from `first`.
int64_t reached(const double* t_out, int64_t T, int64_t first, double t1, double dir) {
  int64_t j = first;
  while (j < T && dir * (t1 - t_out[j]) >= 0) ++j;
  return j;
}

void check_state(const at::Tensor& y0, const at::Tensor& t_out) {
  TORCH_CHECK_VALUE(y0.defined() && y0.dim() == 2 && y0.size(0) == 1 && y0.is_contiguous() &&
                        (y0.scalar_type() == at::kFloat || y0.scalar_type() == at::kDouble),
                    "fastdiffeq: y0 must be a contiguous float32/float64 [1, D] tensor (joint mode)");
  TORCH_CHECK_VALUE(y0.device().is_cpu() || y0.device().is_cuda(), "fastdiffeq: y0 must be on a CPU or CUDA device, got ",
                    y0.device());
  TORCH_CHECK_VALUE(t_out.defined() && t_out.dim() == 1 && t_out.numel() >= 1 && t_out.scalar_type() == at::kDouble &&
                        t_out.device().is_cpu(),
                    "fastdiffeq: t_out must be a non-empty 1-D float64 CPU tensor");
  const at::Tensor c = t_out.contiguous();
  const double* p = c.data_ptr<double>();
  const int64_t n = c.numel();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK_VALUE(std::isfinite(p[i]), "fastdiffeq: t_out must be finite");
  const double dir = n >= 2 && p[1] < p[0] ? -1.0 : 1.0;
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK_VALUE(dir * (p[i] - p[i - 1]) > 0, "fastdiffeq: t_out must be strictly increasing or strictly "
                      "decreasing, got ", p[i - 1], " then ", p[i]);
}

// One reversible step of the pair (core/reversible.h).
struct Attempt {
  at::Tensor y1, z1;
  StepStages from_z, from_y1;  // the two base steps (error estimates; from_y1.ks[0] = f(t1, y1))
};

Attempt pair_step(VectorField& field, const core::Tableau& tab, double lambda, double t0, double h,
                  const at::Tensor& y, const at::Tensor& z, int64_t& nfe) {
  Attempt a;
  a.from_z = base_step(field, tab, t0, h, z, nfe);
  a.y1 = core::reversible_y_forward(y, z, a.from_z.y1, lambda);
  a.from_y1 = base_step(field, tab, t0 + h, -h, a.y1, nfe);
  a.z1 = core::reversible_z_forward(z, a.y1, a.from_y1.y1);
  return a;
}

// Fixed-grid methods: writes the outputs [first, last) of the accepted step (t0, h) from y, f0 = f(t0, y) to y1, f1 = f(t1, y1).
void write_outputs(std::vector<at::Tensor>& rows, const double* t, int64_t first, int64_t last, double t0, double h,
                   const at::Tensor& y, const at::Tensor& f0, const at::Tensor& y1, const at::Tensor& f1) {
  for (int64_t j = first; j < last; ++j) {
    const core::HermiteWeights w = core::cubic_hermite_weights(t[j], t0, t0 + h);
    rows[j] = y * w.y0 + f0 * w.hf0 + y1 * w.y1 + f1 * w.hf1;
  }
}

}  // namespace

ReversibleResult reversible_solve(VectorField& field, const at::Tensor& y0, const at::Tensor& t_out,
                                  const ReversibleOptions& options) {
  TORCH_CHECK_VALUE(options.rk.tableau != nullptr, "fastdiffeq: no method given");
  TORCH_CHECK_VALUE(core::valid_coupling(options.coupling),
                    "fastdiffeq: the reversible coupling parameter must lie in (0, 1], got ", options.coupling);
  TORCH_CHECK_VALUE(options.rk.step_t.empty() && options.rk.jump_t.empty() && !options.rk.record_dense &&
                        options.rk.progress == nullptr && options.rk.callbacks == nullptr,
                    "fastdiffeq: gradient='reversible' supports no step_t, jump_t, progress or step callbacks");
  check_state(y0, t_out);
  const core::Tableau& tab = *options.rk.tableau;
  const bool fixed = tab.stepping == core::Stepping::kFixed;
  const double lambda = options.coupling;
  at::NoGradGuard no_grad;
  const at::Tensor t_host = t_out.contiguous();
  const double* t = t_host.data_ptr<double>();
  const int64_t T = t_host.numel();

  ReversibleResult res;
  res.tape = std::make_shared<ReversibleTape>();
  ReversibleTape& tape = *res.tape;
  tape.tableau = &tab;
  tape.coupling = lambda;
  tape.n_outputs = T;
  tape.t0 = t[0];
  tape.t_out = t_host;
  std::vector<at::Tensor> rows(T), states;
  rows[0] = y0;
  at::Tensor y = y0, z = y0;  // z_0 = y_0
  if (options.keep_states) states.push_back(y0);
  res.status = core::kSuccess;
  res.t_final = t[0];
  const at::Tensor t_dev = t_host.to(y0.device());
  auto accept = [&](Attempt& a, double t0, double h, at::Tensor& f0, int64_t& j, double dir) {
    const int64_t last = reached(t, T, j, t0 + h, dir);
    const at::Tensor& f1 = a.from_y1.ks[0];
    if (fixed) {
      write_outputs(rows, t, j, last, t0, h, y, f0, a.y1, f1);
    } else if (last > j) {
      const at::Tensor dense = backward_dense(tab, a.y1, a.from_y1, t0 + h, -h, t_dev.slice(0, j, last));
      for (int64_t r = j; r < last; ++r) rows[r] = dense.select(0, r - j);
    }
    tape.steps.push_back({t0, h, j, last});
    j = last;
    y = a.y1;
    z = a.z1;
    f0 = f1;
    if (options.keep_states) states.push_back(y);
    ++res.n_accepted;
    res.t_final = t0 + h;
  };

  if (fixed && T >= 2) {
    const std::vector<double>& g = options.grid;
    TORCH_CHECK_VALUE(g.size() >= 2 && g.front() == t[0] && g.back() == t[T - 1],
                      "fastdiffeq: the reversible time grid must run from t[0] to t[-1]");
    const double dir = t[1] > t[0] ? 1.0 : -1.0;
    at::Tensor f0 = eval_at(field, t[0], y0, res.nfe);
    int64_t j = 1;
    for (size_t i = 0; i + 1 < g.size() && j < T; ++i) {
      TORCH_CHECK_VALUE(std::isfinite(g[i + 1]) && dir * (g[i + 1] - g[i]) > 0,
                        "fastdiffeq: the reversible time grid must be finite and strictly monotone in t's direction");
      const double h = g[i + 1] - g[i];
      Attempt a = pair_step(field, tab, lambda, g[i], h, y, z, res.nfe);
      accept(a, g[i], h, f0, j, dir);
    }
  } else if (T >= 2) {
    RkProblem problem(field, nullptr, y0, t_out, options.rk);
    const core::ControllerParams& ctrl = problem.ctrl_;
    const double dir = problem.direction_;
    const at::Tensor t0_vec = problem.initial_time();
    at::Tensor f0;
    if (!problem.first_derivative(t0_vec, y0, f0, res.nfe)) {
      res.status = core::kNonFinite;
    } else {
      double h = problem.first_step(t0_vec, y0, f0, res.nfe).item<double>();
      double t0 = t[0];
      int64_t j = 1, attempts = 0, non_finite = 0;
      const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(y0.device());
      while (j < T) {
        if (attempts >= options.rk.max_num_steps) {
          res.status = core::kMaxSteps;
          break;
        }
        if (t0 + h == t0) {
          res.status = core::kStepUnderflow;
          break;
        }
        Attempt a = pair_step(field, tab, lambda, t0, h, y, z, res.nfe);
        ++attempts;
        // Error ratio: the larger of the two base steps' embedded estimates (each scaled by its own start and
        // end point), so both half-steps of the pair meet the tolerance.
        const at::Tensor h_fwd = at::full({1}, h, time_opts), h_bwd = at::full({1}, -h, time_opts);
        const double r_z = std::get<0>(problem.control(z, a.from_z.y1, a.from_z.ks, h_fwd)).item<double>();
        const double r_y = std::get<0>(problem.control(a.y1, a.from_y1.y1, a.from_y1.ks, h_bwd)).item<double>();
        const double ratio = (std::isnan(r_z) || std::isnan(r_y)) ? std::numeric_limits<double>::quiet_NaN()
                                                                   : std::fmax(r_z, r_y);
        const bool finite = std::isfinite(ratio) && all_finite(a.y1) && all_finite(a.z1);
        const bool ok = finite && core::accept_step(std::fabs(h), ratio, ctrl);
        const double h_next = core::next_step_size(std::fabs(h), finite ? ratio : NAN, ctrl) * dir;
        non_finite = finite ? 0 : non_finite + 1;
        if (non_finite >= core::kMaxNonFiniteRetries) {
          res.status = core::kNonFinite;
          break;
        }
        if (ok) {
          const int64_t j_before = j;
          accept(a, t0, h, f0, j, dir);
          if (j > j_before) attempts = 0;
          t0 += h;
        } else {
          ++res.n_rejected;
        }
        h = h_next;
      }
    }
  }
  tape.y_end = y;
  tape.z_end = z;
  res.ys = stack_outputs(rows, y0);
  if (options.keep_states) res.states = at::stack(states, 0);
  return res;
}

ReversibleGradients reversible_backward(VectorField& field, const ReversibleTape& tape, const at::Tensor& grad_ys,
                                        const std::vector<at::Tensor>& params, bool keep_states) {
  TORCH_CHECK_VALUE(tape.tableau != nullptr && tape.y_end.defined(), "fastdiffeq: an empty reversible tape");
  const at::Tensor& like = tape.y_end;
  const int64_t T = tape.n_outputs;
  TORCH_CHECK_VALUE(grad_ys.defined() && grad_ys.dim() == 3 && grad_ys.size(0) == T &&
                        grad_ys.size(1) == like.size(0) && grad_ys.size(2) == like.size(1),
                    "fastdiffeq: grad_ys must have shape [", T, ", ", like.size(0), ", ", like.size(1), "]");
  TORCH_CHECK_VALUE(grad_ys.scalar_type() == like.scalar_type() && grad_ys.device() == like.device(),
                    "fastdiffeq: grad_ys must have the state's dtype and device");
  const core::Tableau& tab = *tape.tableau;
  const double lambda = tape.coupling;
  const double* t = tape.t_out.data_ptr<double>();
  const bool fixed = tab.stepping == core::Stepping::kFixed;
  const at::Tensor t_dev = tape.t_out.to(like.device());
  ReversibleGradients out;
  for (const auto& p : params) out.grad_params.push_back(at::zeros_like(p));
  std::vector<at::Tensor> states;
  at::Tensor y = tape.y_end, z = tape.z_end;  // the pair at the end of the step being reversed
  if (keep_states) states.push_back(y);
  // Cotangents of y, z and of f(t, y) at the end of the step being reversed.
  at::Tensor a_y = at::zeros_like(like), a_z = at::zeros_like(like), a_f = at::zeros_like(like);
  auto accumulate = [&](const std::vector<at::Tensor>& grads) {
    for (size_t i = 0; i < params.size(); ++i) out.grad_params[i].add_(grads[1 + i]);
  };
  std::vector<at::Tensor> inputs(1 + params.size());
  std::copy(params.begin(), params.end(), inputs.begin() + 1);
  for (auto it = tape.steps.rbegin(); it != tape.steps.rend(); ++it) {
    const ReversibleStep& s = *it;
    const double t1 = s.t0 + s.h;
    // Fixed grid: the outputs inside the step have Hermite weights on y_n, f_n (carried to the step before) and
    // y_{n+1}, f_{n+1}. Adaptive: they are the dense output of the base step from y_{n+1} (below).
    at::Tensor a_y_start = at::zeros_like(like), a_f_start = at::zeros_like(like);
    for (int64_t j = s.out_first; fixed && j < s.out_last; ++j) {
      const core::HermiteWeights w = core::cubic_hermite_weights(t[j], s.t0, t1);
      const at::Tensor g = grad_ys.select(0, j);
      a_y_start = a_y_start + g * w.y0;
      a_f_start = a_f_start + g * w.hf0;
      a_y = a_y + g * w.y1;
      a_f = a_f + g * w.hf1;
    }
    // z_{n+1} = z_n + y_{n+1} - step_y(y_{n+1}), f_{n+1} = that base step's first stage: rebuild z_n, then pull
    // a_z and a_f back through the base step from y_{n+1}.
    const at::Tensor y1 = y.detach().requires_grad_(true);
    StepStages from_y1;
    std::vector<at::Tensor> outs, cots{-a_z};
    {
      at::AutoGradMode grad_mode(true);
      from_y1 = base_step(field, tab, t1, -s.h, y1, out.nfe);
      outs.push_back(from_y1.y1);
      if (fixed) {
        outs.push_back(from_y1.ks[0]);
        cots.push_back(a_f);
      } else if (s.out_last > s.out_first) {
        outs.push_back(backward_dense(tab, y1, from_y1, t1, -s.h, t_dev.slice(0, s.out_first, s.out_last)));
        cots.push_back(grad_ys.slice(0, s.out_first, s.out_last));
      }
    }
    const at::Tensor z0 = core::reversible_z_inverse(z, y, from_y1.y1.detach());
    inputs[0] = y1;
    auto grads = engine_grad(field, outs, cots, inputs);
    from_y1 = StepStages();
    const at::Tensor a_y1 = a_y + a_z + grads[0];
    accumulate(grads);
    // y_{n+1} = lambda (y_n - z_n) + step_z(z_n): rebuild y_n, then pull a_y1 back through step_z.
    const at::Tensor zr = z0.detach().requires_grad_(true);
    at::Tensor step_z;
    {
      at::AutoGradMode grad_mode(true);
      step_z = base_step(field, tab, s.t0, s.h, zr, out.nfe).y1;
    }
    const at::Tensor y0 = core::reversible_y_inverse(y, z0, step_z.detach(), lambda);
    inputs[0] = zr;
    grads = engine_grad(field, {step_z}, {a_y1}, inputs);
    accumulate(grads);
    a_z = a_z - a_y1 * lambda + grads[0];
    a_y = a_y1 * lambda + a_y_start;
    a_f = a_f_start;
    y = y0;
    z = z0;
    if (keep_states) states.push_back(y);
  }
  // Fixed grid: the first step's interpolant used f(t0, y0).
  if (fixed && !tape.steps.empty()) {
    const auto grads = first_derivative_vjp(field, at::full({1}, tape.t0, like.options()), y, a_f, params, out.nfe);
    accumulate(grads);
    a_y = a_y + grads[0];
  }
  // z_0 = y_0: both cotangents reach y0.
  out.grad_y0 = a_y + a_z + grad_ys.select(0, 0);
  if (keep_states) {
    std::reverse(states.begin(), states.end());
    out.states = at::stack(states, 0);
  }
  return out;
}

}  // namespace fde::solver
