// CUDA kernels of the fused ops, registered under the CUDA dispatch key. The schemas are defined in
// ops/registration.cpp; the adapters come from the shared macro, so CPU and CUDA register the same way.
#include "ops/registration_helpers.h"

FDE_REGISTER_DEVICE_KERNELS(CUDA, cuda)
