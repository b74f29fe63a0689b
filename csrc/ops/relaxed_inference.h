// chain_relaxed_inference: input checks shared by the CPU and CUDA kernels.
//
// Gradient descent on relaxed tags p (B, T, K), one distribution per position, for the chain
// energy E(p) = sum_t p_t.unary_t + sum_{t>=1} p_{t-1}^T trans_t p_t + start.p_0 + end.p_{L-1}
// (trans_t: the matrix of the move into t, one for all, per sequence or per move; start and end
// per sequence or shared, as every chain op takes them):
//   dE/dp_t = unary_t + trans_t^T p_{t-1} (t > 0) + trans_{t+1} p_{t+1} (t < L-1) + start (t = 0)
//             + end (t = L-1)
// every position updated from the same p (a Jacobi step), `steps` times, with
//   'entropic'  p_t <- softmax(log p_t - lr dE/dp_t)      (exponentiated gradient, mirror descent)
//   'projected' p_t <- project_simplex(p_t - lr dE/dp_t)
// from `init` or the uniform distributions. Positions t >= L are 0 in the output.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "chain.h"
#include "chain_view.h"

namespace ebm_ext {

// Which of trans's (M, K, K) matrices sequence b's move into t reads: strides in matrices per
// sequence and per move (0: shared).
struct MoveStrides {
  int64_t b, t;
  static MoveStrides of(const at::Tensor& trans) {
    if (trans.dim() == 2) return {0, 0};
    if (trans.dim() == 3) return {1, 0};
    return {trans.size(1), 1};
  }
  EBM_HD int64_t matrix(int64_t seq, int64_t t) const { return seq * b + (t - 1) * this->t; }
};

struct RelaxedInferenceOptions {
  int64_t steps;
  double lr;
  bool entropic;
};

inline RelaxedInferenceOptions check_chain_relaxed_inference_inputs(
    const at::Tensor& unary, const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end, int64_t steps,
    double lr, c10::string_view method, const c10::optional<at::Tensor>& init) {
  constexpr const char* op = "chain_relaxed_inference";
  check_chain_inputs(op, unary, trans, lengths, start, end);
  TORCH_CHECK(steps >= 0, op, ": steps must be >= 0, got ", steps);
  TORCH_CHECK(std::isfinite(lr) && lr > 0, op, ": lr must be a finite number > 0, got ", lr);
  TORCH_CHECK(unary.scalar_type() == at::kDouble || lr <= std::numeric_limits<float>::max(), op,
              ": lr must be finite in the energies' dtype (", unary.scalar_type(), "), got ", lr);
  TORCH_CHECK(method == "entropic" || method == "projected", op,
              ": method must be 'entropic' or 'projected', got '", std::string(method), "'");
  if (init.has_value()) {
    TORCH_CHECK(init->sizes() == unary.sizes(), op, ": init must have the shape of unary (",
                shape_str(unary), "), got ", shape_str(*init));
    check_like(op, "init", *init, "unary", unary);
  }
  return {steps, lr, method == "entropic"};
}

}  // namespace ebm_ext
