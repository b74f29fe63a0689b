// CUDA backend of project_simplex: sort and scan are device primitives, so the projection is
// written with them (project_simplex_aten) on the input's device and stream.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../simplex.h"
#include "device.cuh"

namespace ebm_ext {
namespace {

at::Tensor project_simplex_cuda(const at::Tensor& v) {
  check_project_simplex_inputs(v);
  const DeviceGuard guard(v.device());
  if (v.scalar_type() == at::kHalf || v.scalar_type() == at::kBFloat16) {
    return project_simplex_aten(v.to(at::kFloat)).to(v.scalar_type());
  }
  return project_simplex_aten(v);
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("project_simplex", &project_simplex_cuda);
}

}  // namespace ebm_ext
