// torchdiffeq's step callbacks: told about every step attempt of a host-driven loop, as torchdiffeq calls
// func.callback_step / callback_accept_step / callback_reject_step (t0, y0, dt). Optional (RkOptions and
// FixedGridOptions hold a pointer; null costs nothing); the masked loop never calls them (the Python layer
// runs a host-driven loop when a func defines them).
#pragma once

#include <ATen/core/Tensor.h>

namespace fde::solver {

class StepCallbacks {
 public:
  virtual ~StepCallbacks() = default;
  // Before the step attempt from (t0, y0) with the proposed step h (signed, before any cut onto a grid point).
  virtual void step(double t0, const at::Tensor& y0, double h) = 0;
  // After the attempt's decision, with the step h actually attempted.
  virtual void accept(double t0, const at::Tensor& y0, double h) = 0;
  virtual void reject(double t0, const at::Tensor& y0, double h) = 0;
};

}  // namespace fde::solver
