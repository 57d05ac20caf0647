// The adaptive explicit Runge-Kutta loop (embedded pair, FSAL, dense output at the output times).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "core/controller.h"
#include "core/tableau.h"
#include "solver/vector_field.h"

namespace fde::solver {

struct RkOptions {
  const core::Tableau* tableau = &core::kDopri5;
  // Tolerances per segment of the state's D elements (one segment per tuple element); segment_ends
  // are the increasing end offsets, the last equal to D.
  std::vector<double> rtol{1e-7}, atol{1e-9};
  std::vector<int64_t> segment_ends;
  core::ControllerParams control;  // exponent is set from the tableau's order
  double first_step = 0.0;         // |h| of the first step; <= 0 selects it by Hairer's rule
  int64_t max_num_steps = (int64_t{1} << 31) - 1;  // attempts allowed between two outputs
  // Times to step exactly onto (step_t) and onto with a re-evaluation of f just after (jump_t), sorted in
  // the direction of integration and strictly after t0. Joint mode (B == 1) only.
  std::vector<double> step_t, jump_t;
  // The host reads "all samples done" once every check_every steps (1 on CPU; larger on CUDA so no
  // step waits for the device).
  int64_t check_every = 1;
};

struct RkResult {
  at::Tensor ys;        // [T, B, D], rows past a failure are undefined
  at::Tensor status;    // int32 [B], core::Status
  at::Tensor counters;  // int64 [B, 4], core::Counter
  at::Tensor t;         // float64 [B], time each sample reached
  at::Tensor h;         // float64 [B], the next step size each sample would take
  int64_t nfe = 0;      // vector-field evaluations (each evaluates every sample)
  int64_t n_steps = 0;  // loop iterations (step attempts of the batch)
};

// y0: [B, D] float32/float64 contiguous; t_out: float64 [T] (shared) or [B, T], monotone per sample,
// t_out[..., 0] the initial time. `norm` may be null (the fused segmented RMS norm is used).
RkResult rk_solve(VectorField& field, ErrorNorm* norm, const at::Tensor& y0, const at::Tensor& t_out,
                  const RkOptions& options);

}  // namespace fde::solver
