#include "solver/reversible.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "core/controller.h"
#include "core/reversible.h"
#include "core/status.h"
#include "solver/autograd_vjp.h"
#include "solver/finite.h"
#include "solver/rk_problem.h"
#include "solver/rk_step.h"

namespace fde::solver {
namespace {

// One step of the base method from (t0, x) with step h (signed): x + Psi_h(t0, x) and its stages (for the
// error estimate). k0 = f(t0, x) is evaluated here: the two base steps of a reversible step start at
// different points, so nothing is first-same-as-last across them.
StepStages base_step(VectorField& field, const core::Tableau& tab, double t0, double h, const at::Tensor& x,
                     int64_t& nfe) {
  const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(x.device());
  const at::Tensor t0_t = at::full({x.size(0)}, t0, time_opts);
  const at::Tensor h_t = at::full({x.size(0)}, h, time_opts);
  const at::Tensor k0 = field.eval(t0_t.to(x.scalar_type()), x);
  ++nfe;
  return rk_stages(field, tab, x, k0, t0_t, h_t, nfe);
}

// The outputs as [T, B, D], NaN where a row was never reached.
at::Tensor stack_outputs(std::vector<at::Tensor>& rows, const at::Tensor& like) {
  for (auto& r : rows) {
    if (!r.defined()) r = at::full_like(like, std::numeric_limits<double>::quiet_NaN());
    r = r.unsqueeze(0);
  }
  return at::cat(rows, 0);
}

void check_state(const at::Tensor& y0, const at::Tensor& t_out) {
  TORCH_CHECK_VALUE(y0.defined() && y0.dim() == 2 && y0.size(0) == 1 && y0.is_contiguous() &&
                        (y0.scalar_type() == at::kFloat || y0.scalar_type() == at::kDouble),
                    "fastdiffeq: y0 must be a contiguous float32/float64 [1, D] tensor (joint mode)");
  TORCH_CHECK_VALUE(t_out.defined() && t_out.dim() == 1 && t_out.numel() >= 1 && t_out.scalar_type() == at::kDouble &&
                        t_out.device().is_cpu(),
                    "fastdiffeq: t_out must be a non-empty 1-D float64 CPU tensor");
}

// Steps of the reversible pair, shared by the adaptive and fixed-grid drivers.
class PairStepper {
 public:
  PairStepper(VectorField& field, const core::Tableau& tab, double coupling, int64_t& nfe)
      : field_(field), tab_(tab), lambda_(coupling), nfe_(nfe) {}

  struct Attempt {
    at::Tensor y1, z1;
    StepStages from_z, from_y1;  // the two base steps (for the error estimate)
  };

  Attempt step(double t0, double h, const at::Tensor& y, const at::Tensor& z) {
    Attempt a;
    a.from_z = base_step(field_, tab_, t0, h, z, nfe_);
    a.y1 = core::reversible_y_forward(y, z, a.from_z.y1, lambda_);
    a.from_y1 = base_step(field_, tab_, t0 + h, -h, a.y1, nfe_);
    a.z1 = core::reversible_z_forward(z, a.y1, a.from_y1.y1);
    return a;
  }

 private:
  VectorField& field_;
  const core::Tableau& tab_;
  double lambda_;
  int64_t& nfe_;
};

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
  at::NoGradGuard no_grad;
  const at::Tensor t_host = t_out.contiguous();
  const double* t = t_host.data_ptr<double>();
  const int64_t T = t_host.numel();

  ReversibleResult res;
  res.tape = std::make_shared<ReversibleTape>();
  ReversibleTape& tape = *res.tape;
  tape.tableau = &tab;
  tape.coupling = options.coupling;
  tape.n_outputs = T;
  std::vector<at::Tensor> rows(T);
  rows[0] = y0;
  at::Tensor y = y0, z = y0;  // z_0 = y_0
  PairStepper stepper(field, tab, options.coupling, res.nfe);
  res.status = core::kSuccess;
  res.t_final = t[0];

  if (fixed) {
    const std::vector<double>& g = options.grid;
    TORCH_CHECK_VALUE(!g.empty() && g.front() == t[0] && g.back() == t[T - 1],
                      "fastdiffeq: the reversible time grid must run from t[0] to t[-1]");
    const double dir = T >= 2 ? (t[1] > t[0] ? 1.0 : -1.0) : (g.size() >= 2 && g[1] < g[0] ? -1.0 : 1.0);
    int64_t j = 1;
    for (size_t i = 0; i + 1 < g.size(); ++i) {
      TORCH_CHECK_VALUE(std::isfinite(g[i + 1]) && dir * (g[i + 1] - g[i]) > 0,
                        "fastdiffeq: the reversible time grid must be finite and strictly monotone in t's direction");
      TORCH_CHECK_VALUE(j >= T || dir * (t[j] - g[i + 1]) >= 0, "fastdiffeq: output time t[", j, "] = ", t[j],
                        " is not a point of the reversible time grid");
      const double h = g[i + 1] - g[i];
      PairStepper::Attempt a = stepper.step(g[i], h, y, z);
      y = a.y1;
      z = a.z1;
      int64_t out = -1;
      if (j < T && t[j] == g[i + 1]) {
        out = j;
        rows[j++] = y;
      }
      tape.steps.push_back({g[i], h, out});
      ++res.n_accepted;
      res.t_final = g[i + 1];
    }
    TORCH_CHECK_VALUE(j == T, "fastdiffeq: output time t[", j, "] is not a point of the reversible time grid");
  } else if (T >= 2) {
    RkProblem problem(field, nullptr, y0, t_out, options.rk);
    const core::ControllerParams& ctrl = problem.ctrl_;
    const double dir = problem.direction_;
    const at::Tensor t0_vec = problem.initial_time();
    at::Tensor k0;
    if (!problem.first_derivative(t0_vec, y0, k0, res.nfe)) {
      res.status = core::kNonFinite;
    } else {
      double h = problem.first_step(t0_vec, y0, k0, res.nfe).item<double>();
      double t0 = t[0];
      int64_t j = 1, attempts = 0, non_finite = 0;
      const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(y0.device());
      while (j < T) {
        if (attempts >= options.rk.max_num_steps) {
          res.status = core::kMaxSteps;
          break;
        }
        // Cut the step short to land exactly on the next output time.
        double h_try = h;
        const bool cut = dir * (t0 + h - t[j]) >= 0;
        if (cut) h_try = t[j] - t0;
        if (t0 + h_try == t0) {
          res.status = core::kStepUnderflow;
          break;
        }
        PairStepper::Attempt a = stepper.step(t0, h_try, y, z);
        ++attempts;
        // Error ratio: the larger of the two base steps' embedded estimates (each scaled by its own start and
        // end point), so both half-steps of the pair meet the tolerance.
        const at::Tensor h_fwd = at::full({1}, h_try, time_opts), h_bwd = at::full({1}, -h_try, time_opts);
        const double r_z = std::get<0>(problem.control(z, a.from_z.y1, a.from_z.ks, h_fwd)).item<double>();
        const double r_y = std::get<0>(problem.control(a.y1, a.from_y1.y1, a.from_y1.ks, h_bwd)).item<double>();
        const double ratio = (std::isnan(r_z) || std::isnan(r_y)) ? std::numeric_limits<double>::quiet_NaN()
                                                                   : std::fmax(r_z, r_y);
        const bool finite = std::isfinite(ratio) && all_finite(a.y1) && all_finite(a.z1);
        const bool accept = finite && core::accept_step(std::fabs(h_try), ratio, ctrl);
        double h_next = core::next_step_size(std::fabs(h_try), finite ? ratio : NAN, ctrl) * dir;
        if (!finite) {
          if (++non_finite >= core::kMaxNonFiniteRetries) {
            res.status = core::kNonFinite;
            break;
          }
        } else {
          non_finite = 0;
        }
        if (!accept) {
          ++res.n_rejected;
          h = h_next;
          continue;
        }
        ++res.n_accepted;
        y = a.y1;
        z = a.z1;
        const double t1 = cut ? t[j] : t0 + h_try;
        int64_t out = -1;
        if (cut) {
          out = j;
          rows[j++] = y;
          attempts = 0;
          // A step cut short to land says nothing about the step size: keep the controller's earlier proposal.
          if (std::fabs(h_next) < std::fabs(h)) h_next = h;
        }
        tape.steps.push_back({t0, h_try, out});
        t0 = t1;
        h = h_next;
        res.t_final = t0;
      }
    }
  }
  tape.y_end = y;
  tape.z_end = z;
  res.ys = stack_outputs(rows, y0);
  return res;
}

ReversibleGradients reversible_backward(VectorField& field, const ReversibleTape& tape, const at::Tensor& grad_ys,
                                        const std::vector<at::Tensor>& params) {
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
  ReversibleGradients out;
  for (const auto& p : params) out.grad_params.push_back(at::zeros_like(p));
  std::vector<at::Tensor> rebuilt(T);
  at::Tensor y = tape.y_end, z = tape.z_end;  // the pair at the end of the step being reversed
  at::Tensor a_y = at::zeros_like(like), a_z = at::zeros_like(like);
  auto accumulate = [&](const std::vector<at::Tensor>& grads) {
    for (size_t i = 0; i < params.size(); ++i) out.grad_params[i].add_(grads[1 + i]);
  };
  std::vector<at::Tensor> inputs(1 + params.size());
  std::copy(params.begin(), params.end(), inputs.begin() + 1);
  for (auto it = tape.steps.rbegin(); it != tape.steps.rend(); ++it) {
    const ReversibleStep& s = *it;
    if (s.out >= 0) {
      a_y = a_y + grad_ys.select(0, s.out);
      rebuilt[s.out] = y;
    }
    const double t1 = s.t0 + s.h;
    // z_{n+1} = z_n + y_{n+1} - step_y(y_{n+1}): rebuild z_n, then pull a_z back through step_y.
    const at::Tensor y1 = y.detach().requires_grad_(true);
    at::Tensor step_y;
    {
      at::AutoGradMode grad_mode(true);
      step_y = base_step(field, tab, t1, -s.h, y1, out.nfe).y1;
    }
    const at::Tensor z0 = core::reversible_z_inverse(z, y, step_y.detach());
    inputs[0] = y1;
    auto grads = engine_grad(field, {step_y}, {-a_z}, inputs);
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
    a_y = a_y1 * lambda;
    y = y0;
    z = z0;
  }
  rebuilt[0] = y;
  // z_0 = y_0: both cotangents reach y0.
  out.grad_y0 = a_y + a_z + grad_ys.select(0, 0);
  out.ys_rebuilt = stack_outputs(rebuilt, like);
  return out;
}

}  // namespace fde::solver
