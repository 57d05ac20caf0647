// The activations of fastdiffeq's native networks (fastdiffeq.nn.ACTIVATIONS' names) and their first and second
// derivatives, from the input a, the output y = act(a) and s = sigmoid(a) (whichever each formula needs): the
// formulas of torch's backward. Header-only, generic in the scalar type; no ATen.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace fde::core {

enum class Activation { kTanh, kSoftplus, kRelu, kElu, kSigmoid, kSilu };

// torch.nn.functional.softplus's default threshold (beta 1): linear above it, and so is its derivative.
inline constexpr double kSoftplusThreshold = 20.0;

// Whether the derivatives need s = sigmoid(a) (the caller computes it).
constexpr bool activation_needs_sigmoid(Activation act) {
  return act == Activation::kSoftplus || act == Activation::kSilu;
}

// act'(a). relu and elu test y > 0 (equivalently a > 0, so callers need not keep a): NaN gets the a <= 0 branch, as
// torch's backward.
template <Activation act, class S>
inline S activation_d1(S a, S y, S s) {
  if constexpr (act == Activation::kTanh) return S(1) - y * y;
  if constexpr (act == Activation::kSigmoid) return (S(1) - y) * y;
  if constexpr (act == Activation::kSoftplus) return a > S(kSoftplusThreshold) ? S(1) : s;
  if constexpr (act == Activation::kSilu) return s * (S(1) + a * (S(1) - s));
  if constexpr (act == Activation::kElu) return y > S(0) ? S(1) : y + S(1);
  if constexpr (act == Activation::kRelu) return y > S(0) ? S(1) : S(0);
}

// act''(a), from the same quantities and d1 = act'(a).
template <Activation act, class S>
inline S activation_d2(S a, S y, S s, S d1) {
  if constexpr (act == Activation::kTanh) return S(-2) * y * d1;
  if constexpr (act == Activation::kSigmoid) return d1 * (S(1) - S(2) * y);
  if constexpr (act == Activation::kSoftplus) return a > S(kSoftplusThreshold) ? S(0) : s * (S(1) - s);
  if constexpr (act == Activation::kSilu) return s * (S(1) - s) * (S(2) + a * (S(1) - S(2) * s));
  if constexpr (act == Activation::kElu) return y > S(0) ? S(0) : y + S(1);
  if constexpr (act == Activation::kRelu) return S(0);
}

// softplus from s = sigmoid(a) with one log1p instead of torch's exp and log1p (the derivatives need s anyway):
//   softplus(a) = max(a, 0) - log1p(-min(s, 1 - s))
// (1 - s is exact for s >= 1/2; for a < 0 the log1p of -s keeps tiny results relatively accurate), and a itself
// above the threshold, as torch. Two passes around the caller's vectorised log1p: the argument, then the result.
template <class S>
inline S softplus_log1p_argument(S s) {
  return -(s < S(0.5) ? s : S(1) - s);
}
template <class S>
inline S softplus_from_log1p(S a, S log1p_value) {
  return a > S(kSoftplusThreshold) ? a : (a > S(0) ? a : S(0)) - log1p_value;
}

// e^x in float for x in [-87, 88] (the caller clamps; NaN must not reach it: the float -> int conversion is undefined
// for NaN): Cephes expf (range reduction by ln 2 in two parts, degree-6 polynomial, ~1 ulp). Rounding to the
// nearest integer by adding and subtracting 1.5 * 2^23 keeps it plain arithmetic that vectorises on every target
// (SSE2 has no vector round); 2^n is built from its exponent bits (n >= -126: a normal float).
inline float exp_f32(float x) {
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return p * scale;
}

// softplus(a) and s = sigmoid(a) in float from one exp and one division, e = e^{-|a|} in (0, 1]:
//   s = 1 / (1 + e) (a >= 0) or e / (1 + e),   softplus = max(a, 0) + log1p(e),
//   log1p(e) = e P(e), P a degree-9 polynomial fitted to log1p(e) / e on [0, 1] for relative error (4.7e-9 in
//   exact arithmetic, <= 1.6 ulp evaluated in float32), no division. a itself above torch's threshold 20. |a| is
//   clamped at 87 (e stays a normal float), so results that would be below ~1e-38 come out as ~1e-38 (torch's
//   are subnormal or 0). NaN propagates to both. Plain arithmetic, so the loop vectorises.
inline void softplus_sigmoid_f32(float a, float& y, float& s) {
  const float aa = std::fabs(a);
  const bool nan = aa != aa;
  // NaN fails the comparison and takes 87 (a finite argument for exp_f32's integer conversion): no branch around
  // the arithmetic, which would make the compiler mask every vector operation.
  const float x = aa < 87.0f ? aa : 87.0f;
  const float e = exp_f32(-x);
  const float r = 1.0f / (1.0f + e);
  float p = -3.244021209e-03f;
  p = p * e + 1.985144429e-02f;
  p = p * e - 5.695949867e-02f;
  p = p * e + 1.060365140e-01f;
  p = p * e - 1.530559063e-01f;
  p = p * e + 1.967593879e-01f;
  p = p * e - 2.495413423e-01f;
  p = p * e + 3.332996368e-01f;
  p = p * e - 4.999990165e-01f;
  p = p * e + 1.0f;
  const float log1p_e = e * p;
  const float softplus = a > float(kSoftplusThreshold) ? a : (a > 0.0f ? a : 0.0f) + log1p_e;
  const float sigmoid = a >= 0.0f ? r : e * r;
  y = nan ? a : softplus;
  s = nan ? a : sigmoid;
}

// fn(std::integral_constant<Activation, act>{}) for the runtime activation: one loop instance per activation.
template <class Fn>
inline void dispatch_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::kTanh: return fn(std::integral_constant<Activation, Activation::kTanh>{});
    case Activation::kSoftplus: return fn(std::integral_constant<Activation, Activation::kSoftplus>{});
    case Activation::kRelu: return fn(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kElu: return fn(std::integral_constant<Activation, Activation::kElu>{});
    case Activation::kSigmoid: return fn(std::integral_constant<Activation, Activation::kSigmoid>{});
    case Activation::kSilu: return fn(std::integral_constant<Activation, Activation::kSilu>{});
  }
}

}  // namespace fde::core
