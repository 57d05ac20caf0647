// The stages of one explicit RK step, shared by every loop (masked, host-driven) and by checkpoint
// replay. Differentiable when y / k0 / the field's parameters require grad (rk_stage has an autograd
// formula).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/tableau.h"
#include "solver/vector_field.h"

namespace fde::solver {

struct StepStages {
  std::vector<at::Tensor> ks;  // k_0 .. k_{S-1}; k_{S-1} = f(t0 + h, y1) when the method is FSAL
  at::Tensor y1;               // the propagated solution (the last stage's input when FSAL)
};

// y, k0: [B, D]; t0, h: float64 [B] on y's device. Adds S-1 to nfe.
StepStages rk_stages(VectorField& field, const core::Tableau& tab, const at::Tensor& y, const at::Tensor& k0,
                     const at::Tensor& t0, const at::Tensor& h, int64_t& nfe);

}  // namespace fde::solver
