// rk_commit on CUDA: move accepted samples forward, count, and set each sample's status.
//
// Two kernels on the current stream, in this order:
//   commit_state_kernel: grid-stride over the B * D elements; where accept[b], status[b] is still
//     core::kRunning and out_index[b] is valid, y0 <- y1 and k0 <- k_last (FSAL). It must see the status
//     from before this commit, which stream order guarantees: the bookkeeping kernel runs after it.
//   commit_sample_kernel: one thread per sample; where status[b] is core::kRunning, core::commit_sample
//     updates t0, h, status, counters and out_index exactly as RkCommit::cpu's loop does.
// Every flag is read on the device; nothing is copied to the host. An out_index outside [0, T] (the CPU
// kernel raises; here that check would be a synchronisation) leaves the sample's state untouched and
// core::commit_sample sets its status to core::kInvalidIndex: the solve ends there with that status.
#include <ATen/Dispatch.h>

#include "core/step_commit.h"
#include "ops/cuda/common.cuh"
#include "ops/rk_commit/op.h"

namespace fde::ops {
namespace {

// The written tensors never overlap the read ones (RkCommit::check).
template <class T, class RowOf>
__global__ void __launch_bounds__(cuda::kThreads)
    commit_state_kernel(T* __restrict__ y0, T* __restrict__ k0, const T* __restrict__ y1,
                        const T* __restrict__ k_last, const bool* __restrict__ accept,
                        const int32_t* __restrict__ status, const int64_t* __restrict__ out_index, int64_t n_out,
                        RowOf row_of, typename RowOf::index_t n) {
  using index_t = typename RowOf::index_t;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const index_t b = row_of(i);
    if (!accept[b] || status[b] != core::kRunning || out_index[b] < 0 || out_index[b] > n_out) continue;
    y0[i] = y1[i];
    k0[i] = k_last[i];
  }
}

__global__ void __launch_bounds__(cuda::kThreads)
    commit_sample_kernel(double* t0, double* h, int32_t* status, int64_t* counters, int64_t* out_index,
                         const double* h_next, const bool* accept, const double* ratio, const double* t_out,
                         int64_t B, int64_t T, int64_t t_stride, int64_t max_num_steps) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < B; b += stride) {
    if (status[b] != core::kRunning) continue;
    core::commit_sample(t0[b], h[b], status[b], counters + b * core::kNumCounters, out_index[b], accept[b],
                        ratio[b], h_next[b], t_out + b * t_stride, T, max_num_steps);
  }
}

}  // namespace

void RkCommit::cuda(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                    at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1, const at::Tensor& k_last,
                    const at::Tensor& h_next, const at::Tensor& accept, const at::Tensor& ratio,
                    const at::Tensor& t_out, int64_t max_num_steps) {
  const int64_t T =
      check(y0, k0, t0, h, status, counters, out_index, y1, k_last, h_next, accept, ratio, t_out, max_num_steps);
  const int64_t B = y0.size(0), D = y0.size(1);
  const c10::cuda::CUDAGuard guard(y0.device());
  if (B == 0) return;

  const cudaStream_t stream = cuda::current_stream();
  const bool* ap = accept.data_ptr<bool>();
  int32_t* sp = status.data_ptr<int32_t>();
  const int64_t n = B * D;
  // The state moves first (it reads the status before this attempt's update).
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_commit cuda", [&] {
      scalar_t* y0p = y0.data_ptr<scalar_t>();
      scalar_t* k0p = k0.data_ptr<scalar_t>();
      const scalar_t* y1p = y1.data_ptr<scalar_t>();
      const scalar_t* klp = k_last.data_ptr<scalar_t>();
      cuda::with_row_of(n, D, [&](auto row_of) {
        using RowOf = decltype(row_of);
        commit_state_kernel<scalar_t, RowOf><<<cuda::grid_for(n), cuda::kThreads, 0, stream>>>(
            y0p, k0p, y1p, klp, ap, sp, out_index.data_ptr<int64_t>(), T, row_of,
            static_cast<typename RowOf::index_t>(n));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  commit_sample_kernel<<<cuda::grid_for(B), cuda::kThreads, 0, stream>>>(
      t0.data_ptr<double>(), h.data_ptr<double>(), sp, counters.data_ptr<int64_t>(),
      out_index.data_ptr<int64_t>(), h_next.data_ptr<double>(), ap, ratio.data_ptr<double>(),
      t_out.data_ptr<double>(), B, T, t_out.dim() == 2 ? T : 0, max_num_steps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fde::ops
