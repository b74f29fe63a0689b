// The general chains' ops (edge_chain.h) on each backend: the shared (K, K) ops hand a call to
// these when general_chain() says its parameters are per sequence or per move (chain.h), after
// the same checks. Each backend implements them in cpu/ and cuda/ edge_chain_kernel.
#pragma once

#include "chain.h"
#include "edge_chain.h"

#include <tuple>

namespace ebm_ext {
namespace edge {

// The inputs as contiguous tensors of their own dtype, and the view the passes read (a
// direction's: unary, trans, start, end of v, any but unary undefined).
struct Inputs {
  at::Tensor unary, trans, start, end, lengths;
};

inline at::Tensor contiguous_or_none(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

inline Inputs contiguous_inputs(const at::Tensor& unary, const c10::optional<at::Tensor>& trans,
                                const c10::optional<at::Tensor>& lengths,
                                const c10::optional<at::Tensor>& start,
                                const c10::optional<at::Tensor>& end) {
  return {unary.contiguous(), contiguous_or_none(trans), contiguous_or_none(start),
          contiguous_or_none(end), contiguous_or_none(lengths)};
}

template <typename S>
EdgeChain<S> view(const Inputs& x) {
  EdgeChain<S> c;
  c.unary = x.unary.data_ptr<S>();
  c.trans = x.trans.defined() ? x.trans.data_ptr<S>() : nullptr;
  c.start = x.start.defined() ? x.start.data_ptr<S>() : nullptr;
  c.end = x.end.defined() ? x.end.data_ptr<S>() : nullptr;
  c.lengths = x.lengths.defined() ? x.lengths.data_ptr<int64_t>() : nullptr;
  c.T = x.unary.size(1);
  c.K = static_cast<int>(x.unary.size(2));
  const int64_t KK = int64_t(c.K) * c.K;
  const int64_t dims = x.trans.defined() ? x.trans.dim() : 2;
  c.trans_b = dims == 2 ? 0 : dims == 3 ? KK : x.trans.size(1) * KK;
  c.trans_t = dims == 4 ? KK : 0;
  c.start_b = x.start.defined() && x.start.dim() == 2 ? c.K : 0;
  c.end_b = x.end.defined() && x.end.dim() == 2 ? c.K : 0;
  return c;
}

// The float64 buffers the backward writes per sequence: d_trans (B, T-1, K, K) per move or
// (B, K, K) per sequence (every move's pairs added), d_start and d_end (B, K).
struct GradBuffers {
  at::Tensor trans, start, end;
};

inline GradBuffers grad_buffers(const ChainDims& d, const at::Tensor& trans) {
  const auto f64 = trans.options().dtype(at::kDouble);
  GradBuffers g;
  g.trans = trans.dim() == 4 ? at::zeros({d.B, std::max<int64_t>(d.T - 1, 0), d.K, d.K}, f64)
                             : at::zeros({d.B, d.K, d.K}, f64);
  g.start = at::zeros({d.B, d.K}, f64);
  g.end = at::zeros({d.B, d.K}, f64);
  return g;
}

// A per-sequence buffer summed over the batch where its parameter is shared (or absent: the
// shared ops return (K,) zeros there), in the inputs' dtype.
inline at::Tensor to_parameter(const at::Tensor& per_sequence, bool parameter_per_sequence,
                               at::ScalarType dtype) {
  return (parameter_per_sequence ? per_sequence : per_sequence.sum(0)).to(dtype);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish_grads(
    const at::Tensor& d_unary, const GradBuffers& g, const at::Tensor& trans,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const auto dtype = d_unary.scalar_type();
  return {d_unary, to_parameter(g.trans, trans.dim() > 2, dtype),
          to_parameter(g.start, start.has_value() && start->dim() == 2, dtype),
          to_parameter(g.end, end.has_value() && end->dim() == 2, dtype)};
}

}  // namespace edge

// One set per backend, with the shared ops' arguments (forward_backward: partition.h's
// ForwardBackward, its d_trans, d_start and d_end shaped like trans, start and end).
#define EBM_EDGE_CHAIN_OPS                                                                      \
  std::tuple<at::Tensor, at::Tensor> viterbi(                                                   \
      const at::Tensor& unary, const at::Tensor& trans,                                         \
      const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,         \
      const c10::optional<at::Tensor>& end);                                                    \
  at::Tensor log_partition(const at::Tensor& unary, const at::Tensor& trans,                    \
                           const c10::optional<at::Tensor>& lengths,                            \
                           const c10::optional<at::Tensor>& start,                              \
                           const c10::optional<at::Tensor>& end);                               \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward(                  \
      const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary,                     \
      const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,                        \
      const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,             \
      bool want_params);                                                                        \
  at::Tensor energy(const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& tags,   \
                    const c10::optional<at::Tensor>& lengths,                                   \
                    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end); \
  std::tuple<at::Tensor, at::Tensor> viterbi_kbest(                                             \
      const at::Tensor& unary, const at::Tensor& trans, int64_t k,                              \
      const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,         \
      const c10::optional<at::Tensor>& end);                                                    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_augmented_viterbi(                        \
      const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& gold,                 \
      const at::Tensor& cost, const c10::optional<at::Tensor>& lengths,                         \
      const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end);            \
  std::tuple<at::Tensor, at::Tensor> expectation(                                               \
      const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,              \
      const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,       \
      const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,             \
      const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end);        \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> covariance(                        \
      const at::Tensor& weight, const at::Tensor& unary, const at::Tensor& trans,               \
      const at::Tensor& v_unary, const c10::optional<at::Tensor>& v_trans,                      \
      const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,         \
      const c10::optional<at::Tensor>& end, const c10::optional<at::Tensor>& v_start,           \
      const c10::optional<at::Tensor>& v_end);                                                  \
  at::Tensor sample(const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& noise,  \
                    const c10::optional<at::Tensor>& lengths,                                   \
                    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end);

namespace cpu_edge {
EBM_EDGE_CHAIN_OPS
}
namespace cuda_edge {
EBM_EDGE_CHAIN_OPS
}

#undef EBM_EDGE_CHAIN_OPS

}  // namespace ebm_ext
