// CPU loops of the native MLP field (solver/native_mlp.cpp): bias + activation fused into one pass over a float GEMM's
// output, the activation derivatives of the hand-written VJP, and the bias cotangent's column sums. Plain loops
// over raw contiguous float/double arrays that the compiler vectorises (this file is built at -O3, x86-64 builds
// also clone each loop for AVX2 and AVX-512 and pick one at load time); no torch dispatch per call.
#pragma once

#include <cstdint>

#include "core/activation.h"

namespace fde::solver {

using MlpActivation = core::Activation;  // the one activation enum (core/activation.h)

namespace mlp {

// Whether bias_activation() computes `a` itself (tanh, relu). The others take bias_activation's identity and then
// ATen's own in-place activation on the same buffer (sigmoid, silu, elu and softplus are already vectorised and
// cheap in torch; its float tanh is not: ~2.6-3.2 ns per element on this AMD EPYC against ~0.8 here).
bool fuses_activation(MlpActivation a);

// x[r, c] = act(x[r, c] + bias[c]) in place over a contiguous row-major float32 [rows, cols] array; bias may be null
// (no bias); act = identity when `activate` is false, otherwise `a` (which must be fused). Parallel over rows
// (at::parallel_for) for large arrays. Float64 needs none: the field keeps ATen's addmm and activations there.
void bias_activation(float* x, const float* bias, int64_t rows, int64_t cols, bool activate, MlpActivation a);

// g[i] *= act'(x[i]) in place, from the pre-activation x, the activation's output y and (softplus, silu) s =
// sigmoid(x) (the caller's, from ATen). The formulas of torch's backward: tanh 1 - y^2, sigmoid y (1 - y), relu
// [y > 0], elu [x > 0] or y + 1 (alpha 1), softplus [x > 20] or s, silu s (1 + x (1 - s)). x / s may be null for
// activations that do not use them.
void activation_grad(float* g, const float* x, const float* y, const float* s, int64_t n, MlpActivation a);
void activation_grad(double* g, const double* x, const double* y, const double* s, int64_t n, MlpActivation a);

// acc[c] += sum_r g[r, c] for a contiguous [rows, cols] g (the bias cotangent); sums the rows first (in
// `scratch`, cols elements) so a large accumulator does not swallow each row's small contribution.
void add_column_sums(float* acc, const float* g, int64_t rows, int64_t cols, float* scratch);
void add_column_sums(double* acc, const double* g, int64_t rows, int64_t cols, double* scratch);

// Matrix products with one narrow dimension (<= core::kNarrowWidth: a field's D-wide first and last layers, where
// BLAS runs at a fraction of its rate), the loops of core/concat_squash.h cloned for AVX2 / AVX-512. Row-major,
// contiguous. narrow_inner_matmul: out [R, q] = a [R, p] b [p, q] (+ bias), p narrow; narrow_outer_matmul:
// out [R, q] = a [R, p] b^T (b [q, p]) (+ bias), q narrow; narrow_gram: out [p, q] = narrow [R, p]^T wide [R, q].
void narrow_inner_matmul(const float* a, const float* b, const float* bias, int64_t rows, int64_t p, int64_t q,
                         float* out);
void narrow_inner_matmul(const double* a, const double* b, const double* bias, int64_t rows, int64_t p, int64_t q,
                         double* out);
void narrow_outer_matmul(const float* a, const float* b, const float* bias, int64_t rows, int64_t p, int64_t q,
                         float* out);
void narrow_outer_matmul(const double* a, const double* b, const double* bias, int64_t rows, int64_t p, int64_t q,
                         double* out);
void narrow_gram(const float* narrow, const float* wide, int64_t rows, int64_t p, int64_t q, float* out);
void narrow_gram(const double* narrow, const double* wide, int64_t rows, int64_t p, int64_t q, double* out);

}  // namespace mlp
}  // namespace fde::solver
