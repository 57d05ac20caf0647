// Solver status codes and the per-sample counters: defined here once, used by the kernels and the solver
// loops, and exported to Python by bindings.cpp (fastdiffeq.Status and the counter indices derive from
// these tables; Python and the tests never retype the numbers).
#pragma once

#include <cstdint>

namespace fde::core {

// Per-sample status (int32 in the status tensor).
enum Status : int32_t {
  kRunning = 0,
  kSuccess = 1,
  kMaxSteps = 2,
  kStepUnderflow = 3,  // the step size became too small to advance t (t + h == t), or a step of size 0
  kNonFinite = 4,
  // An out_index outside [0, T] reached a CUDA kernel (the CPU kernels raise instead: a host check on the
  // device would be a synchronisation). Never produced by the solver loops themselves.
  kInvalidIndex = 5,
};

// Indices into a sample's row of the int64 counters tensor [B, kNumCounters].
enum Counter : int { kAccepted = 0, kRejected = 1, kAttemptsSinceOutput = 2, kNonFiniteStreak = 3 };
inline constexpr int kNumCounters = 4;

// After this many consecutive attempts with a non-finite error estimate the solve stops with kNonFinite.
inline constexpr int kMaxNonFiniteRetries = 10;

struct NamedCode {
  const char* name;
  int value;
};

// The names Python sees (fastdiffeq.Status.<NAME.upper()>, SolveStats.status == name).
inline constexpr NamedCode kStatusNames[] = {
    {"running", kRunning},           {"success", kSuccess},       {"max_steps", kMaxSteps},
    {"step_underflow", kStepUnderflow}, {"non_finite", kNonFinite}, {"invalid_index", kInvalidIndex},
};

inline constexpr NamedCode kCounterNames[] = {
    {"accepted", kAccepted},
    {"rejected", kRejected},
    {"attempts_since_output", kAttemptsSinceOutput},
    {"non_finite_streak", kNonFiniteStreak},
};
static_assert(sizeof(kCounterNames) / sizeof(kCounterNames[0]) == kNumCounters);

}  // namespace fde::core
