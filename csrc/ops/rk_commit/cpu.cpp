// rk_commit on the CPU: move accepted samples forward, count, and set each sample's status
// (core::commit_sample).
#include <ATen/Dispatch.h>

#include "core/step_commit.h"
#include "ops/cpu/row_chunks.h"
#include "ops/rk_commit/op.h"

namespace fde::ops {

void RkCommit::cpu(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                   at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1, const at::Tensor& k_last,
                   const at::Tensor& h_next, const at::Tensor& accept, const at::Tensor& ratio,
                   const at::Tensor& t_out, int64_t max_num_steps) {
  const int64_t T =
      check(y0, k0, t0, h, status, counters, out_index, y1, k_last, h_next, accept, ratio, t_out, max_num_steps);
  const int64_t B = y0.size(0), D = y0.size(1);
  int64_t* ip = out_index.data_ptr<int64_t>();
  // Before anything is written: core::commit_sample indexes t_out from out_index.
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(ip[b] >= 0 && ip[b] <= T, "fastdiffeq: out_index[", b, "] = ", ip[b], " is outside [0, ", T, "]");

  const bool* ap = accept.data_ptr<bool>();
  int32_t* sp = status.data_ptr<int32_t>();
  // The state moves first (it reads the status before this attempt's update).
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_commit cpu", [&] {
    scalar_t* y0p = y0.data_ptr<scalar_t>();
    scalar_t* k0p = k0.data_ptr<scalar_t>();
    const scalar_t* y1p = y1.data_ptr<scalar_t>();
    const scalar_t* klp = k_last.data_ptr<scalar_t>();
    cpu::for_each_row_chunk(B, D, [&](int64_t b, int64_t d0, int64_t d1) {
      if (!ap[b] || sp[b] != core::kRunning) return;
      const int64_t off = b * D;
      std::copy(y1p + off + d0, y1p + off + d1, y0p + off + d0);
      std::copy(klp + off + d0, klp + off + d1, k0p + off + d0);
    });
  });
  double* tp = t0.data_ptr<double>();
  double* hp = h.data_ptr<double>();
  const double* hn = h_next.data_ptr<double>();
  const double* rp = ratio.data_ptr<double>();
  const double* top = t_out.data_ptr<double>();
  int64_t* cp = counters.data_ptr<int64_t>();
  const int64_t t_stride = t_out.dim() == 2 ? T : 0;
  for (int64_t b = 0; b < B; ++b) {
    if (sp[b] != core::kRunning) continue;
    core::commit_sample(tp[b], hp[b], sp[b], cp + b * core::kNumCounters, ip[b], ap[b], rp[b], hn[b],
                        top + b * t_stride, T, max_num_steps);
  }
}

}  // namespace fde::ops
