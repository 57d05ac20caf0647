// Algebraically reversible Runge-Kutta (McCallum & Foster 2024, "Efficient, accurate and stable gradients
// for neural ODEs"): the coupled pair (y, z) and one step of an explicit base method Psi. With
// step_z = z_n + Psi_h(t_n, z_n) and step_y = y_{n+1} + Psi_{-h}(t_{n+1}, y_{n+1}):
//   y_{n+1} = lambda (y_n - z_n) + step_z          (= lambda y_n + (1 - lambda) z_n + Psi_h(t_n, z_n))
//   z_{n+1} = z_n + y_{n+1} - step_y               (= z_n - Psi_{-h}(t_{n+1}, y_{n+1}))
// and its algebraic inverse (the same two base steps, evaluated in the opposite order):
//   z_n = z_{n+1} - y_{n+1} + step_y
//   y_n = (y_{n+1} - step_z) / lambda + z_n
// Header-only and generic in the value type (double for tests, at::Tensor in the solver loop).
#pragma once

#include <cmath>

#include "core/macros.h"

namespace fde::core {

// The coupling parameter must lie in (0, 1] (the paper's default, and ours, is 0.999; lambda = 1 decouples
// the damping of y - z and is allowed but not recommended).
FDE_INLINE bool valid_coupling(double lambda) { return lambda > 0.0 && lambda <= 1.0 && isfinite(lambda); }

template <class T>
T reversible_y_forward(const T& y, const T& z, const T& step_z, double lambda) {
  return (y - z) * lambda + step_z;
}

template <class T>
T reversible_z_forward(const T& z, const T& y1, const T& step_y) {
  return z + y1 - step_y;
}

template <class T>
T reversible_z_inverse(const T& z1, const T& y1, const T& step_y) {
  return z1 - y1 + step_y;
}

template <class T>
T reversible_y_inverse(const T& y1, const T& z, const T& step_z, double lambda) {
  return (y1 - step_z) * (1.0 / lambda) + z;
}

}  // namespace fde::core
