// Whether every element of a floating tensor is finite, without allocating on the CPU (the check runs on
// y0 and f(t0, y0) at the start of every solve, where at::isfinite(x).all() cost a few microseconds).
#pragma once

#include <ATen/core/Tensor.h>

namespace fde::solver {

bool all_finite(const at::Tensor& x);

}  // namespace fde::solver
