// rk_error_control on CUDA: error estimate, error norm, accept decision and next step size.
//
// It runs in two kernels on the current stream, with no host synchronisation:
//
//   pass 1 (error_partial_kernel): the D elements of each row are cut, segment by segment, into
//     chunks of `chunk` elements (a chunk never straddles a tolerance segment). One warp owns one
//     (row, chunk) item at a time (grid-stride over the B * NB items, NB chunks per row); its lanes walk
//     the chunk with stride 32 (coalesced), accumulate core::scaled_error_sq(h * sum_j e_j k_j, ...)
//     in double and reduce with shuffles; lane 0 writes the item's partial as a pair (scale, ssq) meaning
//     scale^2 * ssq: (1, plain sum of squares), or, only when that sum overflowed to inf while no element
//     was NaN, (m, sum (x/m)^2) with m the item's max |x| (two more passes over the item by the same warp;
//     an inf element keeps (1, inf)). Two [B, NB] float64 buffers. chunk >= 1024 and grows with D so
//     that NB stays near kMaxItemsPerRow: joint mode (B = 1, D up to 1e7 and more) gets thousands of
//     warps over the whole device; per-sample mode gets one item per (row, segment) for rows up to 1024
//     elements.
//   pass 2 (error_finalize_kernel): one group of G threads per row (a warp, or the whole block when a
//     row has many partials) sums each segment's partials scale^2 * ssq in a fixed order (with every
//     scale 1, the plain sums), and takes the RMS by core::robust_rms: sqrt(sum / len), or, when the sum
//     overflowed, from the partials' norms scale * sqrt(ssq) rescaled by their maximum; keeps the worst
//     segment (core::worse_ratio: NaN propagates) and applies core::control_row.
//   Partial sums are per item and reduced in a fixed order, so the result does not depend on the grid
//   size or on scheduling (deterministic run to run).
//
// Segment ends and chunk offsets (a small int64 table) travel by value in the kernel arguments for up
// to kInlineSegments segments (every practical tuple state); beyond that, the table is copied to the
// device asynchronously from pinned host memory on the current stream (the caching host allocator keeps
// the pinned block alive until that copy has run), still without a synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "core/controller.h"
#include "core/error_norm.h"
#include "ops/cuda/common.cuh"
#include "ops/rk_error_control/op.h"

namespace fde::ops {
namespace {

constexpr int kInlineSegments = 32;
constexpr int kTableMax = 2 * kInlineSegments + 1;
constexpr int64_t kMinChunk = 1024;         // elements per warp item, at least (32 per lane)
constexpr int64_t kMaxItemsPerRow = 4096;   // about this many partial sums per row, at most
constexpr int64_t kChunkQuantum = 256;      // chunks are a multiple of this

// Segment table: ends[S] (end offset of each segment along D) then blk[S + 1] (first chunk item of each
// segment within a row; blk[S] = NB). Inline when dev == nullptr.
struct SegmentTable {
  int64_t v[kTableMax];
  const int64_t* dev;
  int S;
};

// Returns the table in shared memory (inline case) or global memory. Must be reached by every thread
// of the block (it synchronises).
__device__ __forceinline__ const int64_t* load_table(const SegmentTable& seg, int64_t* sh) {
  if (seg.dev != nullptr) return seg.dev;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int t = 0; t < kTableMax; ++t)  // constant indices: seg stays in kernel-argument space
      if (t < 2 * seg.S + 1) sh[t] = seg.v[t];
  }
  __syncthreads();
  return sh;
}

template <class T>
struct ErrorArgs {
  const T* y0;
  const T* y1;
  cuda::Stages<T> st;  // the stages with a non-zero error weight, and the weights
  const double* h;
  const double* atol;
  const double* rtol;
  int64_t B, D, NB, chunk;
  double* scale;  // [B, NB]: the partials as pairs, scale^2 * ssq
  double* ssq;    // [B, NB]
};

template <class T, int NE>
__global__ void __launch_bounds__(cuda::kThreads)
    error_partial_kernel(ErrorArgs<T> a, SegmentTable seg) {
  __shared__ int64_t sh[kTableMax];
  const int64_t* tab = load_table(seg, sh);
  const int S = seg.S;
  const int64_t* ends = tab;
  const int64_t* blk = tab + S;

  const int lane = threadIdx.x % cuda::kWarp;
  const int64_t n_items = a.B * a.NB;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * cuda::kWarpsPerBlock;
  // `item` is the same for every lane of a warp, so the shuffles below see the whole warp.
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * cuda::kWarpsPerBlock + threadIdx.x / cuda::kWarp;
       item < n_items; item += n_warps) {
    const int64_t b = item / a.NB;
    const int64_t x = item - b * a.NB;
    // The segment of chunk x: the largest s with blk[s] <= x (never an empty segment: an empty
    // segment s has blk[s + 1] == blk[s], so s + 1 qualifies too).
    int lo = 0, hi = S - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (blk[mid] <= x) lo = mid; else hi = mid - 1;
    }
    const int s = lo;
    const int64_t begin = (s == 0 ? 0 : ends[s - 1]) + (x - blk[s]) * a.chunk;
    const int64_t end = min(ends[s], begin + a.chunk);
    const double hb = a.h[b], atol = a.atol[s], rtol = a.rtol[s];
    const int64_t off = b * a.D;
    const T* y0 = a.y0 + off;
    const T* y1 = a.y1 + off;

    // The element's scaled error; the same arithmetic in every pass below.
    auto element = [&](int64_t i) {
      double err = 0.0;
#pragma unroll
      for (int j = 0; j < NE; ++j) err += a.st.coeff[j] * static_cast<double>(a.st.k[j][off + i]);
      return core::scaled_error(hb * err, static_cast<double>(y0[i]), static_cast<double>(y1[i]), atol, rtol);
    };
    double acc = 0.0;
#pragma unroll 4
    for (int64_t i = begin + lane; i < end; i += cuda::kWarp) {
      const double r = element(i);
      acc += r * r;
    }
    acc = cuda::warp_sum(acc);  // NaN in any element makes the partial NaN
    double scale = 1.0;
    if (isinf(acc)) {  // warp-uniform: overflow, or an inf element
      double m = 0.0;
      for (int64_t i = begin + lane; i < end; i += cuda::kWarp) m = fmax(m, fabs(element(i)));
      m = cuda::warp_max(m);
      if (isfinite(m)) {
        double ss = 0.0;
        for (int64_t i = begin + lane; i < end; i += cuda::kWarp) {
          const double q = element(i) / m;
          ss += q * q;
        }
        acc = cuda::warp_sum(ss);
        scale = m;
      }
    }
    if (lane == 0) {
      a.scale[item] = scale;
      a.ssq[item] = acc;
    }
  }
}

template <int G>
__global__ void __launch_bounds__(cuda::kThreads)
    error_finalize_kernel(const double* __restrict__ scale, const double* __restrict__ ssq,
                          const double* __restrict__ h, int64_t B,
                          int64_t NB, SegmentTable seg, core::ControllerParams p, double* __restrict__ ratio,
                          bool* __restrict__ accept, double* __restrict__ h_next) {
  __shared__ int64_t sh[kTableMax];
  __shared__ double red[cuda::kWarpsPerBlock];
  const int64_t* tab = load_table(seg, sh);
  const int S = seg.S;
  const int64_t* ends = tab;
  const int64_t* blk = tab + S;

  constexpr int kRowsPerBlock = cuda::kThreads / G;
  const int t = threadIdx.x % G;
  // Block-uniform loop bounds (group_sum<kThreads> synchronises the block).
  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; row0 < B;
       row0 += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t b = row0 + threadIdx.x / G;
    const bool active = b < B;  // uniform within a group
    const double* ps = scale + b * NB;
    const double* pq = ssq + b * NB;
    double worst = 0.0;
    for (int s = 0; s < S; ++s) {
      const int64_t begin = s == 0 ? 0 : ends[s - 1], end = ends[s];
      if (end == begin) continue;  // empty segments do not count
      const int64_t q0 = blk[s], q1 = blk[s + 1];
      double sum = 0.0;
      if (active)
        for (int64_t q = q0 + t; q < q1; q += G) sum += ps[q] * ps[q] * pq[q];
      sum = cuda::group_sum<G>(sum, red);
      // Group-uniform branches inside (sum is the same on every thread of the group).
      const double rms = core::robust_rms(
          sum, end - begin,
          [&] {
            double m = 0.0;
            if (active)
              for (int64_t q = q0 + t; q < q1; q += G) m = fmax(m, ps[q] * sqrt(pq[q]));
            return cuda::group_max<G>(m, red);
          },
          [&](double m) {
            double ss = 0.0;
            if (active)
              for (int64_t q = q0 + t; q < q1; q += G) {
                const double x = ps[q] * sqrt(pq[q]) / m;
                ss += x * x;
              }
            return cuda::group_sum<G>(ss, red);
          });
      worst = core::worse_ratio(worst, rms);
    }
    if (active && t == 0) {
      ratio[b] = worst;
      core::control_row(worst, h[b], p, accept + b, h_next + b);
    }
  }
}

}  // namespace


std::tuple<at::Tensor, at::Tensor, at::Tensor> RkErrorControl::cuda(
    const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
    at::ArrayRef<double> err_coeffs, const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends,
    at::ArrayRef<double> control) {
  const core::ControllerParams params = check(y0, y1, ks, h, err_coeffs, rtol, atol, segment_ends, control);
  const int64_t B = y0.size(0), D = y0.size(1);
  const int64_t S = static_cast<int64_t>(segment_ends.size());
  TORCH_CHECK(S <= std::numeric_limits<int>::max() / 2 - 1, "fastdiffeq: too many tolerance segments: ", S);

  const c10::cuda::CUDAGuard guard(y0.device());
  auto opts = h.options();
  auto ratio = at::empty({B}, opts);
  auto accept = at::empty({B}, opts.dtype(at::kBool));
  auto h_next = at::empty({B}, opts);
  if (B == 0) return {ratio, accept, h_next};

  // Chunking and the segment table, on the host from host values.
  const int64_t chunk = std::max(kMinChunk, cuda::ceil_div(cuda::ceil_div(D, kMaxItemsPerRow), kChunkQuantum) *
                                                kChunkQuantum);
  std::vector<int64_t> table(2 * S + 1);
  table[S] = 0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t begin = s == 0 ? 0 : segment_ends[s - 1];
    table[s] = segment_ends[s];
    table[S + s + 1] = table[S + s] + cuda::ceil_div(segment_ends[s] - begin, chunk);
  }
  const int64_t NB = table[2 * S];

  SegmentTable seg{};
  seg.S = static_cast<int>(S);
  seg.dev = nullptr;
  at::Tensor table_dev;
  if (S <= kInlineSegments) {
    std::copy(table.begin(), table.end(), seg.v);
  } else {
    // Asynchronous H2D copy from pinned memory on the current stream; no synchronisation.
    auto pinned = at::empty({2 * S + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    std::copy(table.begin(), table.end(), pinned.data_ptr<int64_t>());
    table_dev = at::empty({2 * S + 1}, y0.options().dtype(at::kLong));
    table_dev.copy_(pinned, /*non_blocking=*/true);
    seg.dev = table_dev.data_ptr<int64_t>();
  }

  // Stages with a non-zero error weight.
  int nz[core::kMaxStages];
  int n_e = 0;
  for (size_t j = 0; j < err_coeffs.size(); ++j)
    if (err_coeffs[j] != 0.0) nz[n_e++] = static_cast<int>(j);

  const cudaStream_t stream = cuda::current_stream();
  // Allocated on the current stream by the caching allocator; freed (stream-ordered) on return.
  auto partial = at::empty({2, B * NB}, opts);
  double* p_scale = partial.data_ptr<double>();
  double* p_ssq = p_scale + B * NB;

  if (NB > 0) {
    AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_error_control cuda", [&] {
      ErrorArgs<scalar_t> a{};
      a.y0 = y0.data_ptr<scalar_t>();
      a.y1 = y1.data_ptr<scalar_t>();
      for (int j = 0; j < n_e; ++j) {
        a.st.k[j] = ks[nz[j]].data_ptr<scalar_t>();
        a.st.coeff[j] = err_coeffs[nz[j]];
      }
      a.h = h.data_ptr<double>();
      a.atol = atol.data_ptr<double>();
      a.rtol = rtol.data_ptr<double>();
      a.B = B;
      a.D = D;
      a.NB = NB;
      a.chunk = chunk;
      a.scale = p_scale;
      a.ssq = p_ssq;
      cuda::with_stage_count(n_e, [&](auto NE) {
        error_partial_kernel<scalar_t, decltype(NE)::value>
            <<<cuda::grid_for(B * NB, cuda::kWarpsPerBlock), cuda::kThreads, 0, stream>>>(a, seg);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  // A warp per row, or the whole block when a row has many partials to add.
  if (NB > 2 * cuda::kWarp) {
    error_finalize_kernel<cuda::kThreads><<<cuda::grid_for(B, 1), cuda::kThreads, 0, stream>>>(
        p_scale, p_ssq, h.data_ptr<double>(), B, NB, seg, params, ratio.data_ptr<double>(), accept.data_ptr<bool>(),
        h_next.data_ptr<double>());
  } else {
    error_finalize_kernel<cuda::kWarp><<<cuda::grid_for(B, cuda::kWarpsPerBlock), cuda::kThreads, 0, stream>>>(
        p_scale, p_ssq, h.data_ptr<double>(), B, NB, seg, params, ratio.data_ptr<double>(), accept.data_ptr<bool>(),
        h_next.data_ptr<double>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ratio, accept, h_next};
}

}  // namespace fde::ops
