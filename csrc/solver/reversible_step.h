// What the joint and per-sample reversible loops share (solver/reversible.cpp, reversible_per_sample.cpp): one
// base step of the tableau and the dense output of a pair's second base step.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>

#include <cstdint>

#include "core/tableau.h"
#include "ops/registry.h"
#include "solver/rk_step.h"
#include "solver/vector_field.h"

namespace fde::solver {

// One step of the base method from (t0, x) with step h (float64 [B], signed; 0 leaves a row where it is):
// StepStages::y1 = x + Psi_h(t0, x) and the stages (ks[0] = f(t0, x), evaluated here: the two base steps of a
// reversible step start at different points, so nothing is first-same-as-last between them).
inline StepStages base_step(VectorField& field, const core::Tableau& tab, const at::Tensor& t0, const at::Tensor& h,
                            const at::Tensor& x, int64_t& nfe) {
  const at::Tensor k0 = field.eval(t0.to(x.scalar_type()), x);
  ++nfe;
  return rk_stages(field, tab, x, k0, t0, h, nfe);
}

inline StepStages base_step(VectorField& field, const core::Tableau& tab, double t0, double h, const at::Tensor& x,
                            int64_t& nfe) {
  const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(x.device());
  return base_step(field, tab, at::full({x.size(0)}, t0, time_opts), at::full({x.size(0)}, h, time_opts), x, nfe);
}

// Adaptive methods: outputs inside a step are the base method's dense output (the quartic the plain solves use)
// of the pair's second base step, the one from (t1, y1) back by h_back = -h: it follows the solution through y1
// and needs no extra evaluation. t1, h_back: float64 [B]; t_eval: float64 [R]; returns [R, B, D].
inline at::Tensor backward_dense(const core::Tableau& tab, const at::Tensor& y1, const StepStages& from_y1,
                                 const at::Tensor& t1, const at::Tensor& h_back, const at::Tensor& t_eval) {
  return ops::call<ops::RkDenseEval>(y1, from_y1.y1, from_y1.ks, h_back, t1, t_eval,
                                     at::ArrayRef<double>(tab.mid, tab.stages));
}

inline at::Tensor backward_dense(const core::Tableau& tab, const at::Tensor& y1, const StepStages& from_y1, double t1,
                                 double h_back, const at::Tensor& t_eval) {
  const auto time_opts = at::TensorOptions().dtype(at::kDouble).device(y1.device());
  return backward_dense(tab, y1, from_y1, at::full({y1.size(0)}, t1, time_opts),
                        at::full({y1.size(0)}, h_back, time_opts), t_eval);
}

}  // namespace fde::solver
