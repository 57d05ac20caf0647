#include "solver/native_cnf.h"

#include <ATen/Dispatch.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <type_traits>
#include <utility>

namespace fde::solver {

using core::Activation;

// Buffers of one batch size: the forward pass's intermediates (kept for the reverse pass) and the reverse pass's
// cotangents, per layer. Reallocated only when the batch size changes (once per solve).
struct NativeCnfField::Workspace {
  int64_t n = -1;
  double s = 0.0;
  at::Tensor in0, u0;  // z [N, D] and the input tangents [K, N, D] (unit directions or the noise)
  std::vector<at::Tensor> gate, shift, A, a, Q, adot, y, sig, d1, u;  // per layer
  std::vector<at::Tensor> g_a, g_adot, g_y, g_u, g_gate, g_shift;     // per layer (reverse)
};

namespace {

// Calls fn(std::integral_constant<Activation, act>{}) for the runtime activation (one loop instance each).
template <class Fn>
void with_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::kTanh: return fn(std::integral_constant<Activation, Activation::kTanh>{});
    case Activation::kSoftplus: return fn(std::integral_constant<Activation, Activation::kSoftplus>{});
    case Activation::kRelu: return fn(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kElu: return fn(std::integral_constant<Activation, Activation::kElu>{});
    case Activation::kSigmoid: return fn(std::integral_constant<Activation, Activation::kSigmoid>{});
    case Activation::kSilu: return fn(std::integral_constant<Activation, Activation::kSilu>{});
  }
  TORCH_CHECK(false, "fastdiffeq: unknown activation");
}

// y = act(a) (and sig = sigmoid(a) where the derivatives need it) by ATen's vectorised kernels, into buffers.
void activation_values(Activation act, const at::Tensor& a, at::Tensor& y, at::Tensor& sig) {
  switch (act) {
    case Activation::kTanh: at::tanh_out(y, a); return;
    case Activation::kSigmoid: at::sigmoid_out(y, a); return;
    case Activation::kSoftplus:
      at::softplus_out(y, a, 1.0, core::kSoftplusThreshold);
      at::sigmoid_out(sig, a);
      return;
    case Activation::kSilu:
      at::silu_out(y, a);
      at::sigmoid_out(sig, a);
      return;
    case Activation::kElu: at::elu_out(y, a, 1.0, 1.0, 1.0); return;
    case Activation::kRelu: at::clamp_min_out(y, a, 0.0); return;
  }
  TORCH_CHECK(false, "fastdiffeq: unknown activation");
}

template <class S>
S* ptr(const at::Tensor& x) {
  return x.data_ptr<S>();
}

template <class S>
const S* cptr(const at::Tensor& x) {
  return x.const_data_ptr<S>();
}

}  // namespace

std::vector<at::Tensor> CnfSpec::params() const {
  std::vector<at::Tensor> out;
  if (train_T) out.push_back(sqrt_T);  // a module's own parameters come before its submodules'
  for (size_t k = 0; k < weights.size(); ++k) {
    out.push_back(weights[k]);
    out.push_back(biases[k]);
    out.push_back(gate_weights[k]);
    out.push_back(gate_biases[k]);
    out.push_back(time_weights[k]);
  }
  return out;
}

void check_cnf_spec(const CnfSpec& spec) {
  const size_t L = spec.weights.size();
  TORCH_CHECK_VALUE(L > 0, "fastdiffeq: a CNF field needs at least one layer");
  TORCH_CHECK_VALUE(spec.biases.size() == L && spec.gate_weights.size() == L && spec.gate_biases.size() == L &&
                        spec.time_weights.size() == L,
                    "fastdiffeq: a CNF field needs a bias, gate weight, gate bias and time weight per layer");
  TORCH_CHECK_VALUE(spec.sqrt_T.defined() && spec.sqrt_T.dim() == 0, "fastdiffeq: sqrt_T must be a 0-dim tensor");
  const at::Tensor& first = spec.weights.front();
  TORCH_CHECK_TYPE(first.defined() && (first.scalar_type() == at::kFloat || first.scalar_type() == at::kDouble),
                   "fastdiffeq: a native CNF field runs in float32 or float64");
  for (size_t k = 0; k < L; ++k) {
    const at::Tensor& W = spec.weights[k];
    TORCH_CHECK_VALUE(W.defined() && W.dim() == 2 && W.size(0) > 0 && W.size(1) > 0, "fastdiffeq: CNF weight ", k,
                      " must be a non-empty 2-D tensor");
    TORCH_CHECK_VALUE(k == 0 || W.size(1) == spec.weights[k - 1].size(0), "fastdiffeq: CNF weight ", k, " takes ",
                      W.size(1), " inputs but layer ", k - 1, " has ", spec.weights[k - 1].size(0), " outputs");
    for (const at::Tensor* v : {&spec.biases[k], &spec.gate_weights[k], &spec.gate_biases[k], &spec.time_weights[k]})
      TORCH_CHECK_VALUE(v->defined() && v->dim() == 1 && v->size(0) == W.size(0), "fastdiffeq: CNF layer ", k,
                        "'s bias, gate and time vectors must have shape [", W.size(0), "]");
  }
  TORCH_CHECK_VALUE(spec.weights.back().size(0) == first.size(1), "fastdiffeq: a CNF field maps its ",
                    first.size(1), " features to themselves, the last layer has ", spec.weights.back().size(0),
                    " outputs");
  std::vector<at::Tensor> all = spec.params();
  all.push_back(spec.sqrt_T);
  if (spec.noise.defined()) all.push_back(spec.noise);
  for (const at::Tensor& p : all) {
    TORCH_CHECK_TYPE(p.scalar_type() == first.scalar_type(), "fastdiffeq: a CNF field's tensors must share one dtype");
    TORCH_CHECK_VALUE(p.device().is_cpu(), "fastdiffeq: a native CNF field runs on the CPU, got a tensor on ",
                      p.device());
  }
  if (spec.with_logp && spec.trace == CnfTrace::kHutchinson)
    TORCH_CHECK_VALUE(spec.noise.defined() && spec.noise.dim() == 2 && spec.noise.size(1) == first.size(1),
                      "fastdiffeq: a Hutchinson CNF field needs its noise as [N, ", first.size(1), "]");
}

NativeCnfField::NativeCnfField(CnfSpec spec) : spec_(std::move(spec)), ws_(std::make_shared<Workspace>()) {
  check_cnf_spec(spec_);
  for (const at::Tensor& q : spec_.params()) n_params_ += q.numel();
}

void NativeCnfField::check_state(const at::Tensor& t, const at::Tensor& y, const char* what) const {
  const at::Tensor& W = spec_.weights.front();
  TORCH_CHECK_VALUE(y.defined() && t.defined(), "fastdiffeq: the CNF field's ", what, " or time is undefined");
  TORCH_CHECK_TYPE(y.scalar_type() == W.scalar_type(), "fastdiffeq: the CNF field's parameters are ",
                   W.scalar_type(), " but the ", what, " is ", y.scalar_type());
  TORCH_CHECK_VALUE(y.device().is_cpu() && t.device().is_cpu(), "fastdiffeq: a native CNF field runs on the CPU, the ",
                    what, " is on ", y.device());
  TORCH_CHECK_VALUE(t.numel() == 1, "fastdiffeq: a native CNF field takes one time for the whole batch (joint "
                    "solves), got ", t.numel());
  const int64_t w = spec_.state_width();
  TORCH_CHECK_VALUE(y.numel() % w == 0 && y.numel() > 0, "fastdiffeq: the CNF state has ", w,
                    " columns per sample, got ", y.numel(), " elements");
  if (spec_.directions() > 0 && spec_.trace == CnfTrace::kHutchinson)
    TORCH_CHECK_VALUE(y.numel() / w == spec_.noise.size(0), "fastdiffeq: the CNF noise has ", spec_.noise.size(0),
                      " samples, the state ", y.numel() / w);
}

void NativeCnfField::forward(double s, const at::Tensor& y2) {
  Workspace& ws = *ws_;
  const int64_t n = y2.size(0), D = spec_.dim(), K = spec_.directions();
  const size_t L = spec_.weights.size();
  const at::TensorOptions opts = y2.options();
  if (ws.n != n) {  // (re)allocate: once per solve and batch size
    ws = Workspace{};
    ws.n = n;
    ws.in0 = at::empty({n, D}, opts);
    if (K > 0) {
      ws.u0 = spec_.trace == CnfTrace::kExact ? at::zeros({K, n, D}, opts) : spec_.noise.contiguous().view({1, n, D});
      if (spec_.trace == CnfTrace::kExact)
        for (int64_t i = 0; i < D; ++i) ws.u0.select(0, i).select(1, i).fill_(1);
    }
    const bool need_sig = core::activation_needs_sigmoid(spec_.activation);
    for (size_t k = 0; k < L; ++k) {
      const int64_t o = spec_.weights[k].size(0);
      const bool hidden = k + 1 < L;
      ws.gate.push_back(at::empty({o}, opts));
      ws.shift.push_back(at::empty({o}, opts));
      ws.A.push_back(at::empty({n, o}, opts));
      ws.a.push_back(at::empty({n, o}, opts));
      ws.Q.push_back(K > 0 ? at::empty({K, n, o}, opts) : at::Tensor());
      ws.adot.push_back(K > 0 ? at::empty({K, n, o}, opts) : at::Tensor());
      ws.y.push_back(hidden ? at::empty({n, o}, opts) : at::Tensor());
      ws.sig.push_back(hidden && need_sig ? at::empty({n, o}, opts) : at::Tensor());
      ws.d1.push_back(hidden ? at::empty({n, o}, opts) : at::Tensor());
      ws.u.push_back(hidden && K > 0 ? at::empty({K, n, o}, opts) : at::Tensor());
    }
  }
  ws.s = s;
  ws.in0.copy_(y2.narrow(1, 0, D));
  AT_DISPATCH_FLOATING_TYPES(y2.scalar_type(), "native_cnf_forward", [&] {
    using S = scalar_t;
    const S sq = spec_.sqrt_T.item<S>();
    const S t = static_cast<S>(s) * (sq * sq);
    at::Tensor h = ws.in0, u = ws.u0;
    for (size_t k = 0; k < L; ++k) {
      const at::Tensor& W = spec_.weights[k];
      const int64_t o = W.size(0), i = W.size(1);
      core::concat_squash_time(cptr<S>(spec_.gate_weights[k].contiguous()), cptr<S>(spec_.gate_biases[k].contiguous()),
                               cptr<S>(spec_.time_weights[k].contiguous()), t, o, ptr<S>(ws.gate[k]),
                               ptr<S>(ws.shift[k]));
      at::addmm_out(ws.A[k], spec_.biases[k], h, W.t());
      core::concat_squash_apply(cptr<S>(ws.A[k]), cptr<S>(ws.gate[k]), cptr<S>(ws.shift[k]), n, o, ptr<S>(ws.a[k]));
      if (K > 0) {
        at::Tensor q = ws.Q[k].view({K * n, o});
        at::mm_out(q, u.view({K * n, i}), W.t());
        core::concat_squash_tangent(cptr<S>(ws.Q[k]), cptr<S>(ws.gate[k]), K * n, o, ptr<S>(ws.adot[k]));
      }
      if (k + 1 == L) break;
      activation_values(spec_.activation, ws.a[k], ws.y[k], ws.sig[k]);
      with_activation(spec_.activation, [&](auto act) {
        core::activation_forward<decltype(act)::value, S>(
            cptr<S>(ws.a[k]), cptr<S>(ws.y[k]), ws.sig[k].defined() ? cptr<S>(ws.sig[k]) : nullptr,
            K > 0 ? cptr<S>(ws.adot[k]) : nullptr, K, n, o, ptr<S>(ws.d1[k]), K > 0 ? ptr<S>(ws.u[k]) : nullptr);
      });
      if (K > 0) u = ws.u[k];
      h = ws.y[k];
    }
  });
}

at::Tensor NativeCnfField::assemble_output(int64_t n) const {
  const Workspace& ws = *ws_;
  const int64_t D = spec_.dim(), K = spec_.directions(), w = spec_.state_width();
  at::Tensor out = at::empty({n, w}, ws.in0.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "native_cnf_output", [&] {
    using S = scalar_t;
    const S sq = spec_.sqrt_T.item<S>();
    const S T = sq * sq;
    const S* f = cptr<S>(ws.a.back());
    const S* J = K > 0 ? cptr<S>(ws.adot.back()) : nullptr;
    const S* eps = K > 0 && spec_.trace == CnfTrace::kHutchinson ? cptr<S>(ws.u0) : nullptr;
    S* o = ptr<S>(out);
    for (int64_t r = 0; r < n; ++r) {
      S kin = 0;
      for (int64_t d = 0; d < D; ++d) {
        o[r * w + d] = T * f[r * D + d];
        kin += f[r * D + d] * f[r * D + d];
      }
      if (!spec_.with_logp) continue;
      S tr = 0, fro = 0;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t d = 0; d < D; ++d) {
          const S j = J[(k * n + r) * D + d];
          fro += j * j;
          if (eps) tr += eps[r * D + d] * j;
          else if (d == k) tr += j;
        }
      int64_t col = D;
      o[r * w + col++] = -T * tr;
      if (spec_.with_kinetic) o[r * w + col++] = T * kin;
      if (spec_.with_jacobian) o[r * w + col] = T * fro;
    }
  });
  return out;
}

at::Tensor NativeCnfField::eval_no_graph(const at::Tensor& t, const at::Tensor& y) {
  at::NoGradGuard no_grad;
  check_state(t, y, "state");
  const int64_t n = y.numel() / spec_.state_width();
  forward(t.item<double>(), y.reshape({n, spec_.state_width()}));
  return assemble_output(n).view(y.sizes());
}

FieldVjp NativeCnfField::vjp(const at::Tensor& t, const at::Tensor& y, const at::Tensor& v, at::Tensor& grad_params) {
  at::NoGradGuard no_grad;
  check_state(t, y, "state");
  TORCH_CHECK_VALUE(v.defined() && v.sizes() == y.sizes() && v.scalar_type() == y.scalar_type() && v.device().is_cpu(),
                    "fastdiffeq: the CNF field's cotangent must match the state (shape ", y.sizes(), ", dtype ",
                    y.scalar_type(), ", CPU)");
  const bool want_params = n_params_ > 0 && grad_params.defined();
  if (want_params)
    TORCH_CHECK_VALUE(grad_params.is_contiguous() && grad_params.numel() == n_params_ &&
                          grad_params.scalar_type() == y.scalar_type(),
                      "fastdiffeq: the CNF field's parameter cotangent must be a contiguous [", n_params_, "] tensor");
  const int64_t w = spec_.state_width(), n = y.numel() / w, D = spec_.dim(), K = spec_.directions();
  const size_t L = spec_.weights.size();
  const double s = t.item<double>();
  forward(s, y.reshape({n, w}));
  at::Tensor f_out = assemble_output(n);
  Workspace& ws = *ws_;
  if (ws.g_a.empty()) {
    for (size_t k = 0; k < L; ++k) {
      ws.g_a.push_back(at::empty_like(ws.a[k]));
      ws.g_adot.push_back(K > 0 ? at::empty_like(ws.adot[k]) : at::Tensor());
      ws.g_y.push_back(k + 1 < L ? at::empty_like(ws.a[k]) : at::Tensor());
      ws.g_u.push_back(k + 1 < L && K > 0 ? at::empty_like(ws.adot[k]) : at::Tensor());
      ws.g_gate.push_back(at::empty_like(ws.gate[k]));
      ws.g_shift.push_back(at::empty_like(ws.gate[k]));
    }
  }
  const at::Tensor v2 = v.reshape({n, w}).contiguous();
  at::Tensor grad_z;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "native_cnf_vjp", [&] {
    using S = scalar_t;
    const S sq = spec_.sqrt_T.item<S>();
    const S T = sq * sq;
    const S tt = static_cast<S>(s) * T;
    const S* vv = cptr<S>(v2);
    const S* f = cptr<S>(ws.a.back());
    const S* J = K > 0 ? cptr<S>(ws.adot.back()) : nullptr;
    const S* eps = K > 0 && spec_.trace == CnfTrace::kHutchinson ? cptr<S>(ws.u0) : nullptr;
    S* gf = ptr<S>(ws.g_a.back());
    S* gJ = K > 0 ? ptr<S>(ws.g_adot.back()) : nullptr;
    // Cotangents of f and J from the output's, and <v, output / T> (T's direct share of its gradient).
    double grad_T = 0.0;
    const int64_t col_kin = D + 1, col_jac = D + 1 + spec_.with_kinetic;
    for (int64_t r = 0; r < n; ++r) {
      const S* vr = vv + r * w;
      const S vl = spec_.with_logp ? vr[D] : S(0);
      const S vk = spec_.with_kinetic ? vr[col_kin] : S(0);
      const S vj = spec_.with_jacobian ? vr[col_jac] : S(0);
      double kin = 0.0, tr = 0.0, fro = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const S fd = f[r * D + d];
        gf[r * D + d] = T * vr[d] + S(2) * T * vk * fd;
        grad_T += static_cast<double>(vr[d]) * fd;
        kin += static_cast<double>(fd) * fd;
      }
      for (int64_t k = 0; k < K; ++k)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t e = (k * n + r) * D + d;
          const S trace_weight = eps ? eps[r * D + d] : S(d == k ? 1 : 0);
          gJ[e] = -T * vl * trace_weight + S(2) * T * vj * J[e];
          tr += static_cast<double>(trace_weight) * J[e];
          fro += static_cast<double>(J[e]) * J[e];
        }
      grad_T += -static_cast<double>(vl) * tr + static_cast<double>(vk) * kin + static_cast<double>(vj) * fro;
    }
    // Layer by layer, last to first.
    S* gp = want_params ? ptr<S>(grad_params) : nullptr;
    std::vector<int64_t> offsets(L);
    for (size_t k = 0, off = spec_.train_T ? 1 : 0; k < L; ++k) {
      offsets[k] = static_cast<int64_t>(off);
      off += spec_.weights[k].numel() + 4 * spec_.weights[k].size(0);
    }
    double grad_t = 0.0;
    for (size_t k = L; k-- > 0;) {
      const at::Tensor& W = spec_.weights[k];
      const int64_t o = W.size(0), i = W.size(1);
      if (k + 1 < L) {
        with_activation(spec_.activation, [&](auto act) {
          core::activation_reverse<decltype(act)::value, S>(
              cptr<S>(ws.a[k]), cptr<S>(ws.y[k]), ws.sig[k].defined() ? cptr<S>(ws.sig[k]) : nullptr,
              cptr<S>(ws.d1[k]), K > 0 ? cptr<S>(ws.adot[k]) : nullptr, cptr<S>(ws.g_y[k]),
              K > 0 ? cptr<S>(ws.g_u[k]) : nullptr, K, n, o, ptr<S>(ws.g_a[k]),
              K > 0 ? ptr<S>(ws.g_adot[k]) : nullptr);
        });
      }
      ws.g_gate[k].zero_();
      ws.g_shift[k].zero_();
      core::concat_squash_reverse(cptr<S>(ws.A[k]), K > 0 ? cptr<S>(ws.Q[k]) : nullptr, cptr<S>(ws.gate[k]), n, K, o,
                                  ptr<S>(ws.g_a[k]), K > 0 ? ptr<S>(ws.g_adot[k]) : nullptr, ptr<S>(ws.g_gate[k]),
                                  ptr<S>(ws.g_shift[k]));
      const at::Tensor& gA = ws.g_a[k];  // now the cotangent of A (pre-gate)
      const at::Tensor h_in = k == 0 ? ws.in0 : ws.y[k - 1];
      const at::Tensor u_in = K == 0 ? at::Tensor() : (k == 0 ? ws.u0 : ws.u[k - 1]);
      if (want_params) {
        const int64_t off = offsets[k];
        at::Tensor gW = grad_params.narrow(0, off, o * i).view({o, i});
        gW.addmm_(gA.t(), h_in);
        if (K > 0) gW.addmm_(ws.g_adot[k].view({K * n, o}).t(), u_in.view({K * n, i}));
        S* gb = gp + off + o * i;
        const S* gAp = cptr<S>(gA);
        for (int64_t r = 0; r < n; ++r)
          for (int64_t j = 0; j < o; ++j) gb[j] += gAp[r * o + j];
        grad_t += core::concat_squash_time_reverse(
            cptr<S>(spec_.gate_weights[k].contiguous()), cptr<S>(spec_.time_weights[k].contiguous()),
            cptr<S>(ws.gate[k]), cptr<S>(ws.g_gate[k]), cptr<S>(ws.g_shift[k]), tt, o, gp + off + o * i + o,
            gp + off + o * i + 2 * o, gp + off + o * i + 3 * o);
      }
      if (k > 0) {
        at::mm_out(ws.g_y[k - 1], gA, W);
        if (K > 0) {
          at::Tensor gu = ws.g_u[k - 1].view({K * n, i});
          at::mm_out(gu, ws.g_adot[k].view({K * n, o}), W);
        }
      } else {
        grad_z = at::mm(gA, W);
      }
    }
    if (want_params && spec_.train_T)  // out = T F(s T, z): dT = <v, F> + s <v, T dF/dt>;  T = sqrt_T^2
      gp[0] += static_cast<S>(2.0 * static_cast<double>(sq) * (grad_T + s * grad_t));
  });
  at::Tensor grad_y = at::zeros({n, w}, y.options());
  grad_y.narrow(1, 0, D).copy_(grad_z);
  return {f_out.view(y.sizes()), grad_y.view(y.sizes())};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// eval() under autograd: the hand-written vector-Jacobian product as the backward (direct mode and checkpoint
// replays record it like any operator). The spec's tensors are kept in saved_data, so the graph outlives the
// field object of the solve that recorded it.
class CnfEvalFunction : public torch::autograd::Function<CnfEvalFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& t, const at::Tensor& y, at::TensorList params,
                            NativeCnfField* field) {
    const CnfSpec& spec = field->spec();
    ctx->saved_data["t"] = t;
    ctx->saved_data["y"] = y;
    ctx->saved_data["weights"] = spec.weights;
    ctx->saved_data["biases"] = spec.biases;
    ctx->saved_data["gate_weights"] = spec.gate_weights;
    ctx->saved_data["gate_biases"] = spec.gate_biases;
    ctx->saved_data["time_weights"] = spec.time_weights;
    ctx->saved_data["sqrt_T"] = spec.sqrt_T;
    ctx->saved_data["noise"] = spec.noise.defined() ? spec.noise : at::Tensor();
    ctx->saved_data["config"] = std::vector<int64_t>{
        static_cast<int64_t>(spec.activation), spec.train_T, spec.with_logp, spec.with_kinetic, spec.with_jacobian,
        static_cast<int64_t>(spec.trace)};
    return field->eval_no_graph(t, y);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "fastdiffeq: the native CNF field cannot be differentiated twice (create_graph=True); use "
                "CNF(derivatives='forward') or 'autograd' for higher derivatives");
    auto& sd = ctx->saved_data;
    CnfSpec spec;
    spec.weights = sd["weights"].toTensorVector();
    spec.biases = sd["biases"].toTensorVector();
    spec.gate_weights = sd["gate_weights"].toTensorVector();
    spec.gate_biases = sd["gate_biases"].toTensorVector();
    spec.time_weights = sd["time_weights"].toTensorVector();
    spec.sqrt_T = sd["sqrt_T"].toTensor();
    spec.noise = sd["noise"].toTensor();
    const auto config = sd["config"].toIntVector();
    spec.activation = static_cast<Activation>(config[0]);
    spec.train_T = config[1];
    spec.with_logp = config[2];
    spec.with_kinetic = config[3];
    spec.with_jacobian = config[4];
    spec.trace = static_cast<CnfTrace>(config[5]);
    const std::vector<at::Tensor> params = spec.params();
    variable_list grads(3 + params.size());  // t, y, params..., field
    const at::Tensor& g = grad_outputs[0];
    if (!g.defined()) return grads;
    NativeCnfField field(std::move(spec));
    const at::Tensor y = sd["y"].toTensor();
    at::Tensor flat = at::zeros({field.num_params()}, y.options());
    FieldVjp r = field.vjp(sd["t"].toTensor(), y, g.contiguous(), flat);
    grads[1] = r.grad_y;
    int64_t off = 0;
    for (size_t p = 0; p < params.size(); ++p) {
      grads[2 + p] = flat.narrow(0, off, params[p].numel()).view(params[p].sizes());
      off += params[p].numel();
    }
    return grads;
  }
};

}  // namespace

at::Tensor NativeCnfField::eval(const at::Tensor& t, const at::Tensor& y) {
  if (at::GradMode::is_enabled()) {
    const std::vector<at::Tensor> params = spec_.params();
    bool needs_graph = y.requires_grad();
    for (const at::Tensor& p : params) needs_graph = needs_graph || p.requires_grad();
    if (needs_graph) return CnfEvalFunction::apply(t.detach(), y, at::TensorList(params), this);
  }
  return eval_no_graph(t, y);
}

}  // namespace fde::solver
