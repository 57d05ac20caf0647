#include "solver/rk_solve.h"

#include <c10/util/Exception.h>

#include <cmath>

#include "core/error_norm.h"
#include "core/step_commit.h"
#include "solver/initial_step.h"
#include "solver/norms.h"
#include "solver/ops_handles.h"

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

// Host-side handling of step_t / jump_t (joint mode only): clip the step so it ends exactly on the
// next grid point. Reads t0 and h from the device, so it synchronises once per step; only solves that
// ask for step_t/jump_t pay for it.
struct GridClip {
  const std::vector<double>& step_t;
  const std::vector<double>& jump_t;
  size_t next_step = 0, next_jump = 0;
  bool on_step = false, on_jump = false;

  // Returns the step to take from t0 with proposed h (same sign convention).
  double clip(double t0, double h) {
    const double dir = h > 0 ? 1.0 : -1.0;
    double t1 = t0 + h;
    on_step = on_jump = false;
    if (next_step < step_t.size()) {
      const double g = step_t[next_step];
      if (dir * (g - t0) > 0 && dir * (t1 - g) > 0) {
        on_step = true;
        t1 = g;
      }
    }
    if (next_jump < jump_t.size()) {
      const double g = jump_t[next_jump];
      if (dir * (g - t0) > 0 && dir * (t1 - g) > 0) {
        on_jump = true;
        on_step = false;
        t1 = g;
      }
    }
    return t1 - t0;
  }

  void accepted() {
    // torchdiffeq keeps pointing at the last grid point once it has passed it.
    if (on_step && next_step + 1 < step_t.size()) ++next_step;
    if (on_jump && next_jump + 1 < jump_t.size()) ++next_jump;
  }
};

}  // namespace

RkResult rk_solve(VectorField& field, ErrorNorm* norm, const at::Tensor& y0_in, const at::Tensor& t_out,
                  const RkOptions& opt) {
  const core::Tableau& tab = *opt.tableau;
  TORCH_CHECK(y0_in.dim() == 2, "fastdiffeq: y0 must be [B, D]");
  const int64_t B = y0_in.size(0), D = y0_in.size(1);
  const int64_t T = t_out.size(-1);
  TORCH_CHECK(T >= 1, "fastdiffeq: need at least one output time");
  TORCH_CHECK(t_out.scalar_type() == at::kDouble, "fastdiffeq: t_out must be float64");
  const bool has_grid = !opt.step_t.empty() || !opt.jump_t.empty();
  TORCH_CHECK(!has_grid || B == 1, "fastdiffeq: step_t and jump_t are supported in joint mode only");
  const auto dtype = y0_in.scalar_type();
  const auto dev = y0_in.device();
  auto t_out_c = t_out.to(dev).contiguous();

  std::vector<int64_t> segments = opt.segment_ends;
  if (segments.empty()) segments.push_back(D);
  auto rtol_seg = at::tensor(opt.rtol, at::kDouble).to(dev);
  auto atol_seg = at::tensor(opt.atol, at::kDouble).to(dev);
  core::ControllerParams ctrl = opt.control;
  ctrl.exponent = 1.0 / tab.order;

  RkResult res;
  res.ys = at::empty({T, B, D}, y0_in.options());
  res.ys.select(0, 0).copy_(y0_in);
  at::Tensor t0 = (t_out_c.dim() == 1 ? t_out_c.slice(0, 0, 1).expand({B}) : t_out_c.select(1, 0)).contiguous().clone();
  at::Tensor y = y0_in.clone();  // the solver's own buffer: commit writes into it
  res.status = at::zeros({B}, y0_in.options().dtype(at::kInt));
  res.counters = at::zeros({B, core::kNumCounters}, y0_in.options().dtype(at::kLong));
  at::Tensor out_index = at::ones({B}, y0_in.options().dtype(at::kLong));

  // Direction of integration per the output grid (monotone, validated by the caller).
  double direction = 1.0;
  if (T > 1) {
    auto second = (t_out_c.dim() == 1 ? t_out_c.slice(0, 0, 2) : t_out_c.select(0, 0).slice(0, 0, 2)).cpu();
    direction = second[1].item<double>() >= second[0].item<double>() ? 1.0 : -1.0;
  }

  at::Tensor k0 = field.eval(t0.to(dtype), y.clone()).clone();
  res.nfe = 1;
  if (!at::isfinite(k0).all().item<bool>()) {
    // Nothing to shrink at the initial point: report it at once.
    res.status.fill_(core::kNonFinite);
    res.t = t0;
    res.h = at::zeros({B}, t0.options());
    return res;
  }

  at::Tensor h_abs;
  if (opt.first_step > 0) {
    h_abs = at::full({B}, opt.first_step, t0.options());
  } else {
    const auto rtol_el = expand_segments(opt.rtol, segments, y);
    const auto atol_el = expand_segments(opt.atol, segments, y);
    h_abs = select_initial_step(field, norm, {y, k0, t0, direction, rtol_el, atol_el, segments, tab.order - 1});
    res.nfe += 1;
  }
  at::Tensor h = (h_abs.clamp(ctrl.min_step, ctrl.max_step) * direction).contiguous();

  if (T == 1) {
    res.status.fill_(core::kSuccess);
    res.t = t0;
    res.h = h;
    return res;
  }

  // Error weights, stage rows and dense-output weights as ArrayRefs into the tableau.
  const int S = tab.stages;
  const at::ArrayRef<double> c(tab.c, S);
  const at::ArrayRef<double> e(tab.e, S);
  const at::ArrayRef<double> mid(tab.mid, S);

  // A user norm: the error ratio is computed here with unfused ops, then the fused controller.
  at::Tensor rtol_el, atol_el;
  if (norm != nullptr) {
    rtol_el = expand_segments(opt.rtol, segments, y).to(dtype);
    atol_el = expand_segments(opt.atol, segments, y).to(dtype);
  }
  auto zeros_like_y = norm != nullptr ? at::zeros_like(y) : at::Tensor();

  GridClip grid{opt.step_t, opt.jump_t};
  std::vector<at::Tensor> ks(S);
  const int64_t check_every = std::max<int64_t>(1, opt.check_every);
  for (int64_t iter = 0;; ++iter) {
    at::Tensor h_step = h;
    if (has_grid) {
      const double hs = grid.clip(t0.item<double>(), h.item<double>());
      h_step = at::full({1}, hs, h.options());
    }
    const at::Tensor ts = op::rk_stage_times(t0, h_step, c, dtype);
    ks[0] = k0;
    at::Tensor yi;
    for (int i = 1; i < S; ++i) {
      yi = op::rk_stage(y, at::TensorList(ks.data(), i), h_step, at::ArrayRef<double>(tab.a[i], i));
      ks[i] = field.eval(ts.select(0, i), yi);
      ++res.nfe;
    }
    const at::Tensor& y1 = yi;  // FSAL: the last stage is evaluated at the propagated solution

    at::Tensor ratio, accept, h_next;
    if (norm == nullptr) {
      std::tie(ratio, accept, h_next) =
          op::rk_error_control(y, y1, ks, h_step, e, rtol_seg, atol_seg, segments, ctrl.safety, ctrl.ifactor,
                               ctrl.dfactor, ctrl.exponent, ctrl.min_step, ctrl.max_step);
    } else {
      const auto err = op::rk_stage(zeros_like_y, ks, h_step, e);
      const auto tol = atol_el + rtol_el * at::maximum(y.abs(), y1.abs());
      ratio = group_norm(err / tol, segments, norm).abs().contiguous();
      std::tie(accept, h_next) = op::step_size_control(ratio, h_step, ctrl.safety, ctrl.ifactor, ctrl.dfactor,
                                                       ctrl.exponent, ctrl.min_step, ctrl.max_step);
    }

    op::rk_dense_output(res.ys, y, y1, ks, h_step, t0, accept, t_out_c, out_index, mid);

    at::Tensor k_last = ks[S - 1];
    if (has_grid && grid.on_jump && accept.item<bool>()) {
      // Past a discontinuity: f is re-evaluated on the new side (one ulp past the jump), FSAL is broken.
      const double t_jump = t0.item<double>() + h_step.item<double>();
      auto tj = at::full({1}, t_jump, t0.options()).to(dtype);
      tj = at::nextafter(tj, tj + direction);
      k_last = field.eval(tj, y1);
      ++res.nfe;
    }
    const bool accepted_on_grid = has_grid && accept.item<bool>();
    op::rk_commit(y, k0, t0, h_step, res.status, res.counters, out_index, y1, k_last, h_next, accept, ratio,
                  t_out_c, opt.max_num_steps);
    h = h_step;  // rk_commit wrote the next step size into it
    if (accepted_on_grid) grid.accepted();
    ++res.n_steps;

    if ((iter + 1) % check_every == 0 && all_done(res.status)) break;
  }
  res.t = t0;
  res.h = h;
  return res;
}

}  // namespace fde::solver
