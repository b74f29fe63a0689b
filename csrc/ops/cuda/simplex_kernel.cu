// CUDA backend of project_simplex: sort and scan are device primitives, so the projection is
// written with them (project_simplex_aten) on the input's device and stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../simplex.h"

namespace ebm_ext {
namespace {

at::Tensor project_simplex_cuda(const at::Tensor& v) {
  check_project_simplex_inputs(v);
  const c10::cuda::CUDAGuard guard(v.device());
  if (v.scalar_type() == at::kHalf || v.scalar_type() == at::kBFloat16) {
    return project_simplex_aten(v.to(at::kFloat)).to(v.scalar_type());
  }
  return project_simplex_aten(v);
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CUDA, m) {
  m.impl("project_simplex", &project_simplex_cuda);
}

}  // namespace ebm_ext
