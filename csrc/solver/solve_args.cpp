#include "solver/solve_args.h"

#include <ATen/ops/equal.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace fde::solver {

SolveArgs check_solve_args(const at::Tensor& y0, const at::Tensor& t_out, const RkOptions& opt) {
  SolveArgs a;
  TORCH_CHECK_VALUE(opt.tableau != nullptr, "fastdiffeq: no method given");
  TORCH_CHECK_VALUE(opt.tableau->stepping == core::Stepping::kAdaptive, "fastdiffeq: method '", opt.tableau->name,
                    "' is a fixed-grid method; the adaptive loops need an embedded error estimate");
  TORCH_CHECK_TYPE(y0.defined(), "fastdiffeq: y0 must be a tensor");
  TORCH_CHECK_VALUE(y0.dim() == 2, "fastdiffeq: y0 must be a 2-D [B, D] tensor, got shape ", y0.sizes());
  TORCH_CHECK_TYPE(y0.scalar_type() == at::kFloat || y0.scalar_type() == at::kDouble,
                   "fastdiffeq: y0 must be float32 or float64, got ", y0.scalar_type());
  TORCH_CHECK_VALUE(y0.device().is_cpu() || y0.device().is_cuda(),
                    "fastdiffeq: y0 must be on a CPU or CUDA device, got ", y0.device());
  TORCH_CHECK_VALUE(y0.is_contiguous(), "fastdiffeq: y0 must be contiguous");
  const int64_t B = y0.size(0), D = y0.size(1);

  TORCH_CHECK_TYPE(t_out.defined() && t_out.scalar_type() == at::kDouble, "fastdiffeq: t_out must be a float64 tensor");
  TORCH_CHECK_VALUE(t_out.device().is_cpu() || t_out.device() == y0.device(),
                    "fastdiffeq: t_out must be on the CPU or on y0's device (", y0.device(), "), got ", t_out.device());
  TORCH_CHECK_VALUE(t_out.dim() == 1 || (t_out.dim() == 2 && t_out.size(0) == B),
                    "fastdiffeq: t_out must be [T] or [B, T] with B = ", B, ", got shape ", t_out.sizes());
  const int64_t T = t_out.size(-1);
  TORCH_CHECK_VALUE(T >= 1, "fastdiffeq: t_out must hold at least one time");

  // Tolerance segments.
  a.segments = opt.segment_ends;
  if (a.segments.empty()) a.segments.push_back(D);
  const size_t S = a.segments.size();
  for (size_t s = 0; s < S; ++s) {
    const int64_t begin = s == 0 ? 0 : a.segments[s - 1];
    TORCH_CHECK_VALUE(a.segments[s] >= begin && a.segments[s] <= D,
                      "fastdiffeq: segment_ends must be non-decreasing from 0 and at most D = ", D, ", got ",
                      at::IntArrayRef(a.segments));
  }
  TORCH_CHECK_VALUE(a.segments.back() == D, "fastdiffeq: segment_ends must end at D = ", D, ", got ",
                    at::IntArrayRef(a.segments));
  TORCH_CHECK_VALUE(opt.rtol.size() == S && opt.atol.size() == S, "fastdiffeq: rtol and atol must have one value per ",
                    "segment (", S, "), got ", opt.rtol.size(), " and ", opt.atol.size());
  for (size_t s = 0; s < S; ++s) {
    TORCH_CHECK_VALUE(std::isfinite(opt.rtol[s]) && opt.rtol[s] >= 0, "fastdiffeq: rtol must be finite and >= 0, got ",
                      opt.rtol[s]);
    // An infinite atol drops the segment out of the error norm (the adjoint's seminorm).
    TORCH_CHECK_VALUE(opt.atol[s] >= 0, "fastdiffeq: atol must be >= 0 (inf allowed), got ", opt.atol[s]);
  }

  // Controller and loop options.
  a.control = opt.control;
  a.control.exponent = 1.0 / opt.tableau->order;
  if (const auto issue = core::check_controller(a.control))
    TORCH_CHECK_VALUE(false, "fastdiffeq: control.", issue->field, " must be ", issue->requirement, ", got ",
                      issue->value);
  TORCH_CHECK_VALUE(std::isfinite(opt.first_step) && opt.first_step >= 0,
                    "fastdiffeq: first_step must be finite and >= 0 (0 selects it), got ", opt.first_step);
  TORCH_CHECK_VALUE(opt.max_num_steps > 0, "fastdiffeq: max_num_steps must be positive, got ", opt.max_num_steps);
  // The masked loop runs up to check_every - 1 iterations past the end (it reads "all done" that rarely).
  TORCH_CHECK_VALUE(opt.check_every > 0 && opt.check_every <= kMaxCheckEvery, "fastdiffeq: check_every must be in [1, ",
                    kMaxCheckEvery, "], got ", opt.check_every);
  TORCH_CHECK_VALUE((opt.step_t.empty() && opt.jump_t.empty()) || B == 1,
                    "fastdiffeq: step_t and jump_t are supported in joint mode (B == 1) only");
  for (double v : opt.step_t) TORCH_CHECK_VALUE(std::isfinite(v), "fastdiffeq: step_t must be finite, got ", v);
  for (double v : opt.jump_t) TORCH_CHECK_VALUE(std::isfinite(v), "fastdiffeq: jump_t must be finite, got ", v);

  // The output grid, on the host (once per solve).
  const at::Tensor host = t_out.to(at::kCPU).contiguous();
  a.t_out_host = host;
  const double* tp = host.data_ptr<double>();
  const int64_t rows = t_out.dim() == 2 ? B : 1;
  if (T > 1) a.direction = tp[1] > tp[0] ? 1.0 : -1.0;
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = tp + r * T;
    for (int64_t i = 0; i < T; ++i)
      TORCH_CHECK_VALUE(std::isfinite(row[i]), "fastdiffeq: t_out contains NaN or inf (row ", r, ", index ", i, ")");
    for (int64_t i = 0; i + 1 < T; ++i) {
      const double gap = a.direction * (row[i + 1] - row[i]);
      TORCH_CHECK_VALUE(gap > 0, "fastdiffeq: t_out must be strictly monotone, in one direction for every row; row ",
                        r, " has t_out[", i, "] = ", row[i], " and t_out[", i + 1, "] = ", row[i + 1]);
      // Each step covers at most max_step, and max_num_steps attempts are allowed between two outputs (the
      // step that passes t_out[i] may already cover up to max_step of the gap: hence the + 1).
      const double steps_needed = gap / a.control.max_step;
      TORCH_CHECK_VALUE(steps_needed <= static_cast<double>(opt.max_num_steps) + 1.0, "fastdiffeq: max_step = ",
                        a.control.max_step, " cannot reach t_out[", i + 1, "] = ", row[i + 1], " from t_out[", i,
                        "] = ", row[i], " within max_num_steps = ", opt.max_num_steps, " steps (it needs about ",
                        steps_needed, "); raise max_step or max_num_steps");
    }
  }
  return a;
}

void check_checkpoint_args(const RkTape& tape, const at::Tensor& grad_ys, const std::vector<at::Tensor>& params) {
  TORCH_CHECK_VALUE(tape.tableau != nullptr && tape.y0.defined() && tape.t_out.defined(),
                    "fastdiffeq: empty checkpoint tape");
  const int64_t T = tape.t_out.size(-1), D = tape.y0.size(1);
  TORCH_CHECK_TYPE(grad_ys.defined(), "fastdiffeq: grad_ys must be a tensor");
  TORCH_CHECK_VALUE(grad_ys.dim() == 3 && grad_ys.size(0) == T && grad_ys.size(1) == 1 && grad_ys.size(2) == D,
                    "fastdiffeq: grad_ys must have shape [", T, ", 1, ", D, "] (one row per output time), got ",
                    grad_ys.sizes());
  TORCH_CHECK_TYPE(grad_ys.scalar_type() == tape.y0.scalar_type(), "fastdiffeq: grad_ys must have dtype ",
                   tape.y0.scalar_type(), ", got ", grad_ys.scalar_type());
  TORCH_CHECK_VALUE(grad_ys.device() == tape.y0.device(), "fastdiffeq: grad_ys must be on ", tape.y0.device(),
                    ", got ", grad_ys.device());
  check_vjp_params(params, grad_ys.device());
}

void check_vjp_params(const std::vector<at::Tensor>& params, const at::Device& device) {
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK_TYPE(params[i].defined() && params[i].is_floating_point(), "fastdiffeq: params[", i,
                     "] must be a floating-point tensor");
    TORCH_CHECK_VALUE(params[i].device() == device, "fastdiffeq: params[", i, "] must be on ", device, ", got ",
                      params[i].device());
    TORCH_CHECK_VALUE(params[i].requires_grad(), "fastdiffeq: params[", i,
                      "] does not require grad (pass only the tensors to differentiate)");
  }
}

int64_t check_adjoint_args(const at::Tensor& t_out, const at::Tensor& ys, const RkTape* tape,
                           const at::Tensor& grad_ys, bool interpolated) {
  TORCH_CHECK_TYPE(t_out.defined() && t_out.scalar_type() == at::kDouble, "fastdiffeq: t_out must be a float64 tensor");
  TORCH_CHECK_VALUE(t_out.dim() == 1 && t_out.size(0) >= 1, "fastdiffeq: t_out must be a non-empty [T] tensor, got ",
                    t_out.sizes());
  const int64_t T = t_out.size(0);
  TORCH_CHECK_TYPE(grad_ys.defined() && (grad_ys.scalar_type() == at::kFloat || grad_ys.scalar_type() == at::kDouble),
                   "fastdiffeq: grad_ys must be a float32 or float64 tensor");
  TORCH_CHECK_VALUE(grad_ys.is_cpu() || grad_ys.is_cuda(), "fastdiffeq: grad_ys must be on a CPU or CUDA device, got ",
                    grad_ys.device());
  TORCH_CHECK_VALUE(grad_ys.dim() == 3 && grad_ys.size(0) == T && grad_ys.size(1) == 1,
                    "fastdiffeq: grad_ys must have shape [", T, ", 1, D] (one row per output time), got ",
                    grad_ys.sizes());
  const int64_t D = grad_ys.size(2);
  if (!interpolated) {
    TORCH_CHECK_VALUE(ys.defined(), "fastdiffeq: the adjoint (trajectory 'resolve') needs the forward outputs ys");
    TORCH_CHECK_VALUE(ys.sizes() == grad_ys.sizes() && ys.scalar_type() == grad_ys.scalar_type() &&
                          ys.device() == grad_ys.device(),
                      "fastdiffeq: ys must have grad_ys' shape ", grad_ys.sizes(), ", dtype and device, got ",
                      ys.sizes(), " ", ys.scalar_type(), " on ", ys.device());
  } else {
    TORCH_CHECK_VALUE(tape != nullptr && tape->y0.defined() && tape->t_out.defined(),
                      "fastdiffeq: the interpolated adjoint needs the forward solve's tape");
    TORCH_CHECK_VALUE(tape->y0.size(1) == D && tape->y0.scalar_type() == grad_ys.scalar_type() &&
                          tape->y0.device() == grad_ys.device(),
                      "fastdiffeq: grad_ys must match the tape's state: [", T, ", 1, ", tape->y0.size(1), "] ",
                      tape->y0.scalar_type(), " on ", tape->y0.device());
    TORCH_CHECK_VALUE(tape->t_out.dim() == 1 && at::equal(tape->t_out.cpu(), t_out.cpu()),
                      "fastdiffeq: t_out must be the output times the tape was recorded with");
    TORCH_CHECK_VALUE(T == 1 || (!tape->steps.empty() && tape->steps.front().mid_slope.defined()),
                      "fastdiffeq: the interpolated adjoint needs a dense record (rk_solve with "
                      "options.record_dense = True, mode 'record')");
  }
  return D;
}

}  // namespace fde::solver
