// rk_stage_times on the CPU: t0 + c_i h, cast to the state's dtype as the vector field receives them.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <cmath>

#include "ops/rk_stage_times/op.h"

namespace fde::ops {

at::Tensor RkStageTimes::cpu(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c,
                             at::ScalarType dtype) {
  check(t0, h, c, dtype);
  const int64_t B = t0.size(0);
  const int64_t S = static_cast<int64_t>(c.size());
  auto out = at::empty({S, B}, t0.options().dtype(dtype));
  const double* tp = t0.data_ptr<double>();
  const double* hp = h.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(dtype, "rk_stage_times cpu", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t b = 0; b < B; ++b) {
        if (c[s] == 1.0) {
          const scalar_t start = static_cast<scalar_t>(tp[b]);
          op[s * B + b] = std::nextafter(static_cast<scalar_t>(tp[b] + hp[b]), start);
        } else {
          op[s * B + b] = static_cast<scalar_t>(tp[b] + c[s] * hp[b]);
        }
      }
    }
  });
  return out;
}

}  // namespace fde::ops
