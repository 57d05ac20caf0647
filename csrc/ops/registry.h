// The list of every op, and what is generated from it: typed dispatcher handles (handle<Op>(), call<Op>())
// here, the TORCH_LIBRARY schemas and the CPU / Meta / Autograd registrations in registration.cpp, the
// CUDA ones in cuda/registration.cu.
//
// An op is a struct in csrc/ops/<op>/op.h (see rk_stage/op.h) with
//   kName, kSchema         its name and TORCH_LIBRARY schema in namespace `fastdiffeq`;
//   using Fn = ...;        the C++ function type of its kernels (what the schema maps to);
//   check(...)             the argument validation every kernel calls first;
//   meta(...)              the shape-only kernel (inline: check, then correctly shaped empties);
//   static Fn cpu, cuda;   the kernels, in cpu.cpp and cuda.cu beside op.h;
//   static Fn autograd;    optional: an autograd formula, in autograd.cpp beside op.h.
// Adding an op: its folder, plus one line in AllOps below.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <string>
#include <utility>

#include "ops/initial_step_final/op.h"
#include "ops/initial_step_probe/op.h"
#include "ops/rk_commit/op.h"
#include "ops/rk_dense_eval/op.h"
#include "ops/rk_dense_output/op.h"
#include "ops/rk_dense_weights/op.h"
#include "ops/rk_error_control/op.h"
#include "ops/rk_stage/op.h"
#include "ops/rk_stage_times/op.h"
#include "ops/step_size_control/op.h"

// The TORCH_LIBRARY namespace, as a token for the registration macros (through FDE_TORCH_LIBRARY*, which
// expand it first) and as a string for the dispatcher lookups.
#define FDE_OP_NAMESPACE fastdiffeq
#define FDE_STRINGIFY_(x) #x
#define FDE_STRINGIFY(x) FDE_STRINGIFY_(x)
#define FDE_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define FDE_TORCH_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

namespace fde::ops {

inline constexpr const char* kNamespace = FDE_STRINGIFY(FDE_OP_NAMESPACE);

template <class... Ops>
struct OpList {};

// Every op, one line each.
using AllOps = OpList<RkStage,
                      RkStageTimes,
                      RkErrorControl,
                      StepSizeControl,
                      RkDenseOutput,
                      RkCommit,
                      RkDenseEval,
                      RkDenseWeights,
                      InitialStepProbe,
                      InitialStepFinal>;

// Calls f.template operator()<Op>() for every op of the list, in order.
template <class F, class... Ops>
void for_each_op(OpList<Ops...>, F&& f) {
  (f.template operator()<Ops>(), ...);
}

template <class Op>
concept HasAutograd = requires { &Op::autograd; };

// The op's typed dispatcher handle, looked up once.
template <class Op>
const c10::TypedOperatorHandle<typename Op::Fn>& handle() {
  static const c10::TypedOperatorHandle<typename Op::Fn> h =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow((std::string(kNamespace) + "::" + Op::kName).c_str(), "")
          .template typed<typename Op::Fn>();
  return h;
}

// Calls the op through the dispatcher (device kernels, autograd, fake tensors alike). An op without an
// autograd formula is called below the Autograd keys: the solver treats its outputs (error ratios, step
// sizes, flags, in-place bookkeeping) as constants of the solve, and the boxed autograd-not-implemented
// fallback it would otherwise pass through cost a measurable share of a step. (Called from Python, such
// an op still goes through that fallback, which refuses to differentiate it.)
template <class Op, class... Args>
decltype(auto) call(Args&&... args) {
  if constexpr (HasAutograd<Op>) {
    return handle<Op>().call(std::forward<Args>(args)...);
  } else {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return handle<Op>().call(std::forward<Args>(args)...);
  }
}

}  // namespace fde::ops
