// What the solver loops see of the problem: a vector field (values and vector-Jacobian products) and,
// optionally, a user-supplied error norm. bindings.cpp implements both around Python callables; a native
// field (evaluated in C++) implements the same interface, and the loops never know which one they run.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace fde::solver {

// Held while the solver runs the autograd engine from C++: an implementation that holds an interpreter
// lock (Python's GIL) releases it for the scope of the returned object.
class ScopedUnlock {
 public:
  virtual ~ScopedUnlock() = default;
};

// f(t, y) and the cotangent of y of one vector-Jacobian product.
struct FieldVjp {
  at::Tensor f;       // [B, D], y's dtype
  at::Tensor grad_y;  // v^T df/dy, [B, D]
};

// One deferred vector-Jacobian product (VectorField::vjp_deferred).
struct DeferredVjp {
  at::Tensor t, y, v;  // the point and cotangent (the default implementation recomputes from them)
  at::Tensor f;        // or f with its autograd graph kept (solver/autograd_vjp.h)
};

class VectorField {
 public:
  virtual ~VectorField() = default;

  // t: [B] times (one per error group) in the state's dtype; y: [B, D]. Returns dy/dt as a contiguous
  // [B, D] tensor of y's dtype and device (the implementation validates what the user returned).
  virtual at::Tensor eval(const at::Tensor& t, const at::Tensor& y) = 0;

  // The field's parameters theta, flattened and concatenated in a fixed order: num_params() elements.
  virtual int64_t num_params() const { return 0; }

  // One vector-Jacobian product at (t, y) with cotangent v ([B, D] like y): returns f(t, y) and
  // v^T df/dy, and ADDS v^T df/dtheta into grad_params (a contiguous [num_params()] tensor of y's dtype
  // on y's device, preallocated by the caller; untouched when num_params() == 0). Parameters and
  // components of y that f does not depend on get zero cotangents. Keeps no graph.
  virtual FieldVjp vjp(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v, at::Tensor& grad_params) = 0;

  // Deferred parameter products, for per-sample adjoints: a sample's parameter cotangent is weighted by its
  // own step size and accept decision, known only after all stages of the step. vjp_deferred returns f(t, y)
  // and (when want_grad_y) v^T df/dy now, and keeps what it needs to add the parameter part later;
  // accumulate_deferred adds sum_k (w_k * v_k)^T df/dtheta into grad_params (w_k: [B] in y's dtype, one per
  // deferred product in call order; an undefined w_k skips that product: nothing is computed for it) and forgets them;
  // drop_deferred forgets them. The default recomputes each product in accumulate_deferred
  // (solver/autograd_vjp.h has the autograd implementation that keeps the graphs instead).
  virtual FieldVjp vjp_deferred(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v, bool want_grad_y);
  virtual void accumulate_deferred(const std::vector<at::Tensor>& weights, at::Tensor& grad_params);
  virtual void drop_deferred() { deferred_.clear(); }
  size_t num_deferred() const { return deferred_.size(); }

  // Called around torch::autograd::grad (which must not run under the GIL); null when nothing to release.
  virtual std::unique_ptr<ScopedUnlock> unlock() { return nullptr; }

 protected:
  std::vector<DeferredVjp> deferred_;
};

class ErrorNorm {
 public:
  virtual ~ErrorNorm() = default;
  // x: [B, D] scaled error (or scaled state); returns the norm of each group as float64 [B].
  virtual at::Tensor norm(const at::Tensor& x) = 0;
};

// A terminal event per sample: the solve of sample b stops where value(t, y)[b] changes sign (or becomes 0).
class EventFunction {
 public:
  virtual ~EventFunction() = default;
  // t: float64 [B]; y: [B, D]. Returns float64 [B] on the CPU.
  virtual at::Tensor value(const at::Tensor& t, const at::Tensor& y) = 0;
};

}  // namespace fde::solver
