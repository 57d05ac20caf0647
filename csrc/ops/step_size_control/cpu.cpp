// step_size_control on the CPU: core::control_row per group.
#include "core/controller.h"

#include <ATen/ops/empty.h>
#include "ops/step_size_control/op.h"

namespace fde::ops {

std::tuple<at::Tensor, at::Tensor> StepSizeControl::cpu(const at::Tensor& ratio, const at::Tensor& h,
                                                        at::ArrayRef<double> control) {
  const core::ControllerParams params = check(ratio, h, control);
  const int64_t B = h.size(0);
  auto accept = at::empty({B}, h.options().dtype(at::kBool));
  auto h_next = at::empty({B}, h.options());
  const double* rp = ratio.data_ptr<double>();
  const double* hp = h.data_ptr<double>();
  bool* ap = accept.data_ptr<bool>();
  double* hn = h_next.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) core::control_row(rp[b], hp[b], params, ap + b, hn + b);
  return {accept, h_next};
}

}  // namespace fde::ops
