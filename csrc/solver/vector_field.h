// What the solver loops see of the problem: a vector field and, optionally, a user-supplied error norm.
// bindings.cpp implements both around Python callables; the loops never see Python.
#pragma once

#include <ATen/ATen.h>

#include <memory>

namespace fde::solver {

class VectorField {
 public:
  virtual ~VectorField() = default;
  // t: [B] times (one per error group) in the state's dtype; y: [B, D]. Returns dy/dt as a contiguous
  // [B, D] tensor of y's dtype and device (the implementation validates what the user returned).
  virtual at::Tensor eval(const at::Tensor& t, const at::Tensor& y) = 0;
  // Called around torch::autograd::grad (which must not run under the GIL); null when nothing to release.
  virtual std::unique_ptr<class ScopedUnlock> unlock() { return nullptr; }
};

class ErrorNorm {
 public:
  virtual ~ErrorNorm() = default;
  // x: [B, D] scaled error (or scaled state); returns the norm of each group as float64 [B].
  virtual at::Tensor norm(const at::Tensor& x) = 0;
};

}  // namespace fde::solver

namespace fde::solver {

// Held while the solver runs the autograd engine from C++: an implementation that holds an interpreter
// lock (Python's GIL) releases it for the scope of the returned object.
class ScopedUnlock {
 public:
  virtual ~ScopedUnlock() = default;
};

}  // namespace fde::solver
