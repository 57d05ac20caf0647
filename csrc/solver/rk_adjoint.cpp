#include "solver/rk_adjoint.h"

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "core/step_commit.h"
#include "solver/grid_clip.h"
#include "ops/registry.h"
#include "solver/progress.h"
#include "solver/rk_problem.h"
#include "solver/rk_step.h"
#include "solver/solve_args.h"
#include "solver/step_callbacks.h"

namespace fde::solver {
namespace {

// y(t) of the forward solve from its dense record: the interpolant of the accepted step containing t.
class DenseTrajectory {
 public:
  explicit DenseTrajectory(const RkTape& tape) : tape_(tape) {
    keys_.reserve(tape.steps.size());
    for (const RecordedStep& s : tape.steps) keys_.push_back(tape.direction * s.t0);
    time_opts_ = at::TensorOptions().dtype(at::kDouble).device(tape.y0.device());
  }

  // [1, D]
  at::Tensor at(double t) {
    // The last step starting at or before t (in the forward direction); outside the record, the nearest.
    const auto it = std::upper_bound(keys_.begin(), keys_.end(), tape_.direction * t);
    const size_t n = it == keys_.begin() ? 0 : static_cast<size_t>(it - keys_.begin()) - 1;
    const RecordedStep& s = tape_.steps[n];
    if (n != cached_) {
      cached_ = n;
      t0_ = at::full({1}, s.t0, time_opts_);
      h_ = at::full({1}, s.h, time_opts_);
    }
    const at::Tensor ks[3] = {s.k0, s.mid_slope, s.k1};
    return ops::call<ops::RkDenseEval>(s.y, s.y1, ks, h_, t0_, at::full({1}, t, time_opts_), kSlopeMid).select(0, 0);
  }

 private:
  const RkTape& tape_;
  std::vector<double> keys_;
  at::TensorOptions time_opts_;
  size_t cached_ = std::numeric_limits<size_t>::max();
  at::Tensor t0_, h_;
};

// The adjoint dynamics on the augmented state [y (resolve only), a, theta_bar]: one VJP of the user's field
// per evaluation, written into one fresh [1, N] buffer.
class AugmentedField final : public VectorField {
 public:
  AugmentedField(VectorField& field, int64_t D, int64_t P, DenseTrajectory* trajectory)
      : field_(field), traj_(trajectory), D_(D), P_(P), a_off_(trajectory ? 0 : D), p_off_(a_off_ + D) {}

  at::Tensor eval(const at::Tensor& t, const at::Tensor& s) override {
    const at::Tensor y = traj_ ? traj_->at(t.item<double>()) : s.narrow(1, 0, D_);
    at::Tensor out = at::empty_like(s);
    at::Tensor grad_params = out.narrow(1, p_off_, P_).view({P_});
    if (P_ > 0) grad_params.zero_();
    const FieldVjp r = field_.vjp(t, y, s.narrow(1, a_off_, D_).neg(), grad_params);
    if (!traj_) out.narrow(1, 0, D_).copy_(r.f);
    out.narrow(1, a_off_, D_).copy_(r.grad_y);
    return out;
  }

  FieldVjp vjp(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&) override {
    TORCH_CHECK(false, "fastdiffeq: the adjoint dynamics have no vector-Jacobian product (no double backward)");
  }

  std::unique_ptr<ScopedUnlock> unlock() override { return field_.unlock(); }

  int64_t a_offset() const { return a_off_; }
  int64_t param_offset() const { return p_off_; }

 private:
  VectorField& field_;
  DenseTrajectory* traj_;
  int64_t D_, P_, a_off_, p_off_;
};

}  // namespace

std::vector<int64_t> adjoint_segments(const std::vector<int64_t>& state_segments, int64_t D,
                                      const std::vector<int64_t>& param_sizes, bool with_y) {
  std::vector<int64_t> ends;
  const int64_t copies = with_y ? 2 : 1;
  for (int64_t c = 0; c < copies; ++c)
    for (int64_t e : state_segments) ends.push_back(c * D + e);
  int64_t end = copies * D;
  for (int64_t n : param_sizes) ends.push_back(end += n);
  return ends;
}

AdjointResult rk_adjoint(VectorField& field, ErrorNorm* norm, const at::Tensor& t_out, const at::Tensor& ys,
                         const RkTape* tape, const at::Tensor& grad_ys, const AdjointOptions& options) {
  const bool resolve = options.trajectory == AdjointTrajectory::kResolve;
  const int64_t D = check_adjoint_args(t_out, ys, tape, grad_ys, !resolve);
  const int64_t T = t_out.size(0);
  int64_t P = 0;
  for (int64_t n : options.param_sizes) {
    TORCH_CHECK_VALUE(n >= 0, "fastdiffeq: parameter sizes must be >= 0");
    P += n;
  }
  TORCH_CHECK_VALUE(P == field.num_params(), "fastdiffeq: param_sizes add up to ", P, " but the field has ",
              field.num_params(), " parameter elements");
  TORCH_CHECK_VALUE(options.solve.rtol.size() == 1 && options.solve.atol.size() == 1,
                    "fastdiffeq: the adjoint takes one rtol and one atol, got ", options.solve.rtol.size(), " and ",
                    options.solve.atol.size());

  const auto dtype = grad_ys.scalar_type();
  const auto dev = grad_ys.device();
  const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(dev);
  AdjointResult res;
  // The augmented problem: its segments and tolerances (the seminorm gives the parameter channels an
  // infinite atol, so their terms vanish from the error norm).
  std::vector<int64_t> state_segments = options.solve.segment_ends;
  if (state_segments.empty()) state_segments.push_back(D);
  for (size_t i = 0; i < state_segments.size(); ++i)
    TORCH_CHECK_VALUE(state_segments[i] >= (i == 0 ? 0 : state_segments[i - 1]) && state_segments[i] <= D,
                      "fastdiffeq: segment_ends must be non-decreasing from 0 and at most D = ", D);
  TORCH_CHECK_VALUE(state_segments.back() == D, "fastdiffeq: segment_ends must end at D = ", D);
  RkOptions aug = options.solve;
  aug.segment_ends = adjoint_segments(state_segments, D, options.param_sizes, resolve);
  const size_t n_state_segments = (resolve ? 2 : 1) * state_segments.size();
  aug.rtol.assign(aug.segment_ends.size(), options.solve.rtol[0]);
  aug.atol.assign(aug.segment_ends.size(), options.solve.atol[0]);
  if (options.seminorm)
    std::fill(aug.atol.begin() + n_state_segments, aug.atol.end(), std::numeric_limits<double>::infinity());

  std::optional<DenseTrajectory> trajectory;
  if (!resolve) trajectory.emplace(*tape);
  AugmentedField aug_field(field, D, P, trajectory ? &*trajectory : nullptr);
  const int64_t N = aug.segment_ends.back();
  const int64_t a_off = aug_field.a_offset(), p_off = aug_field.param_offset();

  // The backward solve runs over the output times in reverse; row j of t_rev is forward row T - 1 - j.
  const at::Tensor t_rev = t_out.flip(0).contiguous();
  const at::Tensor t_host_tensor = t_rev.cpu();
  const double* t_host = t_host_tensor.data_ptr<double>();
  at::NoGradGuard no_grad;
  at::Tensor s = at::zeros({1, N}, grad_ys.options());
  if (resolve) s.narrow(1, 0, D).copy_(ys.select(0, T - 1));
  s.narrow(1, a_off, D).copy_(grad_ys.select(0, T - 1));

  RkProblem p(aug_field, norm, s, t_rev, aug);  // validates the options
  if (T == 1) {  // nothing to integrate: dL/dy0 is the output's cotangent
    res.grad_y0 = grad_ys.select(0, 0).clone();
    res.grad_params = at::zeros({P}, grad_ys.options());
    res.status = core::kSuccess;
    res.t = t_host[0];
    return res;
  }
  const core::Tableau& tab = p.tab_;
  at::Tensor t0_t = p.initial_time();
  at::Tensor k0;
  double t0 = t_host[0];
  if (!p.first_derivative(t0_t, s, k0, res.nfe)) {
    res.status = core::kNonFinite;
    res.t = t0;
    return res;
  }
  double h = p.first_step(t0_t, s, k0, res.nfe).cpu().data_ptr<double>()[0];

  const double dir = p.direction_;
  int32_t status = core::kRunning;
  int64_t counters[core::kNumCounters] = {0, 0, 0, 0};
  int64_t out_index = 1;
  GridClip grid{options.solve.step_t, options.solve.jump_t};
  ProgressReporter progress(aug.progress, p.t_out_host_);
  while (status == core::kRunning) {
    // Step onto the next output time (the adjoint jumps there) or step_t / jump_t point, whichever
    // comes first.
    ClippedStep step = grid.active() ? grid.clip(t0, h) : ClippedStep{t0 + h, h};
    const double t_next = t_host[out_index];
    const bool on_output = dir * (t_next - step.t1) <= 0.0;
    if (on_output) {
      if (dir * (t_next - step.t1) < 0.0) grid.on_step = grid.on_jump = false;  // the output comes first
      step = cut_to(t0, t_next, h);
    }
    const bool shortened = on_output || grid.on_step || grid.on_jump;
    const double t1 = step.t1, h_step = step.h;
    // torchdiffeq's *_adjoint step callbacks, with the augmented state (at this solve's steps: see
    // docs/architecture.md, "torchdiffeq's step callbacks").
    StepCallbacks* callbacks = aug.callbacks;
    if (callbacks != nullptr) callbacks->step(t0, s, h);
    t0_t = at::full({1}, t0, time_opts);
    const at::Tensor h_t = at::full({1}, h_step, time_opts);
    StepStages st = rk_stages(aug_field, tab, s, k0, t0_t, h_t, res.nfe);
    auto [ratio, accept, h_next] = p.control(s, st.y1, st.ks, h_t);
    const StepDecision d = read_decision(ratio, accept, h_next);
    if (callbacks != nullptr) {
      if (d.accept) {
        callbacks->accept(t0, s, h_step);
      } else {
        callbacks->reject(t0, s, h_step);
      }
    }
    double h_after = d.h_next;
    if (d.accept) {
      s = st.y1;
      k0 = st.ks.back();
      if (on_output) {
        const int64_t row = T - 1 - out_index;
        if (resolve) s.narrow(1, 0, D).copy_(ys.select(0, row));
        s.narrow(1, a_off, D).add_(grad_ys.select(0, row));
      }
      // The state jumped (output time) or the field is discontinuous (jump_t): FSAL does not hold, f is
      // evaluated again there (just past a jump_t point, on its far side).
      if ((on_output && out_index + 1 < T) || grid.on_jump) {
        const at::Tensor t_eval = grid.on_jump ? after_jump_time(t1, dir, dtype, dev)
                                               : at::full({1}, t1, time_opts).to(dtype);
        k0 = aug_field.eval(t_eval, s);
        ++res.nfe;
      }
      grid.accepted();
      // A step cut short to land on a stopping point says little about the step size: go on with at least
      // the step the controller had proposed before the cut.
      if (shortened) {
        const double carried = std::min(std::max(std::fabs(d.h_next), std::fabs(h)), p.ctrl_.max_step);
        h_after = std::copysign(carried, dir);
      }
    }
    double h_commit = h_step;
    core::commit_sample_to(t0, t1, h_commit, status, counters, out_index, d.accept, d.ratio, h_after, t_host, T,
                           options.solve.max_num_steps);
    h = h_commit;
    progress.report(t0);
  }
  res.status = status;
  res.t = t0;
  res.n_accepted = counters[core::kAccepted];
  res.n_rejected = counters[core::kRejected];
  if (status == core::kSuccess) {
    res.grad_y0 = s.narrow(1, a_off, D).clone();
    res.grad_params = s.narrow(1, p_off, P).reshape({P}).clone();
  }
  return res;
}

}  // namespace fde::solver
