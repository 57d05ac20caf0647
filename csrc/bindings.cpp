// pybind11 bindings: the only file that knows Python. Wraps Python callables into the solver's
// VectorField / ErrorNorm interfaces and exposes the solver loop and the tableaus.
// Only torch's pybind11 glue (<torch/csrc/utils/pybind.h>: pybind11 and the at::Tensor caster), not
// <torch/extension.h>, which pulls in every ATen operator and the whole C++ frontend (a third of the build).
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/view_native.h>
#include <torch/csrc/utils/pybind.h>

#include <iterator>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/controller.h"
#include "core/status.h"
#include "core/tableau.h"
#include "solver/autograd_vjp.h"
#include "solver/finite.h"
#include "solver/fixed_grid.h"
#include "solver/native_cnf.h"
#include "solver/native_mlp.h"
#include "solver/progress.h"
#include "solver/residual.h"
#include "solver/reversible.h"
#include "solver/rk_adjoint.h"
#include "solver/rk_per_sample.h"
#include "solver/rk_solve.h"
#include "solver/solve_args.h"
#include "solver/step_callbacks.h"

namespace py = pybind11;

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

// A view without the dispatcher for tensors outside any graph: the field is called several times per step
// and dispatched views (with autograd view tracking) were a measurable part of the loop's cost.
at::Tensor cheap_view(const at::Tensor& x, at::IntArrayRef shape) {
  return x.requires_grad() ? x.view(shape) : at::native::view(x, shape);
}

std::string py_type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")); }

// The tensor a Python object holds (a torch.Tensor or subclass), or false.
bool unpack_tensor(const py::handle& obj, at::Tensor& out) {
  py::detail::make_caster<at::Tensor> caster;
  if (!caster.load(obj, /*convert=*/false)) return false;
  out = py::detail::cast_op<at::Tensor&&>(std::move(caster));
  return true;
}

// Held while a solver loop runs the autograd engine (VectorField::unlock): the engine must not run under the GIL.
struct GilRelease final : fde::solver::ScopedUnlock {
  py::gil_scoped_release release;
};

// func(t, y) -> dy/dt. `joint`: t is passed as a 0-dim tensor (torchdiffeq's convention), else as [B].
// `params`: the tensors its vector-Jacobian products differentiate (through torch autograd).
class PyVectorField final : public fde::solver::VectorField {
 public:
  PyVectorField(py::function func, std::vector<int64_t> user_shape, bool joint, std::vector<at::Tensor> params = {})
      : func_(std::move(func)),
        user_shape_(std::move(user_shape)),
        joint_(joint),
        params_(std::move(params)),
        n_params_(fde::solver::count_params(params_)) {}

  at::Tensor eval(const at::Tensor& t, const at::Tensor& y) override {
    // An explicit IntArrayRef: a bare {} would pick the view(ScalarType) overload (a byte reinterpretation).
    const at::Tensor t_arg = joint_ ? cheap_view(t, at::IntArrayRef()) : t;
    const at::Tensor y_arg = cheap_view(y, user_shape_);
    py::object r = func_(t_arg, y_arg);
    at::Tensor out;
    if (!unpack_tensor(r, out))
      throw py::type_error("fastdiffeq: func must return a torch.Tensor, got " + py_type_name(r));
    if (out.sizes() != at::IntArrayRef(user_shape_))
      throw py::value_error("fastdiffeq: func returned shape " + shape_str(out.sizes()) +
                            " but the state has shape " + shape_str(user_shape_));
    if (out.scalar_type() != y.scalar_type())
      throw py::type_error(std::string("fastdiffeq: func returned dtype ") + c10::toString(out.scalar_type()) +
                           " but the state is " + c10::toString(y.scalar_type()));
    if (out.device() != y.device())
      throw py::value_error("fastdiffeq: func returned a tensor on " + out.device().str() +
                            " but the state is on " + y.device().str());
    if (!out.is_contiguous()) out = out.contiguous();
    return cheap_view(out, y.sizes());
  }

  int64_t num_params() const override { return n_params_; }

  fde::solver::FieldVjp vjp(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v,
                            at::Tensor& grad_params) override {
    return fde::solver::autograd_vjp(*this, params_, t, y, v, grad_params);
  }

  fde::solver::FieldVjp vjp_deferred(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v,
                                     bool want_grad_y) override {
    return fde::solver::autograd_vjp_deferred(*this, params_, deferred_, t, y, v, want_grad_y);
  }

  void accumulate_deferred(const std::vector<at::Tensor>& weights, at::Tensor& grad_params) override {
    fde::solver::autograd_accumulate_deferred(*this, params_, deferred_, weights, grad_params);
  }

  std::unique_ptr<fde::solver::ScopedUnlock> unlock() override { return std::make_unique<GilRelease>(); }

 private:
  py::function func_;
  std::vector<int64_t> user_shape_;
  bool joint_;
  std::vector<at::Tensor> params_;
  int64_t n_params_;
};

// fastdiffeq.nn.MLP's native description (_C.NativeMLP): its parameters (shared with the module) and activation.
struct NativeMlpHandle {
  fde::solver::MlpSpec spec;
};

// A native field as the loops see it: releases the GIL around the autograd engine (checkpoint replays).
template <class Field>
class GilReleasing final : public Field {
 public:
  using Field::Field;
  std::unique_ptr<fde::solver::ScopedUnlock> unlock() override { return std::make_unique<GilRelease>(); }
};

// fastdiffeq.nn.CNF's native augmented field (_C.NativeCNF): the ConcatSquashMLP's parameters (shared), sqrt_T and
// the trace configuration of one solve.
struct NativeCnfHandle {
  fde::solver::CnfSpec spec;
};

bool same_tensors(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!a[i].is_same(b[i])) return false;
  return true;
}

// The one place a field object is made from what Python passed: a _C.NativeMLP runs natively (its vector-Jacobian
// products differentiate all of its parameters, so `params` must be empty or exactly those); anything else
// callable is a Python field.
std::unique_ptr<fde::solver::VectorField> make_field(const py::object& func, std::vector<int64_t> user_shape,
                                                     bool joint, std::vector<at::Tensor> params = {}) {
  if (py::isinstance<NativeMlpHandle>(func)) {
    const NativeMlpHandle& h = func.cast<const NativeMlpHandle&>();
    if (!params.empty() && !same_tensors(params, h.spec.params()))
      throw py::value_error("fastdiffeq: a native MLP field differentiates all of its parameters, in module order; "
                            "got another parameter list");
    return std::make_unique<GilReleasing<fde::solver::NativeMlpField>>(h.spec);
  }
  if (py::isinstance<NativeCnfHandle>(func)) {
    const NativeCnfHandle& h = func.cast<const NativeCnfHandle&>();
    if (!joint) throw py::value_error("fastdiffeq: a native CNF field runs in joint solves (odeint) only");
    if (!params.empty() && !same_tensors(params, h.spec.params()))
      throw py::value_error("fastdiffeq: a native CNF field differentiates all of its parameters, in module order; "
                            "got another parameter list");
    return std::make_unique<GilReleasing<fde::solver::NativeCnfField>>(h.spec);
  }
  if (!PyCallable_Check(func.ptr()))
    throw py::type_error("fastdiffeq: func must be callable as func(t, y), got " + py_type_name(func));
  return std::make_unique<PyVectorField>(py::reinterpret_borrow<py::function>(func), std::move(user_shape), joint,
                                         std::move(params));
}

// norm(x) -> a scalar per group: in joint mode a 0-dim tensor or a float for the whole state.
class PyErrorNorm final : public fde::solver::ErrorNorm {
 public:
  PyErrorNorm(py::function norm, std::vector<int64_t> user_shape)
      : norm_(std::move(norm)), user_shape_(std::move(user_shape)) {}

  at::Tensor norm(const at::Tensor& x) override {
    py::object r = norm_(x.view(user_shape_));
    at::Tensor v;
    if (unpack_tensor(r, v)) {
      v = v.detach();
      if (!(v.is_cpu() || v.device() == x.device()))
        throw py::value_error("fastdiffeq: options['norm'] returned a tensor on " + v.device().str() +
                              " (expected the state's device, " + x.device().str() + ", or the CPU)");
    } else if (py::isinstance<py::float_>(r) || py::isinstance<py::int_>(r)) {
      v = at::tensor(r.cast<double>(), at::kDouble);
    } else {
      throw py::type_error("fastdiffeq: options['norm'] must return a number or a tensor, got " + py_type_name(r));
    }
    if (v.numel() != x.size(0))
      throw py::value_error("fastdiffeq: options['norm'] must return one value per error group (" +
                            std::to_string(x.size(0)) + "), got shape " + shape_str(v.sizes()));
    return v.to(x.device(), at::kDouble).reshape({x.size(0)});
  }

 private:
  py::function norm_;
  std::vector<int64_t> user_shape_;
};

// progress(fraction, t): told how far a solve has come (fastdiffeq._progress.ProgressBar), at most every
// min_interval_s seconds. Exceptions it raises propagate out of the solve.
class PyProgressSink final : public fde::solver::ProgressSink {
 public:
  PyProgressSink(py::function callback, double min_interval_s) : callback_(std::move(callback)) {
    if (!(min_interval_s >= 0.0))
      throw py::value_error("fastdiffeq: progress_interval must be >= 0, got " + std::to_string(min_interval_s));
    this->min_interval_s = min_interval_s;
  }
  void update(double fraction, double t) override {
    py::gil_scoped_acquire gil;
    callback_(fraction, t);
  }

 private:
  py::function callback_;
};

// A progress argument: None (no progress: nothing is computed) or a callable.
// torchdiffeq's step callbacks: callbacks is None or a tuple (step, accept, reject) of callables or None, each
// called as cb(t0, y0, h) with t0 and h 0-dim float64 tensors and y0 in user_shape (the Python layer adapts
// them to torchdiffeq's conventions).
class PyStepCallbacks final : public fde::solver::StepCallbacks {
 public:
  PyStepCallbacks(const py::tuple& cbs, std::vector<int64_t> user_shape) : user_shape_(std::move(user_shape)) {
    if (cbs.size() != 3) throw py::value_error("fastdiffeq: callbacks must be a tuple (step, accept, reject)");
    step_ = cbs[0];
    accept_ = cbs[1];
    reject_ = cbs[2];
    for (const auto& cb : {step_, accept_, reject_})
      if (!cb.is_none() && !PyCallable_Check(cb.ptr()))
        throw py::type_error("fastdiffeq: each callback must be callable or None, got " + py_type_name(cb));
  }
  void step(double t0, const at::Tensor& y0, double h) override { call(step_, t0, y0, h); }
  void accept(double t0, const at::Tensor& y0, double h) override { call(accept_, t0, y0, h); }
  void reject(double t0, const at::Tensor& y0, double h) override { call(reject_, t0, y0, h); }

 private:
  void call(const py::object& cb, double t0, const at::Tensor& y0, double h) {
    if (cb.is_none()) return;
    cb(at::scalar_tensor(t0, at::kDouble), y0.view(user_shape_), at::scalar_tensor(h, at::kDouble));
  }
  py::object step_, accept_, reject_;
  std::vector<int64_t> user_shape_;
};

std::unique_ptr<PyStepCallbacks> make_callbacks(const py::object& callbacks, const std::vector<int64_t>& user_shape) {
  if (callbacks.is_none()) return nullptr;
  if (!py::isinstance<py::tuple>(callbacks))
    throw py::type_error("fastdiffeq: callbacks must be None or a tuple, got " + py_type_name(callbacks));
  return std::make_unique<PyStepCallbacks>(callbacks.cast<py::tuple>(), user_shape);
}

std::unique_ptr<PyProgressSink> make_progress(const py::object& progress, double min_interval_s) {
  if (progress.is_none()) return nullptr;
  if (!PyCallable_Check(progress.ptr()))
    throw py::type_error("fastdiffeq: progress must be None or a callable progress(fraction, t), got " +
                         py_type_name(progress));
  return std::make_unique<PyProgressSink>(progress.cast<py::function>(), min_interval_s);
}

fde::solver::LoopMode parse_mode(const std::string& mode) {
  if (mode == "masked") return fde::solver::LoopMode::kMasked;
  if (mode == "graph") return fde::solver::LoopMode::kGraph;
  if (mode == "record") return fde::solver::LoopMode::kRecord;
  throw py::value_error("fastdiffeq: mode must be 'masked', 'graph' or 'record', got '" + mode + "'");
}

std::unique_ptr<PyErrorNorm> make_norm(const py::object& norm, const std::vector<int64_t>& user_shape) {
  if (norm.is_none()) return nullptr;
  return std::make_unique<PyErrorNorm>(norm.cast<py::function>(), user_shape);
}

// The shape the field sees the state in: non-negative sizes whose product is the state's numel; in joint mode
// (t passed as a 0-dim tensor) the state is one error group (B == 1).
void check_user_shape(const std::vector<int64_t>& user_shape, int64_t numel, int64_t B, bool joint) {
  int64_t product = 1;
  bool overflow = false;
  for (int64_t n : user_shape) {
    if (n < 0) throw py::value_error("fastdiffeq: user_shape must have sizes >= 0, got " + shape_str(user_shape));
    if (n != 0 && product > std::numeric_limits<int64_t>::max() / n) overflow = true;
    product = overflow ? 0 : product * n;
  }
  if (overflow || product != numel)
    throw py::value_error("fastdiffeq: user_shape " + shape_str(user_shape) + " does not hold the state's " +
                          std::to_string(numel) + " elements");
  if (joint && B != 1)
    throw py::value_error("fastdiffeq: joint mode (one step size for the whole state) needs B == 1, got B = " +
                          std::to_string(B));
}

// A tape argument: None or an RkTape from rk_solve(..., mode='record').
std::shared_ptr<fde::solver::RkTape> tape_arg(const py::object& tape) {
  if (tape.is_none()) return nullptr;
  if (!py::isinstance<fde::solver::RkTape>(tape))
    throw py::type_error("fastdiffeq: tape must be an RkTape (rk_solve(..., mode='record')['tape']) or None, got " +
                         py_type_name(tape));
  return tape.cast<std::shared_ptr<fde::solver::RkTape>>();
}

// A list (or tuple) of tensors, e.g. the parameters to differentiate.
std::vector<at::Tensor> tensor_list_arg(const py::object& x, const char* name) {
  if (!py::isinstance<py::list>(x) && !py::isinstance<py::tuple>(x))
    throw py::type_error(std::string("fastdiffeq: ") + name + " must be a list of tensors, got " + py_type_name(x));
  std::vector<at::Tensor> out;
  size_t i = 0;
  for (const py::handle item : x) {
    at::Tensor t;
    if (!unpack_tensor(item, t))
      throw py::type_error(std::string("fastdiffeq: ") + name + "[" + std::to_string(i) + "] must be a torch.Tensor, got " +
                           py_type_name(item));
    out.push_back(t);
    ++i;
  }
  return out;
}

// An optional tensor argument: None or a torch.Tensor.
at::Tensor optional_tensor_arg(const py::object& x, const char* name) {
  at::Tensor out;
  if (x.is_none()) return out;
  if (!unpack_tensor(x, out))
    throw py::type_error(std::string("fastdiffeq: ") + name + " must be a torch.Tensor or None, got " +
                         py_type_name(x));
  return out;
}

// A required tensor argument (taken as a py::object so that anything else is a TypeError naming the argument, not
// pybind11's dump of the signature).
at::Tensor tensor_arg(const py::object& x, const char* name) {
  at::Tensor out;
  if (!unpack_tensor(x, out))
    throw py::type_error(std::string("fastdiffeq: ") + name + " must be a torch.Tensor, got " + py_type_name(x));
  return out;
}

// A forward solve's result as the dict the Python layer reads.
py::dict solve_result(const fde::solver::RkResult& r) {
  py::dict out;
  out["ys"] = r.ys;
  out["status"] = r.status;
  out["counters"] = r.counters;
  out["t"] = r.t;
  out["h"] = r.h;
  out["nfe"] = r.nfe;
  out["n_steps"] = r.n_steps;
  if (r.tape) out["tape"] = r.tape;
  return out;
}

py::dict rk_solve_py(const py::object& func, const at::Tensor& y0, const at::Tensor& t_out,
                     const fde::solver::RkOptions& options, py::object norm, std::vector<int64_t> user_shape,
                     bool joint, const std::string& mode, const py::object& progress, double progress_interval,
                     const py::object& callbacks) {
  const fde::solver::LoopMode loop_mode = parse_mode(mode);
  if (y0.dim() == 2) check_user_shape(user_shape, y0.numel(), y0.size(0), joint);
  const std::unique_ptr<PyStepCallbacks> cbs = make_callbacks(callbacks, user_shape);
  const auto field = make_field(func, user_shape, joint);
  std::unique_ptr<PyErrorNorm> user_norm = make_norm(norm, user_shape);
  const std::unique_ptr<PyProgressSink> sink = make_progress(progress, progress_interval);
  fde::solver::RkOptions opts = options;
  opts.progress = sink.get();
  opts.callbacks = cbs.get();
  return solve_result(fde::solver::rk_solve(*field, user_norm.get(), y0, t_out, opts, loop_mode));
}

// A flat parameter cotangent as one tensor per parameter (its shape and dtype).
std::vector<at::Tensor> split_params(const at::Tensor& flat, const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  int64_t offset = 0;
  for (const auto& q : params) {
    grads.push_back(flat.narrow(0, offset, q.numel()).view(q.sizes()).to(q.scalar_type()));
    offset += q.numel();
  }
  return grads;
}

// The adjoint's backward solve: dL/dy0 and dL/dparams (one tensor per parameter, its shape and dtype).
py::dict rk_adjoint_py(const py::object& func, const py::object& params_obj, const at::Tensor& t_out,
                       const py::object& ys_arg, const py::object& tape_obj,
                       const at::Tensor& grad_ys, const fde::solver::RkOptions& options, bool seminorm,
                       const std::string& trajectory, py::object norm, std::vector<int64_t> user_shape, bool joint,
                       const py::object& progress, double progress_interval, const py::object& callbacks) {
  const std::vector<at::Tensor> params = tensor_list_arg(params_obj, "params");
  const std::unique_ptr<PyProgressSink> sink = make_progress(progress, progress_interval);
  fde::solver::AdjointOptions opt;
  opt.solve = options;
  opt.solve.progress = sink.get();
  opt.seminorm = seminorm;
  if (trajectory == "resolve") {
    opt.trajectory = fde::solver::AdjointTrajectory::kResolve;
  } else if (trajectory == "interpolated") {
    opt.trajectory = fde::solver::AdjointTrajectory::kInterpolated;
  } else {
    throw py::value_error("fastdiffeq: trajectory must be 'resolve' or 'interpolated', got '" + trajectory + "'");
  }
  int64_t P = 0;
  for (const auto& q : params) {
    opt.param_sizes.push_back(q.numel());
    P += q.numel();
  }
  const at::Tensor ys = optional_tensor_arg(ys_arg, "ys");
  const std::shared_ptr<fde::solver::RkTape> tape = tape_arg(tape_obj);
  if (grad_ys.dim() == 3) check_user_shape(user_shape, grad_ys.size(1) * grad_ys.size(2), grad_ys.size(1), joint);
  fde::solver::check_vjp_params(params, grad_ys.device());
  const auto field = make_field(func, user_shape, joint, params);
  // A user norm sees the flat augmented state [(y,) a, theta_bar].
  const int64_t D = grad_ys.dim() == 3 ? grad_ys.size(2) : 0;
  const int64_t N = (opt.trajectory == fde::solver::AdjointTrajectory::kResolve ? 2 * D : D) + P;
  std::unique_ptr<PyErrorNorm> user_norm = make_norm(norm, {N});
  // The backward pass's step callbacks (func.callback_*_adjoint) see the flat augmented state too.
  const std::unique_ptr<PyStepCallbacks> cbs = make_callbacks(callbacks, {N});
  opt.solve.callbacks = cbs.get();
  fde::solver::AdjointResult r = fde::solver::rk_adjoint(*field, user_norm.get(), t_out, ys, tape.get(), grad_ys, opt);
  py::dict out;
  out["status"] = r.status;
  out["t"] = r.t;
  out["nfe"] = r.nfe;
  out["n_accepted"] = r.n_accepted;
  out["n_rejected"] = r.n_rejected;
  if (r.grad_y0.defined()) {
    out["grad_y0"] = r.grad_y0;
    out["grad_params"] = split_params(r.grad_params, params);
  }
  return out;
}

// The fixed-grid loop (joint mode): ys and nfe, and the tape in mode 'record'.
py::dict fixed_grid_solve_py(const py::object& func, const at::Tensor& y0, const at::Tensor& grid, const at::Tensor& t_out,
                             const std::string& method, const std::string& interp, bool perturb,
                             std::vector<int64_t> user_shape, const std::string& mode, const py::object& callbacks) {
  fde::solver::FixedGridOptions opt;
  opt.tableau = fde::core::find_tableau(method);
  if (opt.tableau == nullptr) throw py::value_error("fastdiffeq: unknown method '" + method + "'");
  if (interp != "linear" && interp != "cubic")
    throw py::value_error("fastdiffeq: interp must be 'linear' or 'cubic', got '" + interp + "'");
  opt.cubic = interp == "cubic";
  opt.perturb = perturb;
  const fde::solver::LoopMode loop_mode = parse_mode(mode);
  if (y0.dim() == 2) check_user_shape(user_shape, y0.numel(), y0.size(0), true);
  const std::unique_ptr<PyStepCallbacks> cbs = make_callbacks(callbacks, user_shape);
  opt.callbacks = cbs.get();
  const auto field = make_field(func, user_shape, true);
  fde::solver::FixedGridResult r = fde::solver::fixed_grid_solve(*field, y0, grid, t_out, opt, loop_mode);
  py::dict out;
  out["ys"] = r.ys;
  out["nfe"] = r.nfe;
  out["n_steps"] = r.n_steps;
  out["tape"] = r.tape ? py::cast(r.tape) : py::none();
  return out;
}

py::tuple fixed_grid_backward_py(const py::object& func, const py::object& tape_obj, const at::Tensor& grad_ys,
                                 const py::object& params_obj, std::vector<int64_t> user_shape) {
  const std::vector<at::Tensor> params = tensor_list_arg(params_obj, "params");
  if (!py::isinstance<fde::solver::FixedGridTape>(tape_obj))
    throw py::type_error("fastdiffeq: tape must be a FixedGridTape, got " + py_type_name(tape_obj));
  const auto tape = tape_obj.cast<std::shared_ptr<fde::solver::FixedGridTape>>();
  check_user_shape(user_shape, tape->y0.numel(), tape->y0.size(0), true);
  fde::solver::check_vjp_params(params, grad_ys.device());
  const auto field = make_field(func, std::move(user_shape), true, params);
  fde::solver::CheckpointGradients g = fde::solver::fixed_grid_backward(*field, *tape, grad_ys, params);
  return py::make_tuple(g.grad_y0, g.grad_params, g.nfe);
}

py::tuple checkpoint_backward_py(const py::object& func, const py::object& tape_obj,
                                 const at::Tensor& grad_ys, const py::object& params_obj,
                                 std::vector<int64_t> user_shape, bool joint) {
  const std::vector<at::Tensor> params = tensor_list_arg(params_obj, "params");
  const std::shared_ptr<fde::solver::RkTape> tape = tape_arg(tape_obj);
  if (!tape) throw py::value_error("fastdiffeq: no checkpoint tape");
  if (tape->y0.defined()) check_user_shape(user_shape, tape->y0.numel(), tape->y0.size(0), joint);
  const auto field = make_field(func, std::move(user_shape), joint, params);
  fde::solver::CheckpointGradients g = fde::solver::rk_checkpoint_backward(*field, *tape, grad_ys, params);
  return py::make_tuple(g.grad_y0, g.grad_params, g.nfe);
}

// Per-sample solves (solve_ivp): t is passed to func as [B], and y as user_shape, whose first size is B.
void check_sample_shape(const std::vector<int64_t>& user_shape, int64_t numel, int64_t B) {
  check_user_shape(user_shape, numel, B, false);
  if (user_shape.empty() || user_shape[0] != B)
    throw py::value_error("fastdiffeq: user_shape must start with the number of samples B = " + std::to_string(B) +
                          ", got " + shape_str(user_shape));
}

std::shared_ptr<fde::solver::SampleTape> sample_tape_arg(const py::object& tape) {
  if (!py::isinstance<fde::solver::SampleTape>(tape))
    throw py::type_error("fastdiffeq: tape must be a SampleTape (rk_solve_per_sample(..., mode='record')['tape']), got " +
                         py_type_name(tape));
  return tape.cast<std::shared_ptr<fde::solver::SampleTape>>();
}

// event(t, y) -> one value per sample ([B], or a 0-dim tensor / number in joint mode, t then 0-dim); t is
// float64.
class PyEventFunction final : public fde::solver::EventFunction {
 public:
  PyEventFunction(py::function fn, std::vector<int64_t> user_shape, bool joint)
      : fn_(std::move(fn)), user_shape_(std::move(user_shape)), joint_(joint) {}

  at::Tensor value(const at::Tensor& t, const at::Tensor& y) override {
    const int64_t B = y.size(0);
    py::object r = fn_(joint_ ? t.reshape({}) : t, y.view(user_shape_));
    at::Tensor v;
    if (unpack_tensor(r, v)) {
      v = v.detach();
      if (v.is_complex())
        throw py::type_error(std::string("fastdiffeq: event_fn must return a real tensor, got ") +
                             c10::toString(v.scalar_type()));
      if (!(v.is_cpu() || v.is_cuda()))
        throw py::value_error("fastdiffeq: event_fn returned a tensor on " + v.device().str() +
                              " (expected a CPU or CUDA tensor)");
    } else if (py::isinstance<py::float_>(r) || py::isinstance<py::int_>(r)) {
      v = at::tensor(r.cast<double>(), at::kDouble);
    } else {
      throw py::type_error("fastdiffeq: event_fn must return a tensor, got " + py_type_name(r));
    }
    if (v.numel() != B)
      throw py::value_error("fastdiffeq: event_fn must return one value per sample (" + std::to_string(B) +
                            "), got shape " + shape_str(v.sizes()));
    return v.to(at::kCPU, at::kDouble).reshape({B}).contiguous();
  }

 private:
  py::function fn_;
  std::vector<int64_t> user_shape_;
  bool joint_;
};

py::dict rk_solve_per_sample_py(const py::object& func, const at::Tensor& y0, const at::Tensor& t_out,
                                const fde::solver::RkOptions& options, py::object norm, std::vector<int64_t> user_shape,
                                const std::string& mode, const py::object& event_fn, bool joint,
                                const py::object& progress, double progress_interval) {
  const fde::solver::LoopMode loop_mode = parse_mode(mode);
  if (loop_mode == fde::solver::LoopMode::kMasked)
    throw py::value_error("fastdiffeq: rk_solve_per_sample runs in 'graph' or 'record' mode (the masked loop is rk_solve)");
  if (y0.dim() == 2) {
    if (joint) {
      check_user_shape(user_shape, y0.numel(), y0.size(0), true);
    } else {
      check_sample_shape(user_shape, y0.numel(), y0.size(0));
    }
  }
  const auto field = make_field(func, user_shape, joint);
  std::unique_ptr<PyErrorNorm> user_norm = make_norm(norm, user_shape);
  const std::unique_ptr<PyProgressSink> sink = make_progress(progress, progress_interval);
  std::unique_ptr<PyEventFunction> event;
  if (!event_fn.is_none()) {
    if (!PyCallable_Check(event_fn.ptr()))
      throw py::type_error("fastdiffeq: event_fn must be callable as event_fn(t, y), got " + py_type_name(event_fn));
    event = std::make_unique<PyEventFunction>(event_fn.cast<py::function>(), user_shape, joint);
  }
  fde::solver::RkOptions opts = options;
  opts.progress = sink.get();
  fde::solver::EventSettings events;
  events.event = event.get();
  fde::solver::SampleSolveResult r =
      fde::solver::rk_solve_per_sample(*field, user_norm.get(), y0, t_out, opts, loop_mode, events);
  py::dict out = solve_result(r.result);
  if (r.tape) out["tape"] = r.tape;
  if (r.t_event.defined()) {
    out["t_event"] = r.t_event;
    out["y_event"] = r.y_event;
    out["n_event_calls"] = r.n_event_calls;
  }
  return out;
}

py::tuple checkpoint_backward_per_sample_py(const py::object& func, const py::object& tape_obj, const at::Tensor& grad_ys,
                                            const py::object& params_obj, std::vector<int64_t> user_shape) {
  const std::vector<at::Tensor> params = tensor_list_arg(params_obj, "params");
  const std::shared_ptr<fde::solver::SampleTape> tape = sample_tape_arg(tape_obj);
  if (tape->y0.defined()) check_sample_shape(user_shape, tape->y0.numel(), tape->y0.size(0));
  fde::solver::check_vjp_params(params, grad_ys.device());
  const auto field = make_field(func, std::move(user_shape), false, params);
  fde::solver::CheckpointGradients g = fde::solver::rk_checkpoint_backward_per_sample(*field, *tape, grad_ys, params);
  return py::make_tuple(g.grad_y0, g.grad_params, g.nfe);
}

py::dict rk_adjoint_per_sample_py(const py::object& func, const py::object& params_obj, const at::Tensor& t_out,
                                  const py::object& ys_arg, const at::Tensor& grad_ys, const at::Tensor& active,
                                  const fde::solver::RkOptions& options, std::vector<int64_t> user_shape,
                                  const py::object& tape_obj, const py::object& progress, double progress_interval) {
  const std::vector<at::Tensor> params = tensor_list_arg(params_obj, "params");
  const at::Tensor ys = optional_tensor_arg(ys_arg, "ys");
  std::shared_ptr<fde::solver::SampleTape> tape;
  if (!tape_obj.is_none()) {
    tape = sample_tape_arg(tape_obj);
    if (!tape->dense) throw py::value_error("fastdiffeq: the tape has no dense record (record_dense=True)");
  }
  if (grad_ys.dim() == 3) check_sample_shape(user_shape, grad_ys.size(1) * grad_ys.size(2), grad_ys.size(1));
  fde::solver::check_vjp_params(params, grad_ys.device());
  const std::unique_ptr<PyProgressSink> sink = make_progress(progress, progress_interval);
  fde::solver::RkOptions opts = options;
  opts.progress = sink.get();
  const auto field = make_field(func, user_shape, false, params);
  fde::solver::SampleAdjointResult r = fde::solver::rk_adjoint_per_sample(*field, t_out, ys, grad_ys, active, opts,
                                                                         tape ? tape->dense.get() : nullptr);
  py::dict out;
  out["grad_y0"] = r.grad_y0;
  out["grad_params"] = split_params(r.grad_params, params);
  out["status"] = r.status;
  out["counters"] = r.counters;
  out["t"] = r.t;
  out["nfe"] = r.nfe;
  out["n_steps"] = r.n_steps;
  return out;
}

// ControllerParams(**fields): the core's struct with its named fields (core::kControllerFields); any
// field not given keeps the core's default.
fde::core::ControllerParams controller_from_kwargs(const py::kwargs& kw) {
  fde::core::ControllerParams p;
  size_t used = 0;
  for (const auto& f : fde::core::kControllerFields) {
    if (kw.contains(f.name)) {
      p.*f.member = kw[f.name].cast<double>();
      ++used;
    }
  }
  if (used != kw.size()) {
    std::string names;
    for (const auto& f : fde::core::kControllerFields) names += std::string(names.empty() ? "" : ", ") + f.name;
    throw py::type_error("fastdiffeq: ControllerParams takes the keyword arguments " + names + " only, got " +
                         std::string(py::str(kw.attr("keys")())));
  }
  return p;
}

py::dict named_codes(const fde::core::NamedCode* codes, size_t n) {
  py::dict d;
  for (size_t i = 0; i < n; ++i) d[codes[i].name] = codes[i].value;
  return d;
}

py::dict tableau_py(const std::string& name) {
  const fde::core::Tableau* t = fde::core::find_tableau(name);
  if (t == nullptr) throw py::value_error("fastdiffeq: unknown method '" + name + "'");
  const int S = t->stages;
  std::vector<std::vector<double>> a(S);
  for (int i = 0; i < S; ++i) a[i].assign(t->a[i], t->a[i] + i);
  py::dict d;
  d["name"] = std::string(t->name);
  d["stages"] = S;
  d["order"] = t->order;
  d["c"] = std::vector<double>(t->c, t->c + S);
  d["a"] = a;
  d["b"] = std::vector<double>(t->b, t->b + S);
  d["e"] = std::vector<double>(t->e, t->e + S);
  d["mid"] = std::vector<double>(t->mid, t->mid + S);
  d["stepping"] = t->stepping == fde::core::Stepping::kAdaptive ? "adaptive" : "fixed";
  d["fsal"] = fde::core::is_fsal(*t);
  return d;
}

// ---- F10: reversible Runge-Kutta (solver/reversible.h) and residual networks (solver/residual.h) ----

py::dict reversible_solve_py(const py::object& func, const at::Tensor& y0, const at::Tensor& t_out,
                             const fde::solver::RkOptions& options, double coupling, const std::vector<double>& grid,
                             std::vector<int64_t> user_shape, bool keep_states) {
  if (y0.dim() == 2) check_user_shape(user_shape, y0.numel(), y0.size(0), true);
  fde::solver::ReversibleOptions opt;
  opt.rk = options;
  opt.coupling = coupling;
  opt.grid = grid;
  opt.keep_states = keep_states;
  const auto field = make_field(func, std::move(user_shape), true);
  fde::solver::ReversibleResult r = fde::solver::reversible_solve(*field, y0, t_out, opt);
  py::dict out;
  out["ys"] = r.ys;
  out["status"] = r.status;
  out["t_final"] = r.t_final;
  out["nfe"] = r.nfe;
  out["n_accepted"] = r.n_accepted;
  out["n_rejected"] = r.n_rejected;
  out["tape"] = py::cast(r.tape);
  out["states"] = keep_states ? py::cast(r.states) : py::none();
  return out;
}

py::tuple reversible_backward_py(const py::object& func, const py::object& tape_obj, const at::Tensor& grad_ys,
                                 const py::object& params_obj, std::vector<int64_t> user_shape, bool keep_states) {
  const std::vector<at::Tensor> params = tensor_list_arg(params_obj, "params");
  if (!py::isinstance<fde::solver::ReversibleTape>(tape_obj))
    throw py::type_error("fastdiffeq: tape must be a ReversibleTape, got " + py_type_name(tape_obj));
  const auto tape = tape_obj.cast<std::shared_ptr<fde::solver::ReversibleTape>>();
  if (!tape->y_end.defined()) throw py::value_error("fastdiffeq: an empty reversible tape");
  check_user_shape(user_shape, tape->y_end.numel(), tape->y_end.size(0), true);
  fde::solver::check_vjp_params(params, grad_ys.device());
  const auto field = make_field(func, std::move(user_shape), true, params);
  fde::solver::ReversibleGradients g = fde::solver::reversible_backward(*field, *tape, grad_ys, params, keep_states);
  return py::make_tuple(g.grad_y0, g.grad_params, g.nfe, keep_states ? py::cast(g.states) : py::none());
}

py::dict reversible_solve_per_sample_py(const py::object& func, const at::Tensor& y0, const at::Tensor& t_out,
                                        const fde::solver::RkOptions& options, double coupling,
                                        std::vector<int64_t> user_shape) {
  if (y0.dim() == 2) check_sample_shape(user_shape, y0.numel(), y0.size(0));
  fde::solver::ReversibleOptions opt;
  opt.rk = options;
  opt.coupling = coupling;
  const auto field = make_field(func, std::move(user_shape), false);
  fde::solver::SampleReversibleResult r = fde::solver::reversible_solve_per_sample(*field, y0, t_out, opt);
  py::dict out;
  out["ys"] = r.ys;
  out["status"] = r.status;
  out["counters"] = r.counters;
  out["t"] = r.t;
  out["nfe"] = r.nfe;
  out["tape"] = py::cast(r.tape);
  return out;
}

py::tuple reversible_backward_per_sample_py(const py::object& func, const py::object& tape_obj,
                                            const at::Tensor& grad_ys, const py::object& params_obj,
                                            std::vector<int64_t> user_shape) {
  const std::vector<at::Tensor> params = tensor_list_arg(params_obj, "params");
  if (!py::isinstance<fde::solver::SampleReversibleTape>(tape_obj))
    throw py::type_error("fastdiffeq: tape must be a SampleReversibleTape, got " + py_type_name(tape_obj));
  const auto tape = tape_obj.cast<std::shared_ptr<fde::solver::SampleReversibleTape>>();
  if (!tape->y_end.defined()) throw py::value_error("fastdiffeq: an empty reversible tape");
  check_sample_shape(user_shape, tape->y_end.numel(), tape->y_end.size(0));
  fde::solver::check_vjp_params(params, grad_ys.device());
  const auto field = make_field(func, std::move(user_shape), false, params);
  fde::solver::ReversibleGradients g = fde::solver::reversible_backward_per_sample(*field, *tape, grad_ys, params);
  return py::make_tuple(g.grad_y0, g.grad_params, g.nfe);
}

// The blocks of a fastdiffeq.nn.ResidualODE: Python callables block(x), each with its own parameter list.
class PyBlockSequence final : public fde::solver::BlockSequence {
 public:
  PyBlockSequence(const py::object& blocks, const py::object& params) {
    if (!py::isinstance<py::list>(blocks) && !py::isinstance<py::tuple>(blocks))
      throw py::type_error("fastdiffeq: blocks must be a list of callables, got " + py_type_name(blocks));
    for (const py::handle b : blocks) {
      if (!PyCallable_Check(b.ptr()))
        throw py::type_error("fastdiffeq: blocks[" + std::to_string(blocks_.size()) + "] must be callable, got " +
                             py_type_name(b));
      blocks_.push_back(py::reinterpret_borrow<py::object>(b));
    }
    if (!py::isinstance<py::list>(params) && !py::isinstance<py::tuple>(params))
      throw py::type_error("fastdiffeq: params must be a list of tensor lists, got " + py_type_name(params));
    for (const py::handle p : params) params_.push_back(tensor_list_arg(py::reinterpret_borrow<py::object>(p), "params[n]"));
    if (params_.size() != blocks_.size())
      throw py::value_error("fastdiffeq: params must hold one tensor list per block (" + std::to_string(blocks_.size()) +
                            "), got " + std::to_string(params_.size()));
  }
  int64_t size() const override { return static_cast<int64_t>(blocks_.size()); }
  at::Tensor eval(int64_t n, const at::Tensor& x) override {
    py::object r = blocks_[n](x);
    at::Tensor out;
    if (!unpack_tensor(r, out))
      throw py::type_error("fastdiffeq: block " + std::to_string(n) + " must return a torch.Tensor, got " + py_type_name(r));
    if (out.sizes() != x.sizes() || out.scalar_type() != x.scalar_type() || out.device() != x.device())
      throw py::value_error("fastdiffeq: block " + std::to_string(n) + " returned " + shape_str(out.sizes()) + " " +
                            c10::toString(out.scalar_type()) + " on " + out.device().str() +
                            "; it must map x to x's shape, dtype and device (" + shape_str(x.sizes()) + " " +
                            c10::toString(x.scalar_type()) + " on " + x.device().str() + ")");
    return out;
  }
  const std::vector<at::Tensor>& params(int64_t n) const override { return params_[n]; }
  std::unique_ptr<fde::solver::ScopedUnlock> unlock() override { return std::make_unique<GilRelease>(); }

 private:
  std::vector<py::object> blocks_;
  std::vector<std::vector<at::Tensor>> params_;
};

fde::solver::ResidualScheme parse_scheme(const std::string& scheme) {
  if (scheme == "euler") return fde::solver::ResidualScheme::kEuler;
  if (scheme == "heun") return fde::solver::ResidualScheme::kHeun;
  throw py::value_error("fastdiffeq: scheme must be 'euler' or 'heun', got '" + scheme + "'");
}

at::Tensor residual_forward_py(const py::object& blocks, const py::object& params, const at::Tensor& x,
                               const std::string& scheme) {
  PyBlockSequence seq(blocks, params);
  return fde::solver::residual_forward(seq, x, parse_scheme(scheme));
}

py::tuple residual_backward_py(const py::object& blocks, const py::object& params, const at::Tensor& x_end,
                               const at::Tensor& grad_end, const std::string& scheme) {
  PyBlockSequence seq(blocks, params);
  fde::solver::ResidualGradients g =
      fde::solver::residual_reconstruct_backward(seq, x_end, grad_end, parse_scheme(scheme));
  return py::make_tuple(g.grad_x0, g.grad_params, g.x0_rebuilt);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastdiffeq compiled core: fused Runge-Kutta ops (torch.ops.fastdiffeq) and solver loops";

  // The controller's parameters: one struct from Python to the kernels (the ops take it packed).
  auto ctrl = py::class_<fde::core::ControllerParams>(m, "ControllerParams",
                                                      "Step-size controller parameters (csrc/core/controller.h). "
                                                      "rk_solve sets exponent from the method's order.");
  ctrl.def(py::init(&controller_from_kwargs));
  py::list field_names;
  for (const auto& f : fde::core::kControllerFields) {
    ctrl.def_readwrite(f.name, f.member);
    field_names.append(f.name);
  }
  ctrl.attr("fields") = py::tuple(field_names);
  ctrl.def("pack", [](const fde::core::ControllerParams& p) {
    const auto v = fde::core::pack(p);
    return std::vector<double>(v.begin(), v.end());
  }, "The values in the order the ops' `control` argument takes them.");
  ctrl.def("problem", [](const fde::core::ControllerParams& p) -> py::object {
    const auto issue = fde::core::check_controller(p);
    if (!issue) return py::none();
    return py::make_tuple(issue->field, issue->requirement, issue->value);
  }, "None when the parameters satisfy the range rules, else (field, requirement, value) of the first "
     "violated one.");
  ctrl.def("__repr__", [](const fde::core::ControllerParams& p) {
    std::ostringstream os;
    os << "ControllerParams(";
    bool first = true;
    for (const auto& f : fde::core::kControllerFields) {
      os << (first ? "" : ", ") << f.name << "=" << p.*f.member;
      first = false;
    }
    os << ")";
    return os.str();
  });

  // Status codes and counter indices, defined in csrc/core/status.h.
  m.attr("status_codes") = named_codes(fde::core::kStatusNames, std::size(fde::core::kStatusNames));
  m.attr("counter_indices") = named_codes(fde::core::kCounterNames, std::size(fde::core::kCounterNames));
  m.attr("max_non_finite_retries") = fde::core::kMaxNonFiniteRetries;
  // The settings of one solve, built once in Python (fastdiffeq._odeint.solver_options).
  using fde::solver::RkOptions;
  py::class_<fde::solver::RkOptions>(m, "RkOptions", "The settings of one solve (fastdiffeq.solver::RkOptions).")
      .def(py::init<>())
      .def_property(
          "method", [](const RkOptions& o) { return std::string(o.tableau->name); },
          [](RkOptions& o, const std::string& name) {
            const fde::core::Tableau* t = fde::core::find_tableau(name);
            if (t == nullptr) throw py::value_error("fastdiffeq: unknown method '" + name + "'");
            o.tableau = t;
          })
      .def_readwrite("rtol", &RkOptions::rtol)
      .def_readwrite("atol", &RkOptions::atol)
      .def_readwrite("segment_ends", &RkOptions::segment_ends)
      .def_readwrite("control", &RkOptions::control)
      .def_readwrite("first_step", &RkOptions::first_step)
      .def_readwrite("max_num_steps", &RkOptions::max_num_steps)
      .def_readwrite("step_t", &RkOptions::step_t)
      .def_readwrite("jump_t", &RkOptions::jump_t)
      .def_readwrite("check_every", &RkOptions::check_every)
      .def_readwrite("record_dense", &RkOptions::record_dense);
  m.def("rk_solve", &rk_solve_py, py::arg("func"), py::arg("y0"), py::arg("t_out"), py::arg("options"),
        py::kw_only(), py::arg("norm"), py::arg("user_shape"), py::arg("joint"), py::arg("mode") = "masked",
        py::arg("progress") = py::none(), py::arg("progress_interval") = 0.1, py::arg("callbacks") = py::none());
  py::class_<fde::solver::RkTape, std::shared_ptr<fde::solver::RkTape>>(m, "RkTape")
      .def_property_readonly("n_steps", [](const fde::solver::RkTape& t) { return t.steps.size(); });
  m.def("rk_adjoint", &rk_adjoint_py, py::arg("func"), py::arg("params"), py::arg("t_out"), py::arg("ys"),
        py::arg("tape"), py::arg("grad_ys"), py::arg("options"), py::kw_only(), py::arg("seminorm"),
        py::arg("trajectory"), py::arg("norm"), py::arg("user_shape"), py::arg("joint"),
        py::arg("progress") = py::none(), py::arg("progress_interval") = 0.1, py::arg("callbacks") = py::none());
  m.def("rk_checkpoint_backward", &checkpoint_backward_py, py::arg("func"), py::arg("tape"), py::arg("grad_ys"),
        py::arg("params"), py::arg("user_shape"), py::arg("joint"));
  py::class_<fde::solver::SampleTape, std::shared_ptr<fde::solver::SampleTape>>(m, "SampleTape")
      .def_property_readonly("n_steps", [](const fde::solver::SampleTape& t) { return t.steps.size(); });
  m.def("rk_solve_per_sample", &rk_solve_per_sample_py, py::arg("func"), py::arg("y0"), py::arg("t_out"),
        py::arg("options"), py::kw_only(), py::arg("norm"), py::arg("user_shape"), py::arg("mode"),
        py::arg("event_fn") = py::none(), py::arg("joint") = false, py::arg("progress") = py::none(),
        py::arg("progress_interval") = 0.1);
  m.def("rk_checkpoint_backward_per_sample", &checkpoint_backward_per_sample_py, py::arg("func"), py::arg("tape"),
        py::arg("grad_ys"), py::arg("params"), py::arg("user_shape"));
  m.def("rk_adjoint_per_sample", &rk_adjoint_per_sample_py, py::arg("func"), py::arg("params"), py::arg("t_out"),
        py::arg("ys"), py::arg("grad_ys"), py::arg("active"), py::arg("options"), py::kw_only(),
        py::arg("user_shape"), py::arg("tape") = py::none(), py::arg("progress") = py::none(),
        py::arg("progress_interval") = 0.1);
  py::class_<NativeMlpHandle>(m, "NativeMLP",
                              "fastdiffeq.nn.MLP's native description: the solvers evaluate it in C++ (its parameters "
                              "are shared with the module, not copied).")
      .def(py::init([](const py::object& weights, const py::object& biases, const std::string& activation) {
             NativeMlpHandle h;
             h.spec.weights = tensor_list_arg(weights, "weights");
             h.spec.biases = tensor_list_arg(biases, "biases");
             h.spec.activation = fde::solver::parse_mlp_activation(activation);
             fde::solver::check_mlp_spec(h.spec);
             return h;
           }),
           py::arg("weights"), py::arg("biases"), py::arg("activation"))
      .def("__call__",
           [](const NativeMlpHandle& h, const at::Tensor& t, const at::Tensor& y) {
             return fde::solver::NativeMlpField(h.spec).eval(t, y);
           },
           py::arg("t"), py::arg("y"), "f(t, y) (t ignored), y of any shape [..., in_features]")
      .def("vjp",
           [](const NativeMlpHandle& h, const at::Tensor& y, const at::Tensor& v) {
             fde::solver::NativeMlpField field(h.spec);
             TORCH_CHECK(v.sizes() == y.sizes(), "fastdiffeq: v must have y's shape ", y.sizes(), ", got ", v.sizes());
             at::Tensor grad_params = at::zeros({field.num_params()}, y.options());
             fde::solver::FieldVjp r = field.vjp(at::Tensor(), y, v, grad_params);
             return py::make_tuple(r.f, r.grad_y, grad_params);
           },
           py::arg("y"), py::arg("v"),
           "(f, v^T df/dy, v^T df/dtheta flattened in parameter order): the hand-written product the adjoint uses");
  py::class_<NativeCnfHandle>(m, "NativeCNF",
                              "fastdiffeq.nn.CNF's augmented field over a ConcatSquashMLP, evaluated in C++ (the "
                              "parameters are shared with the modules, not copied).")
      .def(py::init([](const py::object& weights, const py::object& biases, const py::object& gate_weights,
                       const py::object& gate_biases, const py::object& time_weights, const py::object& sqrt_T,
                       bool train_T, const std::string& activation, const std::string& trace,
                       const py::object& noise, bool with_logp, bool kinetic, bool jacobian) {
             NativeCnfHandle h;
             h.spec.weights = tensor_list_arg(weights, "weights");
             h.spec.biases = tensor_list_arg(biases, "biases");
             h.spec.gate_weights = tensor_list_arg(gate_weights, "gate_weights");
             h.spec.gate_biases = tensor_list_arg(gate_biases, "gate_biases");
             h.spec.time_weights = tensor_list_arg(time_weights, "time_weights");
             h.spec.sqrt_T = tensor_arg(sqrt_T, "sqrt_T");
             h.spec.train_T = train_T;
             h.spec.activation = fde::solver::parse_mlp_activation(activation);
             if (trace != "exact" && trace != "hutchinson")
               throw py::value_error("fastdiffeq: trace must be 'exact' or 'hutchinson', got '" + trace + "'");
             h.spec.trace = trace == "exact" ? fde::solver::CnfTrace::kExact : fde::solver::CnfTrace::kHutchinson;
             h.spec.noise = optional_tensor_arg(noise, "noise");
             h.spec.with_logp = with_logp;
             h.spec.with_kinetic = with_logp && kinetic;
             h.spec.with_jacobian = with_logp && jacobian;
             fde::solver::check_cnf_spec(h.spec);
             return h;
           }),
           py::arg("weights"), py::arg("biases"), py::arg("gate_weights"), py::arg("gate_biases"),
           py::arg("time_weights"), py::arg("sqrt_T"), py::kw_only(), py::arg("train_T"), py::arg("activation"),
           py::arg("trace"), py::arg("noise") = py::none(), py::arg("with_logp") = true, py::arg("kinetic") = false,
           py::arg("jacobian") = false)
      .def_property_readonly("params", [](const NativeCnfHandle& h) { return h.spec.params(); },
                             "The tensors its products differentiate, in CNF.parameters() order.")
      .def("differentiates",
           [](const NativeCnfHandle& h, const py::object& params) {
             return same_tensors(tensor_list_arg(params, "params"), h.spec.params());
           },
           py::arg("params"), "Whether `params` are exactly the tensors its products differentiate, in order.")
      .def("__call__",
           [](const NativeCnfHandle& h, const py::object& s, const py::object& y) {
             return fde::solver::NativeCnfField(h.spec).eval(tensor_arg(s, "s"), tensor_arg(y, "y"));
           },
           py::arg("s"), py::arg("y"), "the augmented field at normalised time s (recorded by autograd in grad mode)")
      .def("vjp",
           [](const NativeCnfHandle& h, const py::object& s_arg, const py::object& y_arg, const py::object& v_arg) {
             const at::Tensor s = tensor_arg(s_arg, "s"), y = tensor_arg(y_arg, "y"), v = tensor_arg(v_arg, "v");
             fde::solver::NativeCnfField field(h.spec);
             // (dense whatever y's layout: a sparse or mkldnn y is then rejected by the field's own state check)
             at::Tensor grad_params = at::zeros({field.num_params()}, y.options().layout(at::kStrided));
             fde::solver::FieldVjp r = field.vjp(s, y, v, grad_params);
             return py::make_tuple(r.f, r.grad_y, grad_params);
           },
           py::arg("s"), py::arg("y"), py::arg("v"),
           "(f, v^T df/dy, v^T df/dtheta flattened in `params` order): the hand-written product the adjoint uses");
  m.def("_native_mlp_activation",
        [](const std::string& activation, const at::Tensor& x) {
          return fde::solver::native_mlp_activation(fde::solver::parse_mlp_activation(activation), x);
        },
        py::arg("activation"), py::arg("x"),
        "A native MLP hidden layer's activation of x (the fused CPU loop where there is one), for tests");
  py::class_<fde::solver::FixedGridTape, std::shared_ptr<fde::solver::FixedGridTape>>(m, "FixedGridTape")
      .def_property_readonly("n_steps", [](const fde::solver::FixedGridTape& t) { return t.steps.size(); });
  m.def("fixed_grid_solve", &fixed_grid_solve_py, py::arg("func"), py::arg("y0"), py::arg("grid"), py::arg("t_out"),
        py::kw_only(), py::arg("method"), py::arg("interp"), py::arg("perturb"), py::arg("user_shape"),
        py::arg("mode"), py::arg("callbacks") = py::none());
  m.def("fixed_grid_backward", &fixed_grid_backward_py, py::arg("func"), py::arg("tape"), py::arg("grad_ys"),
        py::arg("params"), py::arg("user_shape"));
  // F10: reversible Runge-Kutta and residual networks.
  py::class_<fde::solver::ReversibleTape, std::shared_ptr<fde::solver::ReversibleTape>>(m, "ReversibleTape")
      .def_property_readonly("n_steps", [](const fde::solver::ReversibleTape& t) { return t.steps.size(); })
      .def_property_readonly("steps", [](const fde::solver::ReversibleTape& t) {
        py::list out;
        for (const auto& s : t.steps) out.append(py::make_tuple(s.t0, s.h, s.out_first, s.out_last));
        return out;
      }, "The accepted steps as (t0, h, first, last): output rows [first, last) are interpolated inside the step.");
  m.def("reversible_solve", &reversible_solve_py, py::arg("func"), py::arg("y0"), py::arg("t_out"), py::arg("options"),
        py::kw_only(), py::arg("coupling"), py::arg("grid"), py::arg("user_shape"), py::arg("keep_states") = false);
  m.def("reversible_backward", &reversible_backward_py, py::arg("func"), py::arg("tape"), py::arg("grad_ys"),
        py::arg("params"), py::arg("user_shape"), py::arg("keep_states") = false);
  py::class_<fde::solver::SampleReversibleTape, std::shared_ptr<fde::solver::SampleReversibleTape>>(
      m, "SampleReversibleTape")
      .def_property_readonly("n_iterations",
                             [](const fde::solver::SampleReversibleTape& t) { return t.iterations.size(); });
  m.def("reversible_solve_per_sample", &reversible_solve_per_sample_py, py::arg("func"), py::arg("y0"),
        py::arg("t_out"), py::arg("options"), py::kw_only(), py::arg("coupling"), py::arg("user_shape"));
  m.def("reversible_backward_per_sample", &reversible_backward_per_sample_py, py::arg("func"), py::arg("tape"),
        py::arg("grad_ys"), py::arg("params"), py::arg("user_shape"));
  m.def("residual_forward", &residual_forward_py, py::arg("blocks"), py::arg("params"), py::arg("x"), py::arg("scheme"));
  m.def("residual_backward", &residual_backward_py, py::arg("blocks"), py::arg("params"), py::arg("x_end"),
        py::arg("grad_end"), py::arg("scheme"));
  m.def("tableau", &tableau_py, py::arg("name"));
  m.def("all_finite", &fde::solver::all_finite, py::arg("x"),
        "Whether every element of x is finite (no allocation for contiguous CPU float tensors).");
  std::vector<std::string> methods;
  for (const auto* t : fde::core::kAllTableaus) methods.emplace_back(t->name);
  m.attr("methods") = methods;
#ifdef FDE_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
}
