#include "solver/native_cnf.h"

#include "core/macros.h"
#include "solver/mlp_kernels.h"
#include "solver/native_mlp.h"

#include <ATen/Dispatch.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/log1p.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <type_traits>
#include <utility>

namespace fde::solver {

using core::Activation;

// Buffers of one batch size, reallocated only when it changes (once per solve). Boundary b (0..L) sits before
// layer b; every boundary stacks the samples' values over their K tangents, (1 + K) N rows:
//   x[b] = [h; U] (b < L: layer b's input),  z[b] = [a; Adot] (b >= 1: layer b-1's output),
//   g[b] = the cotangent of x[b], turned in place into z[b]'s by the activation's reverse (1 <= b < L; g[L] is
//   z[L]'s; g[0] holds z's only, [N, D]).
// Layer k's gate is folded into its weights (w_folded = diag(gate) W, b_folded = gate * b + shift).
struct NativeCnfField::Workspace {
  int64_t n = -1;
  std::vector<at::Tensor> x, z, g, sig;             // per boundary
  std::vector<at::Tensor> gate, w_folded, w_folded_t, b_folded;  // per layer
  at::Tensor M, Mt, sums, sums_scratch;  // the reverse pass's [o, i] product (and its transpose), column sums
};

namespace {

// y = act(a) (and sig = sigmoid(a) where the derivatives need it) by ATen's vectorised kernels, into buffers.

template <class S>
S* ptr(const at::Tensor& x) {
  return x.data_ptr<S>();
}

template <class S>
const S* cptr(const at::Tensor& x) {
  return x.const_data_ptr<S>();
}

// The elementwise and narrow loops, each also compiled for AVX2 and AVX-512 (FDE_CPU_CLONES, core/macros.h).
#define FDE_CNF_KERNELS(S)                                                                                         \
  FDE_CPU_CLONES void activation_forward_k(Activation act, const S* a, const S* y, const S* s, const S* adot,     \
                                           int64_t K, int64_t n, int64_t o, S* u) {                              \
    core::dispatch_activation(act, [&](auto c) { core::activation_forward<decltype(c)::value, S>(a, y, s, adot, K, n, o, u); }); \
  }                                                                                                                \
  FDE_CPU_CLONES void activation_reverse_k(Activation act, const S* a, const S* y, const S* s, const S* adot,     \
                                           int64_t K, int64_t n, int64_t o, S* g) {                              \
    core::dispatch_activation(act, [&](auto c) { core::activation_reverse<decltype(c)::value, S>(a, y, s, adot, K, n, o, g); }); \
  }                                                                                                                \
  FDE_CPU_CLONES void softplus_argument_k(const S* s, int64_t m, S* q) {                                           \
    for (int64_t e = 0; e < m; ++e) q[e] = core::softplus_log1p_argument(s[e]);                                   \
  }                                                                                                                \
  FDE_CPU_CLONES void softplus_finish_k(const S* a, int64_t m, S* y) {                                             \
    for (int64_t e = 0; e < m; ++e) y[e] = core::softplus_from_log1p(a[e], y[e]);                                 \
  }

// float32 softplus and its sigmoid in one pass (core::softplus_sigmoid_f32).
FDE_CPU_CLONES void softplus_sigmoid_k(const float* a, int64_t m, float* y, float* s) {
  for (int64_t e = 0; e < m; ++e) core::softplus_sigmoid_f32(a[e], y[e], s[e]);
}

FDE_CNF_KERNELS(float)
FDE_CNF_KERNELS(double)
#undef FDE_CNF_KERNELS

// y = act(a) (and sig = sigmoid(a) where the derivatives need it), into buffers. Softplus: float32 both from one
// exp (core::softplus_sigmoid_f32); float64 from ATen's sigmoid and one log1p.
void activation_values(Activation act, const at::Tensor& a, at::Tensor& y, at::Tensor& sig) {
  if (act != Activation::kSoftplus) {
    activation_out(act, a, y);
    if (core::activation_needs_sigmoid(act)) at::sigmoid_out(sig, a);
    return;
  }
  const int64_t m = a.numel();
  if (a.scalar_type() == at::kFloat) {
    softplus_sigmoid_k(cptr<float>(a), m, ptr<float>(y), ptr<float>(sig));
    return;
  }
  at::sigmoid_out(sig, a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "native_cnf_softplus", [&] {
    softplus_argument_k(cptr<scalar_t>(sig), m, ptr<scalar_t>(y));
    at::log1p_out(y, y);
    softplus_finish_k(cptr<scalar_t>(a), m, ptr<scalar_t>(y));
  });
}

// The three products of a layer with folded weights wf [o, i] (and wft = wf^T), all row-major and contiguous, by
// the narrow loops when i or o is narrow (the first and last layers), else by BLAS.
// out [R, o] = x [R, i] wf^T (+ bias [o]).
template <class S>
void folded_forward(const at::Tensor& x, const at::Tensor& wf, const at::Tensor& wft, const at::Tensor& bias,
                    at::Tensor& out) {
  const int64_t rows = x.size(0), i = wf.size(1), o = wf.size(0);
  const S* b = bias.defined() ? cptr<S>(bias) : nullptr;
  if (i <= core::kNarrowWidth) {
    mlp::narrow_inner_matmul(cptr<S>(x), cptr<S>(wft), b, rows, i, o, ptr<S>(out));
  } else if (o <= core::kNarrowWidth) {
    mlp::narrow_outer_matmul(cptr<S>(x), cptr<S>(wf), b, rows, i, o, ptr<S>(out));
  } else if (bias.defined()) {
    at::addmm_out(out, bias, x, wf.t());
  } else {
    at::mm_out(out, x, wf.t());
  }
}

// out [R, i] = g [R, o] wf.
template <class S>
void folded_backward(const at::Tensor& g, const at::Tensor& wf, const at::Tensor& wft, at::Tensor& out) {
  const int64_t rows = g.size(0), i = wf.size(1), o = wf.size(0);
  if (o <= core::kNarrowWidth) {
    mlp::narrow_inner_matmul(cptr<S>(g), cptr<S>(wf), static_cast<const S*>(nullptr), rows, o, i, ptr<S>(out));
  } else if (i <= core::kNarrowWidth) {
    mlp::narrow_outer_matmul(cptr<S>(g), cptr<S>(wft), static_cast<const S*>(nullptr), rows, o, i, ptr<S>(out));
  } else {
    at::mm_out(out, g, wf);
  }
}

// M [o, i] = g [R, o]^T x [R, i] (mt: an [i * o] scratch buffer).
template <class S>
void folded_gram(const at::Tensor& g, const at::Tensor& x, at::Tensor& M, const at::Tensor& mt) {
  const int64_t rows = g.size(0), o = g.size(1), i = x.size(1);
  if (o <= core::kNarrowWidth) {
    mlp::narrow_gram(cptr<S>(g), cptr<S>(x), rows, o, i, ptr<S>(M));
  } else if (i <= core::kNarrowWidth) {
    S* t = ptr<S>(mt);
    mlp::narrow_gram(cptr<S>(x), cptr<S>(g), rows, i, o, t);
    S* m = ptr<S>(M);
    for (int64_t j = 0; j < o; ++j)
      for (int64_t c = 0; c < i; ++c) m[j * i + c] = t[c * o + j];
  } else {
    at::mm_out(M, g.t(), x);
  }
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
    // The loops read raw strided buffers (.contiguous() and data_ptr), which a sparse or mkldnn tensor has not.
    TORCH_CHECK_TYPE(p.layout() == at::kStrided, "fastdiffeq: a native CNF field's tensors must be dense (strided), "
                     "got a ", p.layout(), " tensor");
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
  TORCH_CHECK_TYPE(y.layout() == at::kStrided && t.layout() == at::kStrided, "fastdiffeq: the CNF field's ", what,
                   " and time must be dense (strided) tensors, got ", y.layout(), " and ", t.layout());
  TORCH_CHECK_VALUE(t.numel() == 1, "fastdiffeq: a native CNF field takes one time for the whole batch (joint "
                    "solves), got ", t.numel());
  // (t.item<double>() below: a complex time has no real value to take)
  TORCH_CHECK_TYPE(!t.is_complex(), "fastdiffeq: the CNF field's time must be real, got ", t.scalar_type());
  const int64_t w = spec_.state_width();
  TORCH_CHECK_VALUE(y.numel() % w == 0 && y.numel() > 0, "fastdiffeq: the CNF state has ", w,
                    " columns per sample, got ", y.numel(), " elements");
  if (spec_.directions() > 0 && spec_.trace == CnfTrace::kHutchinson)
    TORCH_CHECK_VALUE(y.numel() / w == spec_.noise.size(0), "fastdiffeq: the CNF noise has ", spec_.noise.size(0),
                      " samples, the state ", y.numel() / w);
}

void NativeCnfField::forward(double s, const at::Tensor& y2) {
  Workspace& ws = *ws_;
  const int64_t n = y2.size(0), D = spec_.dim(), K = spec_.directions(), rows = (1 + K) * n;
  const size_t L = spec_.weights.size();
  const at::TensorOptions opts = y2.options();
  if (ws.n != n) {  // (re)allocate: once per solve and batch size
    ws = Workspace{};
    ws.n = n;
    const bool need_sig = core::activation_needs_sigmoid(spec_.activation);
    int64_t widest = D;
    for (size_t b = 0; b <= L; ++b) {
      const int64_t w = b == 0 ? D : spec_.weights[b - 1].size(0);
      widest = std::max(widest, w);
      const bool hidden = b > 0 && b < L;
      ws.x.push_back(b < L ? at::empty({rows, w}, opts) : at::Tensor());
      ws.z.push_back(b > 0 ? at::empty({rows, w}, opts) : at::Tensor());
      ws.g.push_back(at::empty({b > 0 ? rows : n, w}, opts));  // g[0]: z's cotangent only
      ws.sig.push_back(hidden && need_sig ? at::empty({n, w}, opts) : at::Tensor());
    }
    for (size_t k = 0; k < L; ++k) {
      ws.gate.push_back(at::empty({spec_.weights[k].size(0)}, opts));
      ws.w_folded.push_back(at::empty_like(spec_.weights[k], at::MemoryFormat::Contiguous));
      ws.w_folded_t.push_back(at::empty({spec_.weights[k].size(1), spec_.weights[k].size(0)}, opts));
      ws.b_folded.push_back(at::empty({spec_.weights[k].size(0)}, opts));
    }
    ws.M = at::empty({widest * widest}, opts);
    ws.Mt = at::empty({widest * widest}, opts);
    ws.sums = at::empty({widest}, opts);
    ws.sums_scratch = at::empty({widest}, opts);
    if (K > 0) {  // the input tangents: the unit directions (exact trace) or the noise, fixed for the solve
      at::Tensor u0 = ws.x[0].narrow(0, n, K * n).view({K, n, D});
      if (spec_.trace == CnfTrace::kExact) {
        u0.zero_();
        for (int64_t i = 0; i < D; ++i) u0.select(0, i).select(1, i).fill_(1);
      } else {
        u0.select(0, 0).copy_(spec_.noise);
      }
    }
  }
  ws.x[0].narrow(0, 0, n).copy_(y2.narrow(1, 0, D));
  AT_DISPATCH_FLOATING_TYPES(y2.scalar_type(), "native_cnf_forward", [&] {
    using S = scalar_t;
    const S sq = spec_.sqrt_T.item<S>();
    const S t = static_cast<S>(s) * (sq * sq);
    for (size_t k = 0; k < L; ++k) {
      const at::Tensor W = spec_.weights[k].contiguous();
      const int64_t o = W.size(0), i = W.size(1);
      core::concat_squash_fold(cptr<S>(W), cptr<S>(spec_.biases[k].contiguous()),
                               cptr<S>(spec_.gate_weights[k].contiguous()), cptr<S>(spec_.gate_biases[k].contiguous()),
                               cptr<S>(spec_.time_weights[k].contiguous()), t, o, i, ptr<S>(ws.gate[k]),
                               ptr<S>(ws.w_folded[k]), ptr<S>(ws.w_folded_t[k]), ptr<S>(ws.b_folded[k]));
      at::Tensor a = ws.z[k + 1].narrow(0, 0, n);
      folded_forward<S>(ws.x[k].narrow(0, 0, n), ws.w_folded[k], ws.w_folded_t[k], ws.b_folded[k], a);
      if (K > 0) {
        at::Tensor adot = ws.z[k + 1].narrow(0, n, K * n);
        folded_forward<S>(ws.x[k].narrow(0, n, K * n), ws.w_folded[k], ws.w_folded_t[k], at::Tensor(), adot);
      }
      if (k + 1 == L) break;
      const size_t b = k + 1;  // the hidden boundary: x[b] = [act(a); act'(a) Adot]
      at::Tensor y = ws.x[b].narrow(0, 0, n);
      activation_values(spec_.activation, a, y, ws.sig[b]);
      activation_forward_k(spec_.activation, cptr<S>(a), cptr<S>(y),
                           ws.sig[b].defined() ? cptr<S>(ws.sig[b]) : nullptr, cptr<S>(ws.z[b]) + n * o, K, n, o,
                           ptr<S>(ws.x[b]) + n * o);
    }
  });
}

at::Tensor NativeCnfField::assemble_output(int64_t n) const {
  const Workspace& ws = *ws_;
  const int64_t D = spec_.dim(), K = spec_.directions(), w = spec_.state_width();
  at::Tensor out = at::empty({n, w}, ws.z.back().options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "native_cnf_output", [&] {
    using S = scalar_t;
    const S sq = spec_.sqrt_T.item<S>();
    const S T = sq * sq;
    const S* f = cptr<S>(ws.z.back());
    const S* J = f + n * D;  // [K, N, D]
    const S* eps = K > 0 && spec_.trace == CnfTrace::kHutchinson ? cptr<S>(ws.x[0]) + n * D : nullptr;
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
  TORCH_CHECK_VALUE(v.defined() && v.sizes() == y.sizes() && v.scalar_type() == y.scalar_type() && v.device().is_cpu() &&
                        v.layout() == at::kStrided,
                    "fastdiffeq: the CNF field's cotangent must match the state (shape ", y.sizes(), ", dtype ",
                    y.scalar_type(), ", CPU, dense)");
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
  const at::Tensor v2 = v.reshape({n, w}).contiguous();
  at::Tensor grad_y = at::zeros({n, w}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "native_cnf_vjp", [&] {
    using S = scalar_t;
    const S sq = spec_.sqrt_T.item<S>();
    const S T = sq * sq;
    const S tt = static_cast<S>(s) * T;
    const S* vv = cptr<S>(v2);
    const S* f = cptr<S>(ws.z.back());
    const S* J = f + n * D;
    const S* eps = K > 0 && spec_.trace == CnfTrace::kHutchinson ? cptr<S>(ws.x[0]) + n * D : nullptr;
    S* gf = ptr<S>(ws.g.back());
    S* gJ = gf + n * D;
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
    // Layer by layer, last to first: g[k + 1] is [g_a; g_adot] of layer k's output.
    S* gp = want_params ? ptr<S>(grad_params) : nullptr;
    int64_t off = spec_.train_T ? 1 : 0;
    std::vector<int64_t> offsets(L);
    for (size_t k = 0; k < L; ++k) {
      offsets[k] = off;
      off += spec_.weights[k].numel() + 4 * spec_.weights[k].size(0);
    }
    double grad_t = 0.0;
    for (size_t k = L; k-- > 0;) {
      const at::Tensor W = spec_.weights[k].contiguous();
      const int64_t o = W.size(0), i = W.size(1);
      const at::Tensor& gz = ws.g[k + 1];
      if (want_params) {
        at::Tensor M = ws.M.narrow(0, 0, o * i).view({o, i});
        folded_gram<S>(gz, ws.x[k], M, ws.Mt);
        ws.sums.zero_();
        mlp::add_column_sums(ptr<S>(ws.sums), cptr<S>(gz), n, o, ptr<S>(ws.sums_scratch));
        S* base = gp + offsets[k];
        grad_t += core::concat_squash_param_grads(
            cptr<S>(W), cptr<S>(spec_.biases[k].contiguous()), cptr<S>(spec_.gate_weights[k].contiguous()),
            cptr<S>(spec_.time_weights[k].contiguous()), cptr<S>(ws.gate[k]), cptr<S>(M), cptr<S>(ws.sums), tt, o,
            i, base, base + o * i, base + o * i + o, base + o * i + 2 * o, base + o * i + 3 * o);
      }
      if (k == 0) {  // z's cotangent: only the samples' rows (the input tangents are constants)
        at::Tensor& gz0 = ws.g[0];
        folded_backward<S>(gz.narrow(0, 0, n), ws.w_folded[0], ws.w_folded_t[0], gz0);
        grad_y.narrow(1, 0, D).copy_(gz0);
        break;
      }
      at::Tensor gx = ws.g[k];
      folded_backward<S>(gz, ws.w_folded[k], ws.w_folded_t[k], gx);
      const int64_t oh = i;  // the hidden boundary k, width i
      activation_reverse_k(spec_.activation, cptr<S>(ws.z[k]), cptr<S>(ws.x[k]),
                           ws.sig[k].defined() ? cptr<S>(ws.sig[k]) : nullptr, cptr<S>(ws.z[k]) + n * oh, K, n, oh,
                           ptr<S>(gx));
    }
    if (want_params && spec_.train_T)  // out = T F(s T, z): dT = <v, F> + s <v, T dF/dt>;  T = sqrt_T^2
      gp[0] += static_cast<S>(2.0 * static_cast<double>(sq) * (grad_T + s * grad_t));
  });
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
