// The per-sample reverse-time adjoint (rk_per_sample.h): host-driven, each sample its own step, landing
// exactly on its own output times; one flat parameter cotangent for the whole batch.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/index.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/TensorOperators.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <cmath>

#include "core/status.h"
#include "ops/registry.h"
#include "core/step_commit.h"
#include "solver/finite.h"
#include "solver/grid_clip.h"
#include "solver/progress.h"
#include "solver/rk_adjoint.h"
#include "solver/rk_per_sample.h"
#include "solver/rk_problem.h"
#include "solver/rk_step.h"

namespace fde::solver {
namespace {

// y(t) of every sample from the forward's dense record: each sample's accepted step containing its t (the
// nearest one outside its record), interpolated per (sample, time) pair.
class SampleTrajectory {
 public:
  explicit SampleTrajectory(const SampleDenseRecord& rec) : rec_(rec) {
    keys_.reserve(rec.t0.size());
    for (double t0 : rec.t0) keys_.push_back(rec.direction * t0);
  }

  // t: [B] (any float dtype, any device). Returns [B, D]; samples without a record get zeros.
  at::Tensor at(const at::Tensor& t) const {
    if (rec_.t0.empty()) return at::zeros({t.numel(), rec_.y.size(1)}, rec_.y.options());  // nothing recorded
    const at::Tensor tc = t.to(at::kCPU, at::kDouble).contiguous();
    const double* tp = tc.data_ptr<double>();
    const int64_t B = tc.numel();
    std::vector<int64_t> rows(B, 0);
    std::vector<double> shift(B, 0.0), h(B, 1.0);
    std::vector<uint8_t> has(B, 0);
    bool all = true;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t lo = rec_.first[b], hi = rec_.first[b + 1];
      if (hi == lo) {
        all = false;
        continue;
      }
      const auto it = std::upper_bound(keys_.begin() + lo, keys_.begin() + hi, rec_.direction * tp[b]);
      const int64_t r = std::max<int64_t>(lo, static_cast<int64_t>(it - keys_.begin()) - 1);
      rows[b] = r;
      shift[b] = rec_.t0[r] - tp[b];  // the step (t0, h) at t is the step (t0 - t, h) at 0 (dense_at_pairs)
      h[b] = rec_.h[r];
      has[b] = 1;
    }
    const auto dev = rec_.y.device();
    const at::Tensor idx = at::tensor(rows, at::kLong).to(dev);
    const at::Tensor ks[3] = {rec_.k0.index_select(0, idx), rec_.mid_slope.index_select(0, idx),
                              rec_.k1.index_select(0, idx)};
    const auto time_opts = at::TensorOptions().dtype(at::kDouble);
    at::Tensor y = ops::call<ops::RkDenseEval>(rec_.y.index_select(0, idx), rec_.y1.index_select(0, idx), ks,
                                               at::tensor(h, time_opts).to(dev), at::tensor(shift, time_opts).to(dev),
                                               at::zeros({1}, time_opts.device(dev)), kSlopeMid)
                       .select(0, 0);
    return all ? y : at::where(sample_mask(has, dev), y, 0.0);
  }

 private:
  const SampleDenseRecord& rec_;
  std::vector<double> keys_;
};

// The adjoint dynamics of each sample, [y, a] -> [f(t, y), -a^T df/dy] (or a -> -a^T df/dy with y read from
// the forward's dense record); the parameter part of each product is deferred (VectorField::vjp_deferred)
// until the loop knows each sample's step and decision.
class DeferringAugmentedField final : public VectorField {
 public:
  DeferringAugmentedField(VectorField& field, int64_t D, const SampleTrajectory* traj)
      : field_(field), D_(D), traj_(traj) {}

  at::Tensor y_of(const at::Tensor& t, const at::Tensor& s) const { return traj_ ? traj_->at(t) : s.narrow(1, 0, D_); }
  at::Tensor a_of(const at::Tensor& s) const { return traj_ ? s : s.narrow(1, D_, D_); }

  at::Tensor eval(const at::Tensor& t, const at::Tensor& s) override {
    const FieldVjp r = field_.vjp_deferred(t, y_of(t, s), a_of(s).neg(), /*want_grad_y=*/true);
    const at::Tensor out = traj_ ? r.grad_y : at::cat({r.f, r.grad_y}, 1);
    // Stopped samples: zero rows (their stage inputs stay finite; see LiveRowsField).
    return live_.defined() ? at::where(live_, out, 0.0) : out;
  }

  void set_live(at::Tensor live) { live_ = std::move(live); }

  FieldVjp vjp(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&) override {
    TORCH_CHECK(false, "fastdiffeq: the adjoint dynamics have no vector-Jacobian product (no double backward)");
  }

  std::unique_ptr<ScopedUnlock> unlock() override { return field_.unlock(); }

 private:
  VectorField& field_;
  int64_t D_;
  const SampleTrajectory* traj_;
  at::Tensor live_;
};

}  // namespace

SampleAdjointResult rk_adjoint_per_sample(VectorField& field, const at::Tensor& t_out, const at::Tensor& ys,
                                          const at::Tensor& grad_ys, const at::Tensor& active_in,
                                          const RkOptions& options, const SampleDenseRecord* dense) {
  TORCH_CHECK_VALUE(grad_ys.dim() == 3, "fastdiffeq: grad_ys must be [T, B, D], got ", grad_ys.sizes());
  const bool interpolated = dense != nullptr;
  TORCH_CHECK_VALUE(interpolated || (ys.defined() && ys.sizes() == grad_ys.sizes() &&
                                     ys.scalar_type() == grad_ys.scalar_type() && ys.device() == grad_ys.device()),
                    "fastdiffeq: ys must match grad_ys (", grad_ys.sizes(), ", dtype and device)");
  const int64_t T = grad_ys.size(0), B = grad_ys.size(1), D = grad_ys.size(2);
  if (interpolated) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(dense->first.size()) == B + 1 && dense->y.dim() == 2 &&
                          (dense->y.size(0) == 0 || dense->y.size(1) == D) &&
                          dense->y.scalar_type() == grad_ys.scalar_type() && dense->y.device() == grad_ys.device(),
                      "fastdiffeq: the dense record does not match grad_ys (B = ", B, ", D = ", D,
                      ", dtype and device)");
  }
  TORCH_CHECK_VALUE(active_in.defined() && active_in.is_cpu() && active_in.scalar_type() == at::kBool &&
                        active_in.dim() == 1 && active_in.size(0) == B,
                    "fastdiffeq: active must be a CPU bool tensor [", B, "]");
  const at::Tensor active = active_in.contiguous();  // read through data_ptr below
  TORCH_CHECK_VALUE(T >= 1, "fastdiffeq: grad_ys must hold at least one output time (T >= 1)");
  TORCH_CHECK_VALUE(t_out.defined() && (t_out.dim() == 1 || (t_out.dim() == 2 && t_out.size(0) == B)) &&
                        t_out.size(-1) == T,
                    "fastdiffeq: t_out must be [T] or [B, T] with T = ", T, " (grad_ys' outputs) and B = ", B,
                    ", got ", t_out.defined() ? t_out.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(options.rtol.size() == 1 && options.atol.size() == 1,
                    "fastdiffeq: the adjoint takes one rtol and one atol");
  TORCH_CHECK_VALUE(options.step_t.empty() && options.jump_t.empty(),
                    "fastdiffeq: step_t and jump_t are not supported in per-sample solves");
  const int64_t P = field.num_params();
  const auto dev = grad_ys.device();
  const auto dtype = grad_ys.scalar_type();

  std::vector<int64_t> state_segments = options.segment_ends;
  if (state_segments.empty()) state_segments.push_back(D);
  TORCH_CHECK_VALUE(state_segments.back() == D, "fastdiffeq: segment_ends must end at D = ", D);
  RkOptions aug = options;
  aug.segment_ends = adjoint_segments(state_segments, D, {}, /*with_y=*/!interpolated);
  aug.rtol.assign(aug.segment_ends.size(), options.rtol[0]);
  aug.atol.assign(aug.segment_ends.size(), options.atol[0]);
  std::optional<SampleTrajectory> trajectory;
  if (interpolated) trajectory.emplace(*dense);
  DeferringAugmentedField aug_field(field, D, trajectory ? &*trajectory : nullptr);

  at::NoGradGuard no_grad;
  SampleAdjointResult res;
  res.grad_params = at::zeros({P}, grad_ys.options());
  const at::Tensor t_rev = t_out.flip(-1).contiguous();
  at::Tensor s = interpolated ? grad_ys.select(0, T - 1).clone() : at::cat({ys.select(0, T - 1), grad_ys.select(0, T - 1)}, 1);
  RkProblem p(aug_field, nullptr, s, t_rev, aug);  // validates t_out and the options
  const core::Tableau& tab = p.tab_;
  const double dir = p.direction_;
  const double* t_host = p.t_out_host_.data_ptr<double>();
  const bool shared_grid = p.t_out_host_.dim() == 1 || p.t_out_host_.size(0) == 1;
  auto row_of = [&](int64_t b) { return t_host + (shared_grid ? 0 : b * T); };

  at::Tensor t0_t = p.initial_time();
  at::Tensor k0;
  const bool finite = p.first_derivative(t0_t, s, k0, res.nfe);
  // Inactive samples (and any whose adjoint derivative is not finite) get a zero derivative, so the shared
  // initial-step and stage computations see no NaN from them.
  const at::Tensor k_ok = finite ? at::Tensor() : at::isfinite(k0).all(1).cpu();
  const at::Tensor keep = (k_ok.defined() ? k_ok.logical_and(active) : active).to(dev).unsqueeze(1);
  k0 = at::where(keep, k0, 0.0);
  at::Tensor h_t = p.first_step(t0_t, s, k0, res.nfe);
  field.drop_deferred();

  HostSamples samples(t0_t, h_t);
  std::vector<double>&t0 = samples.t0, &h = samples.h;
  std::vector<int32_t>& status = samples.status;
  std::vector<int64_t>&counters = samples.counters, &out_index = samples.out_index;
  const int64_t& running = samples.running;
  for (int64_t b = 0; b < B; ++b) {
    const bool stop = !active.data_ptr<bool>()[b] || T == 1 || (k_ok.defined() && !k_ok.data_ptr<bool>()[b]);
    if (stop) samples.stop(b, active.data_ptr<bool>()[b] && T > 1 ? core::kNonFinite : core::kSuccess);
  }

  ProgressReporter progress(aug.progress, p.t_out_host_);
  std::vector<double> h_step(B), t1(B), weight(B);
  std::vector<uint8_t> accepted(B), landed(B), on_output(B);
  std::vector<int64_t> land_rows, land_samples;
  int64_t live_count = B;
  std::vector<uint8_t> live(B);
  while (running > 0) {
    if (running != live_count) {
      for (int64_t b = 0; b < B; ++b) live[b] = status[b] == core::kRunning;
      aug_field.set_live(sample_mask(live, dev));
      live_count = running;
    }
    // Each running sample steps, or lands exactly on its next output time when the step would reach it.
    std::fill(on_output.begin(), on_output.end(), 0);
    for (int64_t b = 0; b < B; ++b) {
      if (status[b] != core::kRunning) {
        h_step[b] = 0.0;
        t1[b] = t0[b];
        continue;
      }
      const double t_next = row_of(b)[out_index[b]];
      ClippedStep step{t0[b] + h[b], h[b]};
      if (dir * (t_next - step.t1) <= 0.0) {
        on_output[b] = 1;
        step = cut_to(t0[b], t_next, h[b]);
      }
      h_step[b] = step.h;
      t1[b] = step.t1;
    }
    t0_t = at::tensor(t0, at::kDouble).to(dev);
    h_t = at::tensor(h_step, at::kDouble).to(dev);
    StepStages st = rk_stages(aug_field, tab, s, k0, t0_t, h_t, res.nfe);  // defers stages 1 .. S-1
    auto [ratio_t, accept_t, h_next_t] = p.control(s, st.y1, st.ks, h_t);
    const at::Tensor ratio_c = ratio_t.cpu(), accept_c = accept_t.cpu(), h_next_c = h_next_t.cpu();
    const double* ratio = ratio_c.data_ptr<double>();
    const bool* accept = accept_c.data_ptr<bool>();
    const double* h_next = h_next_c.data_ptr<double>();
    // The deferred parameter products of a rejected sample get a zero weight, and a zero cotangent through a
    // non-finite stage is NaN (0 * inf): when a stage is not finite, the stages are evaluated again with only
    // the accepted samples moving (h = 0 for the others), so every kept graph is finite.
    if (rejected_rows_not_finite(st, accept, [&](int64_t b) { return status[b] == core::kRunning; })) {
      std::vector<double> h_kept(B);
      for (int64_t b = 0; b < B; ++b) h_kept[b] = status[b] == core::kRunning && accept[b] ? h_step[b] : 0.0;
      field.drop_deferred();
      st = rk_stages(aug_field, tab, s, k0, t0_t, at::tensor(h_kept, at::kDouble).to(dev), res.nfe);
    }

    bool any_accepted = false, any_landed = false;
    land_rows.clear();
    land_samples.clear();
    for (int64_t b = 0; b < B; ++b) {
      accepted[b] = landed[b] = 0;
      weight[b] = 0.0;
      if (status[b] != core::kRunning) continue;
      double h_after = h_next[b];
      if (accept[b]) {
        accepted[b] = 1;
        any_accepted = true;
        weight[b] = h_step[b];
        if (on_output[b]) {
          landed[b] = 1;
          any_landed = true;
          land_samples.push_back(b);
          land_rows.push_back(T - 1 - out_index[b]);
          // A step cut short to land on an output says little about the step size: go on with at least
          // the step the controller had proposed before the cut.
          h_after = std::copysign(std::min(std::max(std::fabs(h_next[b]), std::fabs(h[b])), p.ctrl_.max_step), dir);
        }
      }
      double h_commit = h_step[b];
      core::commit_sample_to(t0[b], t1[b], h_commit, status[b], &counters[b * core::kNumCounters], out_index[b],
                             accept[b], ratio[b], h_after, row_of(b), T, aug.max_num_steps);
      h[b] = h_commit;
      if (status[b] != core::kRunning) --samples.running;
    }

    if (any_accepted) {
      // The parameter cotangent: h_b * sum_i b_i (-a_i)^T df/dtheta at each accepted sample's stages, in one
      // batched product; stage 0 (the FSAL derivative) is re-evaluated for its parameter part only.
      const at::Tensor t_start = t0_t.to(dtype);
      field.vjp_deferred(t_start, aug_field.y_of(t_start, s), aug_field.a_of(s).neg(), /*want_grad_y=*/false);
      ++res.nfe;
      const at::Tensor w = at::tensor(weight, at::kDouble).to(dev).to(dtype);
      std::vector<at::Tensor> weights;
      for (int i = 1; i < tab.stages; ++i) weights.push_back(tab.b[i] == 0.0 ? at::Tensor() : w * tab.b[i]);
      weights.push_back(tab.b[0] == 0.0 ? at::Tensor() : w * tab.b[0]);
      field.accumulate_deferred(weights, res.grad_params);
      const at::Tensor mask = sample_mask(accepted, dev);
      s = at::where(mask, st.y1, s);
      k0 = at::where(mask, st.ks.back(), k0);
    } else {
      field.drop_deferred();
    }
    if (any_landed) {
      // On an output time: y is re-anchored to the forward output and a jumps by its cotangent; f is
      // evaluated again there (FSAL does not hold across the jump).
      const auto rows = at::tensor(land_rows, at::kLong).to(dev), idx = at::tensor(land_samples, at::kLong).to(dev);
      const c10::List<std::optional<at::Tensor>> at_rows({rows, idx});
      const at::Tensor a_new = aug_field.a_of(s.index_select(0, idx)) + at::index(grad_ys, at_rows);
      s.index_copy_(0, idx, interpolated ? a_new : at::cat({at::index(ys, at_rows), a_new}, 1));
      if (running > 0) {
        const at::Tensor k_new = aug_field.eval(at::tensor(t0, at::kDouble).to(dev).to(dtype), s);
        field.drop_deferred();
        ++res.nfe;
        k0 = at::where(sample_mask(landed, dev), k_new, k0);
      }
    }
    ++res.n_steps;
    if (aug.progress != nullptr) {
      progress.stage(at::tensor(t0, at::kDouble));
      progress.report_staged();
    }
  }

  res.status = at::tensor(status, at::kInt);
  res.counters = at::tensor(counters, at::kLong).reshape({B, core::kNumCounters});
  res.t = at::tensor(t0, at::kDouble);
  const at::Tensor active_mask = active.to(dev).reshape({B, 1});
  res.grad_y0 = at::where(active_mask, aug_field.a_of(s), at::zeros({1}, grad_ys.options()));
  if (T == 1) res.grad_y0 = at::where(active_mask, grad_ys.select(0, 0), at::zeros({1}, grad_ys.options()));
  return res;
}

}  // namespace fde::solver
