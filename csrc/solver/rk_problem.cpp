#include "solver/rk_problem.h"

#include "solver/initial_step.h"
#include "solver/norms.h"
#include "solver/ops_handles.h"

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
  TORCH_CHECK(y0.dim() == 2, "fastdiffeq: y0 must be [B, D]");
  TORCH_CHECK(t_out.scalar_type() == at::kDouble, "fastdiffeq: t_out must be float64");
  B_ = y0.size(0);
  D_ = y0.size(1);
  T_ = t_out.size(-1);
  TORCH_CHECK(T_ >= 1, "fastdiffeq: need at least one output time");
  TORCH_CHECK(opt.step_t.empty() && opt.jump_t.empty() || B_ == 1,
              "fastdiffeq: step_t and jump_t are supported in joint mode only");
  dtype_ = y0.scalar_type();
  t_out_ = t_out.to(y0.device()).contiguous();
  segments_ = opt.segment_ends;
  if (segments_.empty()) segments_.push_back(D_);
  rtol_seg_ = at::tensor(opt.rtol, at::kDouble).to(y0.device());
  atol_seg_ = at::tensor(opt.atol, at::kDouble).to(y0.device());
  ctrl_ = opt.control;
  ctrl_.exponent = 1.0 / tab_.order;
  if (T_ > 1) {
    auto first_two = (t_out_.dim() == 1 ? t_out_.slice(0, 0, 2) : t_out_.select(0, 0).slice(0, 0, 2)).cpu();
    direction_ = first_two[1].item<double>() >= first_two[0].item<double>() ? 1.0 : -1.0;
  }
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
  at::NoGradGuard no_grad;
  return at::isfinite(k0).all().item<bool>();
}

at::Tensor RkProblem::first_step(const at::Tensor& t0, const at::Tensor& y, const at::Tensor& k0, int64_t& nfe) {
  at::NoGradGuard no_grad;
  at::Tensor h_abs;
  if (opt_.first_step > 0) {
    h_abs = at::full({B_}, opt_.first_step, t0.options());
  } else {
    const auto rtol_el = expand_segments(opt_.rtol, segments_, y);
    const auto atol_el = expand_segments(opt_.atol, segments_, y);
    h_abs = select_initial_step(
        field_, norm_, {y.detach(), k0.detach(), t0, direction_, rtol_el, atol_el, segments_, tab_.order - 1});
    ++nfe;
  }
  return (h_abs.clamp(ctrl_.min_step, ctrl_.max_step) * direction_).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> RkProblem::control(const at::Tensor& y, const at::Tensor& y1,
                                                                  const std::vector<at::Tensor>& ks, const at::Tensor& h) {
  at::NoGradGuard no_grad;
  const at::ArrayRef<double> e(tab_.e, tab_.stages);
  if (norm_ == nullptr) {
    return op::rk_error_control(y, y1, ks, h, e, rtol_seg_, atol_seg_, segments_, ctrl_.safety, ctrl_.ifactor,
                                ctrl_.dfactor, ctrl_.exponent, ctrl_.min_step, ctrl_.max_step);
  }
  const auto err = op::rk_stage(at::zeros_like(y), ks, h, e);
  const auto tol = atol_el_ + rtol_el_ * at::maximum(y.abs(), y1.abs());
  at::Tensor ratio = group_norm(err / tol, segments_, norm_).abs().contiguous();
  auto [accept, h_next] = op::step_size_control(ratio, h, ctrl_.safety, ctrl_.ifactor, ctrl_.dfactor,
                                                ctrl_.exponent, ctrl_.min_step, ctrl_.max_step);
  return {ratio, accept, h_next};
}

}  // namespace fde::solver
