// Log-partition family: input checks shared by the CPU and CUDA kernels.
//
// log Z = log sum_y exp(-E(x, y)); d log Z / d unary[b,t,k] = -p(y_t = k), and likewise for
// trans (pair marginals summed over t), start (first position) and end (last position).
#pragma once

#include "chain.h"

#include <utility>

namespace ebm_ext {

inline void check_partition_grad(const char* op, const at::Tensor& grad, const at::Tensor& unary) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == unary.size(0), op,
              ": grad must have shape (B,) = (", unary.size(0), ",), got ", shape_str(grad));
  check_like(op, "grad", grad, "unary", unary);
}

// Sequences the CPU kernels of this family ran in the exp domain and in log space since the
// last call (which resets both): the tests assert which path ran.
std::pair<int64_t, int64_t> take_partition_domain_counts();

}  // namespace ebm_ext
