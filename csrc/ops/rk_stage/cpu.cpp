// rk_stage on the CPU: out = y + h * sum_j a_j k_j in one pass over memory.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>

#include "ops/cpu/row_chunks.h"
#include "ops/cpu/stage_count.h"
#include "ops/rk_stage/op.h"

namespace fde::ops {
namespace {

// S (the number of non-zero coefficients) is a template parameter so the stage loop unrolls and
// the element loop vectorises.
template <class T, int S>
void combine_row(T* __restrict out, const T* __restrict y, const T* const* k, const T* w, int64_t n) {
  const T* kk[S > 0 ? S : 1];
  T ww[S > 0 ? S : 1];
  for (int j = 0; j < S; ++j) {
    kk[j] = k[j];
    ww[j] = w[j];
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T acc = T(0);
    for (int j = 0; j < S; ++j) acc += ww[j] * kk[j][i];
    out[i] = y[i] + acc;
  }
}

template <class T>
void combine_row_dispatch(int s, T* out, const T* y, const T* const* k, const T* w, int64_t n_elems) {
  cpu::with_stage_count(s, [&](auto n) { combine_row<T, decltype(n)::value>(out, y, k, w, n_elems); });
}

}  // namespace

at::Tensor RkStage::cpu(const at::Tensor& y, at::TensorList ks, const at::Tensor& h, at::ArrayRef<double> coeffs) {
  check(y, ks, h, coeffs);
  auto out = at::empty_like(y);
  const int64_t B = y.size(0), D = y.size(1);
  // Only the stages with a non-zero coefficient are read.
  int nz[core::kMaxStages];
  int s = 0;
  for (size_t j = 0; j < coeffs.size(); ++j)
    if (coeffs[j] != 0.0) nz[s++] = static_cast<int>(j);
  const double* hp = h.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rk_stage cpu", [&] {
    const scalar_t* k[core::kMaxStages];
    for (int j = 0; j < s; ++j) k[j] = ks[nz[j]].data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    cpu::for_each_row_chunk(B, D, [&](int64_t b, int64_t d0, int64_t d1) {
      scalar_t w[core::kMaxStages];
      const scalar_t* kb[core::kMaxStages];
      for (int j = 0; j < s; ++j) {
        w[j] = static_cast<scalar_t>(hp[b] * coeffs[nz[j]]);
        kb[j] = k[j] + b * D + d0;
      }
      combine_row_dispatch<scalar_t>(s, op + b * D + d0, yp + b * D + d0, kb, w, d1 - d0);
    });
  });
  return out;
}

}  // namespace fde::ops
