// CPU kernel of project_simplex: per row, sort a copy, find the threshold theta with
// sum_k max(v_k - theta, 0) = 1, and clip. Rows holding NaN or +inf become NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "../simplex.h"

namespace ebm_ext {
namespace {

at::Tensor project_simplex_cpu(const at::Tensor& v) {
  check_project_simplex_inputs(v);
  auto out = at::empty_like(v, at::MemoryFormat::Contiguous);
  if (v.numel() == 0) return out;
  const auto vc = v.contiguous();
  const int64_t K = v.size(-1), rows = v.numel() / K;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "project_simplex_cpu", [&] {
    const auto* src = vc.data_ptr<scalar_t>();
    auto* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / K), [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> buf;
      for (int64_t r = lo; r < hi; ++r) project_simplex_row(src + r * K, dst + r * K, K, buf);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("project_simplex", &project_simplex_cpu);
}

}  // namespace ebm_ext
