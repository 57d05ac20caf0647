// Shape-only kernels: fake tensors (torch.compile, opcheck) run these instead of the real ones.
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/ops.h"
#include "ops/registration_helpers.h"

namespace fde::ops {

at::Tensor rk_stage_meta(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
  TORCH_CHECK(y.dim() == 2, "fastdiffeq: y must be a 2-D [B, D] tensor, got shape ", y.sizes());
  TORCH_CHECK(coeffs.size() <= ks.size(), "fastdiffeq: more coeffs than stages");
  return at::empty_like(y);
}

at::Tensor rk_stage_times_meta(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c,
                               at::ScalarType dtype) {
  return at::empty({static_cast<int64_t>(c.size()), t0.size(0)}, t0.options().dtype(dtype));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rk_error_control_meta(
    const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
    at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol,
    at::IntArrayRef segment_ends, const ControlArgs& ctrl) {
  const int64_t B = y0.size(0);
  return {at::empty({B}, h.options()), at::empty({B}, h.options().dtype(at::kBool)), at::empty({B}, h.options())};
}

std::tuple<at::Tensor, at::Tensor> step_size_control_meta(const at::Tensor& ratio, const at::Tensor& h,
                                                           const ControlArgs& ctrl) {
  return {at::empty_like(h, h.options().dtype(at::kBool)), at::empty_like(h)};
}

void rk_dense_output_meta(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                          const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept,
                          const at::Tensor& t_out, const at::Tensor& out_index, at::ArrayRef<double> mid_coeffs) {}

void rk_commit_meta(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                    at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1, const at::Tensor& k_last,
                    const at::Tensor& h_next, const at::Tensor& accept, const at::Tensor& ratio,
                    const at::Tensor& t_out, int64_t max_num_steps) {}

at::Tensor rk_dense_eval_meta(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                              const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs) {
  return at::empty({t_eval.size(0), y0.size(0), y0.size(1)}, y0.options());
}

at::Tensor rk_dense_weights_meta(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                                 at::ArrayRef<double> mid_coeffs) {
  return at::empty({t_eval.size(0), h.size(0), static_cast<int64_t>(mid_coeffs.size()) + 2}, h.options());
}

}  // namespace fde::ops

FDE_REGISTER_DEVICE_KERNELS(Meta, meta)
