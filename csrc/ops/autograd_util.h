// Shared by the ops' autograd.cpp files.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>

namespace fde::ops {

// Whether a graph must be recorded: grad mode is on and some input requires grad. Without one, an op's
// autograd kernel skips the autograd Function's bookkeeping and redispatches below Autograd (the solver's
// no-grad loop calls the differentiable ops several times per step).
inline bool any_requires_grad(std::initializer_list<const at::Tensor*> ts, at::TensorList ks) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t->requires_grad()) return true;
  for (const at::Tensor& k : ks)
    if (k.requires_grad()) return true;
  return false;
}

}  // namespace fde::ops
