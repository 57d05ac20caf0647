// The elementwise numerics of a ConcatSquash network with forward-mode tangents (FFJORD's dynamics, the native
// CNF field of solver/native_cnf.cpp): everything between the GEMMs, forward and reverse, over raw row-major
// buffers. Header-only, generic in the scalar type (float or double); no ATen.
//
// Layer k (o outputs), at time t, input h [N, i] and K tangent directions U [K, N, i]:
//   A = h W^T + b,  gate = sigmoid(gw t + gb),  shift = tw t        (gate, shift: [o], one time for the batch)
//   a = A * gate + shift                                            (the layer's output)
//   Q = U W^T,  Adot = Q * gate                                     (the output's tangents: linear in x)
// and on hidden layers h' = act(a), U' = act'(a) * Adot. The reverse pass needs act''(a) too: the tangents
// carry act', so a vector-Jacobian product through them differentiates it once more.
#pragma once

#include <cmath>
#include <cstdint>

namespace fde::core {

enum class Activation { kTanh, kSoftplus, kRelu, kElu, kSigmoid, kSilu };

// torch.nn.functional.softplus's default threshold (beta 1): linear above it, and so is its derivative.
inline constexpr double kSoftplusThreshold = 20.0;

// Whether the activation's derivatives need sigmoid(a) (computed by the caller into `aux`).
constexpr bool activation_needs_sigmoid(Activation act) {
  return act == Activation::kSoftplus || act == Activation::kSilu;
}

// act'(a) from the input a, the output y = act(a) and s = sigmoid(a) (when activation_needs_sigmoid).
template <Activation act, class S>
inline S activation_d1(S a, S y, S s) {
  if constexpr (act == Activation::kTanh) return S(1) - y * y;
  if constexpr (act == Activation::kSigmoid) return y * (S(1) - y);
  if constexpr (act == Activation::kSoftplus) return a > S(kSoftplusThreshold) ? S(1) : s;
  if constexpr (act == Activation::kSilu) return s * (S(1) + a * (S(1) - s));
  if constexpr (act == Activation::kElu) return a > S(0) ? S(1) : y + S(1);
  if constexpr (act == Activation::kRelu) return a > S(0) ? S(1) : S(0);
}

// act''(a), from the same quantities and d1 = act'(a).
template <Activation act, class S>
inline S activation_d2(S a, S y, S s, S d1) {
  if constexpr (act == Activation::kTanh) return S(-2) * y * d1;
  if constexpr (act == Activation::kSigmoid) return d1 * (S(1) - S(2) * y);
  if constexpr (act == Activation::kSoftplus) return a > S(kSoftplusThreshold) ? S(0) : s * (S(1) - s);
  if constexpr (act == Activation::kSilu) return s * (S(1) - s) * (S(2) + a * (S(1) - S(2) * s));
  if constexpr (act == Activation::kElu) return a > S(0) ? S(0) : y + S(1);
  if constexpr (act == Activation::kRelu) return S(0);
}

// gate[j] = sigmoid(gw[j] t + gb[j]), shift[j] = tw[j] t.
template <class S>
void concat_squash_time(const S* gw, const S* gb, const S* tw, S t, int64_t o, S* gate, S* shift) {
  for (int64_t j = 0; j < o; ++j) {
    gate[j] = S(1) / (S(1) + std::exp(-(gw[j] * t + gb[j])));
    shift[j] = tw[j] * t;
  }
}

// a = A * gate + shift over rows [rows, o].
template <class S>
void concat_squash_apply(const S* A, const S* gate, const S* shift, int64_t rows, int64_t o, S* a) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < o; ++j) a[r * o + j] = A[r * o + j] * gate[j] + shift[j];
}

// Adot = Q * gate over rows [rows, o] (in place allowed).
template <class S>
void concat_squash_tangent(const S* Q, const S* gate, int64_t rows, int64_t o, S* adot) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < o; ++j) adot[r * o + j] = Q[r * o + j] * gate[j];
}

// Hidden layer, after y = act(a) (and s = sigmoid(a) when needed) were computed: d1 = act'(a) [N, o] and the
// next tangents U = d1 * Adot [K, N, o].
template <Activation act, class S>
void activation_forward(const S* a, const S* y, const S* s, const S* adot, int64_t k_dirs, int64_t n, int64_t o,
                        S* d1, S* u) {
  const int64_t m = n * o;
  for (int64_t e = 0; e < m; ++e) d1[e] = activation_d1<act>(a[e], y[e], s ? s[e] : S(0));
  for (int64_t k = 0; k < k_dirs; ++k)
    for (int64_t e = 0; e < m; ++e) u[k * m + e] = d1[e] * adot[k * m + e];
}

// Reverse of a hidden layer's activation and tangent product, from the cotangents gh (of y) and gu (of U):
//   g_adot = gu * d1,   g_a = gh * d1 + act''(a) * sum_k gu_k * adot_k.
// g_adot may alias gu, g_a may alias gh.
template <Activation act, class S>
void activation_reverse(const S* a, const S* y, const S* s, const S* d1, const S* adot, const S* gh, const S* gu,
                        int64_t k_dirs, int64_t n, int64_t o, S* g_a, S* g_adot) {
  const int64_t m = n * o;
  for (int64_t e = 0; e < m; ++e) {
    S dot = S(0);
    for (int64_t k = 0; k < k_dirs; ++k) dot += gu[k * m + e] * adot[k * m + e];
    const S d2 = k_dirs > 0 ? activation_d2<act>(a[e], y[e], s ? s[e] : S(0), d1[e]) : S(0);
    g_a[e] = gh[e] * d1[e] + d2 * dot;
  }
  for (int64_t k = 0; k < k_dirs; ++k)
    for (int64_t e = 0; e < m; ++e) g_adot[k * m + e] = gu[k * m + e] * d1[e];
}

// Reverse of one ConcatSquash layer's elementwise part, given g_a [N, o] (cotangent of a) and g_adot [K, N, o]:
// accumulates the cotangent of the gate (sum over rows of g_a * A and g_adot * Q) and of the shift (sum of g_a)
// into g_gate / g_shift [o], and turns g_a into g_A = g_a * gate and g_adot into g_Q = g_adot * gate (in place).
template <class S>
void concat_squash_reverse(const S* A, const S* Q, const S* gate, int64_t n, int64_t k_dirs, int64_t o, S* g_a,
                           S* g_adot, S* g_gate, S* g_shift) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < o; ++j) {
      const S g = g_a[r * o + j];
      g_gate[j] += g * A[r * o + j];
      g_shift[j] += g;
      g_a[r * o + j] = g * gate[j];
    }
  for (int64_t r = 0; r < k_dirs * n; ++r)
    for (int64_t j = 0; j < o; ++j) {
      const S g = g_adot[r * o + j];
      g_gate[j] += g * Q[r * o + j];
      g_adot[r * o + j] = g * gate[j];
    }
}

// From the gate and shift cotangents to the time parameters' (added into g_gw, g_gb, g_tw) and t's (returned):
// gate = sigmoid(z), z = gw t + gb  =>  dz = g_gate * gate * (1 - gate).
template <class S>
double concat_squash_time_reverse(const S* gw, const S* tw, const S* gate, const S* g_gate, const S* g_shift, S t,
                                  int64_t o, S* g_gw, S* g_gb, S* g_tw) {
  double g_t = 0.0;
  for (int64_t j = 0; j < o; ++j) {
    const S dz = g_gate[j] * gate[j] * (S(1) - gate[j]);
    g_gw[j] += dz * t;
    g_gb[j] += dz;
    g_tw[j] += g_shift[j] * t;
    g_t += static_cast<double>(dz) * gw[j] + static_cast<double>(g_shift[j]) * tw[j];
  }
  return g_t;
}

}  // namespace fde::core
