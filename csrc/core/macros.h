// Host/device annotations shared by the CPU and CUDA builds of the numerics in csrc/core.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FDE_HOST_DEVICE __host__ __device__
#else
#define FDE_HOST_DEVICE
#endif

#define FDE_INLINE FDE_HOST_DEVICE inline

#include <cmath>

namespace fde::core {
// Unqualified math calls in csrc/core resolve to these on the host and to CUDA's overloads on device.
using std::fabs;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::pow;
using std::sqrt;
}  // namespace fde::core
