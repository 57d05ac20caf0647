#include "solver/rk_step.h"

#include "solver/ops_handles.h"

namespace fde::solver {

StepStages rk_stages(VectorField& field, const core::Tableau& tab, const at::Tensor& y, const at::Tensor& k0,
                     const at::Tensor& t0, const at::Tensor& h, int64_t& nfe) {
  const int S = tab.stages;
  StepStages st;
  st.ks.resize(S);
  st.ks[0] = k0;
  const at::Tensor ts = op::rk_stage_times(t0, h, at::ArrayRef<double>(tab.c, S), y.scalar_type());
  for (int i = 1; i < S; ++i) {
    st.y1 = op::rk_stage(y, at::TensorList(st.ks.data(), i), h, at::ArrayRef<double>(tab.a[i], i));
    st.ks[i] = field.eval(ts.select(0, i), st.y1);
    ++nfe;
  }
  return st;
}

}  // namespace fde::solver
