// The activations of fastdiffeq's native networks (fastdiffeq.nn.ACTIVATIONS' names) and their first and second
// derivatives, from the input a, the output y = act(a) and s = sigmoid(a) (whichever each formula needs): the
// formulas of torch's backward. Header-only, generic in the scalar type; no ATen.
#pragma once

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
