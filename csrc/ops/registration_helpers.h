// Adapters from the schema's flat argument lists to the kernels' signatures, and one macro that
// registers a device's kernels, so CPU and CUDA register the same way.
#pragma once

#include <torch/library.h>

#include "ops/ops.h"

#define FDE_CONTROL_PARAMS double safety, double ifactor, double dfactor, double exponent, double min_step, double max_step
#define FDE_CONTROL_ARGS \
  fde::ops::ControlArgs { safety, ifactor, dfactor, exponent, min_step, max_step }

#define FDE_REGISTER_DEVICE_KERNELS(KEY, dev)                                                                  \
  namespace {                                                                                                   \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> rk_error_control_##dev##_adapter(                              \
      const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,                        \
      at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol,                           \
      at::IntArrayRef segment_ends, FDE_CONTROL_PARAMS) {                                                        \
    return fde::ops::rk_error_control_##dev(y0, y1, ks, h, err_coeffs, rtol, atol, segment_ends,                 \
                                            FDE_CONTROL_ARGS);                                                   \
  }                                                                                                             \
  std::tuple<at::Tensor, at::Tensor> step_size_control_##dev##_adapter(const at::Tensor& ratio,                 \
                                                                       const at::Tensor& h, FDE_CONTROL_PARAMS) { \
    return fde::ops::step_size_control_##dev(ratio, h, FDE_CONTROL_ARGS);                                        \
  }                                                                                                             \
  }                                                                                                             \
  TORCH_LIBRARY_IMPL(fastdiffeq, KEY, m) {                                                                      \
    m.impl("rk_stage", &fde::ops::rk_stage_##dev);                                                              \
    m.impl("rk_stage_times", &fde::ops::rk_stage_times_##dev);                                                  \
    m.impl("rk_error_control", &rk_error_control_##dev##_adapter);                                              \
    m.impl("step_size_control", &step_size_control_##dev##_adapter);                                            \
    m.impl("rk_dense_output", &fde::ops::rk_dense_output_##dev);                                                \
    m.impl("rk_commit", &fde::ops::rk_commit_##dev);                                                            \
    m.impl("rk_dense_eval", &fde::ops::rk_dense_eval_##dev);                                                    \
    m.impl("rk_dense_weights", &fde::ops::rk_dense_weights_##dev);                                              \
  }
