// rk_dense_output (in place): for every sample b whose step was accepted, evaluate the interpolant
// (core::dense_weights) at each output time t_out[(b,) i], i >= out_index[b], that the step passes
// (core::outputs_passed: inside (t0[b], t0[b] + h[b]]) and write it to out[i, b, :]. t_out is [T]
// (shared) or [B, T]; out is [T, B, D]; mid_coeffs has at most len(ks) entries (the rest weigh 0).
// out may not overlap any other argument. out_index must lie in [0, T]: the CPU kernel raises otherwise;
// the CUDA kernel (which cannot read it without a synchronisation) writes nothing for such a sample
// (the rk_commit that follows marks it core::kInvalidIndex).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

#include "ops/checks.h"

namespace fde::ops {

struct RkDenseOutput {
  static constexpr const char* kName = "rk_dense_output";
  static constexpr const char* kSchema =
      "rk_dense_output(Tensor(a!) out, Tensor y0, Tensor y1, Tensor[] ks, Tensor h, Tensor t0, Tensor accept, "
      "Tensor t_out, Tensor out_index, float[] mid_coeffs) -> ()";
  using Fn = void(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                  const at::Tensor& t0, const at::Tensor& accept, const at::Tensor& t_out, const at::Tensor& out_index,
                  at::ArrayRef<double> mid_coeffs);

  // Returns T.
  static int64_t check(const at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                       const at::Tensor& h, const at::Tensor& t0, const at::Tensor& accept, const at::Tensor& t_out,
                       const at::Tensor& out_index, at::ArrayRef<double> mid_coeffs) {
    check_state(y0, "y0");
    check_like(y1, y0, "y1");
    check_stages(ks, y0, mid_coeffs.size(), "mid_coeffs");
    TORCH_CHECK(ks.size() >= 2, "fastdiffeq: ks: dense output needs the first and last stage derivatives, got ",
                ks.size(), " stage(s)");
    const int64_t B = y0.size(0), D = y0.size(1);
    check_time_vector(h, B, y0, "h");
    check_time_vector(t0, B, y0, "t0");
    check_flag_vector(accept, B, at::kBool, y0, "accept");
    check_flag_vector(out_index, B, at::kLong, y0, "out_index");
    const int64_t T = check_output_times(t_out, B, y0);
    check_device(out, y0, "out");
    TORCH_CHECK(out.dim() == 3 && out.size(0) == T && out.size(1) == B && out.size(2) == D,
                "fastdiffeq: out must have shape [", T, ", ", B, ", ", D, "], got ", out.sizes());
    TORCH_CHECK(out.scalar_type() == y0.scalar_type() && out.is_contiguous(), "fastdiffeq: out must be a contiguous ",
                y0.scalar_type(), " tensor, got ", out.scalar_type());
    std::array<NamedTensor, 8 + core::kMaxStages> all{{{&out, "out"},
                                                       {&y0, "y0"},
                                                       {&y1, "y1"},
                                                       {&h, "h"},
                                                       {&t0, "t0"},
                                                       {&accept, "accept"},
                                                       {&t_out, "t_out"},
                                                       {&out_index, "out_index"}}};
    size_t n = 8;
    for (const at::Tensor& k : ks) all[n++] = {&k, "a stage in ks"};
    check_no_overlap(kName, all.data(), n, 1);
    return T;
  }

  static void meta(at::Tensor& out, const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks, const at::Tensor& h,
                   const at::Tensor& t0, const at::Tensor& accept, const at::Tensor& t_out,
                   const at::Tensor& out_index, at::ArrayRef<double> mid_coeffs) {
    check(out, y0, y1, ks, h, t0, accept, t_out, out_index, mid_coeffs);
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
