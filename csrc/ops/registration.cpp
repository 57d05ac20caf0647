// The TORCH_LIBRARY schemas of every op in ops::AllOps and their CPU, Meta and Autograd kernels,
// generated from the list (csrc/ops/registry.h). CUDA kernels: cuda/registration.cu.
#include <torch/library.h>

#include "ops/registry.h"

using fde::ops::AllOps;
using fde::ops::for_each_op;

FDE_TORCH_LIBRARY(FDE_OP_NAMESPACE, m) {
  for_each_op(AllOps{}, [&]<class Op>() { m.def(Op::kSchema); });
}

FDE_TORCH_LIBRARY_IMPL(FDE_OP_NAMESPACE, CPU, m) {
  for_each_op(AllOps{}, [&]<class Op>() { m.impl(Op::kName, TORCH_FN(Op::cpu)); });
}

FDE_TORCH_LIBRARY_IMPL(FDE_OP_NAMESPACE, Meta, m) {
  for_each_op(AllOps{}, [&]<class Op>() { m.impl(Op::kName, TORCH_FN(Op::meta)); });
}

FDE_TORCH_LIBRARY_IMPL(FDE_OP_NAMESPACE, Autograd, m) {
  for_each_op(AllOps{}, [&]<class Op>() {
    if constexpr (fde::ops::HasAutograd<Op>) m.impl(Op::kName, TORCH_FN(Op::autograd));
  });
}
