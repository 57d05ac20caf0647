// What every RK loop shares (the masked and host-driven forward loops, the adjoint loop): the problem's
// layout, its tolerances and controller, the first derivative, the first step and the error control of
// one attempt.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "core/controller.h"
#include "core/tableau.h"
#include "solver/rk_solve.h"
#include "solver/vector_field.h"

namespace fde::solver {

// One attempt's outcome read on the host (joint mode, B == 1): the host-driven loops branch on it.
struct StepDecision {
  double ratio;
  bool accept;
  double h_next;
};
StepDecision read_decision(const at::Tensor& ratio, const at::Tensor& accept, const at::Tensor& h_next);

class RkProblem {
 public:
  // y0: [B, D]; t_out: float64 [T] or [B, T], monotone, t_out[..., 0] the initial time. Validates every
  // argument before anything is indexed (solver/solve_args.h).
  RkProblem(VectorField& field, ErrorNorm* norm, const at::Tensor& y0, const at::Tensor& t_out, const RkOptions& opt);

  // t0 [B] from the output grid.
  at::Tensor initial_time() const;

  // f(t0, y0); false when it is not finite (nothing to shrink at the initial point).
  bool first_derivative(const at::Tensor& t0, const at::Tensor& y, at::Tensor& k0, int64_t& nfe);

  // The signed first step [B]; step sizes are constants of the solve, never differentiated.
  at::Tensor first_step(const at::Tensor& t0, const at::Tensor& y, const at::Tensor& k0, int64_t& nfe);

  // Error ratio, accept and next step size of one attempt; never part of the graph.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> control(const at::Tensor& y, const at::Tensor& y1,
                                                         const std::vector<at::Tensor>& ks, const at::Tensor& h);

  VectorField& field_;
  ErrorNorm* norm_;
  const RkOptions& opt_;
  const core::Tableau& tab_;
  int64_t B_ = 0, D_ = 0, T_ = 0;
  at::ScalarType dtype_;
  at::Tensor t_out_, rtol_seg_, atol_seg_, rtol_el_, atol_el_;
  at::Tensor t_out_host_;  // t_out_ on the CPU (copied once, by the argument checks)
  std::vector<int64_t> segments_;
  core::ControllerParams ctrl_;  // exponent set from the method's order
  core::PackedControl ctrl_packed_;  // ctrl_ as the ops take it
  double direction_ = 1.0;
};

}  // namespace fde::solver
