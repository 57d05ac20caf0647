#include "solver/fixed_grid.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/nextafter.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

#include "core/fixed_grid_interp.h"
#include "ops/registry.h"
#include "solver/autograd_vjp.h"
#include "solver/step_callbacks.h"

namespace fde::solver {
namespace {

// The direction of a strictly monotone float64 CPU vector (+1 / -1), with `name` in the error.
double check_monotone(const at::Tensor& v, const char* name) {
  TORCH_CHECK_VALUE(v.defined() && v.dim() == 1 && v.scalar_type() == at::kDouble && v.device().is_cpu(),
                    "fastdiffeq: ", name, " must be a 1-D float64 CPU tensor");
  const at::Tensor c = v.contiguous();
  const double* p = c.data_ptr<double>();
  const int64_t n = c.numel();
  TORCH_CHECK_VALUE(n >= 1, "fastdiffeq: ", name, " must hold at least one time");
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK_VALUE(std::isfinite(p[i]), "fastdiffeq: ", name, " must be finite");
  if (n < 2) return 1.0;
  const double dir = p[1] > p[0] ? 1.0 : -1.0;
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK_VALUE(dir * (p[i] - p[i - 1]) > 0, "fastdiffeq: ", name,
                      " must be strictly increasing or strictly decreasing, got ", p[i - 1], " then ", p[i]);
  return dir;
}

// One step of the tableau from (t0, y) to t1, and what the outputs inside it need.
struct GridStep {
  std::vector<at::Tensor> ks;
  at::Tensor y1;
};

class Stepper {
 public:
  Stepper(VectorField& field, const FixedGridOptions& opt, const at::Tensor& like, double dir)
      : field_(field), opt_(opt), tab_(*opt.tableau), dir_(dir), B_(like.size(0)),
        time_opts_(at::TensorOptions().dtype(like.scalar_type()).device(like.device())),
        h_opts_(at::TensorOptions().dtype(at::kDouble).device(like.device())) {}

  // f at time t (nudged one ulp towards `toward` * direction when toward != 0), every sample at t.
  at::Tensor eval(double t, const at::Tensor& y, int toward, int64_t& nfe) {
    at::Tensor tt = at::full({B_}, t, time_opts_);
    if (toward != 0) tt = at::nextafter(tt, tt + toward * dir_);
    ++nfe;
    return field_.eval(tt, y);
  }

  GridStep step(double t0, double t1, const at::Tensor& y, int64_t& nfe) {
    const int S = tab_.stages;
    const double h = t1 - t0;
    const at::Tensor h_t = at::full({B_}, h, h_opts_);
    GridStep st;
    st.ks.reserve(S);
    st.ks.push_back(eval(t0, y, opt_.perturb ? 1 : 0, nfe));
    for (int i = 1; i < S; ++i) {
      const at::Tensor yi =
          ops::call<ops::RkStage>(y, at::TensorList(st.ks.data(), i), h_t, at::ArrayRef<double>(tab_.a[i], i));
      const bool at_end = tab_.c[i] == 1.0;
      st.ks.push_back(eval(at_end ? t1 : t0 + h * tab_.c[i], yi, at_end && opt_.perturb ? -1 : 0, nfe));
    }
    st.y1 = ops::call<ops::RkStage>(y, st.ks, h_t, at::ArrayRef<double>(tab_.b, S));
    return st;
  }

  // The outputs t_out[first, last) inside the step (each [1, B, D]), as torchdiffeq interpolates them.
  at::Tensor outputs(double t0, double t1, const at::Tensor& y, const GridStep& st, const double* t_out,
                     int64_t first, int64_t last, int64_t& nfe) {
    std::vector<at::Tensor> rows;
    for (int64_t j = first; j < last; ++j) {
      const double t = t_out[j];
      at::Tensor r;
      if (opt_.cubic) {
        // torchdiffeq evaluates f(t1, y1) again for every output time.
        const at::Tensor f1 = eval(t1, st.y1, 0, nfe);
        const core::HermiteWeights w = core::cubic_hermite_weights(t, t0, t1);
        r = y * w.y0 + st.ks[0] * w.hf0 + st.y1 * w.y1 + f1 * w.hf1;
      } else if (t == t0) {
        r = y;
      } else if (t == t1) {
        r = st.y1;
      } else {
        r = y + (st.y1 - y) * core::linear_slope(t, t0, t1);
      }
      rows.push_back(r.unsqueeze(0));
    }
    return rows.size() == 1 ? rows[0] : at::cat(rows, 0);
  }

 private:
  VectorField& field_;
  const FixedGridOptions& opt_;
  const core::Tableau& tab_;
  double dir_;
  int64_t B_;
  at::TensorOptions time_opts_, h_opts_;
};

// The output rows [first, last) that the step ending at t1 reaches (t_out[j] on or before t1).
int64_t reached(const double* t_out, int64_t T, int64_t first, double t1, double dir) {
  int64_t j = first;
  while (j < T && dir * (t1 - t_out[j]) >= 0) ++j;
  return j;
}

}  // namespace

FixedGridResult fixed_grid_solve(VectorField& field, const at::Tensor& y0, const at::Tensor& grid,
                                 const at::Tensor& t_out, const FixedGridOptions& options, LoopMode mode) {
  TORCH_CHECK_VALUE(options.tableau != nullptr, "fastdiffeq: no method given");
  TORCH_CHECK_VALUE(options.tableau->stepping == core::Stepping::kFixed, "fastdiffeq: method '",
                    options.tableau->name, "' is adaptive, not a fixed-grid method");
  TORCH_CHECK_VALUE(mode == LoopMode::kGraph || mode == LoopMode::kRecord,
                    "fastdiffeq: the fixed-grid loop runs in 'graph' or 'record' mode");
  TORCH_CHECK_VALUE(y0.defined() && y0.dim() == 2 && y0.is_contiguous() &&
                        (y0.scalar_type() == at::kFloat || y0.scalar_type() == at::kDouble),
                    "fastdiffeq: y0 must be a contiguous float32/float64 [B, D] tensor");
  TORCH_CHECK_VALUE(y0.device().is_cpu() || y0.device().is_cuda(), "fastdiffeq: y0 must be on a CPU or CUDA device, got ",
                    y0.device());
  const double dir_t = check_monotone(t_out, "t_out");
  const double dir_g = check_monotone(grid, "the time grid");
  const at::Tensor t_host = t_out.contiguous(), g_host = grid.contiguous();
  const double* t = t_host.data_ptr<double>();
  const double* g = g_host.data_ptr<double>();
  const int64_t T = t_host.numel(), G = g_host.numel();
  TORCH_CHECK_VALUE(g[0] == t[0] && g[G - 1] == t[T - 1],
                    "fastdiffeq: the time grid must start at t[0] and end at t[-1] (got ", g[0], " .. ", g[G - 1],
                    " for t from ", t[0], " to ", t[T - 1], ")");
  TORCH_CHECK_VALUE(G < 2 || T < 2 || dir_g == dir_t,
                    "fastdiffeq: the time grid must run in the direction of t");
  const double dir = T >= 2 ? dir_t : dir_g;

  std::optional<at::NoGradGuard> no_grad;
  if (mode == LoopMode::kRecord) no_grad.emplace();
  FixedGridResult res;
  if (mode == LoopMode::kRecord) {
    res.tape = std::make_shared<FixedGridTape>();
    res.tape->options = options;
    res.tape->t_out = t_host;
    res.tape->y0 = y0;
  }
  Stepper stepper(field, options, y0, dir);
  std::vector<at::Tensor> rows{y0.unsqueeze(0)};
  at::Tensor y = y0;
  int64_t j = 1;
  for (int64_t i = 0; i + 1 < G && j < T; ++i) {
    const double t0 = g[i], t1 = g[i + 1];
    if (options.callbacks != nullptr) options.callbacks->step(t0, y, t1 - t0);
    GridStep st = stepper.step(t0, t1, y, res.nfe);
    const int64_t last = reached(t, T, j, t1, dir);
    if (last > j) rows.push_back(stepper.outputs(t0, t1, y, st, t, j, last, res.nfe));
    if (res.tape) res.tape->steps.push_back({t0, t1, y, j, last});
    j = last;
    y = st.y1;
    ++res.n_steps;
  }
  res.ys = rows.size() == 1 ? rows[0] : at::cat(rows, 0);
  return res;
}

CheckpointGradients fixed_grid_backward(VectorField& field, const FixedGridTape& tape, const at::Tensor& grad_ys,
                                        const std::vector<at::Tensor>& params) {
  TORCH_CHECK_VALUE(tape.y0.defined(), "fastdiffeq: an empty fixed-grid tape");
  const int64_t T = tape.t_out.numel();
  TORCH_CHECK_VALUE(grad_ys.dim() == 3 && grad_ys.size(0) == T && grad_ys.size(1) == tape.y0.size(0) &&
                        grad_ys.size(2) == tape.y0.size(1),
                    "fastdiffeq: grad_ys must have shape [", T, ", ", tape.y0.size(0), ", ", tape.y0.size(1),
                    "], got ", grad_ys.sizes());
  TORCH_CHECK_VALUE(grad_ys.scalar_type() == tape.y0.scalar_type() && grad_ys.device() == tape.y0.device(),
                    "fastdiffeq: grad_ys must have the state's dtype and device");
  const double* t = tape.t_out.data_ptr<double>();
  const double dir = T >= 2 && t[1] < t[0] ? -1.0 : 1.0;
  CheckpointGradients out;
  for (const auto& p : params) out.grad_params.push_back(at::zeros_like(p));
  Stepper stepper(field, tape.options, tape.y0, dir);
  at::Tensor a_y = at::zeros_like(tape.y0);  // the cotangent of the state at the end of the step replayed
  at::AutoGradMode grad_mode(true);
  for (auto it = tape.steps.rbegin(); it != tape.steps.rend(); ++it) {
    const FixedGridStep& s = *it;
    const at::Tensor y = s.y.detach().requires_grad_(true);
    GridStep st = stepper.step(s.t0, s.t1, y, out.nfe);
    std::vector<at::Tensor> outputs{st.y1};
    std::vector<at::Tensor> cotangents{a_y};
    if (s.out_last > s.out_first) {
      outputs.push_back(stepper.outputs(s.t0, s.t1, y, st, t, s.out_first, s.out_last, out.nfe));
      cotangents.push_back(grad_ys.slice(0, s.out_first, s.out_last));
    }
    std::vector<at::Tensor> inputs{y};
    inputs.insert(inputs.end(), params.begin(), params.end());
    const auto grads = engine_grad(field, outputs, cotangents, inputs);
    a_y = grads[0];
    for (size_t i = 0; i < params.size(); ++i) out.grad_params[i].add_(grads[1 + i]);
  }
  out.grad_y0 = a_y + grad_ys.select(0, 0);
  return out;
}

}  // namespace fde::solver
