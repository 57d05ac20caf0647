// rk_commit (in place): commit a step attempt, per sample still running (status == core::kRunning), by
// core::commit_sample:
//   accepted: y0 <- y1, k0 <- k_last (FSAL), t0 <- t0 + h, out_index moves past the outputs the step
//   passed (core::outputs_passed, the rows rk_dense_output wrote), n_accepted += 1; rejected:
//   n_rejected += 1; always: h <- h_next.
//   Then the status (core::Status): kSuccess when every output is passed, kNonFinite after
//   core::kMaxNonFiniteRetries non-finite attempts in a row, kStepUnderflow when an accepted step did not
//   move t or t0 + h_next == t0, kMaxSteps when max_num_steps attempts were made since the last output.
//   A sample whose status leaves kRunning gets h = 0: it stops moving (later masked iterations write none
//   of its outputs and evaluate the field only where it stopped).
// counters: int64 [B, core::kNumCounters] indexed by core::Counter.
// The seven written tensors may not overlap each other or any input. out_index must lie in [0, T]: the
// CPU kernel raises otherwise (before writing anything); the CUDA kernel sets such a sample's status to
// core::kInvalidIndex and leaves the rest of it unchanged.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/checks.h"

namespace fde::ops {

struct RkCommit {
  static constexpr const char* kName = "rk_commit";
  static constexpr const char* kSchema =
      "rk_commit(Tensor(a!) y0, Tensor(b!) k0, Tensor(c!) t0, Tensor(d!) h, Tensor(e!) status, "
      "Tensor(f!) counters, Tensor(g!) out_index, Tensor y1, Tensor k_last, Tensor h_next, Tensor accept, "
      "Tensor ratio, Tensor t_out, int max_num_steps) -> ()";
  using Fn = void(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                  at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1, const at::Tensor& k_last,
                  const at::Tensor& h_next, const at::Tensor& accept, const at::Tensor& ratio,
                  const at::Tensor& t_out, int64_t max_num_steps);

  // Returns T.
  static int64_t check(const at::Tensor& y0, const at::Tensor& k0, const at::Tensor& t0, const at::Tensor& h,
                       const at::Tensor& status, const at::Tensor& counters, const at::Tensor& out_index,
                       const at::Tensor& y1, const at::Tensor& k_last, const at::Tensor& h_next,
                       const at::Tensor& accept, const at::Tensor& ratio, const at::Tensor& t_out,
                       int64_t max_num_steps) {
    check_state(y0, "y0");
    check_like(k0, y0, "k0");
    check_like(y1, y0, "y1");
    check_like(k_last, y0, "k_last");
    const int64_t B = y0.size(0);
    check_time_vector(t0, B, y0, "t0");
    check_time_vector(h, B, y0, "h");
    check_time_vector(h_next, B, y0, "h_next");
    check_time_vector(ratio, B, y0, "ratio");
    check_flag_vector(accept, B, at::kBool, y0, "accept");
    check_flag_vector(status, B, at::kInt, y0, "status");
    check_flag_vector(out_index, B, at::kLong, y0, "out_index");
    check_device(counters, y0, "counters");
    TORCH_CHECK(counters.dim() == 2 && counters.size(0) == B && counters.size(1) == core::kNumCounters &&
                    counters.scalar_type() == at::kLong && counters.is_contiguous(),
                "fastdiffeq: counters must be a contiguous int64 [", B, ", ", core::kNumCounters, "] tensor, got ",
                counters.sizes(), " ", counters.scalar_type());
    const int64_t T = check_output_times(t_out, B, y0);
    TORCH_CHECK(max_num_steps > 0, "fastdiffeq: max_num_steps must be positive, got ", max_num_steps);
    check_no_overlap(kName,
                     {{&y0, "y0"},
                      {&k0, "k0"},
                      {&t0, "t0"},
                      {&h, "h"},
                      {&status, "status"},
                      {&counters, "counters"},
                      {&out_index, "out_index"},
                      {&y1, "y1"},
                      {&k_last, "k_last"},
                      {&h_next, "h_next"},
                      {&accept, "accept"},
                      {&ratio, "ratio"},
                      {&t_out, "t_out"}},
                     7);
    return T;
  }

  static void meta(at::Tensor& y0, at::Tensor& k0, at::Tensor& t0, at::Tensor& h, at::Tensor& status,
                   at::Tensor& counters, at::Tensor& out_index, const at::Tensor& y1, const at::Tensor& k_last,
                   const at::Tensor& h_next, const at::Tensor& accept, const at::Tensor& ratio,
                   const at::Tensor& t_out, int64_t max_num_steps) {
    check(y0, k0, t0, h, status, counters, out_index, y1, k_last, h_next, accept, ratio, t_out, max_num_steps);
  }

  static Fn cpu;
  static Fn cuda;
};

}  // namespace fde::ops
