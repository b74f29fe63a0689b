// project_simplex: checks shared by the CPU and CUDA kernels, and the ATen formulation.
#pragma once

#include <ATen/ATen.h>

namespace ebm_ext {

inline void check_project_simplex_inputs(const at::Tensor& v) {
  TORCH_CHECK(v.dim() >= 1, "project_simplex: v must have at least one dimension, got a 0-D tensor");
  TORCH_CHECK(at::isFloatingType(v.scalar_type()),
              "project_simplex: v must be a floating-point tensor, got ", v.scalar_type());
  TORCH_CHECK(v.size(-1) >= 1,
              "project_simplex: the last dimension of v must be >= 1, got shape ", v.sizes());
}

// Sort-based projection (Held et al.; Duchi et al. 2008) with tensor ops: rows holding NaN or
// +inf become NaN. Used by the CUDA backend, where sort and scan are device primitives.
inline at::Tensor project_simplex_aten(const at::Tensor& v) {
  if (v.numel() == 0) return at::empty_like(v);
  const int64_t K = v.size(-1);
  const auto sorted = std::get<0>(v.sort(-1, /*descending=*/true));
  const auto css = sorted.cumsum(-1) - 1;
  const auto ind = at::arange(1, K + 1, v.options());
  const auto rho = ((sorted - css / ind) > 0).sum(-1, /*keepdim=*/true).clamp_min(1);
  const auto theta = css.gather(-1, rho - 1) / rho.to(v.scalar_type());
  auto out = (v - theta).clamp_min(0);
  const auto bad = (at::isnan(v) | (v == std::numeric_limits<double>::infinity())).any(-1, true);
  return out.masked_fill(bad, std::numeric_limits<double>::quiet_NaN());
}

}  // namespace ebm_ext
