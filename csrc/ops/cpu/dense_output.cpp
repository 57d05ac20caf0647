// (3) Dense output at the output times that fall inside an accepted step.
#include <ATen/Dispatch.h>

#include <vector>

#include "core/dense_output.h"
#include "ops/checks.h"
#include "ops/cpu/row_chunks.h"
#include "ops/ops.h"

namespace fde::ops {

void rk_dense_output_cpu(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                         const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept,
                         const at::Tensor& t_out, const at::Tensor& out_index,
                         at::ArrayRef<double> mid_coeffs) {
  const int64_t T = check_dense_output_args(out, y0, y1, ks, h, t0, accept, t_out, out_index, mid_coeffs);
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
    first[b] = last[b] = ip[b];
    if (!ap[b]) continue;
    const double t1 = tp[b] + hp[b];
    const double dir = hp[b] > 0 ? 1.0 : -1.0;
    const double* tb = top + b * t_stride;
    while (last[b] < T && dir * (tb[last[b]] - t1) <= 0.0) ++last[b];
    any = any || last[b] > first[b];
  }
  if (!any) return;

  const int64_t n_mid = static_cast<int64_t>(mid_coeffs.size());
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "rk_dense_output_cpu", [&] {
    const scalar_t* y0p = y0.data_ptr<scalar_t>();
    const scalar_t* y1p = y1.data_ptr<scalar_t>();
    const scalar_t* k[core::kMaxStages];
    for (size_t j = 0; j < ks.size(); ++j) k[j] = ks[j].data_ptr<scalar_t>();
    const scalar_t* k_last = k[ks.size() - 1];
    scalar_t* op = out.data_ptr<scalar_t>();
    cpu::for_each_row_chunk(B, D, [&](int64_t b, int64_t d0, int64_t d1) {
      if (last[b] == first[b]) return;
      const double hb = hp[b];
      const double* tb = top + b * t_stride;
      for (int64_t d = d0; d < d1; ++d) {
        const int64_t i = b * D + d;
        double mid = 0.0;
        for (int64_t j = 0; j < n_mid; ++j) mid += mid_coeffs[j] * static_cast<double>(k[j][i]);
        const double ya = y0p[i], yb = y1p[i];
        const double y_mid = ya + hb * mid;
        const double hf0 = hb * static_cast<double>(k[0][i]);
        const double hf1 = hb * static_cast<double>(k_last[i]);
        for (int64_t r = first[b]; r < last[b]; ++r) {
          const double x = (tb[r] - tp[b]) / hb;
          op[(r * B + b) * D + d] = static_cast<scalar_t>(core::dense_quartic(ya, yb, y_mid, hf0, hf1, x));
        }
      }
    });
  });
}

}  // namespace fde::ops
