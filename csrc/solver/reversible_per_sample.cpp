// Per-sample reversible Runge-Kutta (solve_ivp(gradient='reversible')): the joint loop's step, error control and
// backward walk (solver/reversible.cpp) with one time, step, decision and status per sample; rows that do not
// move in an iteration are kept by where() forward and pass their cotangents through unchanged backward.
#include "solver/reversible.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "core/controller.h"
#include "core/reversible.h"
#include "core/status.h"
#include "solver/autograd_vjp.h"
#include "solver/rk_per_sample.h"
#include "solver/rk_problem.h"
#include "solver/reversible_step.h"

namespace fde::solver {
namespace {

at::Tensor host_vector(const std::vector<double>& v, at::Device device) {
  return at::tensor(at::ArrayRef<double>(v), at::TensorOptions().dtype(at::kDouble)).to(device);
}

// Output time j of sample b (t_out [T] shared or [B, T]).
struct Times {
  const double* p;
  int64_t T;
  bool shared;
  double at(int64_t b, int64_t j) const { return shared ? p[j] : p[b * T + j]; }
  at::Tensor row(const at::Tensor& t_dev, int64_t b, int64_t first, int64_t last) const {
    return (shared ? t_dev : t_dev.select(0, b)).slice(0, first, last);
  }
};

}  // namespace

SampleReversibleResult reversible_solve_per_sample(VectorField& field_in, const at::Tensor& y0,
                                                   const at::Tensor& t_out, const ReversibleOptions& options) {
  TORCH_CHECK_VALUE(options.rk.tableau != nullptr && options.rk.tableau->stepping == core::Stepping::kAdaptive,
                    "fastdiffeq: per-sample reversible solves need an adaptive method");
  TORCH_CHECK_VALUE(core::valid_coupling(options.coupling),
                    "fastdiffeq: the reversible coupling parameter must lie in (0, 1], got ", options.coupling);
  TORCH_CHECK_VALUE(options.rk.step_t.empty() && options.rk.jump_t.empty() && options.rk.progress == nullptr &&
                        options.rk.callbacks == nullptr && !options.rk.record_dense,
                    "fastdiffeq: gradient='reversible' supports no step_t, jump_t, progress or step callbacks");
  at::NoGradGuard no_grad;
  LiveRowsField field(field_in);
  RkProblem problem(field, nullptr, y0, t_out, options.rk);  // validates every argument
  const core::Tableau& tab = *options.rk.tableau;
  const double lambda = options.coupling;
  const core::ControllerParams& ctrl = problem.ctrl_;
  const double dir = problem.direction_;
  const int64_t B = y0.size(0), T = problem.T_;
  const at::Device dev = y0.device();
  const at::Tensor t_host = problem.t_out_host_.contiguous();
  const Times times{t_host.data_ptr<double>(), T, t_host.dim() == 1};
  const at::Tensor t_dev = t_host.to(dev);

  SampleReversibleResult res;
  res.tape = std::make_shared<SampleReversibleTape>();
  SampleReversibleTape& tape = *res.tape;
  tape.tableau = &tab;
  tape.coupling = lambda;
  tape.t_out = t_host;
  at::Tensor ys = at::full({T, B, y0.size(1)}, std::numeric_limits<double>::quiet_NaN(), y0.options());
  ys.select(0, 0).copy_(y0);

  const at::Tensor t0_t = problem.initial_time();
  at::Tensor f0;
  const bool f0_finite = problem.first_derivative(t0_t, y0, f0, res.nfe);
  const at::Tensor f0_ok = at::isfinite(f0).all(1).cpu();
  at::Tensor h_t = problem.first_step(t0_t, y0, at::where(at::isfinite(f0), f0, 0.0), res.nfe);
  const at::Tensor t0c = t0_t.cpu().contiguous(), hc = h_t.cpu().contiguous();
  HostSamples s(t0c, hc);
  std::vector<int64_t> non_finite(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    if (!f0_finite && !f0_ok.data_ptr<bool>()[b]) s.stop(b, core::kNonFinite);
    else if (T == 1) s.stop(b, core::kSuccess);
  }
  at::Tensor y = y0, z = y0;
  while (s.running > 0) {
    std::vector<double> h_eff(B, 0.0);
    std::vector<uint8_t> live(B, 0);
    for (int64_t b = 0; b < B; ++b) {
      if (s.status[b] != core::kRunning) continue;
      int64_t* cnt = &s.counters[b * core::kNumCounters];
      if (cnt[core::kAttemptsSinceOutput] >= options.rk.max_num_steps) {
        s.stop(b, core::kMaxSteps);
        continue;
      }
      if (s.t0[b] + s.h[b] == s.t0[b]) {
        s.stop(b, core::kStepUnderflow);
        continue;
      }
      h_eff[b] = s.h[b];
      live[b] = 1;
    }
    if (s.running == 0) break;
    field.set_live(sample_mask(live, dev));
    const at::Tensor t0v = host_vector(s.t0, dev), hv = host_vector(h_eff, dev);
    StepStages from_z = base_step(field, tab, t0v, hv, z, res.nfe);
    const at::Tensor y1 = core::reversible_y_forward(y, z, from_z.y1, lambda);
    StepStages from_y1 = base_step(field, tab, t0v + hv, -hv, y1, res.nfe);
    const at::Tensor z1 = core::reversible_z_forward(z, y1, from_y1.y1);
    const at::Tensor r_z = std::get<0>(problem.control(z, from_z.y1, from_z.ks, hv)).cpu();
    const at::Tensor r_y = std::get<0>(problem.control(y1, from_y1.y1, from_y1.ks, -hv)).cpu();
    const at::Tensor rows_ok = at::isfinite(y1).all(1).logical_and(at::isfinite(z1).all(1)).cpu();
    const double *rz = r_z.data_ptr<double>(), *ry = r_y.data_ptr<double>();
    const bool* okp = rows_ok.data_ptr<bool>();
    SampleReversibleIteration it;
    it.t0 = s.t0;
    it.h.assign(B, 0.0);
    std::vector<uint8_t> moved(B, 0);
    for (int64_t b = 0; b < B; ++b) {
      if (!live[b]) continue;
      int64_t* cnt = &s.counters[b * core::kNumCounters];
      const double ratio = (std::isnan(rz[b]) || std::isnan(ry[b])) ? NAN : std::fmax(rz[b], ry[b]);
      const bool finite = std::isfinite(ratio) && okp[b];
      const double h = s.h[b];
      const bool ok = finite && core::accept_step(std::fabs(h), ratio, ctrl);
      const double h_next = core::next_step_size(std::fabs(h), finite ? ratio : NAN, ctrl) * dir;
      ++cnt[core::kAttemptsSinceOutput];
      non_finite[b] = finite ? 0 : non_finite[b] + 1;
      if (!ok) {
        ++cnt[core::kRejected];
        s.h[b] = h_next;
        if (non_finite[b] >= core::kMaxNonFiniteRetries) s.stop(b, core::kNonFinite);
        continue;
      }
      ++cnt[core::kAccepted];
      moved[b] = 1;
      it.h[b] = h;
      const double t1 = s.t0[b] + h;
      int64_t& j = s.out_index[b];
      int64_t last = j;
      while (last < T && dir * (t1 - times.at(b, last)) >= 0) ++last;
      if (last > j) {
        StepStages row;
        row.y1 = from_y1.y1.narrow(0, b, 1);
        for (const auto& k : from_y1.ks) row.ks.push_back(k.narrow(0, b, 1));
        const at::Tensor dense = backward_dense(tab, y1.narrow(0, b, 1), row, t1, -h, times.row(t_dev, b, j, last));
        ys.slice(0, j, last).narrow(1, b, 1).copy_(dense);
        it.outputs.push_back({b, j, last});
        cnt[core::kAttemptsSinceOutput] = 0;
        j = last;
      }
      s.t0[b] = t1;
      s.h[b] = h_next;
      if (j >= T) s.stop(b, core::kSuccess);
    }
    const at::Tensor m = sample_mask(moved, dev);
    y = at::where(m, y1, y);
    z = at::where(m, z1, z);
    bool any = false;
    for (auto v : moved) any = any || v;
    if (any) tape.iterations.push_back(std::move(it));
  }
  field.set_live(at::Tensor());
  tape.y_end = y;
  tape.z_end = z;
  res.ys = ys;
  res.status = at::tensor(at::ArrayRef<int32_t>(s.status), at::kInt);
  res.counters = at::tensor(at::ArrayRef<int64_t>(s.counters), at::kLong).reshape({B, core::kNumCounters});
  res.t = at::tensor(at::ArrayRef<double>(s.t0), at::kDouble);
  return res;
}

ReversibleGradients reversible_backward_per_sample(VectorField& field_in, const SampleReversibleTape& tape,
                                                   const at::Tensor& grad_ys, const std::vector<at::Tensor>& params) {
  TORCH_CHECK_VALUE(tape.tableau != nullptr && tape.y_end.defined(), "fastdiffeq: an empty reversible tape");
  const at::Tensor& like = tape.y_end;
  const int64_t B = like.size(0), T = tape.t_out.size(-1);
  TORCH_CHECK_VALUE(grad_ys.defined() && grad_ys.dim() == 3 && grad_ys.size(0) == T && grad_ys.size(1) == B &&
                        grad_ys.size(2) == like.size(1),
                    "fastdiffeq: grad_ys must have shape [", T, ", ", B, ", ", like.size(1), "]");
  TORCH_CHECK_VALUE(grad_ys.scalar_type() == like.scalar_type() && grad_ys.device() == like.device(),
                    "fastdiffeq: grad_ys must have the state's dtype and device");
  LiveRowsField field(field_in);
  const core::Tableau& tab = *tape.tableau;
  const double lambda = tape.coupling;
  const at::Device dev = like.device();
  const Times times{tape.t_out.data_ptr<double>(), T, tape.t_out.dim() == 1};
  const at::Tensor t_dev = tape.t_out.to(dev);
  ReversibleGradients out;
  for (const auto& p : params) out.grad_params.push_back(at::zeros_like(p));
  at::Tensor y = like, z = tape.z_end;
  at::Tensor a_y = at::zeros_like(like), a_z = at::zeros_like(like);
  std::vector<at::Tensor> inputs(1 + params.size());
  std::copy(params.begin(), params.end(), inputs.begin() + 1);
  auto accumulate = [&](const std::vector<at::Tensor>& grads) {
    for (size_t i = 0; i < params.size(); ++i) out.grad_params[i].add_(grads[1 + i]);
  };
  for (auto it = tape.iterations.rbegin(); it != tape.iterations.rend(); ++it) {
    std::vector<uint8_t> moved(B);
    for (int64_t b = 0; b < B; ++b) moved[b] = it->h[b] != 0.0;
    const at::Tensor m = sample_mask(moved, dev);
    field.set_live(m);
    const at::Tensor t0v = host_vector(it->t0, dev), hv = host_vector(it->h, dev);
    const at::Tensor t1v = t0v + hv;
    const at::Tensor y1 = y.detach().requires_grad_(true);
    StepStages from_y1;
    std::vector<at::Tensor> outs, cots{at::where(m, -a_z, 0.0)};
    {
      at::AutoGradMode grad_mode(true);
      from_y1 = base_step(field, tab, t1v, -hv, y1, out.nfe);
      outs.push_back(from_y1.y1);
      for (const auto& o : it->outputs) {
        const int64_t b = o[0], first = o[1], last = o[2];
        StepStages row;
        row.y1 = from_y1.y1.narrow(0, b, 1);
        for (const auto& k : from_y1.ks) row.ks.push_back(k.narrow(0, b, 1));
        outs.push_back(backward_dense(tab, y1.narrow(0, b, 1), row, it->t0[b] + it->h[b], -it->h[b],
                                      times.row(t_dev, b, first, last)));
        cots.push_back(grad_ys.slice(0, first, last).narrow(1, b, 1));
      }
    }
    const at::Tensor z0 = at::where(m, core::reversible_z_inverse(z, y, from_y1.y1.detach()), z);
    inputs[0] = y1;
    auto grads = engine_grad(field, outs, cots, inputs);
    from_y1 = StepStages();
    outs.clear();
    accumulate(grads);
    // Rows that did not move: their outputs' cotangents (none) and a_z pass through unchanged.
    const at::Tensor a_y1 = a_y + at::where(m, a_z + grads[0], 0.0);
    const at::Tensor zr = z0.detach().requires_grad_(true);
    at::Tensor step_z;
    {
      at::AutoGradMode grad_mode(true);
      step_z = base_step(field, tab, t0v, hv, zr, out.nfe).y1;
    }
    const at::Tensor y0 = at::where(m, core::reversible_y_inverse(y, z0, step_z.detach(), lambda), y);
    inputs[0] = zr;
    grads = engine_grad(field, {step_z}, {at::where(m, a_y1, 0.0)}, inputs);
    accumulate(grads);
    a_z = at::where(m, a_z - a_y1 * lambda + grads[0], a_z);
    a_y = at::where(m, a_y1 * lambda, a_y1);
    y = y0;
    z = z0;
  }
  field.set_live(at::Tensor());
  out.grad_y0 = a_y + a_z + grad_ys.select(0, 0);
  return out;
}

}  // namespace fde::solver
