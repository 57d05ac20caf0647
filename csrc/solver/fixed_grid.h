// The fixed-grid explicit Runge-Kutta loop (torchdiffeq's euler, midpoint, heun2, heun3, rk4 and any
// fixed-grid tableau): one step per interval of a given time grid, k0 = f(t0, y0) evaluated every step,
// outputs interpolated linearly or by cubic Hermite inside the step that reaches them. Forward
// (differentiable or recording a checkpoint tape) and the checkpoint replay.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tableau.h"
#include "solver/rk_solve.h"
#include "solver/vector_field.h"

namespace fde::solver {

struct FixedGridOptions {
  const core::Tableau* tableau = &core::kRk4;
  // Outputs by cubic Hermite interpolation (f(t1, y1) evaluated once per output time, as torchdiffeq);
  // false: linear.
  bool cubic = false;
  // torchdiffeq's perturb: f at the step start is evaluated one ulp after t0, stages at c = 1 one ulp
  // before t1 (in the direction of integration), so a field with jumps on the grid sees the right side.
  bool perturb = false;
  // Optional, not owned: torchdiffeq's callback_step before every step of the forward solve.
  StepCallbacks* callbacks = nullptr;
};

struct FixedGridStep {
  double t0, t1;
  at::Tensor y;                 // the state at t0
  int64_t out_first, out_last;  // output rows interpolated inside this step
};

struct FixedGridTape {
  FixedGridOptions options;
  std::vector<FixedGridStep> steps;
  at::Tensor t_out;  // float64 [T] on the CPU
  at::Tensor y0;     // [B, D]
};

struct FixedGridResult {
  at::Tensor ys;       // [T, B, D]
  int64_t nfe = 0;
  int64_t n_steps = 0;
  std::shared_ptr<FixedGridTape> tape;  // LoopMode::kRecord only
};

// y0: [B, D] float32/float64 contiguous (all samples share the grid); grid: float64 [G] on the CPU, strictly
// monotone, grid[0] == t_out[0] and grid[G-1] == t_out[T-1]; t_out: float64 [T] on the CPU, strictly monotone
// in the grid's direction. mode: kGraph (differentiable; under no_grad a plain solve) or kRecord.
FixedGridResult fixed_grid_solve(VectorField& field, const at::Tensor& y0, const at::Tensor& grid,
                                 const at::Tensor& t_out, const FixedGridOptions& options, LoopMode mode);

// Exact gradients of the recorded solve: each step replayed under autograd in reverse order.
// grad_ys: [T, B, D].
CheckpointGradients fixed_grid_backward(VectorField& field, const FixedGridTape& tape, const at::Tensor& grad_ys,
                                        const std::vector<at::Tensor>& params);

}  // namespace fde::solver
