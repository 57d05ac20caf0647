// rk_dense_weights on the CPU: core::dense_weights per (output time, sample).
#include "core/dense_output.h"
#include "ops/rk_dense_weights/op.h"

namespace fde::ops {

at::Tensor RkDenseWeights::cpu(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval,
                               at::ArrayRef<double> mid_coeffs) {
  check(h, t0, t_eval, mid_coeffs);
  const int64_t R = t_eval.size(0), B = h.size(0);
  const int S = static_cast<int>(mid_coeffs.size());
  auto w = at::empty({R, B, S + 2}, h.options());
  double* wp = w.data_ptr<double>();
  const double* hp = h.data_ptr<double>();
  const double* tp = t0.data_ptr<double>();
  const double* ep = t_eval.data_ptr<double>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t b = 0; b < B; ++b) {
      const core::DenseWeights dw = core::dense_weights((ep[r] - tp[b]) / hp[b], hp[b], mid_coeffs.data(), S);
      double* row = wp + (r * B + b) * (S + 2);
      row[0] = dw.y0;
      row[1] = dw.y1;
      for (int j = 0; j < S; ++j) row[2 + j] = dw.k[j];
    }
  return w;
}

}  // namespace fde::ops
