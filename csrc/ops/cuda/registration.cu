// The CUDA kernels of every op in ops::AllOps, registered under the CUDA dispatch key (the schemas and
// the other keys: ../registration.cpp).
#include <torch/library.h>

#include "ops/registry.h"

FDE_TORCH_LIBRARY_IMPL(FDE_OP_NAMESPACE, CUDA, m) {
  fde::ops::for_each_op(fde::ops::AllOps{}, [&]<class Op>() { m.impl(Op::kName, TORCH_FN(Op::cuda)); });
}
