#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_put.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/TensorOperators.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>

#include "core/status.h"
#include "core/step_commit.h"
#include "ops/registry.h"
#include "solver/event_locate.h"
#include "solver/finite.h"
#include "solver/progress.h"
#include "solver/rk_per_sample.h"
#include "solver/rk_problem.h"
#include "solver/rk_step.h"

namespace fde::solver {
namespace {

std::vector<at::Tensor> detached(const std::vector<at::Tensor>& ks) {
  std::vector<at::Tensor> out;
  out.reserve(ks.size());
  for (const auto& k : ks) out.push_back(k.detach());
  return out;
}

// The dense record ordered by sample (each sample's steps stay in time order).
std::shared_ptr<SampleDenseRecord> collect_dense_record(std::vector<at::Tensor> (&rows)[5],
                                                        const std::vector<int64_t>& sample,
                                                        const std::vector<double>& t0, const std::vector<double>& h,
                                                        int64_t B, int64_t D, double direction,
                                                        const at::TensorOptions& opts) {
  auto rec = std::make_shared<SampleDenseRecord>();
  rec->direction = direction;
  const int64_t N = static_cast<int64_t>(sample.size());
  rec->first.assign(B + 1, 0);
  for (int64_t b : sample) ++rec->first[b + 1];
  for (int64_t b = 0; b < B; ++b) rec->first[b + 1] += rec->first[b];
  std::vector<int64_t> next(rec->first.begin(), rec->first.end() - 1), order(N);
  rec->t0.resize(N);
  rec->h.resize(N);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t dst = next[sample[r]]++;
    order[dst] = r;
    rec->t0[dst] = t0[r];
    rec->h[dst] = h[r];
  }
  at::Tensor* outs[5] = {&rec->y, &rec->y1, &rec->k0, &rec->k1, &rec->mid_slope};
  const at::Tensor perm = at::tensor(order, at::kLong).to(opts.device());
  for (int i = 0; i < 5; ++i)
    *outs[i] = N == 0 ? at::zeros({0, D}, opts) : at::cat(rows[i], 0).index_select(0, perm);
  return rec;
}

}  // namespace

at::Tensor dense_at_pairs(const at::Tensor& y, const at::Tensor& y1, const std::vector<at::Tensor>& ks,
                          const at::Tensor& t0, const at::Tensor& h, const at::Tensor& samples,
                          const at::Tensor& t_pair, const core::Tableau& tab) {
  // The interpolant at t of the step (t0, h) is the one of the step (t0 - t, h) at 0: x = (0 - (t0 - t)) / h
  // rounds exactly as (t - t0) / h, so each pair gets its own time through rk_dense_eval's shared grid {0}.
  std::vector<at::Tensor> kp;
  kp.reserve(ks.size());
  for (const auto& k : ks) kp.push_back(k.index_select(0, samples));
  const at::Tensor t_shift = (t0.index_select(0, samples) - t_pair).contiguous();
  const at::Tensor zero = at::zeros({1}, t0.options());
  return ops::call<ops::RkDenseEval>(y.index_select(0, samples), y1.index_select(0, samples), kp,
                                     h.index_select(0, samples).contiguous(), t_shift, zero,
                                     at::ArrayRef<double>(tab.mid, tab.stages))
      .select(0, 0);
}

SampleSolveResult rk_solve_per_sample(VectorField& field, ErrorNorm* norm, const at::Tensor& y0_in,
                                      const at::Tensor& t_out, const RkOptions& options, LoopMode mode,
                                      const EventSettings& events) {
  TORCH_CHECK_VALUE(mode == LoopMode::kGraph || mode == LoopMode::kRecord,
                    "fastdiffeq: the per-sample host loop runs in 'graph' or 'record' mode");
  TORCH_CHECK_VALUE(options.step_t.empty() && options.jump_t.empty(),
                    "fastdiffeq: step_t and jump_t are not supported in per-sample solves");
  TORCH_CHECK_VALUE(events.event == nullptr || mode == LoopMode::kGraph,
                    "fastdiffeq: events are supported in the differentiable per-sample loop only (not 'record')");
  TORCH_CHECK_VALUE(events.max_bisections > 0, "fastdiffeq: max_bisections must be positive");
  LiveRowsField live_field(field);
  RkProblem p(live_field, norm, y0_in, t_out, options);
  const core::Tableau& tab = p.tab_;
  std::optional<at::NoGradGuard> no_grad;
  if (mode == LoopMode::kRecord) no_grad.emplace();
  SampleSolveResult out;
  RkResult& res = out.result;
  const auto dev = y0_in.device();
  const int64_t B = p.B_, T = p.T_, D = p.D_;
  const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(dev);
  const auto long_opts = at::TensorOptions().dtype(at::kLong);

  at::Tensor t0_t = p.initial_time();
  at::Tensor y = mode == LoopMode::kRecord ? y0_in.clone() : y0_in;
  at::Tensor k0;
  const bool finite = p.first_derivative(t0_t, y, k0, res.nfe);
  at::Tensor startable;  // the samples whose f(t0, y0) is finite; the others fail at once
  if (!finite) {
    startable = at::isfinite(k0.detach()).all(1).cpu();
    k0 = at::where(startable.to(dev).unsqueeze(1), k0, 0.0);
  }
  at::Tensor h_t = p.first_step(t0_t, y, k0, res.nfe);
  if (mode == LoopMode::kRecord) {
    out.tape = std::make_shared<SampleTape>();
    out.tape->tableau = &tab;
    out.tape->y0 = y;
    out.tape->t0 = t0_t.clone();
    out.tape->T = T;
  }
  HostSamples s(t0_t, h_t);
  // A sample whose f(t0, y0) is not finite cannot start (the fused loop gives it the same status after its
  // retries; here it stops at once).
  if (!finite) {
    for (int64_t b = 0; b < B; ++b)
      if (!startable.data_ptr<bool>()[b]) {
        s.stop(b, core::kNonFinite);
      }
  }
  if (T == 1)
    for (int64_t b = 0; b < B; ++b)
      if (s.status[b] == core::kRunning) {
        s.stop(b, core::kSuccess);
      }

  const double* t_host = p.t_out_host_.data_ptr<double>();
  const bool shared_grid = p.t_out_host_.dim() == 1 || p.t_out_host_.size(0) == 1;
  auto row_of = [&](int64_t b) { return t_host + (shared_grid ? 0 : b * T); };

  // Outputs: row 0 is y0; every other (row, sample) value is interpolated inside an accepted step.
  std::vector<at::Tensor> values{y0_in};
  std::vector<int64_t> all_rows(B, 0), all_samples(B);
  for (int64_t b = 0; b < B; ++b) all_samples[b] = b;

  // Events: each sample's sign at t0; a sample whose event is exactly 0 there stops at once.
  EventFunction* event = events.event;
  std::vector<double> sign0(B, 0.0), t_event(B, std::numeric_limits<double>::quiet_NaN());
  std::vector<at::Tensor> event_values;
  std::vector<int64_t> event_samples;
  int64_t n_event_calls = 0;
  if (event != nullptr) {
    at::Tensor v0;
    {
      at::NoGradGuard no_grad_event;
      v0 = event->value(t0_t, y.detach());
    }
    ++n_event_calls;
    std::vector<int64_t> at_start;
    for (int64_t b = 0; b < B; ++b) {
      sign0[b] = event_sign(v0.data_ptr<double>()[b]);
      if (sign0[b] == 0.0 && s.status[b] == core::kRunning) {
        at_start.push_back(b);
        t_event[b] = s.t0[b];
        s.stop(b, core::kSuccess);
      }
    }
    if (!at_start.empty()) {
      const at::Tensor idx = at::tensor(at_start, long_opts).to(dev);
      event_values.push_back(y0_in.index_select(0, idx));
      event_samples.insert(event_samples.end(), at_start.begin(), at_start.end());
    }
  }

  ProgressReporter progress(p.opt_.progress, p.t_out_host_);
  std::vector<double> h_step(B), t1(B), t_stop(B);
  std::vector<uint8_t> accepted(B), triggered(B);
  int64_t live_count = B;
  std::vector<uint8_t> live(B);
  // The dense record (record_dense): each accepted step's rows, and its sample, t0 and h.
  const bool record_dense = out.tape && p.opt_.record_dense;
  std::vector<at::Tensor> dense_rows[5];  // y, y1, k0, k1, mid_slope
  std::vector<int64_t> dense_sample;
  std::vector<double> dense_t0, dense_h, s_t0_before;
  at::Tensor zero_state, unit_h;
  while (s.running > 0) {
    if (s.running != live_count) {  // a sample stopped: its rows of f are zero from now on
      for (int64_t b = 0; b < B; ++b) live[b] = s.status[b] == core::kRunning;
      live_field.set_live(sample_mask(live, dev));
      live_count = s.running;
    }
    for (int64_t b = 0; b < B; ++b) h_step[b] = s.status[b] == core::kRunning ? s.h[b] : 0.0;
    if (record_dense) s_t0_before = s.t0;
    t0_t = at::tensor(s.t0, at::kDouble).to(dev);
    h_t = at::tensor(h_step, at::kDouble).to(dev);
    StepStages st = rk_stages(p.field_, tab, y, k0, t0_t, h_t, res.nfe);
    auto [ratio_t, accept_t, h_next_t] = p.control(y.detach(), st.y1.detach(), detached(st.ks), h_t);
    const at::Tensor ratio_c = ratio_t.cpu(), accept_c = accept_t.cpu(), h_next_c = h_next_t.cpu();
    const double* ratio = ratio_c.data_ptr<double>();
    const bool* accept = accept_c.data_ptr<bool>();
    const double* h_next = h_next_c.data_ptr<double>();
    // A rejected sample's stages are in the graph (masked out by where()), and a zero cotangent through a
    // non-finite stage is NaN (0 * inf): when one is not finite, the accepted samples' stages are evaluated
    // again with the others held in place (h = 0), so the graph holds finite values only. Rare: the check is
    // one pass over y1 and the last stage.
    if (mode == LoopMode::kGraph && rejected_rows_not_finite(st, accept, [&](int64_t b) { return s.status[b] == core::kRunning; })) {
      std::vector<double> h_kept(B);
      for (int64_t b = 0; b < B; ++b) h_kept[b] = s.status[b] == core::kRunning && accept[b] ? h_step[b] : 0.0;
      h_t = at::tensor(h_kept, at::kDouble).to(dev);
      st = rk_stages(p.field_, tab, y, k0, t0_t, h_t, res.nfe);
    }
    // Events: an accepted step over which a sample's event changed sign ends that sample at the root.
    std::vector<int64_t> event_now;
    for (int64_t b = 0; b < B; ++b) {
      t1[b] = s.t0[b] + h_step[b];
      triggered[b] = 0;
    }
    if (event != nullptr) {
      bool any_step = false;
      for (int64_t b = 0; b < B; ++b) any_step |= s.status[b] == core::kRunning && accept[b];
      if (any_step) {
        // Events count up to each sample's last output time: a step passing it is checked there (its dense
        // output), not at its end.
        std::vector<double> t_check(t1);
        std::vector<int64_t> past_end;
        for (int64_t b = 0; b < B; ++b) {
          const double t_last = row_of(b)[T - 1];
          if (s.status[b] == core::kRunning && accept[b] && p.direction_ * (t1[b] - t_last) > 0) {
            t_check[b] = t_last;
            past_end.push_back(b);
          }
        }
        at::Tensor v1;
        {
          at::NoGradGuard no_grad_event;
          at::Tensor y_check = st.y1.detach();
          if (!past_end.empty()) {
            std::vector<double> t_last;
            for (int64_t b : past_end) t_last.push_back(t_check[b]);
            const at::Tensor idx = at::tensor(past_end, long_opts).to(dev);
            y_check = y_check.clone();
            y_check.index_copy_(0, idx, dense_at_pairs(y.detach(), y_check, detached(st.ks), t0_t, h_t, idx,
                                                       at::tensor(t_last, at::kDouble).to(dev), tab));
          }
          v1 = event->value(at::tensor(t_check, at::kDouble).to(dev), y_check);
        }
        ++n_event_calls;
        for (int64_t b = 0; b < B; ++b)
          if (s.status[b] == core::kRunning && accept[b] && event_sign(v1.data_ptr<double>()[b]) != sign0[b])
            event_now.push_back(b);
        if (!event_now.empty()) {
          const std::vector<double> roots =
              locate_events(*event, StepSpan{y, st.y1, st.ks, t0_t, h_t, tab}, event_now, s.t0, t_check, sign0,
                            events.max_bisections, n_event_calls);
          for (size_t i = 0; i < event_now.size(); ++i) {
            triggered[event_now[i]] = 1;
            t_stop[event_now[i]] = roots[i];
          }
        }
      }
    }
    std::vector<int64_t> pair_samples, pair_rows;
    std::vector<double> pair_t;
    bool any_accepted = false;
    for (int64_t b = 0; b < B; ++b) {
      accepted[b] = 0;
      if (s.status[b] != core::kRunning) continue;
      if (accept[b]) {
        accepted[b] = 1;
        any_accepted = true;
        // Outputs up to the step's end, or up to the event (a later output is never reached: NaN).
        const double t_end = triggered[b] ? t_stop[b] : t1[b];
        const int64_t last = core::outputs_passed_to(row_of(b), T, s.out_index[b], s.t0[b], t_end);
        for (int64_t r = s.out_index[b]; r < last; ++r) {
          pair_samples.push_back(b);
          pair_rows.push_back(r);
          pair_t.push_back(row_of(b)[r]);
        }
        if (triggered[b]) {
          s.out_index[b] = last;
          s.t0[b] = t_event[b] = t_stop[b];
          s.counters[b * core::kNumCounters + core::kAccepted] += 1;
          s.stop(b, core::kSuccess);
          continue;
        }
      }
      double h_commit = h_step[b];
      core::commit_sample_to(s.t0[b], t1[b], h_commit, s.status[b], &s.counters[b * core::kNumCounters],
                             s.out_index[b], accept[b], ratio[b], h_next[b], row_of(b), T,
                             p.opt_.max_num_steps);
      s.h[b] = h_commit;
      if (s.status[b] != core::kRunning) --s.running;
    }
    if (!event_now.empty()) {
      std::vector<double> roots;
      for (int64_t b : event_now) roots.push_back(t_stop[b]);
      const at::Tensor idx = at::tensor(event_now, long_opts).to(dev);
      event_values.push_back(
          dense_at_pairs(y, st.y1, st.ks, t0_t, h_t, idx, at::tensor(roots, at::kDouble).to(dev), tab));
      event_samples.insert(event_samples.end(), event_now.begin(), event_now.end());
    }
    if (any_accepted) {
      const at::Tensor mask = sample_mask(accepted, dev);
      at::Tensor samples_t, t_pairs_t;
      if (!pair_samples.empty()) {
        samples_t = at::tensor(pair_samples, long_opts).to(dev);
        t_pairs_t = at::tensor(pair_t, at::kDouble).to(dev);
        values.push_back(dense_at_pairs(y, st.y1, st.ks, t0_t, h_t, samples_t, t_pairs_t, tab));
        all_rows.insert(all_rows.end(), pair_rows.begin(), pair_rows.end());
        all_samples.insert(all_samples.end(), pair_samples.begin(), pair_samples.end());
      }
      if (out.tape && p.opt_.record_dense) {
        std::vector<int64_t> acc;
        for (int64_t b = 0; b < B; ++b)
          if (accepted[b]) {
            acc.push_back(b);
            dense_sample.push_back(b);
            dense_t0.push_back(s_t0_before[b]);
            dense_h.push_back(h_step[b]);
          }
        const at::Tensor idx = at::tensor(acc, long_opts).to(dev);
        if (!zero_state.defined()) {
          zero_state = at::zeros({B, D}, y0_in.options());
          unit_h = at::ones({B}, time_opts);
        }
        const at::Tensor mid_slope = ops::call<ops::RkStage>(zero_state, st.ks, unit_h, at::ArrayRef<double>(tab.mid, tab.stages));
        dense_rows[0].push_back(y.index_select(0, idx));
        dense_rows[1].push_back(st.y1.index_select(0, idx));
        dense_rows[2].push_back(k0.index_select(0, idx));
        dense_rows[3].push_back(st.ks.back().index_select(0, idx));
        dense_rows[4].push_back(mid_slope.index_select(0, idx));
      }
      if (out.tape) {
        // The replay moves only the accepted samples (h = 0 for the others): their stages stay finite.
        SampleStep rec{t0_t, at::where(mask.reshape({B}), h_t, 0.0), mask, y, k0, samples_t, at::Tensor(), t_pairs_t};
        if (samples_t.defined()) rec.out_row = at::tensor(pair_rows, long_opts).to(dev);
        out.tape->steps.push_back(std::move(rec));
      }
      y = at::where(mask, st.y1, y);
      k0 = at::where(mask, st.ks.back(), k0);
    }
    ++res.n_steps;
    if (p.opt_.progress != nullptr) {
      progress.stage(at::tensor(s.t0, at::kDouble));
      progress.report_staged();
    }
  }

  const at::Tensor rows_t = at::tensor(all_rows, long_opts).to(dev);
  const at::Tensor samples_t = at::tensor(all_samples, long_opts).to(dev);
  const at::Tensor nan = at::full({T, B, D}, std::numeric_limits<double>::quiet_NaN(), y0_in.options());
  const c10::List<std::optional<at::Tensor>> index({rows_t, samples_t});
  res.ys = at::index_put(nan, index, values.size() == 1 ? values[0] : at::cat(values, 0));
  if (event != nullptr) {
    out.t_event = at::tensor(t_event, at::kDouble);
    const at::Tensor none = at::full({B, D}, std::numeric_limits<double>::quiet_NaN(), y0_in.options());
    if (event_values.empty()) {
      out.y_event = none;
    } else {
      const c10::List<std::optional<at::Tensor>> at_samples({at::tensor(event_samples, long_opts).to(dev)});
      out.y_event = at::index_put(none, at_samples, event_values.size() == 1 ? event_values[0] : at::cat(event_values, 0));
    }
    out.n_event_calls = n_event_calls;
  }
  if (record_dense) out.tape->dense = collect_dense_record(dense_rows, dense_sample, dense_t0, dense_h, B, D,
                                                           p.direction_, y0_in.options());
  res.status = at::tensor(s.status, at::kInt);
  res.counters = at::tensor(s.counters, at::kLong).reshape({B, core::kNumCounters});
  res.t = at::tensor(s.t0, at::kDouble).to(dev);
  res.h = at::tensor(s.h, at::kDouble).to(dev);
  return out;
}

}  // namespace fde::solver
