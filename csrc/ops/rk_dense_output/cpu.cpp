// rk_dense_output on the CPU: the rows each sample passes (core::outputs_passed), the interpolant as
// weights per written row (core::dense_weights), then one vectorised pass per row (cpu::weighted_sum).
#include <ATen/Dispatch.h>

#include <vector>

#include "core/dense_output.h"
#include "core/step_commit.h"
#include "ops/cpu/row_chunks.h"
#include "ops/cpu/weighted_sum.h"
#include "ops/rk_dense_output/op.h"

namespace fde::ops {

void RkDenseOutput::cpu(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                        const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept, const at::Tensor& t_out,
                        const at::Tensor& out_index, at::ArrayRef<double> mid_coeffs) {
  const int64_t T = check(out, y0, y1, ks, h, t0, accept, t_out, out_index, mid_coeffs);
  const int64_t B = y0.size(0), D = y0.size(1);

  // Which output rows each sample fills in this step: [first[b], last[b]).
  const double* hp = h.data_ptr<double>();
  const double* tp = t0.data_ptr<double>();
  const double* top = t_out.data_ptr<double>();
  const bool* ap = accept.data_ptr<bool>();
  const int64_t* ip = out_index.data_ptr<int64_t>();
  const int64_t t_stride = t_out.dim() == 2 ? T : 0;
  std::vector<int64_t> first(B), last(B);
  bool any = false;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(ip[b] >= 0 && ip[b] <= T, "fastdiffeq: out_index[", b, "] = ", ip[b], " is outside [0, ", T, "]");
    first[b] = last[b] = ip[b];
    if (!ap[b]) continue;
    last[b] = core::outputs_passed(top + b * t_stride, T, first[b], tp[b], hp[b]);
    any = any || last[b] > first[b];
  }
  if (!any) return;

  // The interpolant as weights on (y0, y1, k) per written row, then one vectorised pass per row.
  const int S = static_cast<int>(ks.size());
  double mid[core::kMaxStages] = {};  // mid_coeffs may be shorter than ks: the rest weigh 0
  std::copy(mid_coeffs.begin(), mid_coeffs.end(), mid);
  std::vector<double> weights;
  std::vector<int64_t> w_first(B);
  for (int64_t b = 0; b < B; ++b) {
    w_first[b] = static_cast<int64_t>(weights.size());
    const double* tb = top + b * t_stride;
    for (int64_t r = first[b]; r < last[b]; ++r) {
      const core::DenseWeights dw = core::dense_weights((tb[r] - tp[b]) / hp[b], hp[b], mid, S);
      weights.push_back(dw.y0);
      weights.push_back(dw.y1);
      weights.insert(weights.end(), dw.k, dw.k + S);
    }
  }
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_dense_output cpu", [&] {
    const scalar_t* y0p = y0.data_ptr<scalar_t>();
    const scalar_t* y1p = y1.data_ptr<scalar_t>();
    const scalar_t* k[core::kMaxStages];
    for (int j = 0; j < S; ++j) k[j] = ks[j].data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    cpu::for_each_row_chunk(B, D, [&](int64_t b, int64_t d0, int64_t d1) {
      const int64_t off = b * D + d0;
      const scalar_t* kb[core::kMaxStages];
      for (int j = 0; j < S; ++j) kb[j] = k[j] + off;
      for (int64_t r = first[b]; r < last[b]; ++r) {
        const double* w = weights.data() + w_first[b] + (r - first[b]) * (S + 2);
        cpu::weighted_sum(op + (r * B + b) * D + d0, y0p + off, y1p + off, kb, w, S, d1 - d0);
      }
    });
  });
}

}  // namespace fde::ops
