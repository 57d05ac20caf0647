// rk_stage_times: the stage times [S, B] in `dtype` (the state's dtype, as the vector field sees time):
// t0 + c_i h, with stages at c_i == 1 evaluated one ulp before t0 + h, towards t0 (torchdiffeq's
// convention, so a field with a jump at the step's end sees its left limit).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "ops/checks.h"

namespace fde::ops {

struct RkStageTimes {
  static constexpr const char* kName = "rk_stage_times";
  static constexpr const char* kSchema = "rk_stage_times(Tensor t0, Tensor h, float[] c, ScalarType dtype) -> Tensor";
  using Fn = at::Tensor(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c, at::ScalarType dtype);

  static void check(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c, at::ScalarType dtype) {
    const int64_t B = check_batch_vector(t0, "t0");
    check_time_vector(h, B, t0, "h");
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fastdiffeq: dtype must be float32 or float64, got ",
                dtype);
  }

  static at::Tensor meta(const at::Tensor& t0, const at::Tensor& h, at::ArrayRef<double> c, at::ScalarType dtype) {
    check(t0, h, c, dtype);
    return at::empty({static_cast<int64_t>(c.size()), t0.size(0)}, t0.options().dtype(dtype));
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
