// The fused solver kernels. Each op is declared once here and implemented per device
// (cpu/, cuda/, meta.cpp); registration.cpp gives them TORCH_LIBRARY schemas in namespace `fastdiffeq`.
//
// Layout conventions, shared by every op:
//   state tensors are contiguous [B, D] (B error groups: 1 in joint mode, the batch in per-sample
//   mode; D elements per group) in float32 or float64;
//   ks is the list of stage derivatives k_j, each [B, D] like the state;
//   time-like tensors (t0, h, h_next, ratio, t_out) are float64; h is signed (its sign is the
//   direction of integration) and has shape [B];
//   coefficient lists (float[]) are Butcher-tableau rows, coeffs[j] multiplies ks[j].
#pragma once

#include <ATen/ATen.h>

#include "core/controller.h"

#include <tuple>

namespace fde::ops {

// The controller's settings (safety, ifactor, dfactor, exponent, min_step, max_step), as the numerics define them.
using ControlArgs = core::ControllerParams;

// (1) out[b, :] = y[b, :] + h[b] * sum_j coeffs[j] * ks[j][b, :]    (len(coeffs) <= len(ks))
at::Tensor rk_stage_cpu(const at::Tensor& y, at::TensorList ks, const at::Tensor& h,
                        at::ArrayRef<double> coeffs);

// Stage times [S, B] in `dtype` (the state's dtype, as the vector field sees time): t0 + c_i h,
// with stages at c_i == 1 evaluated one ulp before t0 + h, towards t0 (torchdiffeq's convention, so
// a field with a jump at the step's end sees its left limit).
at::Tensor rk_stage_times_cpu(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c,
                              at::ScalarType dtype);

// (2) Error estimate err = h sum_j e_j k_j, error ratio = max over tolerance segments of the RMS of
// err / (atol + rtol max(|y0|, |y1|)), accept decision and next step size, in one pass.
// rtol/atol: float64 [S]; segment_ends: the S increasing end offsets of the segments along D.
// Returns (ratio [B] f64, accept [B] bool, h_next [B] f64 with h's sign).
std::tuple<at::Tensor, at::Tensor, at::Tensor> rk_error_control_cpu(
    const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
    at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol,
    at::IntArrayRef segment_ends, const ControlArgs& ctrl);

// The controller alone, for error ratios computed elsewhere (a user-supplied norm).
std::tuple<at::Tensor, at::Tensor> step_size_control_cpu(const at::Tensor& ratio, const at::Tensor& h,
                                                          const ControlArgs& ctrl);

// (3) Dense output: for every sample b whose step was accepted, evaluate the interpolant at each
// output time t_out[(b,) i] with i >= out_index[b] that lies inside (t0[b], t0[b] + h[b]] and write it
// to out[i, b, :]. t_out is [T] (shared) or [B, T]; out is [T, B, D].
void rk_dense_output_cpu(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                         const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept,
                         const at::Tensor& t_out, const at::Tensor& out_index,
                         at::ArrayRef<double> mid_coeffs);

// (4) Commit a step attempt, per sample still running (status == 0):
//   accepted: y0 <- y1, k0 <- k_last (FSAL), t0 <- t0 + h, out_index moves past the outputs written
//   by (3), n_accepted += 1; rejected: n_rejected += 1; always: h <- h_next.
//   Then the status: kSuccess when every output is written, kNonFinite after too many non-finite
//   attempts in a row, kStepUnderflow when t0 + h_next == t0, kMaxSteps when max_num_steps attempts
//   were made since the last output.
// counters: int64 [B, 4] = (n_accepted, n_rejected, attempts since the last output, non-finite streak).
void rk_commit_cpu(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                   at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1,
                   const at::Tensor& k_last, const at::Tensor& h_next, const at::Tensor& accept,
                   const at::Tensor& ratio, const at::Tensor& t_out, int64_t max_num_steps);

// Differentiable dense output (graph mode and checkpoint replay): the interpolant of one step at
// times t_eval (float64 [R], shared by all samples), returned as a new [R, B, D] tensor. Linear in
// (y0, y1, ks); its autograd formula uses rk_dense_weights.
at::Tensor rk_dense_eval_cpu(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                             const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs);

// The interpolant's weights, float64 [R, B, 2 + S]: on y0, y1 and each of the S stages.
at::Tensor rk_dense_weights_cpu(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                                at::ArrayRef<double> mid_coeffs);

#ifdef FDE_WITH_CUDA
at::Tensor rk_stage_cuda(const at::Tensor& y, at::TensorList ks, const at::Tensor& h,
                         at::ArrayRef<double> coeffs);
at::Tensor rk_stage_times_cuda(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c,
                               at::ScalarType dtype);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rk_error_control_cuda(
    const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
    at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol,
    at::IntArrayRef segment_ends, const ControlArgs& ctrl);
std::tuple<at::Tensor, at::Tensor> step_size_control_cuda(const at::Tensor& ratio, const at::Tensor& h,
                                                           const ControlArgs& ctrl);
void rk_dense_output_cuda(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                          const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept,
                          const at::Tensor& t_out, const at::Tensor& out_index,
                          at::ArrayRef<double> mid_coeffs);
void rk_commit_cuda(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                    at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1,
                    const at::Tensor& k_last, const at::Tensor& h_next, const at::Tensor& accept,
                    const at::Tensor& ratio, const at::Tensor& t_out, int64_t max_num_steps);
at::Tensor rk_dense_eval_cuda(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                              const at::Tensor& t0, const at::Tensor& t_eval, at::ArrayRef<double> mid_coeffs);
at::Tensor rk_dense_weights_cuda(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                                 at::ArrayRef<double> mid_coeffs);
#endif

}  // namespace fde::ops
