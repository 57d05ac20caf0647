// Correctly rounded arithmetic in a given floating type, never contracted into a fused multiply-add:
// where a result must reproduce another implementation's roundings (the initial step reproduces ATen's
// separate mul and add kernels), device code must not fuse a * b + c (nvcc does by default). Host builds
// target x86-64 without FMA, where the compiler cannot contract either.
#pragma once

#include "core/macros.h"

namespace fde::core {

#if defined(__CUDA_ARCH__)
FDE_INLINE float mul_rn(float a, float b) { return __fmul_rn(a, b); }
FDE_INLINE double mul_rn(double a, double b) { return __dmul_rn(a, b); }
FDE_INLINE float add_rn(float a, float b) { return __fadd_rn(a, b); }
FDE_INLINE double add_rn(double a, double b) { return __dadd_rn(a, b); }
FDE_INLINE float sub_rn(float a, float b) { return __fsub_rn(a, b); }
FDE_INLINE double sub_rn(double a, double b) { return __dsub_rn(a, b); }
FDE_INLINE float div_rn(float a, float b) { return __fdiv_rn(a, b); }
FDE_INLINE double div_rn(double a, double b) { return __ddiv_rn(a, b); }
#else
template <class T>
FDE_INLINE T mul_rn(T a, T b) { return a * b; }
template <class T>
FDE_INLINE T add_rn(T a, T b) { return a + b; }
template <class T>
FDE_INLINE T sub_rn(T a, T b) { return a - b; }
template <class T>
FDE_INLINE T div_rn(T a, T b) { return a / b; }
#endif

// A float64 value rounded to T and back (what storing it in a T tensor does).
template <class T>
FDE_INLINE double round_to(double v) { return static_cast<double>(static_cast<T>(v)); }

}  // namespace fde::core
