// The residual networks of Sander, Ablin & Peyre (NeurIPS 2022) as discretised neural ODEs on [0, 1] with
// step 1/N, and their reverse-time reconstruction (REFERENCE §6). f_n is block n's output.
//   ResNet (Euler):  x_{n+1} = x_n + f_n(x_n) / N;     reverse: x_n ~ x_{n+1} - f_n(x_{n+1}) / N
//   HeunNet:         u = x_n + f_n(x_n) / N;  x_{n+1} = x_n + (f_n(x_n) + f_{n+1}(u)) / (2N)
//                    reverse: u ~ x_{n+1} - f_{n+1}(x_{n+1}) / N;  x_n ~ x_{n+1} - (f_{n+1}(x_{n+1}) + f_n(u)) / (2N)
// Header-only and generic in the value type (double or at::Tensor).
#pragma once

namespace fde::core {

// x + f / N: an Euler step forward (sign +1) or backward (sign -1) in depth.
template <class T>
T residual_euler(const T& x, const T& f, double inv_n, double sign = 1.0) {
  return x + f * (sign * inv_n);
}

// x + (f_a + f_b) / (2N): Heun's corrector forward (sign +1) or backward (sign -1).
template <class T>
T residual_heun(const T& x, const T& f_a, const T& f_b, double inv_n, double sign = 1.0) {
  return x + (f_a + f_b) * (0.5 * sign * inv_n);
}

}  // namespace fde::core
