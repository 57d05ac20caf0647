// The elementwise numerics of a ConcatSquash network with forward-mode tangents (FFJORD's dynamics, the native
// CNF field of solver/native_cnf.cpp): everything between the GEMMs, forward and reverse, over raw row-major
// buffers. Header-only, generic in the scalar type (float or double); no ATen.
//
// Layer k (o outputs), at time t, input h [N, i] and K tangent directions U [K, N, i]:
//   gate = sigmoid(gw t + gb),  shift = tw t                        ([o]: one time for the whole batch)
//   a = (h W^T + b) * gate + shift                                  (the layer's output)
//   Adot = (U W^T) * gate                                           (the output's tangents: linear in x)
// and on hidden layers h' = act(a), U' = act'(a) * Adot. The reverse pass needs act''(a) too: the tangents
// carry act', so a vector-Jacobian product through them differentiates it once more.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/activation.h"

namespace fde::core {

// The layer at time t with its gate folded into the weights (so one GEMM gives a, another Adot, and neither A nor
// Q is kept): gate = sigmoid(gw t + gb), W~ = diag(gate) W [o, i], b~ = gate * b + tw t.
// Also writes w_folded's transpose [i, o] (the narrow products read it).
template <class S>
void concat_squash_fold(const S* W, const S* b, const S* gw, const S* gb, const S* tw, S t, int64_t o, int64_t i,
                        S* gate, S* w_folded, S* w_folded_t, S* b_folded) {
  for (int64_t j = 0; j < o; ++j) {
    gate[j] = S(1) / (S(1) + std::exp(-(gw[j] * t + gb[j])));
    b_folded[j] = gate[j] * b[j] + tw[j] * t;
    for (int64_t c = 0; c < i; ++c) {
      w_folded[j * i + c] = gate[j] * W[j * i + c];
      w_folded_t[c * o + j] = w_folded[j * i + c];
    }
  }
}

// The elementwise passes below run over blocks of this many elements: act'(a) of a block is computed once into
// a local array and reused for every tangent direction while the block is in cache (act' is never stored).
inline constexpr int64_t kBlock = 256;

// act'(a) for elements [e0, e0 + len) into d1.
template <Activation act, class S>
inline void activation_d1_block(const S* a, const S* y, const S* s, int64_t e0, int64_t len, S* d1) {
  for (int64_t e = 0; e < len; ++e) d1[e] = activation_d1<act>(a[e0 + e], y[e0 + e], s ? s[e0 + e] : S(0));
}

// Hidden activation, after y = act(a) (and s = sigmoid(a) where needed) were computed: the next layer's tangents
// U = act'(a) * Adot [K, N, o].
template <Activation act, class S>
void activation_forward(const S* a, const S* y, const S* s, const S* adot, int64_t k_dirs, int64_t n, int64_t o,
                        S* u) {
  const int64_t m = n * o;
  S d1[kBlock];
  for (int64_t e0 = 0; e0 < m; e0 += kBlock) {
    const int64_t len = e0 + kBlock <= m ? kBlock : m - e0;
    activation_d1_block<act>(a, y, s, e0, len, d1);
    for (int64_t k = 0; k < k_dirs; ++k) {
      const S* ad = adot + k * m + e0;
      S* uk = u + k * m + e0;
      for (int64_t e = 0; e < len; ++e) uk[e] = d1[e] * ad[e];
    }
  }
}

// Reverse of a hidden activation, in place: g holds [g_y; g_u] (cotangents of y [N, o] and U [K, N, o]) and
// becomes [g_a; g_adot] with g_adot = g_u * act'(a) and g_a = g_y * act'(a) + act''(a) * sum_k g_u_k * adot_k.
template <Activation act, class S>
void activation_reverse(const S* a, const S* y, const S* s, const S* adot, int64_t k_dirs, int64_t n, int64_t o,
                        S* g) {
  const int64_t m = n * o;
  S d1[kBlock], dot[kBlock];
  for (int64_t e0 = 0; e0 < m; e0 += kBlock) {
    const int64_t len = e0 + kBlock <= m ? kBlock : m - e0;
    activation_d1_block<act>(a, y, s, e0, len, d1);
    for (int64_t e = 0; e < len; ++e) dot[e] = S(0);
    for (int64_t k = 0; k < k_dirs; ++k) {
      S* gu = g + (k + 1) * m + e0;
      const S* ad = adot + k * m + e0;
      for (int64_t e = 0; e < len; ++e) {
        dot[e] += gu[e] * ad[e];
        gu[e] *= d1[e];
      }
    }
    S* ga = g + e0;
    if (k_dirs == 0) {
      for (int64_t e = 0; e < len; ++e) ga[e] *= d1[e];
    } else {
      for (int64_t e = 0; e < len; ++e) {
        const int64_t i = e0 + e;
        ga[e] = ga[e] * d1[e] + activation_d2<act>(a[i], y[i], s ? s[i] : S(0), d1[e]) * dot[e];
      }
    }
  }
}

// Matrix products with one narrow dimension (a ConcatSquash network's first and last layers map D <-> hidden with
// D small, where BLAS's kernels run at a fraction of their rate): plain loops vectorised along the wide dimension,
// summing in a fixed order whatever the instruction set.
inline constexpr int64_t kNarrowWidth = 16;

// out [R, q] = a [R, p] b [p, q] (+ bias [q]), p narrow.
template <class S>
void narrow_inner_matmul(const S* a, const S* b, const S* bias, int64_t rows, int64_t p, int64_t q, S* out) {
  for (int64_t r = 0; r < rows; ++r) {
    S* o = out + r * q;
    const S* ar = a + r * p;
    for (int64_t j = 0; j < q; ++j) o[j] = bias ? bias[j] : S(0);
    for (int64_t c = 0; c < p; ++c) {
      const S x = ar[c];
      const S* bc = b + c * q;
      for (int64_t j = 0; j < q; ++j) o[j] += x * bc[j];
    }
  }
}

// out [R, q] = a [R, p] b^T (b: [q, p]) (+ bias [q]), q narrow: q dot products of length p per row, each over
// eight interleaved partial sums.
template <class S>
void narrow_outer_matmul(const S* a, const S* b, const S* bias, int64_t rows, int64_t p, int64_t q, S* out) {
  constexpr int64_t kLanes = 8;
  for (int64_t r = 0; r < rows; ++r) {
    const S* ar = a + r * p;
    for (int64_t j = 0; j < q; ++j) {
      const S* bj = b + j * p;
      S acc[kLanes] = {};
      int64_t c = 0;
      for (; c + kLanes <= p; c += kLanes)
        for (int64_t u = 0; u < kLanes; ++u) acc[u] += ar[c + u] * bj[c + u];
      S sum = bias ? bias[j] : S(0);
      for (int64_t u = 0; u < kLanes; ++u) sum += acc[u];
      for (; c < p; ++c) sum += ar[c] * bj[c];
      out[r * q + j] = sum;
    }
  }
}

// out [p, q] = narrow [R, p]^T wide [R, q], p narrow (rows accumulated in order).
template <class S>
void narrow_gram(const S* narrow, const S* wide, int64_t rows, int64_t p, int64_t q, S* out) {
  for (int64_t e = 0; e < p * q; ++e) out[e] = S(0);
  for (int64_t r = 0; r < rows; ++r) {
    const S* wr = wide + r * q;
    for (int64_t c = 0; c < p; ++c) {
      const S x = narrow[r * p + c];
      S* oc = out + c * q;
      for (int64_t j = 0; j < q; ++j) oc[j] += x * wr[j];
    }
  }
}

// The layer's parameter cotangents (added into gW [o, i], gb, g_gw, g_gb, g_tw [o]) from M = [g_a; g_adot]^T [h; U]
// [o, i] and the column sums of g_a; returns t's cotangent. With A = W h + b, Q = W u the pre-gate values:
//   gW = diag(gate) M,  gb = gate * sum g_a,  g_gate_j = sum(g_a A + g_adot Q)_j = sum_c W_jc M_jc + b_j sum(g_a)_j,
//   g_shift = sum g_a;  gate = sigmoid(z), z = gw t + gb: dz = g_gate gate (1 - gate);  shift = tw t.
template <class S>
double concat_squash_param_grads(const S* W, const S* b, const S* gw, const S* tw, const S* gate, const S* M,
                                 const S* ga_sums, S t, int64_t o, int64_t i, S* gW, S* gb, S* g_gw, S* g_gb,
                                 S* g_tw) {
  double g_t = 0.0;
  for (int64_t j = 0; j < o; ++j) {
    S g_gate = b[j] * ga_sums[j];
    for (int64_t c = 0; c < i; ++c) {
      gW[j * i + c] += gate[j] * M[j * i + c];
      g_gate += W[j * i + c] * M[j * i + c];
    }
    gb[j] += gate[j] * ga_sums[j];
    const S dz = g_gate * gate[j] * (S(1) - gate[j]);
    g_gw[j] += dz * t;
    g_gb[j] += dz;
    g_tw[j] += ga_sums[j] * t;
    g_t += static_cast<double>(dz) * gw[j] + static_cast<double>(ga_sums[j]) * tw[j];
  }
  return g_t;
}

}  // namespace fde::core
