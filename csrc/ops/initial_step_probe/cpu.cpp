// initial_step_probe on the CPU: per row, the two norms (cpu::segment_rms over core/initial_step.h's
// elements), h0, then the probe point in one more pass.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>

#include "core/initial_step.h"
#include "ops/cpu/segment_rms.h"
#include "ops/initial_step_probe/op.h"

namespace fde::ops {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> InitialStepProbe::cpu(
    const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& t0, double direction, const at::Tensor& rtol,
    const at::Tensor& atol, at::IntArrayRef segment_ends) {
  check(y0, f0, t0, direction, rtol, atol, segment_ends);
  const int64_t B = y0.size(0), D = y0.size(1);
  auto h0 = at::empty({B}, t0.options());
  auto d1 = at::empty({B}, t0.options());
  auto y_probe = at::empty_like(y0);
  auto t_probe = at::empty({B}, y0.options());
  const double* rt = rtol.data_ptr<double>();
  const double* at_ = atol.data_ptr<double>();
  const double* tp = t0.data_ptr<double>();
  double* h0p = h0.data_ptr<double>();
  double* d1p = d1.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "initial_step_probe cpu", [&] {
    using T = scalar_t;
    const T* yp = y0.data_ptr<T>();
    const T* fp = f0.data_ptr<T>();
    T* pp = y_probe.data_ptr<T>();
    T* tpp = t_probe.data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* y = yp + b * D;
        const T* f = fp + b * D;
        const double d0 = cpu::segment_rms(segment_ends, [&](int64_t i, int64_t s) {
          return core::scaled_by<T>(y[i], core::initial_scale<T>(y[i], at_[s], rt[s]));
        });
        const double d1v = cpu::segment_rms(segment_ends, [&](int64_t i, int64_t s) {
          return core::scaled_by<T>(f[i], core::initial_scale<T>(y[i], at_[s], rt[s]));
        });
        const double h0v = core::initial_h0<T>(d0, d1v);
        h0p[b] = h0v;
        d1p[b] = d1v;
        const T signed_h0 = static_cast<T>(h0v * direction);
        T* p = pp + b * D;
        for (int64_t i = 0; i < D; ++i) p[i] = core::probe_point<T>(y[i], f[i], signed_h0);
        tpp[b] = static_cast<T>(tp[b] + h0v * direction);
      }
    });
  });
  return {h0, d1, y_probe, t_probe};
}

}  // namespace fde::ops
