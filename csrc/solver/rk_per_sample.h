// Per-sample solves with gradients (solve_ivp): B independent problems, each with its own time, step size,
// accept/reject and status. The forward masked loop (rk_solve, LoopMode::kMasked) already runs them; this
// adds the host-driven per-sample loop that is differentiable (direct) or records a per-sample checkpoint
// tape, the replay of that tape, and the per-sample reverse-time adjoint.
//
// Host-driven: each iteration reads the B accept decisions on the host (free on the CPU, one transfer per
// step on CUDA) and commits every sample with core::commit_sample_to, the masked kernels' rule.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "core/tableau.h"
#include "solver/finite.h"
#include "solver/rk_solve.h"
#include "solver/rk_step.h"
#include "solver/vector_field.h"

namespace fde::solver {

// The host's view of the per-sample bookkeeping of a host-driven loop: each sample's time, step, status,
// counters (core::Counter, kNumCounters per sample) and next output row; the loops commit each sample with
// core::commit_sample_to on these.
struct HostSamples {
  std::vector<double> t0, h;
  std::vector<int32_t> status;
  std::vector<int64_t> counters, out_index;
  int64_t running = 0;

  // t0_t, h_t: float64 [B] (any device).
  HostSamples(const at::Tensor& t0_t, const at::Tensor& h_t) {
    const at::Tensor t0c = t0_t.cpu().contiguous(), hc = h_t.cpu().contiguous();
    const int64_t B = t0c.numel();
    t0.assign(t0c.data_ptr<double>(), t0c.data_ptr<double>() + B);
    h.assign(hc.data_ptr<double>(), hc.data_ptr<double>() + B);
    status.assign(B, core::kRunning);
    counters.assign(B * core::kNumCounters, 0);
    out_index.assign(B, 1);
    running = B;
  }

  // Sample b (still running) stops with status `code`: its step is 0 from now on.
  void stop(int64_t b, int32_t code) {
    status[b] = code;
    h[b] = 0.0;
    --running;
  }
};

// Per-sample host flags (0 / 1) as a bool [B, 1] mask on `device`.
inline at::Tensor sample_mask(const std::vector<uint8_t>& flags, at::Device device) {
  return at::tensor(at::ArrayRef<uint8_t>(flags)).to(device).to(at::kBool).reshape({-1, 1});
}

// A field whose rows of stopped samples are zero. A stopped sample is still evaluated (the batch is one
// call) where it stopped, possibly where its field is not finite; zeroing its rows keeps its stage inputs
// finite (y + h sum a_ij k_j with h = 0), so no NaN reaches a graph through 0 * NaN. Delegates the rest.
class LiveRowsField final : public VectorField {
 public:
  explicit LiveRowsField(VectorField& field) : field_(field) {}
  // live: bool [B, 1] on the state's device; undefined: every row is live.
  void set_live(at::Tensor live) { live_ = std::move(live); }
  at::Tensor eval(const at::Tensor& t, const at::Tensor& y) override { return masked(field_.eval(t, y)); }
  int64_t num_params() const override { return field_.num_params(); }
  FieldVjp vjp(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v, at::Tensor& grad_params) override {
    return field_.vjp(t, y, v, grad_params);
  }
  std::unique_ptr<ScopedUnlock> unlock() override { return field_.unlock(); }

 private:
  at::Tensor masked(const at::Tensor& f) const { return live_.defined() ? at::where(live_, f, 0.0) : f; }
  VectorField& field_;
  at::Tensor live_;
};

// Whether a running sample whose attempt was rejected has a non-finite stage (checked on y1 and the last
// stage, where a non-finite stage shows). Costs one pass over them when everything is finite.
template <class Running>
bool rejected_rows_not_finite(const StepStages& st, const bool* accept, Running running) {
  if (all_finite(st.y1) && all_finite(st.ks.back())) return false;
  const at::Tensor ok = at::isfinite(st.y1.detach()).all(1).logical_and(at::isfinite(st.ks.back().detach()).all(1)).cpu();
  const bool* okp = ok.data_ptr<bool>();
  for (int64_t b = 0; b < ok.numel(); ++b)
    if (running(b) && !accept[b] && !okp[b]) return true;
  return false;
}

// One loop iteration in which at least one sample accepted its step.
struct SampleStep {
  at::Tensor t0, h;     // float64 [B]: each sample's step (h = 0 for samples no longer running)
  at::Tensor accept;    // bool [B, 1]: the samples whose step was accepted (the replay's live rows)
  at::Tensor y, k0;     // [B, D] at the start of the iteration
  at::Tensor out_sample, out_row;  // int64 [P]: the outputs interpolated inside this iteration's steps
  at::Tensor out_t;     // float64 [P]: their times
};

// Every accepted step of every sample, for the interpolated per-sample adjoint (RkOptions::record_dense):
// row r is one step of sample sample_of(r); a sample's rows are [first[b], first[b + 1]) in time order. With
// y1, k1 and mid_slope = sum_j mid_j k_j the step's interpolant is rk_dense_eval with stages
// {k0, mid_slope, k1} and mid coefficients kSlopeMid.
struct SampleDenseRecord {
  at::Tensor y, y1, k0, k1, mid_slope;  // [N, D]
  std::vector<double> t0, h;            // [N]
  std::vector<int64_t> first;           // [B + 1]
  double direction = 1.0;
};

struct SampleTape {
  const core::Tableau* tableau = nullptr;
  std::vector<SampleStep> steps;
  at::Tensor y0;  // [B, D]
  at::Tensor t0;  // float64 [B]
  int64_t T = 0;
  std::shared_ptr<SampleDenseRecord> dense;  // record_dense only
};

struct SampleSolveResult {
  RkResult result;                   // ys [T, B, D] (differentiable in kGraph), status, counters, t, h, nfe
  std::shared_ptr<SampleTape> tape;  // kRecord only
  // With an event function: each sample's event time (float64 [B], NaN when it had none before its last
  // output time) and state there ([B, D], NaN likewise; differentiable in kGraph with the time held fixed).
  at::Tensor t_event, y_event;
  int64_t n_event_calls = 0;
};

// Terminal events: a sample stops at the first accepted step over which event->value changes sign from its
// sign at t0 (a value of exactly 0 counts as a change; 0 at t0 stops at t0). The root is located by bisection
// on the step's dense output to float64 resolution; outputs after it are NaN.
struct EventSettings {
  EventFunction* event = nullptr;
  int64_t max_bisections = 64;
};

// mode: kGraph (differentiable when autograd is on) or kRecord (no graph; the tape, no events). Arguments as
// rk_solve's; no step_t / jump_t.
SampleSolveResult rk_solve_per_sample(VectorField& field, ErrorNorm* norm, const at::Tensor& y0,
                                      const at::Tensor& t_out, const RkOptions& options, LoopMode mode,
                                      const EventSettings& events = {});

// The interpolant of each (sample, time) pair's step: rows y[s], y1[s], ks[.][s] with the step (t0[s], h[s])
// evaluated at time t_pair. Differentiable in y, y1 and ks. Returns [P, D].
at::Tensor dense_at_pairs(const at::Tensor& y, const at::Tensor& y1, const std::vector<at::Tensor>& ks,
                          const at::Tensor& t0, const at::Tensor& h, const at::Tensor& samples,
                          const at::Tensor& t_pair, const core::Tableau& tab);

// Exact gradients of the discrete per-sample solve in `tape`: each iteration replayed under autograd in
// reverse order, one iteration's graph at a time. grad_ys: [T, B, D]. Gradients as rk_checkpoint_backward's.
CheckpointGradients rk_checkpoint_backward_per_sample(VectorField& field, const SampleTape& tape,
                                                      const at::Tensor& grad_ys, const std::vector<at::Tensor>& params);

struct SampleAdjointResult {
  at::Tensor grad_y0;      // [B, D] (zero for inactive samples)
  at::Tensor grad_params;  // flat [P]
  at::Tensor status;       // int32 [B]
  at::Tensor counters;     // int64 [B, core::kNumCounters]
  at::Tensor t;            // float64 [B], the time each sample's backward solve reached
  int64_t nfe = 0, n_steps = 0;
};

// The per-sample reverse-time adjoint (re-solving y backwards from the saved outputs): each sample solves
// [y, a] from its last output time to its first with its own step sizes, stopping exactly on its output
// times (y re-anchored to ys, a += grad_ys), and the parameter cotangent is ONE flat buffer: after each
// step, every stage's parameter product is weighted by each sample's own h * b_i (zero when rejected)
// and added in one batched product (VectorField::accumulate_deferred). The parameters are not in the error
// norm. ys, grad_ys: [T, B, D]; t_out: float64 [T] or [B, T]; active: bool [B] (inactive samples are not
// integrated and get zero gradients). options: one rtol and one atol, the state's segment_ends.
// With `dense` (the forward's SampleDenseRecord; ys may then be undefined), y(t) is read from the forward's
// dense output instead of being re-solved ("interpolated" trajectory): the state is a alone, y leaves the
// error control, and the backward solve is stable where re-solving y backwards is not (contracting
// dynamics, limit cycles).
SampleAdjointResult rk_adjoint_per_sample(VectorField& field, const at::Tensor& t_out, const at::Tensor& ys,
                                          const at::Tensor& grad_ys, const at::Tensor& active,
                                          const RkOptions& options, const SampleDenseRecord* dense = nullptr);

}  // namespace fde::solver
