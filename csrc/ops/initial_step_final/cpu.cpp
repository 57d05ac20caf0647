// initial_step_final on the CPU: per row, the probe's norm (cpu::segment_rms over core/initial_step.h's
// element) and the signed, clamped first step.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include "core/initial_step.h"
#include "ops/cpu/segment_rms.h"
#include "ops/initial_step_final/op.h"

namespace fde::ops {

at::Tensor InitialStepFinal::cpu(const at::Tensor& y0, const at::Tensor& f0, const at::Tensor& f1,
                                 const at::Tensor& h0, const at::Tensor& d1, double direction, const at::Tensor& rtol,
                                 const at::Tensor& atol, at::IntArrayRef segment_ends, int64_t order,
                                 at::ArrayRef<double> control) {
  const core::ControllerParams params =
      check(y0, f0, f1, h0, d1, direction, rtol, atol, segment_ends, order, control);
  const int64_t B = y0.size(0), D = y0.size(1);
  auto h = at::empty({B}, h0.options());
  const double* rt = rtol.data_ptr<double>();
  const double* at_ = atol.data_ptr<double>();
  const double* h0p = h0.data_ptr<double>();
  const double* d1p = d1.data_ptr<double>();
  double* hp = h.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "initial_step_final cpu", [&] {
    using T = scalar_t;
    const T* yp = y0.data_ptr<T>();
    const T* f0p = f0.data_ptr<T>();
    const T* f1p = f1.data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* y = yp + b * D;
        const T* fa = f0p + b * D;
        const T* fb = f1p + b * D;
        const double d2 = cpu::segment_rms(segment_ends, [&](int64_t i, int64_t s) {
          return core::scaled_difference<T>(fb[i], fa[i], core::initial_scale<T>(y[i], at_[s], rt[s]));
        });
        hp[b] = core::initial_h<T>(h0p[b], d1p[b], d2, static_cast<int>(order), direction, params);
      }
    });
  });
  return h;
}

}  // namespace fde::ops
