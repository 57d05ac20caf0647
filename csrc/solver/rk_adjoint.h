// The reverse-time adjoint: gradients of a joint-mode (B == 1) solve by integrating the adjoint system
// backwards in time, in ONE solve from t[-1] to t[0] with the output times as stopping points.
//
// Augmented state, one contiguous [1, N] buffer: [y (resolve only), a, theta_bar], with
//   dy/dt = f(t, y),  da/dt = -a^T df/dy,  dtheta_bar/dt = -a^T df/dtheta,
// every evaluation one VectorField::vjp with cotangent -a. At each output time t_i (stepped onto
// exactly) the adjoint jumps, a += dL/dy(t_i), and in "resolve" mode y is re-anchored to the saved forward
// output; the derivative is then re-evaluated there (the state changed) and the step size carries on.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "solver/rk_solve.h"
#include "solver/vector_field.h"

namespace fde::solver {

enum class AdjointTrajectory {
  // y is integrated backwards with a and theta_bar and re-anchored at every output time (torchdiffeq).
  kResolve,
  // y(t) is read from the forward solve's dense record (RkTape with record_dense): y leaves the state and
  // the error control, so the backward pass is stable on dissipative fields; memory O(steps x state).
  kInterpolated,
};

struct AdjointOptions {
  // The backward solve's method, controller, first step, max_num_steps (attempts between two output
  // times) and the step_t / jump_t points it stops on. rtol / atol: ONE value each (the adjoint
  // tolerances); segment_ends: the forward state's tuple segments along D (torchdiffeq's norm takes the
  // max over per-tensor RMS norms: y's and a's segments, then one per parameter tensor).
  RkOptions solve;
  std::vector<int64_t> param_sizes;  // numel of each parameter tensor, in the field's packing order
  bool seminorm = false;             // leave the parameter channels out of the error control
  AdjointTrajectory trajectory = AdjointTrajectory::kResolve;
};

struct AdjointResult {
  at::Tensor grad_y0;      // [1, D]: dL/dy0
  at::Tensor grad_params;  // [P], the state's dtype: dL/dtheta, packed like VectorField::vjp's grad_params
  int32_t status = 0;      // core::Status of the backward solve
  double t = 0.0;          // where it stopped
  int64_t nfe = 0, n_accepted = 0, n_rejected = 0;
};

// t_out: float64 [T], the forward's output times (monotone); grad_ys: [T, 1, D]; ys: [T, 1, D], the
// forward outputs (kResolve); tape: the forward's dense record (kInterpolated), else null.
AdjointResult rk_adjoint(VectorField& field, ErrorNorm* norm, const at::Tensor& t_out, const at::Tensor& ys,
                         const RkTape* tape, const at::Tensor& grad_ys, const AdjointOptions& options);

// The augmented state's segment ends, given the forward state's segments (ending at D), the parameter
// sizes and whether y is part of the state: [y segments], [a segments], [one per parameter tensor].
std::vector<int64_t> adjoint_segments(const std::vector<int64_t>& state_segments, int64_t D,
                                      const std::vector<int64_t>& param_sizes, bool with_y);

}  // namespace fde::solver
