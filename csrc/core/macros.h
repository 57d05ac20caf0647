// Host/device annotations shared by the CPU and CUDA builds of the numerics in csrc/core.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FDE_HOST_DEVICE __host__ __device__
#else
#define FDE_HOST_DEVICE
#endif

#define FDE_INLINE FDE_HOST_DEVICE inline

// CPU kernel loops: the build's baseline is plain x86-64 (SSE2: 4 floats per instruction), which a wheel cannot
// go beyond; target_clones compiles a function also for AVX2 and AVX-512 and the dynamic loader picks the best
// the CPU has (an ifunc). Every clone does the same IEEE operations in the same order (no FMA contraction:
// -ffp-contract=off; sums in a fixed order), so results do not depend on the CPU. flatten inlines what the function
// calls (templates, lambdas) into each clone, so the loops themselves are compiled for its instruction set.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define FDE_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define FDE_CPU_CLONES
#endif

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
