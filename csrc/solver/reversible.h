// Algebraically reversible Runge-Kutta solves (gradient='reversible'): the coupled pair (y, z) stepped by
// core/reversible.h around any explicit base tableau, adaptive or on a fixed grid. The forward keeps only
// the current pair and the accepted (t0, h) of every step; the backward walks the steps in reverse,
// rebuilds each earlier pair from the later one (exactly, to rounding) and back-propagates through that
// step's two base steps, one at a time. Gradients are those of the discrete reversible solve.
// Output times are not stepped to (like torchdiffeq, the adaptive solve may step past t[-1]); an output inside
// step n costs no evaluation: adaptive methods take the base method's dense output (the quartic the plain
// solves use) of step n's second base step, the one from (t_{n+1}, y_{n+1}) back to t_n, which follows the
// solution through y_{n+1}; fixed-grid methods the cubic Hermite interpolant through (y_n, f(t_n, y_n)) and
// (y_{n+1}, f(t_{n+1}, y_{n+1})) (core/fixed_grid_interp.h): f(t_{n+1}, y_{n+1}) is the first stage of that
// base step, f(t_0, y_0) one more evaluation.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <array>
#include <memory>
#include <vector>

#include "solver/rk_solve.h"
#include "solver/vector_field.h"

namespace fde::solver {

struct ReversibleOptions {
  // The base method, tolerances, controller, first step and max_num_steps (adaptive tableaus; step_t,
  // jump_t, record_dense, progress and callbacks are not supported and must be left empty).
  RkOptions rk;
  double coupling = 0.999;  // lambda in (0, 1] (core::valid_coupling)
  // Fixed-grid tableaus: the step end points, from t_out[0] to t_out[T-1], strictly monotone. Empty for
  // adaptive tableaus.
  std::vector<double> grid;
  // Tests: also return the pair's y after every step (ReversibleResult::states), O(steps) memory.
  bool keep_states = false;
};

struct ReversibleStep {
  double t0, h;
  int64_t out_first, out_last;  // output rows interpolated inside the step
};

struct ReversibleTape {
  const core::Tableau* tableau = nullptr;
  double coupling = 0.999;
  std::vector<ReversibleStep> steps;  // accepted steps in order
  at::Tensor y_end, z_end;            // the pair after the last step, [B, D]
  int64_t n_outputs = 0;
  double t0 = 0.0;                    // the initial time
  at::Tensor t_out;                   // float64 [T] on the CPU
};

struct ReversibleResult {
  at::Tensor ys;  // [T, B, D]; rows not reached (the solve failed first) are NaN
  int status = 0;  // core::Status
  double t_final = 0.0;
  int64_t nfe = 0, n_accepted = 0, n_rejected = 0;
  std::shared_ptr<ReversibleTape> tape;
  at::Tensor states;  // keep_states: [n_steps + 1, B, D], y at t0 and after every step
};

// y0: [1, D] float32/float64 contiguous (joint mode: one step size); t_out: float64 [T] on the CPU,
// strictly monotone. Runs without a graph (NoGradGuard).
ReversibleResult reversible_solve(VectorField& field, const at::Tensor& y0, const at::Tensor& t_out,
                                  const ReversibleOptions& options);

struct ReversibleGradients {
  at::Tensor grad_y0;                   // [1, D]
  std::vector<at::Tensor> grad_params;  // one per parameter (zeros when unused)
  at::Tensor states;                    // keep_states: [n_steps + 1, 1, D], y as the reverse walk rebuilt it
  int64_t nfe = 0;
};

// grad_ys: [T, 1, D] cotangents of the outputs (the state's dtype and device). The first step's interpolant
// uses f(t0, y0): its cotangent is pulled back through one more evaluation there.
ReversibleGradients reversible_backward(VectorField& field, const ReversibleTape& tape, const at::Tensor& grad_ys,
                                        const std::vector<at::Tensor>& params, bool keep_states = false);

// ---- Per-sample solves (solve_ivp): B independent problems, each with its own t, h, accept/reject, status.
// Host-driven: each iteration attempts one reversible step for every running sample (h = 0 for the others),
// reads the B decisions and moves the accepted rows (where()); a failed sample stops (status) and its later
// outputs stay NaN. The field's rows must not interact (as for every per-sample gradient).

struct SampleReversibleIteration {
  std::vector<double> t0, h;                       // [B]; h = 0 for the rows that did not move
  std::vector<std::array<int64_t, 3>> outputs;     // (sample, first, last): output rows inside its step
};

struct SampleReversibleTape {
  const core::Tableau* tableau = nullptr;
  double coupling = 0.999;
  std::vector<SampleReversibleIteration> iterations;
  at::Tensor y_end, z_end;  // [B, D]
  at::Tensor t_out;         // float64 [T] or [B, T] on the CPU
};

struct SampleReversibleResult {
  at::Tensor ys;        // [T, B, D], NaN where not reached
  at::Tensor status;    // int32 [B]
  at::Tensor counters;  // int64 [B, core::kNumCounters]
  at::Tensor t;         // float64 [B], the time each sample reached
  int64_t nfe = 0;
  std::shared_ptr<SampleReversibleTape> tape;
};

// y0: [B, D]; t_out: float64 [T] or [B, T] (one direction). Adaptive tableaus only. No graph.
SampleReversibleResult reversible_solve_per_sample(VectorField& field, const at::Tensor& y0, const at::Tensor& t_out,
                                                   const ReversibleOptions& options);

// grad_ys: [T, B, D]; returns grad_y0 [B, D] and the parameters' gradients.
ReversibleGradients reversible_backward_per_sample(VectorField& field, const SampleReversibleTape& tape,
                                                   const at::Tensor& grad_ys, const std::vector<at::Tensor>& params);

}  // namespace fde::solver
