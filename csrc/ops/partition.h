// Log-partition family: input checks shared by the CPU and CUDA kernels.
//
// log Z = log sum_y exp(-E(x, y)); d log Z / d unary[b,t,k] = -p(y_t = k), and likewise for
// trans (pair marginals summed over t), start (first position) and end (last position).
#pragma once

#include "chain.h"

#include <tuple>
#include <utility>

namespace ebm_ext {

inline void check_partition_grad(const char* op, const at::Tensor& grad, const at::Tensor& unary) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == unary.size(0), op,
              ": grad must have shape (B,) = (", unary.size(0), ",), got ", shape_str(grad));
  check_like(op, "grad", grad, "unary", unary);
}

// A backend's forward-backward, called after the checks with their dims: d_unary (B, T, K)
// receives scale_b * p(y_t = k); with want_params, d_trans, d_start and d_end receive the pair,
// first and last marginals summed over the batch with the same scales (zeros otherwise).
using ForwardBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> (*)(
    const char* op, const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary,
    const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    bool want_params);

// The two ops that each backend builds from its forward-backward, written once.
// d log Z = -(marginals): the forward-backward with scale -grad.
template <ForwardBackward forward_backward>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chain_log_partition_backward_with(
    const at::Tensor& grad, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end) {
  const char* op = "_chain_log_partition_backward";
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  check_partition_grad(op, grad, unary);
  return forward_backward(op, d, -grad, unary, trans, lengths, start, end, true);
}

template <ForwardBackward forward_backward>
at::Tensor chain_marginals_with(const at::Tensor& unary, const at::Tensor& trans,
                                const c10::optional<at::Tensor>& lengths,
                                const c10::optional<at::Tensor>& start,
                                const c10::optional<at::Tensor>& end) {
  const char* op = "chain_marginals";
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  const auto ones = at::ones({d.B}, unary.options());
  return std::get<0>(forward_backward(op, d, ones, unary, trans, lengths, start, end, false));
}

// Sequences the CPU kernels of this family ran in the exp domain and in log space since the
// last call (which resets both): the tests assert which path ran.
std::pair<int64_t, int64_t> take_partition_domain_counts();

}  // namespace ebm_ext
