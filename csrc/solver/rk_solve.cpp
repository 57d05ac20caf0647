#include "solver/rk_solve.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/where.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "core/controller.h"
#include "core/status.h"
#include "core/step_commit.h"
#include "ops/registry.h"
#include "solver/grid_clip.h"
#include "solver/initial_step.h"
#include "solver/norms.h"
#include "solver/progress.h"
#include "solver/rk_problem.h"
#include "solver/rk_step.h"
#include "solver/solve_args.h"
#include "solver/step_callbacks.h"

namespace fde::solver {
namespace {

bool all_done(const at::Tensor& status) {
  if (status.is_cpu()) {
    const int32_t* s = status.data_ptr<int32_t>();
    for (int64_t b = 0; b < status.numel(); ++b)
      if (s[b] == core::kRunning) return false;
    return true;
  }
  return status.ne(core::kRunning).all().item<bool>();
}

std::vector<at::Tensor> detached(const std::vector<at::Tensor>& ks) {
  std::vector<at::Tensor> out;
  out.reserve(ks.size());
  for (const auto& k : ks) out.push_back(k.detach());
  return out;
}

// The outputs of a solve whose rows [0, n) are `rows` (each [r, B, D]): the remaining rows of the [T, B, D]
// result are NaN (the solve stopped before reaching them; with B > 1, rows of the samples that failed are
// NaN from their failure on, see rk_dense_output). Keeps the graph of `rows`.
at::Tensor with_missing_rows(const std::vector<at::Tensor>& rows, int64_t T) {
  const at::Tensor done = rows.size() == 1 ? rows[0] : at::cat(rows, 0);
  if (done.size(0) >= T) return done;
  auto shape = done.sizes().vec();
  shape[0] = T - done.size(0);
  return at::cat({done, at::full(shape, std::numeric_limits<double>::quiet_NaN(), done.options())}, 0);
}

// Results of a solve that ends before its first step (T == 1, or a non-finite f(t0, y0)).
RkResult early_result(const RkProblem& p, const at::Tensor& y0, const at::Tensor& t0, const at::Tensor& h,
                      core::Status status, int64_t nfe) {
  RkResult res;
  res.ys = with_missing_rows({y0.unsqueeze(0)}, p.T_);
  res.status = at::full({p.B_}, static_cast<int>(status), y0.options().dtype(at::kInt));
  res.counters = at::zeros({p.B_, core::kNumCounters}, y0.options().dtype(at::kLong));
  res.t = t0;
  res.h = h.defined() ? h : at::zeros_like(t0);
  res.nfe = nfe;
  return res;
}

RkResult run_masked(RkProblem& p, const at::Tensor& y0_in) {
  const core::Tableau& tab = p.tab_;
  at::NoGradGuard no_grad;
  RkResult res;
  at::Tensor t0 = p.initial_time();
  at::Tensor y = y0_in.clone();  // the loop's own buffer: rk_commit writes into it
  at::Tensor k0;
  at::Tensor startable;  // per-sample solves: the samples whose f(t0, y0) is finite (undefined: all of them)
  if (!p.first_derivative(t0, y.clone(), k0, res.nfe)) {
    if (p.B_ == 1) return early_result(p, y0_in, t0, {}, core::kNonFinite, res.nfe);
    // Independent samples: only those whose derivative is not finite fail; the others start (with the
    // failed rows' derivative zeroed so no NaN enters the shared initial-step and stage computations).
    startable = at::isfinite(k0).all(1);
    k0 = at::where(startable.unsqueeze(1), k0, 0.0);
  }
  k0 = k0.clone();  // rk_commit writes into it; never into a tensor the field returned
  at::Tensor h = p.first_step(t0, y, k0, res.nfe);
  if (p.T_ == 1) {
    RkResult done = early_result(p, y0_in, t0, h, core::kSuccess, res.nfe);
    if (startable.defined()) done.status = at::where(startable, done.status, static_cast<int>(core::kNonFinite));
    return done;
  }

  // Rows the solve never reaches (a failure) stay NaN.
  res.ys = at::full({p.T_, p.B_, p.D_}, std::numeric_limits<double>::quiet_NaN(), y0_in.options());
  res.ys.select(0, 0).copy_(y0_in);
  res.status = at::full({p.B_}, static_cast<int32_t>(core::kRunning), y0_in.options().dtype(at::kInt));
  if (startable.defined()) {
    res.status.masked_fill_(startable.logical_not(), static_cast<int32_t>(core::kNonFinite));
    h.masked_fill_(startable.logical_not(), 0.0);  // a stopped sample's step is 0
  }
  res.counters = at::zeros({p.B_, core::kNumCounters}, y0_in.options().dtype(at::kLong));
  at::Tensor out_index = at::ones({p.B_}, y0_in.options().dtype(at::kLong));
  const at::ArrayRef<double> mid(tab.mid, tab.stages);

  GridClip grid{p.opt_.step_t, p.opt_.jump_t};
  ProgressReporter progress(p.opt_.progress, p.t_out_host_);
  const int64_t check_every = std::max<int64_t>(1, p.opt_.check_every);
  for (int64_t iter = 0;; ++iter) {
    at::Tensor h_step = h;
    ClippedStep cut{0.0, 0.0};  // the step cut onto a step_t / jump_t point, when grid.on_step / on_jump
    if (grid.active()) {
      cut = grid.clip(t0.item<double>(), h.item<double>());
      h_step = at::full({1}, cut.h, h.options());
    }
    StepStages st = rk_stages(p.field_, tab, y, k0, t0, h_step, res.nfe);
    auto [ratio, accept, h_next] = p.control(y, st.y1, st.ks, h_step);
    ops::call<ops::RkDenseOutput>(res.ys, y, st.y1, st.ks, h_step, t0, accept, p.t_out_, out_index, mid);

    at::Tensor k_last = st.ks.back();
    const bool accepted_on_grid = grid.active() && (grid.on_step || grid.on_jump) && accept.item<bool>();
    if (accepted_on_grid && grid.on_jump) {
      // Past a discontinuity f is re-evaluated on the new side; FSAL is broken for this step.
      k_last = p.field_.eval(after_jump_time(cut.t1, p.direction_, p.dtype_, y.device()), st.y1);
      ++res.nfe;
    }
    ops::call<ops::RkCommit>(y, k0, t0, h_step, res.status, res.counters, out_index, st.y1, k_last, h_next, accept,
                             ratio, p.t_out_, p.opt_.max_num_steps);
    h = h_step;  // rk_commit wrote the next step size into it
    // rk_commit moved t0 by h (t0 + (g - t0) may miss g by an ulp): a step cut onto a grid point ends on it.
    if (accepted_on_grid) t0.fill_(cut.t1);
    if (accepted_on_grid) grid.accepted();
    ++res.n_steps;
    if ((iter + 1) % check_every == 0) {
      progress.stage(t0);  // before all_done's synchronisation (CUDA), which completes the copy
      if (all_done(res.status)) break;
      progress.report_staged();
    }
  }
  res.t = t0;
  res.h = h;
  return res;
}

// Host-driven loop (B == 1): differentiable (kGraph) or recording a checkpoint tape (kRecord).
RkResult run_host(RkProblem& p, const at::Tensor& y0_in, LoopMode mode) {
  TORCH_CHECK(p.B_ == 1, "fastdiffeq: the differentiable and recording loops need B == 1 (joint mode)");
  const core::Tableau& tab = p.tab_;
  std::optional<at::NoGradGuard> no_grad;
  if (mode == LoopMode::kRecord) no_grad.emplace();
  RkResult res;
  const auto dev = y0_in.device();
  const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(dev);
  at::Tensor t0_t = p.initial_time();
  // The tape keeps its own copy of y0 (the caller's tensor may change in place before the backward pass);
  // the differentiable loop must start from y0_in itself (its graph).
  at::Tensor y = mode == LoopMode::kRecord ? y0_in.clone() : y0_in;
  at::Tensor k0;
  if (!p.first_derivative(t0_t, y, k0, res.nfe)) return early_result(p, y0_in, t0_t, {}, core::kNonFinite, res.nfe);
  at::Tensor h_t = p.first_step(t0_t, y, k0, res.nfe);
  if (mode == LoopMode::kRecord) {
    res.tape = std::make_shared<RkTape>();
    res.tape->tableau = &tab;
    res.tape->t_out = p.t_out_;
    res.tape->y0 = y;
    res.tape->direction = p.direction_;
    res.tape->t0 = t0_t.cpu()[0].item<double>();
  }
  if (p.T_ == 1) {
    RkResult done = early_result(p, y0_in, t0_t, h_t, core::kSuccess, res.nfe);
    done.tape = std::move(res.tape);  // an empty tape: the backward pass has no step to replay
    return done;
  }

  const double* t_host = p.t_out_host_.data_ptr<double>();
  double t0 = t_host[0];
  double h = h_t.item<double>();
  int32_t status = core::kRunning;
  int64_t counters[core::kNumCounters] = {};
  int64_t out_index = 1;
  std::vector<at::Tensor> rows{y0_in.unsqueeze(0)};
  const at::ArrayRef<double> mid(tab.mid, tab.stages);

  GridClip grid{p.opt_.step_t, p.opt_.jump_t};
  ProgressReporter progress(p.opt_.progress, p.t_out_host_);
  at::Tensor zero_state, unit_h;  // for the dense record: mid_slope = 0 + 1 * sum_j mid_j k_j
  if (res.tape && p.opt_.record_dense) {
    zero_state = at::zeros_like(y0_in);
    unit_h = at::ones({1}, time_opts);
  }
  while (status == core::kRunning) {
    StepCallbacks* callbacks = p.opt_.callbacks;
    if (callbacks != nullptr) callbacks->step(t0, y, h);
    const ClippedStep step = grid.active() ? grid.clip(t0, h) : ClippedStep{t0 + h, h};
    const double t1 = step.t1, h_step = step.h;
    t0_t = at::full({1}, t0, time_opts);
    h_t = at::full({1}, h_step, time_opts);
    StepStages st = rk_stages(p.field_, tab, y, k0, t0_t, h_t, res.nfe);
    auto [ratio, accept, h_next] = p.control(y.detach(), st.y1.detach(), detached(st.ks), h_t);
    const StepDecision d = read_decision(ratio, accept, h_next);
    if (callbacks != nullptr) {
      if (d.accept) {
        callbacks->accept(t0, y, h_step);
      } else {
        callbacks->reject(t0, y, h_step);
      }
    }
    if (d.accept) {
      const int64_t last = core::outputs_passed_to(t_host, p.T_, out_index, t0, t1);
      if (last > out_index)
        rows.push_back(
            ops::call<ops::RkDenseEval>(y, st.y1, st.ks, h_t, t0_t, p.t_out_.slice(0, out_index, last), mid));
      at::Tensor k_last = st.ks.back();
      if (grid.on_jump) {
        k_last = p.field_.eval(after_jump_time(t1, p.direction_, p.dtype_, dev), st.y1);
        ++res.nfe;
      }
      if (res.tape) {
        RecordedStep rec{t0, h_step, y, k0, grid.on_jump, out_index, last, {}, {}, {}};
        if (p.opt_.record_dense) {
          rec.y1 = st.y1;
          rec.k1 = st.ks.back();
          rec.mid_slope = ops::call<ops::RkStage>(zero_state, st.ks, unit_h, mid);
        }
        res.tape->steps.push_back(std::move(rec));
      }
      y = st.y1;
      k0 = k_last;
      grid.accepted();
    }
    double h_commit = h_step;
    core::commit_sample_to(t0, t1, h_commit, status, counters, out_index, d.accept, d.ratio, d.h_next, t_host,
                           p.T_, p.opt_.max_num_steps);
    h = h_commit;
    ++res.n_steps;
    progress.report(t0);
  }
  res.ys = with_missing_rows(rows, p.T_);
  res.status = at::full({1}, status, at::TensorOptions().dtype(at::kInt));
  res.counters = at::tensor(std::vector<int64_t>(counters, counters + core::kNumCounters)).reshape({1, -1});
  res.t = at::full({1}, t0, time_opts);
  res.h = at::full({1}, h, time_opts);
  return res;
}

}  // namespace

RkResult rk_solve(VectorField& field, ErrorNorm* norm, const at::Tensor& y0, const at::Tensor& t_out,
                  const RkOptions& options, LoopMode mode) {
  RkProblem problem(field, norm, y0, t_out, options);
  TORCH_CHECK_VALUE(options.callbacks == nullptr || mode != LoopMode::kMasked,
                    "fastdiffeq: step callbacks need a host-driven loop ('graph' or 'record')");
  return mode == LoopMode::kMasked ? run_masked(problem, y0) : run_host(problem, y0, mode);
}

}  // namespace fde::solver
