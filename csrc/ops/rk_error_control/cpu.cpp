// rk_error_control on the CPU: error estimate, error norm, accept decision and next step size in one
// pass. The element's scaled error, the overflow-free RMS, the segments' combination and the controller
// are the core's (core/error_norm.h, core/controller.h); this file is the vectorised loop around them.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/controller.h"
#include "core/error_norm.h"
#include "ops/cpu/row_chunks.h"
#include "ops/cpu/stage_count.h"
#include "ops/rk_error_control/op.h"

namespace fde::ops {
namespace {

// Sum over [d0, d1) of one row of the squared scaled error. S (the number of non-zero error weights)
// is a template parameter so the stage loop unrolls; the element loop keeps kLanes partial sums
// (element i goes to lane (i - d0) % kLanes, the lanes are added in a fixed order at the end), so it
// vectorises and the result does not depend on the vector width the compiler picks: the SSE2 and
// AVX2 builds below give bit-identical sums (neither may contract into FMA: neither enables FMA).
constexpr int kLanes = 8;

template <class T, int S>
[[gnu::always_inline]] inline double row_sum_sq_body(const T* __restrict y0, const T* __restrict y1,
                                                     const T* const* k, const double* e, double h, double atol,
                                                     double rtol, int64_t d0, int64_t d1) {
  const T* __restrict kk[S > 0 ? S : 1];
  double ee[S > 0 ? S : 1];
  for (int j = 0; j < S; ++j) {
    kk[j] = k[j];
    ee[j] = e[j];
  }
  auto element = [&](int64_t i) __attribute__((always_inline)) {
    double err = 0.0;
    for (int j = 0; j < S; ++j) err += ee[j] * static_cast<double>(kk[j][i]);
    return core::scaled_error_sq(h * err, static_cast<double>(y0[i]), static_cast<double>(y1[i]), atol, rtol);
  };
  double acc[kLanes] = {};
  int64_t i = d0;
  for (; i + kLanes <= d1; i += kLanes) {
#pragma GCC unroll 8
    for (int l = 0; l < kLanes; ++l) acc[l] += element(i + l);
  }
  for (int l = 0; i < d1; ++i, ++l) acc[l] += element(i);
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

template <class T>
using RowSumFn = double (*)(const T*, const T*, const T* const*, const double*, double, double, double, int64_t,
                            int64_t);

// Baseline build (whatever the compiler flags allow; SSE2 for the portable x86-64 wheel).
template <class T, int S>
double row_sum_sq_base(const T* y0, const T* y1, const T* const* k, const double* e, double h, double atol,
                       double rtol, int64_t d0, int64_t d1) {
  return row_sum_sq_body<T, S>(y0, y1, k, e, h, atol, rtol, d0, d1);
}

// An AVX2 build of the same loop, chosen at run time on CPUs that have AVX2: the element loop is
// compute-bound (a double division per element), and 256-bit vectors make it ~1.7x faster.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FDE_ERROR_CONTROL_AVX2 1
template <class T, int S>
__attribute__((target("avx2"))) double row_sum_sq_avx2(const T* y0, const T* y1, const T* const* k,
                                                       const double* e, double h, double atol, double rtol,
                                                       int64_t d0, int64_t d1) {
  return row_sum_sq_body<T, S>(y0, y1, k, e, h, atol, rtol, d0, d1);
}

bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
#endif

template <class T, int S>
RowSumFn<T> row_sum_fn_for() {
#ifdef FDE_ERROR_CONTROL_AVX2
  if (cpu_has_avx2()) return &row_sum_sq_avx2<T, S>;
#endif
  return &row_sum_sq_base<T, S>;
}

template <class T>
RowSumFn<T> row_sum_fn(int s) {
  return cpu::with_stage_count(s, [](auto n) { return row_sum_fn_for<T, decltype(n)::value>(); });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> RkErrorControl::cpu(
    const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
    at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends,
    at::ArrayRef<double> control) {
  const core::ControllerParams params = check(y0, y1, ks, h, err_coeffs, rtol, atol, segment_ends, control);
  const int64_t B = y0.size(0), D = y0.size(1);
  const int64_t S = static_cast<int64_t>(segment_ends.size());

  auto opts = h.options();
  auto ratio = at::empty({B}, opts);
  auto accept = at::empty({B}, opts.dtype(at::kBool));
  auto h_next = at::empty({B}, opts);
  const double* hp = h.data_ptr<double>();
  const double* rt = rtol.data_ptr<double>();
  const double* at_ = atol.data_ptr<double>();
  double* rp = ratio.data_ptr<double>();
  bool* ap = accept.data_ptr<bool>();
  double* hn = h_next.data_ptr<double>();

  int nz[core::kMaxStages];
  double e[core::kMaxStages];
  int s_nz = 0;
  for (size_t j = 0; j < err_coeffs.size(); ++j)
    if (err_coeffs[j] != 0.0) {
      nz[s_nz] = static_cast<int>(j);
      e[s_nz++] = err_coeffs[j];
    }

  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_error_control cpu", [&] {
    const scalar_t* y0p = y0.data_ptr<scalar_t>();
    const scalar_t* y1p = y1.data_ptr<scalar_t>();
    const scalar_t* k[core::kMaxStages];
    for (int j = 0; j < s_nz; ++j) k[j] = ks[nz[j]].data_ptr<scalar_t>();
    const RowSumFn<scalar_t> row_sum_sq = row_sum_fn<scalar_t>(s_nz);

    auto row_ratio = [&](int64_t b, bool parallel_inside) {
      const int64_t off = b * D;
      const scalar_t* kb[core::kMaxStages];
      for (int j = 0; j < s_nz; ++j) kb[j] = k[j] + off;
      double worst = 0.0;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t begin = s == 0 ? 0 : segment_ends[s - 1], end = segment_ends[s];
        if (end == begin) continue;
        // The sum over fixed chunks of kGrain elements, added in index order: the same bits whatever the
        // number of threads and whether the row is split across them (B == 1) or not (one row per task).
        auto chunk_sum = [&](int64_t c) {
          const int64_t i0 = begin + c * cpu::kGrain;
          return row_sum_sq(y0p + off, y1p + off, kb, e, hp[b], at_[s], rt[s], i0, std::min(end, i0 + cpu::kGrain));
        };
        const int64_t n_chunks = (end - begin + cpu::kGrain - 1) / cpu::kGrain;
        double sum = 0.0;
        if (parallel_inside && n_chunks > 1) {
          std::vector<double> partial(n_chunks);
          at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) partial[c] = chunk_sum(c);
          });
          for (double x : partial) sum += x;
        } else {
          for (int64_t c = 0; c < n_chunks; ++c) sum += chunk_sum(c);
        }
        // The element again, for the overflow fallback of robust_rms (two more passes, only when the sum
        // of squares overflowed).
        auto element = [&](int64_t i) {
          double err = 0.0;
          for (int j = 0; j < s_nz; ++j) err += e[j] * static_cast<double>(kb[j][i]);
          return core::scaled_error(hp[b] * err, static_cast<double>(y0p[off + i]), static_cast<double>(y1p[off + i]),
                                    at_[s], rt[s]);
        };
        const double rms = core::robust_rms(
            sum, end - begin,
            [&] {
              double m = 0.0;
              for (int64_t i = begin; i < end; ++i) m = std::max(m, std::fabs(element(i)));
              return m;
            },
            [&](double m) {
              double ss = 0.0;
              for (int64_t i = begin; i < end; ++i) {
                const double q = element(i) / m;
                ss += q * q;
              }
              return ss;
            });
        worst = core::worse_ratio(worst, rms);
        if (std::isnan(worst)) break;
      }
      rp[b] = worst;
      core::control_row(worst, hp[b], params, ap + b, hn + b);
    };

    if (B == 1) {
      row_ratio(0, true);
    } else {
      at::parallel_for(0, B, std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(D, 1)),
                       [&](int64_t b0, int64_t b1) {
                         for (int64_t b = b0; b < b1; ++b) row_ratio(b, false);
                       });
    }
  });
  return {ratio, accept, h_next};
}

}  // namespace fde::ops
