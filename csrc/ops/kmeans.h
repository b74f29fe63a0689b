// nearest_centroid: input checks shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace ebm_ext {

// y (N, d) points, W (k, d) centroids as rows. Returns nothing; throws a message naming the
// argument, what was expected and what came.
inline void check_nearest_centroid_inputs(const at::Tensor& y, const at::Tensor& W) {
  constexpr const char* op = "nearest_centroid";
  check_defined(op, "y", y);
  check_defined(op, "W", W);
  TORCH_CHECK(y.dim() == 2, op, ": y must be a 2-D tensor (N, d), got shape ", y.sizes());
  TORCH_CHECK(W.dim() == 2, op, ": W must be a 2-D tensor (k, d) of centroids as rows, got shape ",
              W.sizes());
  check_floating(op, "y", y);
  check_cpu_dtype(op, "y", y);
  check_like(op, "W", W, "y", y);
  TORCH_CHECK(W.size(1) == y.size(1), op, ": W must have d=", y.size(1),
              " columns like y, got shape ", W.sizes());
  TORCH_CHECK(W.size(0) >= 1, op, ": W must hold at least one centroid (k >= 1), got shape ",
              W.sizes());
  TORCH_CHECK(W.size(0) <= std::numeric_limits<int32_t>::max(), op,
              ": at most 2^31 - 1 centroids, got k=", W.size(0));
}

}  // namespace ebm_ext
