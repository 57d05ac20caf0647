// TORCH_LIBRARY schemas of the fused ops and their CPU kernels. CUDA kernels register themselves in
// cuda/registration.cu; shape-only (Meta) kernels, used by fake tensors and torch.compile, live in meta.cpp.
#include <torch/library.h>

#include "ops/ops.h"
#include "ops/registration_helpers.h"

TORCH_LIBRARY(fastdiffeq, m) {
  m.def("rk_stage(Tensor y, Tensor[] ks, Tensor h, float[] coeffs) -> Tensor");
  m.def("rk_stage_times(Tensor t0, Tensor h, float[] c, ScalarType dtype) -> Tensor");
  m.def(
      "rk_error_control(Tensor y0, Tensor y1, Tensor[] ks, Tensor h, float[] err_coeffs, Tensor rtol, "
      "Tensor atol, int[] segment_ends, float safety, float ifactor, float dfactor, float exponent, "
      "float min_step, float max_step) -> (Tensor ratio, Tensor accept, Tensor h_next)");
  m.def(
      "step_size_control(Tensor ratio, Tensor h, float safety, float ifactor, float dfactor, float exponent, "
      "float min_step, float max_step) -> (Tensor accept, Tensor h_next)");
  m.def(
      "rk_dense_output(Tensor(a!) out, Tensor y0, Tensor y1, Tensor[] ks, Tensor h, Tensor t0, Tensor accept, "
      "Tensor t_out, Tensor out_index, float[] mid_coeffs) -> ()");
  m.def(
      "rk_commit(Tensor(a!) y0, Tensor(b!) k0, Tensor(c!) t0, Tensor(d!) h, Tensor(e!) status, "
      "Tensor(f!) counters, Tensor(g!) out_index, Tensor y1, Tensor k_last, Tensor h_next, Tensor accept, "
      "Tensor ratio, Tensor t_out, int max_num_steps) -> ()");
  m.def(
      "rk_dense_eval(Tensor y0, Tensor y1, Tensor[] ks, Tensor h, Tensor t0, Tensor t_eval, float[] mid_coeffs) "
      "-> Tensor");
  m.def("rk_dense_weights(Tensor h, Tensor t0, Tensor t_eval, float[] mid_coeffs) -> Tensor");
}

FDE_REGISTER_DEVICE_KERNELS(CPU, cpu)
