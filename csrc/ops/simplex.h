// project_simplex: checks shared by the CPU and CUDA kernels, and the ATen formulation.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace ebm_ext {

inline void check_project_simplex_inputs(const at::Tensor& v) {
  check_defined("project_simplex", "v", v);
  TORCH_CHECK(v.dim() >= 1, "project_simplex: v must have at least one dimension, got a 0-D tensor");
  check_floating("project_simplex", "v", v);
  check_cpu_dtype("project_simplex", "v", v);
  TORCH_CHECK(v.size(-1) >= 1,
              "project_simplex: the last dimension of v must be >= 1, got shape ", v.sizes());
}

// Sort-based projection (Held et al.; Duchi et al. 2008) with tensor ops, used by the CUDA
// backend, where sort and scan are device primitives. The same rules as the CPU row below:
// rows holding NaN or +inf become NaN, a row of -inf only becomes zeros, and the output is
// contiguous (the fake kernel says so) whatever the input's strides.
inline at::Tensor project_simplex_aten(const at::Tensor& input) {
  const auto v = input.contiguous();
  if (v.numel() == 0) return at::empty_like(v);
  const int64_t K = v.size(-1);
  // The projection is shift-invariant; shifted so the largest entry is 0, the threshold is
  // found without cancellation (v = [1e8, 0] in float32 needs it).
  const auto shifted = v - std::get<0>(v.max(-1, /*keepdim=*/true));
  const auto sorted = std::get<0>(shifted.sort(-1, /*descending=*/true));
  const auto css = sorted.cumsum(-1) - 1;
  const auto ind = at::arange(1, K + 1, v.options());
  const auto rho = ((sorted - css / ind) > 0).sum(-1, /*keepdim=*/true).clamp_min(1);
  const auto theta = css.gather(-1, rho - 1) / rho.to(v.scalar_type());
  const double inf = std::numeric_limits<double>::infinity();
  auto out = (shifted - theta).clamp_min(0).masked_fill((v == -inf).all(-1, true), 0);
  const auto bad = (at::isnan(v) | (v == inf)).any(-1, true);
  return out.masked_fill(bad, std::numeric_limits<double>::quiet_NaN()).contiguous();
}

// One row on the CPU: sort a copy, find the threshold theta with sum_k max(v_k - theta, 0) = 1,
// and clip. A row holding NaN or +inf becomes NaN. `buf` is scratch space, reused across rows.
template <typename S>
void project_simplex_row(const S* v, S* out, int64_t K, std::vector<S>& buf) {
  for (int64_t k = 0; k < K; ++k) {
    if (std::isnan(v[k]) || v[k] == std::numeric_limits<S>::infinity()) {
      std::fill(out, out + K, std::numeric_limits<S>::quiet_NaN());
      return;
    }
  }
  // Shift-invariant: with the largest entry at 0 the threshold has no cancellation.
  const S top = *std::max_element(v, v + K);
  if (top == -std::numeric_limits<S>::infinity()) {  // a row of -inf only: zeros
    std::fill(out, out + K, S(0));
    return;
  }
  buf.resize(K);
  for (int64_t k = 0; k < K; ++k) buf[k] = v[k] - top;
  std::sort(buf.begin(), buf.end(), std::greater<S>());
  S css = 0, theta = 0;
  for (int64_t j = 0; j < K; ++j) {
    css += buf[j];
    const S t = (css - S(1)) / S(j + 1);
    if (buf[j] - t > 0) theta = t;  // the condition holds for a prefix of j: keep the last
  }
  for (int64_t k = 0; k < K; ++k) out[k] = std::max((v[k] - top) - theta, S(0));
}

}  // namespace ebm_ext
