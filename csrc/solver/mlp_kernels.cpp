#include "solver/mlp_kernels.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <bit>
#include <cmath>

#include "core/concat_squash.h"
#include "core/macros.h"

// FDE_CPU_CLONES (core/macros.h): each loop is also compiled for AVX2 and AVX-512, picked at load time.
#define FDE_CLONES FDE_CPU_CLONES

namespace fde::solver::mlp {
namespace {

using core::exp_f32;

// tanh in float, within ~1.3 ulp of the exact value (torch's is within 0.5): for |x| < 0.625 Cephes tanhf's odd
// polynomial (no cancellation near 0, so the relative error stays small there), above 1 - 2 / (e^{2|x|} + 1)
// (no cancellation: the result is > 0.55). |x| is clamped at 10, where tanh already rounds to 1; NaN becomes 0
// before the float -> int conversion (undefined for NaN) and is put back at the end; the sign is copied last,
// so tanh(-0) = -0. Both branches are computed and one selected, so the loop vectorises.
inline float tanh_f32(float x) {
  const float ax0 = std::fabs(x);
  const bool nan = ax0 != ax0;
  const float ax = nan ? 0.0f : (ax0 < 10.0f ? ax0 : 10.0f);
  const float z = ax * ax;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = (p * z) * ax + ax;
  const float large = 1.0f - 2.0f / (exp_f32(ax + ax) + 1.0f);
  const float r = std::copysign(ax < 0.625f ? small : large, x);
  return nan ? x : r;
}

// relu propagates NaN like torch's (clamp_min): NaN < 0 is false.
template <typename T>
inline T relu(T x) {
  return x < T(0) ? T(0) : x;
}

template <typename T, typename Act>
inline void bias_act_rows(T* __restrict x, const T* __restrict bias, int64_t rows, int64_t cols, Act act) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict row = x + r * cols;
    if (bias != nullptr) {
      for (int64_t c = 0; c < cols; ++c) row[c] = act(row[c] + bias[c]);
    } else {
      for (int64_t c = 0; c < cols; ++c) row[c] = act(row[c]);
    }
  }
}

enum class Fused { kIdentity, kTanh, kRelu };

FDE_CLONES void bias_act_chunk(float* x, const float* bias, int64_t rows, int64_t cols, Fused f) {
  switch (f) {
    case Fused::kIdentity: return bias_act_rows(x, bias, rows, cols, [](float v) { return v; });
    case Fused::kTanh: return bias_act_rows(x, bias, rows, cols, [](float v) { return tanh_f32(v); });
    case Fused::kRelu: return bias_act_rows(x, bias, rows, cols, [](float v) { return relu(v); });
  }
}

template <typename T>
inline void act_grad_impl(T* __restrict g, const T* __restrict x, const T* __restrict y, const T* __restrict s,
                          int64_t n, MlpActivation a) {
  core::dispatch_activation(a, [&](auto act) {
    for (int64_t i = 0; i < n; ++i)
      g[i] *= core::activation_d1<decltype(act)::value, T>(x ? x[i] : T(0), y ? y[i] : T(0), s ? s[i] : T(0));
  });
}

FDE_CLONES void act_grad_chunk(float* g, const float* x, const float* y, const float* s, int64_t n, MlpActivation a) {
  act_grad_impl(g, x, y, s, n, a);
}
FDE_CLONES void act_grad_chunk(double* g, const double* x, const double* y, const double* s, int64_t n,
                               MlpActivation a) {
  act_grad_impl(g, x, y, s, n, a);
}

template <typename T>
inline void column_sums_impl(T* __restrict acc, const T* __restrict g, int64_t rows, int64_t cols,
                             T* __restrict scratch) {
  std::fill(scratch, scratch + cols, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict row = g + r * cols;
    for (int64_t c = 0; c < cols; ++c) scratch[c] += row[c];
  }
  for (int64_t c = 0; c < cols; ++c) acc[c] += scratch[c];
}

FDE_CLONES void column_sums_chunk(float* acc, const float* g, int64_t rows, int64_t cols, float* scratch) {
  column_sums_impl(acc, g, rows, cols, scratch);
}
FDE_CLONES void column_sums_chunk(double* acc, const double* g, int64_t rows, int64_t cols, double* scratch) {
  column_sums_impl(acc, g, rows, cols, scratch);
}

// Work per at::parallel_for task: below ~32k elements a loop takes a few microseconds, less than waking threads.
constexpr int64_t kGrainElements = 32768;


template <typename T>
void activation_grad_impl(T* g, const T* x, const T* y, const T* s, int64_t n, MlpActivation a) {
  if (n <= 0) return;
  auto at_off = [](const T* p, int64_t i) { return p == nullptr ? p : p + i; };
  at::parallel_for(0, n, kGrainElements, [&](int64_t i0, int64_t i1) {
    act_grad_chunk(g + i0, at_off(x, i0), at_off(y, i0), at_off(s, i0), i1 - i0, a);
  });
}

}  // namespace

bool fuses_activation(MlpActivation a) { return a == MlpActivation::kTanh || a == MlpActivation::kRelu; }

void bias_activation(float* x, const float* bias, int64_t rows, int64_t cols, bool activate, MlpActivation a) {
  Fused f = Fused::kIdentity;
  if (activate) {
    TORCH_CHECK(fuses_activation(a), "fastdiffeq: internal error: activation not fused");
    f = a == MlpActivation::kTanh ? Fused::kTanh : Fused::kRelu;
  }
  if (rows <= 0 || cols <= 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / cols);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    bias_act_chunk(x + r0 * cols, bias, r1 - r0, cols, f);
  });
}

void activation_grad(float* g, const float* x, const float* y, const float* s, int64_t n, MlpActivation a) {
  activation_grad_impl(g, x, y, s, n, a);
}
void activation_grad(double* g, const double* x, const double* y, const double* s, int64_t n, MlpActivation a) {
  activation_grad_impl(g, x, y, s, n, a);
}

// Serial: the bias cotangent is a few hundred columns; splitting rows across threads would need a reduction.
void add_column_sums(float* acc, const float* g, int64_t rows, int64_t cols, float* scratch) {
  if (cols > 0) column_sums_chunk(acc, g, rows, cols, scratch);
}
void add_column_sums(double* acc, const double* g, int64_t rows, int64_t cols, double* scratch) {
  if (cols > 0) column_sums_chunk(acc, g, rows, cols, scratch);
}

#define FDE_NARROW_KERNELS(S)                                                                                      \
  FDE_CLONES void narrow_inner_matmul(const S* a, const S* b, const S* bias, int64_t rows, int64_t p, int64_t q,  \
                                      S* out) {                                                                    \
    core::narrow_inner_matmul(a, b, bias, rows, p, q, out);                                                        \
  }                                                                                                                \
  FDE_CLONES void narrow_outer_matmul(const S* a, const S* b, const S* bias, int64_t rows, int64_t p, int64_t q,  \
                                      S* out) {                                                                    \
    core::narrow_outer_matmul(a, b, bias, rows, p, q, out);                                                        \
  }                                                                                                                \
  FDE_CLONES void narrow_gram(const S* narrow, const S* wide, int64_t rows, int64_t p, int64_t q, S* out) {        \
    core::narrow_gram(narrow, wide, rows, p, q, out);                                                              \
  }
FDE_NARROW_KERNELS(float)
FDE_NARROW_KERNELS(double)
#undef FDE_NARROW_KERNELS

}  // namespace fde::solver::mlp
