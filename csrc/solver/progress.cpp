#include "solver/progress.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

namespace fde::solver {

ProgressReporter::ProgressReporter(ProgressSink* sink, const at::Tensor& t_out_host) : sink_(sink) {
  if (sink_ == nullptr) return;
  TORCH_CHECK(t_out_host.is_cpu() && t_out_host.scalar_type() == at::kDouble && t_out_host.is_contiguous(),
              "fastdiffeq: progress needs the output times as a contiguous float64 CPU tensor");
  const int64_t rows = t_out_host.dim() == 2 ? t_out_host.size(0) : 1;
  const int64_t T = t_out_host.size(-1);
  const double* tp = t_out_host.data_ptr<double>();
  for (int64_t r = 0; r < rows; ++r) {
    start_.push_back(tp[r * T]);
    end_.push_back(tp[r * T + T - 1]);
  }
  last_ = std::chrono::steady_clock::now();
}

bool ProgressReporter::due() {
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_).count() < sink_->min_interval_s) return false;
  last_ = now;
  return true;
}

void ProgressReporter::emit(const double* t, int64_t n) {
  double fraction = std::numeric_limits<double>::infinity(), t_min = t[0];
  for (int64_t b = 0; b < n; ++b) {
    const size_t s = start_.size() == 1 ? 0 : static_cast<size_t>(b);
    const double span = end_[s] - start_[s];
    const double f = span == 0.0 ? 1.0 : std::clamp((t[b] - start_[s]) / span, 0.0, 1.0);
    if (f < fraction) {
      fraction = f;
      t_min = t[b];
    }
  }
  sink_->update(fraction, t_min);
}

void ProgressReporter::report(double t) {
  if (sink_ != nullptr && due()) emit(&t, 1);
}

void ProgressReporter::stage(const at::Tensor& t0) {
  if (sink_ == nullptr) return;
  if (t0.is_cpu()) {
    staged_ = t0;
    return;
  }
  if (!staged_.defined())
    staged_ = at::empty(t0.sizes(), at::TensorOptions().dtype(at::kDouble).pinned_memory(true));
  staged_.copy_(t0, /*non_blocking=*/true);
}

void ProgressReporter::report_staged() {
  if (sink_ == nullptr || !staged_.defined() || !due()) return;
  emit(staged_.data_ptr<double>(), staged_.numel());
}

}  // namespace fde::solver
