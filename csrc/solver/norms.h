// Norms over error groups outside the fused kernel: for the initial step and for user-supplied norms.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "solver/vector_field.h"

namespace fde::solver {

// Per-element tolerances [D] (float64) expanded from per-segment values.
at::Tensor expand_segments(const std::vector<double>& values, const std::vector<int64_t>& segment_ends,
                           const at::Tensor& like);

// x: [B, D]. The user's norm when given, else max over segments of the RMS within each segment.
// Returns float64 [B].
at::Tensor group_norm(const at::Tensor& x, const std::vector<int64_t>& segment_ends, ErrorNorm* norm);

}  // namespace fde::solver
