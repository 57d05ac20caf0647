#include "solver/rk_problem.h"

#include <limits>

#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/TensorOperators.h>

#include "solver/initial_step.h"
#include "solver/norms.h"
#include "ops/registry.h"
#include "solver/finite.h"
#include "solver/solve_args.h"

namespace fde::solver {

StepDecision read_decision(const at::Tensor& ratio, const at::Tensor& accept, const at::Tensor& h_next) {
  if (ratio.is_cpu()) {  // no copies: the three values are already in host memory
    return {ratio.data_ptr<double>()[0], accept.data_ptr<bool>()[0], h_next.data_ptr<double>()[0]};
  }
  const auto host = at::stack({ratio, accept.to(at::kDouble), h_next}).cpu();
  const double* d = host.data_ptr<double>();
  return {d[0], d[1] != 0.0, d[2]};
}

RkProblem::RkProblem(VectorField& field, ErrorNorm* norm, const at::Tensor& y0, const at::Tensor& t_out,
                     const RkOptions& opt)
    : field_(field), norm_(norm), opt_(opt), tab_(*opt.tableau) {
  SolveArgs args = check_solve_args(y0, t_out, opt);
  B_ = y0.size(0);
  D_ = y0.size(1);
  T_ = t_out.size(-1);
  dtype_ = y0.scalar_type();
  t_out_ = t_out.to(y0.device()).contiguous();
  if (t_out_.dim() == 2 && B_ == 1) t_out_ = t_out_.reshape({T_});  // one group: [1, T] is the shared grid [T]
  t_out_host_ = args.t_out_host;
  segments_ = std::move(args.segments);
  ctrl_ = args.control;
  ctrl_packed_ = core::pack(ctrl_);
  direction_ = args.direction;
  rtol_seg_ = at::tensor(opt.rtol, at::kDouble).to(y0.device());
  atol_seg_ = at::tensor(opt.atol, at::kDouble).to(y0.device());
  if (norm_ != nullptr) {
    rtol_el_ = expand_segments(opt.rtol, segments_, y0).to(dtype_);
    atol_el_ = expand_segments(opt.atol, segments_, y0).to(dtype_);
  }
}

at::Tensor RkProblem::initial_time() const {
  return (t_out_.dim() == 1 ? t_out_.slice(0, 0, 1).expand({B_}) : t_out_.select(1, 0)).contiguous().clone();
}

bool RkProblem::first_derivative(const at::Tensor& t0, const at::Tensor& y, at::Tensor& k0, int64_t& nfe) {
  k0 = field_.eval(t0.to(dtype_), y);
  ++nfe;
  return all_finite(k0);
}

at::Tensor RkProblem::first_step(const at::Tensor& t0, const at::Tensor& y, const at::Tensor& k0, int64_t& nfe) {
  at::NoGradGuard no_grad;
  if (opt_.first_step > 0) {
    return (at::full({B_}, opt_.first_step, t0.options()).clamp(ctrl_.min_step, ctrl_.max_step) * direction_)
        .contiguous();
  }
  if (norm_ == nullptr) {
    // Hairer's rule as two fused ops around the field's probe evaluation.
    const at::Tensor yd = y.detach(), kd = k0.detach();
    auto [h0, d1, y_probe, t_probe] =
        ops::call<ops::InitialStepProbe>(yd, kd, t0, direction_, rtol_seg_, atol_seg_, segments_);
    const at::Tensor f1 = field_.eval(t_probe, y_probe);
    ++nfe;
    return ops::call<ops::InitialStepFinal>(yd, kd, f1, h0, d1, direction_, rtol_seg_, atol_seg_, segments_,
                                            static_cast<int64_t>(tab_.order - 1), ctrl_packed_);
  }
  // With a user norm: the unfused reference (solver/initial_step.cpp).
  const auto rtol_el = expand_segments(opt_.rtol, segments_, y);
  const auto atol_el = expand_segments(opt_.atol, segments_, y);
  const at::Tensor h_abs = select_initial_step(
      field_, norm_, {y.detach(), k0.detach(), t0, direction_, rtol_el, atol_el, segments_, tab_.order - 1});
  ++nfe;
  return (h_abs.clamp(ctrl_.min_step, ctrl_.max_step) * direction_).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> RkProblem::control(const at::Tensor& y, const at::Tensor& y1,
                                                                  const std::vector<at::Tensor>& ks,
                                                                  const at::Tensor& h) {
  at::NoGradGuard no_grad;
  const at::ArrayRef<double> e(tab_.e, tab_.stages);
  if (norm_ == nullptr) {
    return ops::call<ops::RkErrorControl>(y, y1, ks, h, e, rtol_seg_, atol_seg_, segments_, ctrl_packed_);
  }
  const auto err = ops::call<ops::RkStage>(at::zeros_like(y), ks, h, e);
  const auto tol = atol_el_ + rtol_el_ * at::maximum(y.abs(), y1.abs());
  at::Tensor ratio = group_norm(err / tol, segments_, norm_).abs();
  // As in the fused norm (core::scaled_error): a non-finite propagated state is never accepted.
  ratio = at::where(at::isfinite(y1).all(1), ratio, std::numeric_limits<double>::quiet_NaN()).contiguous();
  auto [accept, h_next] = ops::call<ops::StepSizeControl>(ratio, h, ctrl_packed_);
  return {ratio, accept, h_next};
}

}  // namespace fde::solver
