#include "solver/finite.h"

#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/isfinite.h>

#include <cmath>

namespace fde::solver {

bool all_finite(const at::Tensor& x) {
  TORCH_CHECK_TYPE(x.defined(), "fastdiffeq: all_finite needs a tensor");
  TORCH_CHECK_VALUE(x.is_cpu() || x.is_cuda(), "fastdiffeq: all_finite needs a CPU or CUDA tensor, got ", x.device());
  if (x.numel() == 0) return true;
  if (!x.is_cpu() || !x.is_contiguous() || !(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) {
    at::NoGradGuard no_grad;
    return at::isfinite(x).all().item<bool>();
  }
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "all_finite", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    const int64_t n = x.numel();
    // x - x is 0 for finite x and NaN for inf / NaN; the sum of those is NaN iff one element is not finite
    // (branch-free, so the loop vectorises).
    scalar_t acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += p[i] - p[i];
    finite = acc == scalar_t(0);
  });
  return finite;
}

}  // namespace fde::solver
