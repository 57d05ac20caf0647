// Vector-Jacobian products through the autograd engine, for fields whose values are computed by torch
// operators (a Python callable): the engine runs from C++ with the field's interpreter lock released.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "solver/vector_field.h"

namespace fde::solver {

// torch::autograd::grad of those outputs that are part of a graph (paired with a defined cotangent),
// w.r.t. inputs, with field.unlock() held; inputs the outputs do not reach get zeros. Keeps no graph.
std::vector<at::Tensor> engine_grad(VectorField& field, const std::vector<at::Tensor>& outputs,
                                    const std::vector<at::Tensor>& cotangents, const std::vector<at::Tensor>& inputs);

// VectorField::vjp for a field evaluated by field.eval under autograd: f at a detached copy of y that
// requires grad, then one engine call w.r.t. y and params; the parameters' cotangents are added into
// grad_params in the order of params (each flattened).
FieldVjp autograd_vjp(VectorField& field, const std::vector<at::Tensor>& params, const at::Tensor& t,
                      const at::Tensor& y, const at::Tensor& v, at::Tensor& grad_params);

// VectorField::vjp_deferred under autograd: f at a detached copy of y that requires grad, v^T df/dy now (the
// graph kept when there are parameters), the product recorded in `store`.
FieldVjp autograd_vjp_deferred(VectorField& field, const std::vector<at::Tensor>& params,
                               std::vector<DeferredVjp>& store, const at::Tensor& t, const at::Tensor& y,
                               const at::Tensor& v, bool want_grad_y);

// VectorField::accumulate_deferred under autograd: ONE engine call over the kept graphs with the weighted
// cotangents, added into grad_params; `store` is emptied (the graphs are freed).
void autograd_accumulate_deferred(VectorField& field, const std::vector<at::Tensor>& params,
                                  std::vector<DeferredVjp>& store, const std::vector<at::Tensor>& weights,
                                  at::Tensor& grad_params);

// The last piece of a checkpoint replay: f(t0, y0) fed the first step's FSAL derivative k0; returns the
// cotangents [y0, params...] of a_k (k0's cotangent) through that evaluation. Adds 1 to nfe.
std::vector<at::Tensor> first_derivative_vjp(VectorField& field, const at::Tensor& t0, const at::Tensor& y0,
                                             const at::Tensor& a_k, const std::vector<at::Tensor>& params,
                                             int64_t& nfe);

// Total number of elements of params (the length of the flat parameter cotangent).
int64_t count_params(const std::vector<at::Tensor>& params);

}  // namespace fde::solver
