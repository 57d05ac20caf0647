// (2) Error estimate, error norm, accept decision and next step size in one pass.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/controller.h"
#include "core/error_norm.h"
#include "ops/checks.h"
#include "ops/cpu/row_chunks.h"
#include "ops/ops.h"

namespace fde::ops {
namespace {

// Sum over [d0, d1) of one row of the squared scaled error.
template <class T>
double row_sum_sq(const T* y0, const T* y1, const T* const* k, const double* e, int s, double h, double atol,
                  double rtol, int64_t d0, int64_t d1) {
  double acc = 0.0;
  for (int64_t i = d0; i < d1; ++i) {
    double err = 0.0;
    for (int j = 0; j < s; ++j) err += e[j] * static_cast<double>(k[j][i]);
    acc += core::scaled_error_sq(h * err, static_cast<double>(y0[i]), static_cast<double>(y1[i]), atol, rtol);
  }
  return acc;
}

core::ControllerParams to_params(const ControlArgs& c) {
  core::ControllerParams p;
  p.safety = c.safety;
  p.ifactor = c.ifactor;
  p.dfactor = c.dfactor;
  p.exponent = c.exponent;
  p.min_step = c.min_step;
  p.max_step = c.max_step;
  return p;
}

void control_row(double ratio, double h, const core::ControllerParams& p, bool* accept, double* h_next) {
  const double abs_h = std::fabs(h);
  *accept = core::accept_step(abs_h, ratio, p);
  const double next = core::next_step_size(abs_h, ratio, p);
  *h_next = h >= 0 ? next : -next;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rk_error_control_cpu(
    const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
    at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol,
    at::IntArrayRef segment_ends, const ControlArgs& ctrl) {
  check_state(y0, "y0");
  check_like(y1, y0, "y1");
  check_stages(ks, y0, err_coeffs.size(), "err_coeffs");
  const int64_t B = y0.size(0), D = y0.size(1);
  check_time_vector(h, B, y0, "h");
  const int64_t S = static_cast<int64_t>(segment_ends.size());
  TORCH_CHECK(S >= 1, "fastdiffeq: segment_ends must name at least one segment");
  check_time_vector(rtol, S, y0, "rtol");
  check_time_vector(atol, S, y0, "atol");
  for (int64_t s = 0; s < S; ++s) {
    const int64_t begin = s == 0 ? 0 : segment_ends[s - 1];
    TORCH_CHECK(segment_ends[s] >= begin && segment_ends[s] <= D,
                "fastdiffeq: segment_ends must be non-decreasing and end at most at D = ", D);
  }
  TORCH_CHECK(segment_ends[S - 1] == D, "fastdiffeq: the last segment must end at D = ", D);
  check_control(ctrl.safety, ctrl.ifactor, ctrl.dfactor, ctrl.exponent, ctrl.min_step, ctrl.max_step);

  auto opts = h.options();
  auto ratio = at::empty({B}, opts);
  auto accept = at::empty({B}, opts.dtype(at::kBool));
  auto h_next = at::empty({B}, opts);
  const double* hp = h.data_ptr<double>();
  const double* rt = rtol.data_ptr<double>();
  const double* at_ = atol.data_ptr<double>();
  double* rp = ratio.data_ptr<double>();
  bool* ap = accept.data_ptr<bool>();
  double* hn = h_next.data_ptr<double>();
  const core::ControllerParams params = to_params(ctrl);

  int nz[core::kMaxStages];
  double e[core::kMaxStages];
  int s_nz = 0;
  for (size_t j = 0; j < err_coeffs.size(); ++j)
    if (err_coeffs[j] != 0.0) {
      nz[s_nz] = static_cast<int>(j);
      e[s_nz++] = err_coeffs[j];
    }

  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_error_control_cpu", [&] {
    const scalar_t* y0p = y0.data_ptr<scalar_t>();
    const scalar_t* y1p = y1.data_ptr<scalar_t>();
    const scalar_t* k[core::kMaxStages];
    for (int j = 0; j < s_nz; ++j) k[j] = ks[nz[j]].data_ptr<scalar_t>();

    auto row_ratio = [&](int64_t b, bool parallel_inside) {
      const int64_t off = b * D;
      const scalar_t* kb[core::kMaxStages];
      for (int j = 0; j < s_nz; ++j) kb[j] = k[j] + off;
      double worst = 0.0;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t begin = s == 0 ? 0 : segment_ends[s - 1], end = segment_ends[s];
        if (end == begin) continue;
        double sum;
        if (parallel_inside) {
          sum = at::parallel_reduce(
              begin, end, cpu::kGrain, 0.0,
              [&](int64_t i0, int64_t i1, double acc) {
                return acc + row_sum_sq(y0p + off, y1p + off, kb, e, s_nz, hp[b], at_[s], rt[s], i0, i1);
              },
              std::plus<double>());
        } else {
          sum = row_sum_sq(y0p + off, y1p + off, kb, e, s_nz, hp[b], at_[s], rt[s], begin, end);
        }
        // NaN must survive the max (a NaN stage makes the whole step non-finite).
        const double rms = std::sqrt(sum / static_cast<double>(end - begin));
        worst = (std::isnan(rms) || rms > worst) ? rms : worst;
        if (std::isnan(worst)) break;
      }
      rp[b] = worst;
      control_row(worst, hp[b], params, ap + b, hn + b);
    };

    if (B == 1) {
      row_ratio(0, true);
    } else {
      at::parallel_for(0, B, std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(D, 1)),
                       [&](int64_t b0, int64_t b1) {
                         for (int64_t b = b0; b < b1; ++b) row_ratio(b, false);
                       });
    }
  });
  return {ratio, accept, h_next};
}

std::tuple<at::Tensor, at::Tensor> step_size_control_cpu(const at::Tensor& ratio, const at::Tensor& h,
                                                          const ControlArgs& ctrl) {
  TORCH_CHECK(h.dim() == 1, "fastdiffeq: h must be 1-D, got ", h.sizes());
  check_time_vector(h, h.size(0), h, "h");
  check_time_vector(ratio, h.size(0), h, "ratio");
  check_control(ctrl.safety, ctrl.ifactor, ctrl.dfactor, ctrl.exponent, ctrl.min_step, ctrl.max_step);
  const int64_t B = h.size(0);
  auto accept = at::empty({B}, h.options().dtype(at::kBool));
  auto h_next = at::empty({B}, h.options());
  const core::ControllerParams params = to_params(ctrl);
  const double* rp = ratio.data_ptr<double>();
  const double* hp = h.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    control_row(rp[b], hp[b], params, accept.data_ptr<bool>() + b, h_next.data_ptr<double>() + b);
  return {accept, h_next};
}

}  // namespace fde::ops
