// Calls fn(std::integral_constant<int, n>{}) for n in [0, kMaxStages], so a CPU kernel's stage loop unrolls
// and its element loop vectorises for every stage count a tableau can have (csrc/core/tableau.h).
#pragma once

#include <c10/util/Exception.h>

#include <type_traits>
#include <utility>

#include "core/tableau.h"

namespace fde::ops::cpu {

template <class F, int... N>
decltype(auto) with_stage_count_impl(int n, F&& fn, std::integer_sequence<int, N...>) {
  using R = decltype(fn(std::integral_constant<int, 0>{}));
  TORCH_CHECK(n >= 0 && n <= core::kMaxStages, "fastdiffeq: at most ", core::kMaxStages,
              " stages are supported, got ", n);
  if constexpr (std::is_void_v<R>) {
    ((n == N ? (fn(std::integral_constant<int, N>{}), true) : false) || ...);
  } else {
    R out{};
    ((n == N ? (out = fn(std::integral_constant<int, N>{}), true) : false) || ...);
    return out;
  }
}

template <class F>
decltype(auto) with_stage_count(int n, F&& fn) {
  return with_stage_count_impl(n, std::forward<F>(fn), std::make_integer_sequence<int, core::kMaxStages + 1>{});
}

}  // namespace fde::ops::cpu
