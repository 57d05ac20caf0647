// Validation of the solver entry points' arguments (rk_solve, rk_checkpoint_backward), before anything
// is indexed. Bad arguments raise c10::ValueError / c10::TypeError (Python ValueError / TypeError) with
// a message naming the argument.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "solver/rk_solve.h"

namespace fde::solver {

// The masked loop reads "all samples done" once every check_every steps, at most this rarely.
inline constexpr int64_t kMaxCheckEvery = 64;

// What the loops need from a validated call.
struct SolveArgs {
  std::vector<int64_t> segments;  // segment_ends, or [D] when none were given
  core::ControllerParams control;  // the options' controller, exponent set from the method's order
  double direction = 1.0;          // of integration: the sign of t_out[..., 1] - t_out[..., 0]
  at::Tensor t_out_host;           // t_out on the CPU (float64, contiguous): read once, here
};

// y0: [B, D] float32/float64, contiguous, on a CPU or CUDA device; t_out: float64 [T] or [B, T] with
// T >= 1, finite, every row strictly monotone in one common direction; tolerances: one value >= 0 per segment
// (rtol finite, atol may be inf); segment_ends non-decreasing from 0 to D; the controller's range rules
// (core::check_controller); first_step finite >= 0; max_num_steps and check_every >= 1; step_t/jump_t
// finite and joint mode only; and a max_step that can reach every next output time within
// max_num_steps steps.
SolveArgs check_solve_args(const at::Tensor& y0, const at::Tensor& t_out, const RkOptions& opt);

// grad_ys: [T, 1, D] in the tape's dtype and on its device.
void check_checkpoint_args(const RkTape& tape, const at::Tensor& grad_ys, const std::vector<at::Tensor>& params);

// The tensors a VectorField::vjp differentiates: floating, on `device`, requiring grad.
void check_vjp_params(const std::vector<at::Tensor>& params, const at::Device& device);

// rk_adjoint: t_out float64 [T]; grad_ys float32/64 [T, 1, D] on a CPU/CUDA device; ys like grad_ys (resolve)
// or a dense tape of the same state and output times (interpolated). Returns D. (The field's parameters:
// check_vjp_params, where they are known.)
int64_t check_adjoint_args(const at::Tensor& t_out, const at::Tensor& ys, const RkTape* tape,
                           const at::Tensor& grad_ys, bool interpolated);

}  // namespace fde::solver
