// Argument checks shared by the ops' `check` functions (TORCH_CHECK, never assert). Every op validates
// its whole argument list with one `check` that its CPU, CUDA and Meta kernels all call before touching
// data, so a fake tensor raises exactly what a real one does. Tensor arguments must all be on one device
// (meta only with meta: the dispatcher picks the Meta kernel when any argument is meta, so a mixed call
// lands there and fails the device check).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>

#include "core/controller.h"
#include "core/status.h"
#include "core/tableau.h"

namespace fde::ops {

inline void check_state(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "fastdiffeq: ", name, " must be a 2-D [B, D] tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "fastdiffeq: ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastdiffeq: ", name, " must be contiguous");
}

inline void check_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "fastdiffeq: ", name, " must be on ", ref.device(), " like the other ",
              "arguments, got ", t.device());
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  check_device(t, ref, name);
  TORCH_CHECK(t.sizes() == ref.sizes(), "fastdiffeq: ", name, " must have shape ", ref.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastdiffeq: ", name, " must have dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastdiffeq: ", name, " must be contiguous");
}

inline void check_stages(at::TensorList ks, const at::Tensor& ref, size_t n_coeffs, const char* coeffs_name) {
  TORCH_CHECK(!ks.empty(), "fastdiffeq: ks must hold at least one stage");
  TORCH_CHECK(ks.size() <= static_cast<size_t>(core::kMaxStages), "fastdiffeq: ks: at most ", core::kMaxStages,
              " stages are supported, got ", ks.size());
  TORCH_CHECK(n_coeffs <= ks.size(), "fastdiffeq: ", coeffs_name, " has ", n_coeffs,
              " entries but only ", ks.size(), " stages were given in ks");
  for (const auto& k : ks) check_like(k, ref, "each stage in ks");
}

// A float64 [batch] vector (times, step sizes, ratios) on ref's device.
inline void check_time_vector(const at::Tensor& t, int64_t batch, const at::Tensor& ref, const char* name) {
  check_device(t, ref, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, "fastdiffeq: ", name, " must have shape [", batch,
              "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kDouble, "fastdiffeq: ", name, " must be float64, got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastdiffeq: ", name, " must be contiguous");
}

// A 1-D tensor that defines the batch size itself (its length is B).
inline int64_t check_batch_vector(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 1, "fastdiffeq: ", name, " must be 1-D [B], got shape ", t.sizes());
  check_time_vector(t, t.size(0), t, name);
  return t.size(0);
}

inline void check_flag_vector(const at::Tensor& t, int64_t batch, at::ScalarType dtype, const at::Tensor& ref,
                              const char* name) {
  check_device(t, ref, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch && t.scalar_type() == dtype, "fastdiffeq: ", name,
              " must be a [", batch, "] ", dtype, " tensor, got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastdiffeq: ", name, " must be contiguous");
}

// t_out: float64 [T] (shared) or [B, T] (per sample). Returns T.
inline int64_t check_output_times(const at::Tensor& t_out, int64_t batch, const at::Tensor& ref) {
  check_device(t_out, ref, "t_out");
  TORCH_CHECK(t_out.scalar_type() == at::kDouble, "fastdiffeq: t_out must be float64, got ", t_out.scalar_type());
  TORCH_CHECK(t_out.dim() == 1 || (t_out.dim() == 2 && t_out.size(0) == batch),
              "fastdiffeq: t_out must be [T] or [B, T] with B = ", batch, ", got ", t_out.sizes());
  TORCH_CHECK(t_out.is_contiguous(), "fastdiffeq: t_out must be contiguous");
  return t_out.size(-1);
}

// Times of the differentiable dense output: h and t0 [B], t_eval [R], all float64 on one device.
inline void check_dense_times(const at::Tensor& h, const at::Tensor& t0, const at::Tensor& t_eval, size_t n_mid) {
  const int64_t B = check_batch_vector(h, "h");
  check_time_vector(t0, B, h, "t0");
  check_device(t_eval, h, "t_eval");
  TORCH_CHECK(t_eval.dim() == 1, "fastdiffeq: t_eval must be 1-D [R], got shape ", t_eval.sizes());
  check_time_vector(t_eval, t_eval.size(0), h, "t_eval");
  TORCH_CHECK(n_mid >= 2 && n_mid <= static_cast<size_t>(core::kMaxStages),
              "fastdiffeq: mid_coeffs must have between 2 and ", core::kMaxStages, " entries, got ", n_mid);
}

// Tolerance segments along D: segment_ends non-decreasing from 0, the last equal to D; rtol and atol
// float64 [S] on ref's device. Returns S.
inline int64_t check_segments(const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segment_ends,
                              int64_t D, const at::Tensor& ref) {
  const int64_t S = static_cast<int64_t>(segment_ends.size());
  TORCH_CHECK(S >= 1, "fastdiffeq: segment_ends must name at least one segment");
  check_time_vector(rtol, S, ref, "rtol");
  check_time_vector(atol, S, ref, "atol");
  for (int64_t s = 0; s < S; ++s) {
    const int64_t begin = s == 0 ? 0 : segment_ends[s - 1];
    TORCH_CHECK(segment_ends[s] >= begin && segment_ends[s] <= D,
                "fastdiffeq: segment_ends must be non-decreasing from 0 and end at most at D = ", D, ", got ",
                segment_ends);
  }
  TORCH_CHECK(segment_ends[S - 1] == D, "fastdiffeq: segment_ends: the last segment must end at D = ", D,
              ", got ", segment_ends);
  return S;
}

// The controller's packed parameters (`float[] control`, core::pack's order), unpacked and range-checked
// by the core's rules.
inline core::ControllerParams check_control(at::ArrayRef<double> control) {
  TORCH_CHECK(control.size() == static_cast<size_t>(core::kNumControllerFields), "fastdiffeq: control must hold ",
              core::kNumControllerFields, " values (safety, ifactor, dfactor, exponent, min_step, max_step), got ",
              control.size());
  const core::ControllerParams p = core::unpack(control.data());
  const auto issue = core::check_controller(p);
  TORCH_CHECK(!issue, "fastdiffeq: control: ", issue ? issue->field : "", " must be ",
              issue ? issue->requirement : "", ", got ", issue ? issue->value : 0.0);
  return p;
}

inline void check_direction(double direction) {
  TORCH_CHECK(direction == 1.0 || direction == -1.0, "fastdiffeq: direction must be 1 or -1, got ", direction);
}

// --- Overlap of in-place arguments ---------------------------------------------------------------------
// Every tensor an op takes is contiguous (checked before this), so its bytes are one range
// [begin, begin + numel * itemsize): the overlap test below is exact and costs a few comparisons. Real
// tensors compare addresses (this also catches two storages over the same memory). Meta tensors have no
// addresses: they compare storage identity, and their (possibly symbolic) sizes and offsets are read,
// guarding on them, only for two views of one storage.
struct ByteRange {
  uintptr_t begin = 0, end = 0;
  const at::Tensor* meta = nullptr;  // set for meta tensors instead of begin/end
};

inline ByteRange byte_range(const at::Tensor& t) {
  ByteRange r;
  if (t.is_meta()) {
    r.meta = &t;
    return r;
  }
  r.begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  r.end = r.begin + static_cast<uintptr_t>(t.numel() * static_cast<int64_t>(t.itemsize()));
  return r;
}

inline ByteRange meta_byte_range(const at::Tensor& t) {
  ByteRange r;
  r.begin = static_cast<uintptr_t>(t.sym_storage_offset().guard_int(__FILE__, __LINE__) * t.itemsize());
  r.end = r.begin + static_cast<uintptr_t>(t.sym_numel().guard_int(__FILE__, __LINE__) * t.itemsize());
  return r;
}

inline bool overlaps(const ByteRange& a, const ByteRange& b) {
  if ((a.meta == nullptr) != (b.meta == nullptr)) return false;  // different devices: rejected elsewhere
  if (a.meta != nullptr) {
    if (!a.meta->storage().is_alias_of(b.meta->storage())) return false;
    return overlaps(meta_byte_range(*a.meta), meta_byte_range(*b.meta));
  }
  if (a.begin == a.end || b.begin == b.end) return false;
  return a.begin < b.end && b.begin < a.end;
}

inline bool overlaps(const at::Tensor& a, const at::Tensor& b) { return overlaps(byte_range(a), byte_range(b)); }

struct NamedTensor {
  const at::Tensor* t;
  const char* name;
};

// The first `n_mutable` of the n entries are written by the op: none of them may share memory with any
// other entry. Each range is computed once (the commit op checks 7 x 13 pairs every step).
inline void check_no_overlap(const char* op, const NamedTensor* a, size_t n, size_t n_mutable) {
  constexpr size_t kMaxArgs = 32;
  TORCH_CHECK(n <= kMaxArgs, "fastdiffeq: check_no_overlap supports at most ", kMaxArgs, " tensors");
  ByteRange r[kMaxArgs];
  for (size_t i = 0; i < n; ++i) r[i] = byte_range(*a[i].t);
  for (size_t i = 0; i < n_mutable; ++i)
    for (size_t j = 0; j < n; ++j)
      if (j != i && (j > i || j >= n_mutable) && overlaps(r[i], r[j]))
        TORCH_CHECK(false, "fastdiffeq: ", op, ": ", a[i].name, " overlaps ", a[j].name,
                    " in memory; an argument the op writes must not share memory with any other argument");
}

inline void check_no_overlap(const char* op, std::initializer_list<NamedTensor> args, size_t n_mutable) {
  check_no_overlap(op, args.begin(), args.size(), n_mutable);
}

}  // namespace fde::ops
