// Which backend a translation unit is built for. The CUDA kernels also build as host code
// against the SIMT emulation (EBM_SIMT_EMULATION, csrc/ops/cuda/device.cuh): their ops then
// register as ebm_ext_emu::<op> on CPU tensors, beside the real CPU kernels, and the checks
// shared by both backends must treat those CPU tensors as the CUDA kernels' inputs.
#pragma once

#include <ATen/ATen.h>

#ifdef EBM_SIMT_EMULATION
#define EBM_OP_NAMESPACE ebm_ext_emu
#else
#define EBM_OP_NAMESPACE ebm_ext
#endif

namespace ebm_ext {

// Whether t is an input of a CUDA kernel (every tensor is, in the emulation build, which holds
// no CPU kernel).
inline bool on_cuda(const at::Tensor& t) {
#ifdef EBM_SIMT_EMULATION
  (void)t;
  return true;
#else
  return t.is_cuda();
#endif
}

}  // namespace ebm_ext
