// Initial step selection (Hairer, Norsett & Wanner I, II.4), as torchdiffeq does it: two evaluations of f
// counting f0; returns |h| per group as float64 [B].
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "solver/vector_field.h"

namespace fde::solver {

struct InitialStepInput {
  const at::Tensor& y0;     // [B, D]
  const at::Tensor& f0;     // f(t0, y0)
  const at::Tensor& t0;     // float64 [B]
  double direction;         // +1 or -1
  const at::Tensor& rtol;   // float64 [D]
  const at::Tensor& atol;   // float64 [D]
  const std::vector<int64_t>& segment_ends;
  int order;                // method order - 1, as torchdiffeq passes it
};

at::Tensor select_initial_step(VectorField& field, ErrorNorm* norm, const InitialStepInput& in);

}  // namespace fde::solver
