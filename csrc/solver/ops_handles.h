// Typed handles to the fused ops, looked up once. The solver calls the ops through the dispatcher so
// the same loop runs on CPU and CUDA (and, with autograd formulas, records a graph).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace fde::solver::op {

inline at::Tensor rk_stage(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
  static auto handle = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fastdiffeq::rk_stage", "")
                           .typed<at::Tensor(const at::Tensor&, at::TensorList, const at::Tensor&,
                                             at::ArrayRef<double>)>();
  return handle.call(y, ks, h, coeffs);
}

inline at::Tensor rk_stage_times(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c,
                                 at::ScalarType dtype) {
  static auto handle = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fastdiffeq::rk_stage_times", "")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>,
                                             at::ScalarType)>();
  return handle.call(t0, h, c, dtype);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> rk_error_control(
    const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
    at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends,
    double safety, double ifactor, double dfactor, double exponent, double min_step, double max_step) {
  static auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastdiffeq::rk_error_control", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&, at::ArrayRef<double>,
              const at::Tensor&, const at::Tensor&, at::IntArrayRef, double, double, double, double, double, double)>();
  return handle.call(y0, y1, ks, h, err_coeffs, rtol, atol, segment_ends, safety, ifactor, dfactor, exponent,
                     min_step, max_step);
}

inline std::tuple<at::Tensor, at::Tensor> step_size_control(const at::Tensor& ratio, const at::Tensor& h,
                                                            double safety, double ifactor, double dfactor,
                                                            double exponent, double min_step, double max_step) {
  static auto handle = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fastdiffeq::step_size_control", "")
                           .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                                     double, double, double, double, double)>();
  return handle.call(ratio, h, safety, ifactor, dfactor, exponent, min_step, max_step);
}

inline void rk_dense_output(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                            const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept,
                            const at::Tensor& t_out, const at::Tensor& out_index, at::ArrayRef<double> mid) {
  static auto handle = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fastdiffeq::rk_dense_output", "")
                           .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, at::TensorList,
                                       const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, at::ArrayRef<double>)>();
  handle.call(out, y0, y1, ks, h, t0, accept, t_out, out_index, mid);
}

inline void rk_commit(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                      at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1, const at::Tensor& k_last,
                      const at::Tensor& h_next, const at::Tensor& accept, const at::Tensor& ratio,
                      const at::Tensor& t_out, int64_t max_num_steps) {
  static auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastdiffeq::rk_commit", "")
          .typed<void(at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, int64_t)>();
  handle.call(y0, k0, t0, h, status, counters, out_index, y1, k_last, h_next, accept, ratio, t_out, max_num_steps);
}

inline at::Tensor rk_dense_eval(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                                const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid) {
  static auto handle = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fastdiffeq::rk_dense_eval", "")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&,
                                             const at::Tensor&, const at::Tensor&, at::ArrayRef<double>)>();
  return handle.call(y0, y1, ks, h, t0, t_eval, mid);
}

}  // namespace fde::solver::op
