// Argument validation shared by every device's implementation of the ops (TORCH_CHECK, never assert).
#pragma once

#include <ATen/ATen.h>

#include "core/controller.h"
#include "core/step_commit.h"
#include "core/tableau.h"

namespace fde::ops {

inline void check_state(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "fastdiffeq: ", name, " must be a 2-D [B, D] tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "fastdiffeq: ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastdiffeq: ", name, " must be contiguous");
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "fastdiffeq: ", name, " must have shape ", ref.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastdiffeq: ", name, " must have dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "fastdiffeq: ", name, " must be on ", ref.device(), ", got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), "fastdiffeq: ", name, " must be contiguous");
}

inline void check_stages(at::TensorList ks, const at::Tensor& ref, size_t n_coeffs, const char* coeffs_name) {
  TORCH_CHECK(!ks.empty(), "fastdiffeq: ks must hold at least one stage");
  TORCH_CHECK(ks.size() <= static_cast<size_t>(core::kMaxStages), "fastdiffeq: at most ", core::kMaxStages,
              " stages are supported, got ", ks.size());
  TORCH_CHECK(n_coeffs <= ks.size(), "fastdiffeq: ", coeffs_name, " has ", n_coeffs,
              " entries but only ", ks.size(), " stages were given");
  for (const auto& k : ks) check_like(k, ref, "each stage in ks");
}

inline void check_time_vector(const at::Tensor& t, int64_t batch, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, "fastdiffeq: ", name, " must have shape [", batch,
              "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kDouble, "fastdiffeq: ", name, " must be float64, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "fastdiffeq: ", name, " must be on ", ref.device());
  TORCH_CHECK(t.is_contiguous(), "fastdiffeq: ", name, " must be contiguous");
}

inline void check_flag_vector(const at::Tensor& t, int64_t batch, at::ScalarType dtype, const at::Tensor& ref,
                              const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch && t.scalar_type() == dtype, "fastdiffeq: ", name,
              " must be a [", batch, "] ", dtype, " tensor, got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device() && t.is_contiguous(), "fastdiffeq: ", name,
              " must be contiguous on ", ref.device());
}

// t_out: float64 [T] (shared) or [B, T] (per sample). Returns T.
inline int64_t check_output_times(const at::Tensor& t_out, int64_t batch, const at::Tensor& ref) {
  TORCH_CHECK(t_out.scalar_type() == at::kDouble, "fastdiffeq: t_out must be float64");
  TORCH_CHECK(t_out.dim() == 1 || (t_out.dim() == 2 && t_out.size(0) == batch),
              "fastdiffeq: t_out must be [T] or [B, T] with B = ", batch, ", got ", t_out.sizes());
  TORCH_CHECK(t_out.device() == ref.device() && t_out.is_contiguous(), "fastdiffeq: t_out must be contiguous on ",
              ref.device());
  return t_out.size(-1);
}

// Times of the differentiable dense output: h and t0 [B], t_eval [R], all float64 on one device.
inline void check_dense_times(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval, size_t n_mid) {
  TORCH_CHECK(h.dim() == 1, "fastdiffeq: h must be 1-D, got ", h.sizes());
  check_time_vector(h, h.size(0), h, "h");
  check_time_vector(t0, h.size(0), h, "t0");
  TORCH_CHECK(t_eval.dim() == 1, "fastdiffeq: t_eval must be 1-D, got ", t_eval.sizes());
  check_time_vector(t_eval, t_eval.size(0), h, "t_eval");
  TORCH_CHECK(n_mid >= 2 && n_mid <= static_cast<size_t>(core::kMaxStages),
              "fastdiffeq: mid_coeffs must have between 2 and ", core::kMaxStages, " entries");
}

inline void check_control(double safety, double ifactor, double dfactor, double exponent, double min_step,
                          double max_step) {
  TORCH_CHECK(safety > 0, "fastdiffeq: safety must be > 0, got ", safety);
  TORCH_CHECK(ifactor >= 1, "fastdiffeq: ifactor must be >= 1, got ", ifactor);
  TORCH_CHECK(dfactor > 0 && dfactor <= 1, "fastdiffeq: dfactor must be in (0, 1], got ", dfactor);
  TORCH_CHECK(exponent > 0, "fastdiffeq: exponent must be > 0, got ", exponent);
  TORCH_CHECK(min_step >= 0 && max_step >= min_step, "fastdiffeq: need 0 <= min_step <= max_step, got ",
              min_step, " and ", max_step);
}

// The whole argument list of each op, shared by its CPU and CUDA implementations.

// rk_dense_output; returns T.
inline int64_t check_dense_output_args(const at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1,
                                       at::TensorList ks, const at::Tensor& h, const at::Tensor& t0,
                                       const at::Tensor& accept, const at::Tensor& t_out,
                                       const at::Tensor& out_index, at::ArrayRef<double> mid_coeffs) {
  check_state(y0, "y0");
  check_like(y1, y0, "y1");
  check_stages(ks, y0, mid_coeffs.size(), "mid_coeffs");
  TORCH_CHECK(ks.size() >= 2, "fastdiffeq: dense output needs the first and last stage derivatives");
  const int64_t B = y0.size(0), D = y0.size(1);
  check_time_vector(h, B, y0, "h");
  check_time_vector(t0, B, y0, "t0");
  check_flag_vector(accept, B, at::kBool, y0, "accept");
  check_flag_vector(out_index, B, at::kLong, y0, "out_index");
  const int64_t T = check_output_times(t_out, B, y0);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == T && out.size(1) == B && out.size(2) == D,
              "fastdiffeq: out must have shape [", T, ", ", B, ", ", D, "], got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == y0.scalar_type() && out.device() == y0.device() && out.is_contiguous(),
              "fastdiffeq: out must be a contiguous ", y0.scalar_type(), " tensor on ", y0.device());
  return T;
}

// rk_commit; returns T.
inline int64_t check_commit_args(const at::Tensor& y0, const at::Tensor& k0, const at::Tensor& t0,
                                 const at::Tensor& h, const at::Tensor& status, const at::Tensor& counters,
                                 const at::Tensor& out_index, const at::Tensor& y1, const at::Tensor& k_last,
                                 const at::Tensor& h_next, const at::Tensor& accept, const at::Tensor& ratio,
                                 const at::Tensor& t_out, int64_t max_num_steps) {
  check_state(y0, "y0");
  check_like(k0, y0, "k0");
  check_like(y1, y0, "y1");
  check_like(k_last, y0, "k_last");
  const int64_t B = y0.size(0);
  check_time_vector(t0, B, y0, "t0");
  check_time_vector(h, B, y0, "h");
  check_time_vector(h_next, B, y0, "h_next");
  check_time_vector(ratio, B, y0, "ratio");
  check_flag_vector(accept, B, at::kBool, y0, "accept");
  check_flag_vector(status, B, at::kInt, y0, "status");
  check_flag_vector(out_index, B, at::kLong, y0, "out_index");
  TORCH_CHECK(counters.dim() == 2 && counters.size(0) == B && counters.size(1) == core::kNumCounters &&
                  counters.scalar_type() == at::kLong && counters.is_contiguous() &&
                  counters.device() == y0.device(),
              "fastdiffeq: counters must be a contiguous int64 [", B, ", ", core::kNumCounters, "] tensor");
  const int64_t T = check_output_times(t_out, B, y0);
  TORCH_CHECK(max_num_steps > 0, "fastdiffeq: max_num_steps must be positive, got ", max_num_steps);
  return T;
}

// rk_error_control.
inline void check_error_control_args(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                                     const at::Tensor& h, at::ArrayRef<double> err_coeffs, const at::Tensor& rtol,
                                     const at::Tensor& atol, at::IntArrayRef segment_ends,
                                     const core::ControllerParams& ctrl) {
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
}

// step_size_control.
inline void check_step_size_control_args(const at::Tensor& ratio, const at::Tensor& h,
                                         const core::ControllerParams& ctrl) {
  TORCH_CHECK(h.dim() == 1, "fastdiffeq: h must be 1-D, got ", h.sizes());
  check_time_vector(h, h.size(0), h, "h");
  check_time_vector(ratio, h.size(0), h, "ratio");
  check_control(ctrl.safety, ctrl.ifactor, ctrl.dfactor, ctrl.exponent, ctrl.min_step, ctrl.max_step);
}

// rk_dense_eval.
inline void check_dense_eval_args(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                                  const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                                  at::ArrayRef<double> mid_coeffs) {
  check_state(y0, "y0");
  check_like(y1, y0, "y1");
  check_stages(ks, y0, mid_coeffs.size(), "mid_coeffs");
  TORCH_CHECK(ks.size() == mid_coeffs.size(), "fastdiffeq: rk_dense_eval needs one mid coefficient per stage");
  check_time_vector(h, y0.size(0), y0, "h");
  check_dense_times(h, t0, t_eval, mid_coeffs.size());
}

}  // namespace fde::ops
