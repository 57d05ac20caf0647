#include "solver/rk_step.h"

#include "ops/registry.h"

namespace fde::solver {
namespace {

// Row i of the [S, B] stage-time tensor as a [B] tensor. The times are constants (never in a graph), and
// select() through the dispatcher cost more than a whole fused op at the sizes the loop sees; this builds
// the same strided view directly.
at::Tensor stage_time_row(const at::Tensor& ts, int64_t i) {
  const int64_t B = ts.size(1);
  auto row = at::detail::make_tensor<c10::TensorImpl>(c10::TensorImpl::VIEW, c10::Storage(ts.storage()),
                                                      ts.key_set(), ts.dtype());
  row.unsafeGetTensorImpl()->set_storage_offset(ts.storage_offset() + i * ts.stride(0));
  const int64_t size[1] = {B}, stride[1] = {ts.stride(1)};
  row.unsafeGetTensorImpl()->set_sizes_and_strides(at::IntArrayRef(size), at::IntArrayRef(stride));
  return row;
}

}  // namespace

StepStages rk_stages(VectorField& field, const core::Tableau& tab, const at::Tensor& y, const at::Tensor& k0,
                     const at::Tensor& t0, const at::Tensor& h, int64_t& nfe) {
  const int S = tab.stages;
  StepStages st;
  st.ks.resize(S);
  st.ks[0] = k0;
  const at::Tensor ts = ops::call<ops::RkStageTimes>(t0, h, at::ArrayRef<double>(tab.c, S), y.scalar_type());
  for (int i = 1; i < S; ++i) {
    st.y1 = ops::call<ops::RkStage>(y, at::TensorList(st.ks.data(), i), h, at::ArrayRef<double>(tab.a[i], i));
    st.ks[i] = field.eval(stage_time_row(ts, i), st.y1);
    ++nfe;
  }
  // Not FSAL: the last stage was evaluated elsewhere (or S == 1); the solution is its own weighted sum.
  if (!core::is_fsal(tab)) st.y1 = ops::call<ops::RkStage>(y, st.ks, h, at::ArrayRef<double>(tab.b, S));
  return st;
}

}  // namespace fde::solver
