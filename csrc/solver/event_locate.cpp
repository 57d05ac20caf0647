#include "solver/event_locate.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "solver/rk_per_sample.h"

namespace fde::solver {

std::vector<double> locate_events(EventFunction& event, const StepSpan& step, const std::vector<int64_t>& samples,
                                  const std::vector<double>& t0, const std::vector<double>& t1,
                                  const std::vector<double>& sign0, int64_t max_iter, int64_t& n_calls) {
  at::NoGradGuard no_grad;
  const size_t n = samples.size();
  std::vector<double> lo(n), hi(n);
  for (size_t i = 0; i < n; ++i) {
    lo[i] = t0[samples[i]];
    hi[i] = t1[samples[i]];
  }
  const auto dev = step.y.device();
  const at::Tensor idx = at::tensor(samples, at::kLong).to(dev);
  std::vector<double> t_all(t1);
  std::vector<uint8_t> done(n, 0);
  for (int64_t iter = 0; iter < max_iter; ++iter) {
    std::vector<double> mid(n);
    bool any = false;
    for (size_t i = 0; i < n; ++i) {
      mid[i] = lo[i] + 0.5 * (hi[i] - lo[i]);
      if (mid[i] == lo[i] || mid[i] == hi[i]) done[i] = 1;  // adjacent doubles: located
      if (!done[i]) any = true;
      t_all[samples[i]] = mid[i];
    }
    if (!any) break;
    const at::Tensor t_mid = at::tensor(mid, at::kDouble).to(dev);
    at::Tensor y_eval = step.y1.detach().clone();
    y_eval.index_copy_(0, idx, dense_at_pairs(step.y.detach(), step.y1.detach(), step.ks, step.t0, step.h, idx,
                                              t_mid, step.tab));
    const at::Tensor v = event.value(at::tensor(t_all, at::kDouble).to(dev), y_eval);
    ++n_calls;
    const double* vp = v.data_ptr<double>();
    for (size_t i = 0; i < n; ++i) {
      if (done[i]) continue;
      if (event_sign(vp[samples[i]]) == sign0[samples[i]]) {
        lo[i] = mid[i];
      } else {
        hi[i] = mid[i];
      }
    }
  }
  return hi;
}

}  // namespace fde::solver
