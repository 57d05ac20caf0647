// The adaptive explicit Runge-Kutta loops (embedded pair, FSAL, dense output at the output times), and
// the checkpoint tape they can record.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/controller.h"
#include "core/tableau.h"
#include "solver/vector_field.h"

namespace fde::solver {

class ProgressSink;   // solver/progress.h
class StepCallbacks;  // solver/step_callbacks.h

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
  // Masked loop: the host reads "all samples done" once every check_every steps (1 on CPU; larger on
  // CUDA so no step waits for the device).
  int64_t check_every = 1;
  // Host-driven recording loop: also record each step's dense output (RecordedStep::mid_slope), so the
  // tape is a dense trajectory (the interpolated adjoint reads y(t) from it).
  bool record_dense = false;
  // Optional, not owned: told how far the solve has come, at most every progress->min_interval_s seconds
  // (solver/progress.h). Null: no progress is computed.
  ProgressSink* progress = nullptr;
  // Optional, not owned: torchdiffeq's step callbacks, called by the host-driven loops (B == 1) at every
  // step attempt. Null: nothing is called.
  StepCallbacks* callbacks = nullptr;
};

enum class LoopMode {
  // Sync-free: accept/t/h/status live in device tensors, the state is updated in place (no autograd).
  kMasked,
  // Host-driven (B == 1): the host reads accept each step and the state moves by reassignment, so the
  // solve is differentiable end to end (direct backprop; step sizes are constants).
  kGraph,
  // Host-driven without a graph, recording (t0, h, y, k0) of every accepted step for checkpoint replay.
  kRecord,
};

struct RecordedStep {
  double t0, h;
  at::Tensor y, k0;  // the state and FSAL derivative at the start of the step
  bool jump;         // the step ended on a jump_t point (f re-evaluated after it)
  int64_t out_first, out_last;  // output rows interpolated inside this step
  // Dense record (RkOptions::record_dense): the state and derivative at the end of the step (the next
  // step's y and k0, shared, except k1 after a jump: the left limit), and mid_slope = sum_j mid_j k_j, so
  // y(t0 + h/2) = y + h mid_slope. With these the step's interpolant is evaluated without its stages
  // (rk_dense_eval with stages {k0, mid_slope, k1} and mid coefficients kSlopeMid).
  at::Tensor y1, k1, mid_slope;
};

// The mid coefficients that make rk_dense_eval read (k0, mid_slope, k1) as a step's stages.
inline constexpr double kSlopeMid[3] = {0.0, 1.0, 0.0};

struct RkTape {
  const core::Tableau* tableau = nullptr;
  std::vector<RecordedStep> steps;
  at::Tensor t_out;  // float64 [T] on the state's device
  at::Tensor y0;     // [1, D]
  double t0 = 0.0, direction = 1.0;
};

struct RkResult {
  at::Tensor ys;        // [T, B, D]; rows a sample did not reach (it failed first) are NaN
  at::Tensor status;    // int32 [B], core::Status
  at::Tensor counters;  // int64 [B, 4], core::Counter
  at::Tensor t;         // float64 [B], time each sample reached
  at::Tensor h;         // float64 [B], the next step size of each sample still running (0 once stopped)
  int64_t nfe = 0;      // vector-field evaluations (each evaluates every sample)
  int64_t n_steps = 0;  // loop iterations (step attempts of the batch)
  std::shared_ptr<RkTape> tape;  // kRecord only
};

// y0: [B, D] float32/float64 contiguous; t_out: float64 [T] (shared) or [B, T], monotone per sample,
// t_out[..., 0] the initial time. `norm` may be null (the fused segmented RMS norm and the fused initial
// step are used). Every argument is validated first (solve_args.h: ValueError / TypeError in Python).
RkResult rk_solve(VectorField& field, ErrorNorm* norm, const at::Tensor& y0, const at::Tensor& t_out,
                  const RkOptions& options, LoopMode mode = LoopMode::kMasked);

struct CheckpointGradients {
  at::Tensor grad_y0;                   // [1, D]
  std::vector<at::Tensor> grad_params;  // one per parameter (zeros when unused)
  int64_t nfe = 0;
};

// Exact gradients of the discrete solve recorded in `tape`: each accepted step is replayed under
// autograd in reverse order and back-propagated through, one step's graph at a time.
// grad_ys: [T, 1, D] cotangents of the outputs (validated: solve_args.h).
CheckpointGradients rk_checkpoint_backward(VectorField& field, const RkTape& tape, const at::Tensor& grad_ys,
                                           const std::vector<at::Tensor>& params);

}  // namespace fde::solver
