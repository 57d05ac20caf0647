#include "solver/norms.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/zeros.h>

namespace fde::solver {

at::Tensor expand_segments(const std::vector<double>& values, const std::vector<int64_t>& segment_ends,
                           const at::Tensor& like) {
  const int64_t D = segment_ends.empty() ? 0 : segment_ends.back();
  auto out = at::empty({D}, at::TensorOptions().dtype(at::kDouble));
  double* p = out.data_ptr<double>();
  int64_t begin = 0;
  for (size_t s = 0; s < segment_ends.size(); ++s) {
    for (int64_t i = begin; i < segment_ends[s]; ++i) p[i] = values[s];
    begin = segment_ends[s];
  }
  return out.to(like.device());
}

at::Tensor group_norm(const at::Tensor& x, const std::vector<int64_t>& segment_ends, ErrorNorm* norm) {
  if (norm != nullptr) return norm->norm(x).to(at::kDouble).reshape({x.size(0)});
  at::Tensor worst;
  int64_t begin = 0;
  for (int64_t end : segment_ends) {
    if (end > begin) {
      auto rms = x.slice(1, begin, end).to(at::kDouble).square().mean(1).sqrt();
      worst = worst.defined() ? at::maximum(worst, rms) : rms;
    }
    begin = end;
  }
  if (!worst.defined()) worst = at::zeros({x.size(0)}, x.options().dtype(at::kDouble));
  return worst;
}

}  // namespace fde::solver
