// The distribution family: expectations, covariances and samples of p(y) ∝ exp(-E(x, y)) for
// the chain energy (chain.h), the kernels behind ebm_ext.LinearChainCRF. The per-sequence
// algorithm is written once, for both backends, in chain_sequence.h; these are the input checks
// both call and the staging of their inputs.
//
//   chain_expectation(unary, trans, v_unary, v_trans, ...)  log Z and E_p[v . phi], (B,) each
//   _chain_covariance(weight, unary, trans, v_unary, ...)   sum_b weight_b Cov_p_b(phi, v . phi)
//                                                            (the Hessian of log Z times v)
//   chain_sample(unary, trans, noise, ...)                   exact samples from uniform noise
#pragma once

#include "chain.h"
#include "chain_sequence.h"
#include "edge_chain_ops.h"

namespace ebm_ext {

// v (the direction) has the layout of the energies: v_unary (B, T, K), v_trans (K, K),
// v_start / v_end (K,), each but v_unary optional (zero), all of unary's dtype and device. With
// ValueChecks::Device the CUDA kernels check the lengths' range themselves.
inline ChainDims check_expectation_inputs(
    const char* op, const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,
    const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end,
    ValueChecks values = ValueChecks::Host) {
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end, values);
  check_defined(op, "v_unary", v_unary);
  TORCH_CHECK(v_unary.sizes() == unary.sizes(), op, ": v_unary must have the shape of unary ",
              shape_str(unary), ", got ", shape_str(v_unary));
  check_like(op, "v_unary", v_unary, "unary", unary);
  // The direction's parameters may take any of the general shapes, whatever the energies' are
  // (KL(p || q) with q per move and p shared is a direction per move).
  if (v_trans.has_value()) check_transitions(op, "v_trans", *v_trans, d, unary);
  check_ends(op, "v_start", v_start, d, unary);
  check_ends(op, "v_end", v_end, d, unary);
  return d;
}

// Whether an expectation or covariance call takes the general chains' kernels: its energies or
// its direction are per sequence or per move.
inline bool general_expectation(const at::Tensor& trans, const c10::optional<at::Tensor>& start,
                                const c10::optional<at::Tensor>& end,
                                const c10::optional<at::Tensor>& v_trans,
                                const c10::optional<at::Tensor>& v_start,
                                const c10::optional<at::Tensor>& v_end) {
  return general_chain(trans, start, end) ||
         (v_trans.has_value() && v_trans->dim() != 2) ||
         (v_start.has_value() && v_start->dim() == 2) || (v_end.has_value() && v_end->dim() == 2);
}

inline void check_covariance_weight(const char* op, const at::Tensor& weight,
                                    const at::Tensor& unary) {
  check_defined(op, "weight", weight);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == unary.size(0), op,
              ": weight must have shape (B,) = (", unary.size(0), ",), got ", shape_str(weight));
  check_like(op, "weight", weight, "unary", unary);
}

// noise: (N, B, T) float64 uniforms in [0, 1), one per sample, sequence and position.
inline void check_sample_noise(const char* op, const at::Tensor& noise, const ChainDims& d,
                               const at::Tensor& unary) {
  check_defined(op, "noise", noise);
  TORCH_CHECK(noise.scalar_type() == at::kDouble, op, ": noise must be float64, got ",
              noise.scalar_type());
  TORCH_CHECK(noise.dim() == 3 && noise.size(1) == d.B && noise.size(2) == d.T, op,
              ": noise must have shape (N, B, T) = (N, ", d.B, ", ", d.T, "), got ",
              shape_str(noise));
  check_same_device(op, "noise", noise, "unary", unary);
}

// The inputs of one call made contiguous, and the views of them that the per-sequence code of
// chain_sequence.h reads: what both backends' kernels start from (each stages the exp-domain
// transitions itself, with chain_seq::stage_transitions).
struct StagedChain {
  at::Tensor unary, trans, start, end, lengths;
  at::Tensor v_unary, v_trans, v_start, v_end;  // the direction, when the op takes one

  template <typename S>
  static const S* ptr(const at::Tensor& t) {
    return t.defined() ? t.data_ptr<S>() : nullptr;
  }
  template <typename S>
  chain_seq::Chain<S> energies() const {
    return {{ptr<S>(unary), ptr<S>(trans), ptr<S>(start), ptr<S>(end), ptr<int64_t>(lengths),
             unary.size(1), unary.size(2)}};
  }
  // The direction's lengths are the energies' (read through energies().length(b)).
  template <typename S>
  chain_seq::Chain<S> direction() const {
    return {{ptr<S>(v_unary), ptr<S>(v_trans), ptr<S>(v_start), ptr<S>(v_end), nullptr,
             unary.size(1), unary.size(2)}};
  }
};

inline at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

inline StagedChain stage_chain(const at::Tensor& unary, const at::Tensor& trans,
                               const c10::optional<at::Tensor>& lengths,
                               const c10::optional<at::Tensor>& start,
                               const c10::optional<at::Tensor>& end) {
  StagedChain s;
  s.unary = unary.contiguous();
  s.trans = trans.contiguous();
  s.start = contiguous_or_undefined(start);
  s.end = contiguous_or_undefined(end);
  s.lengths = contiguous_or_undefined(lengths);
  return s;
}

inline StagedChain stage_chain(const at::Tensor& unary, const at::Tensor& trans,
                               const at::Tensor& v_unary, const c10::optional<at::Tensor>& v_trans,
                               const c10::optional<at::Tensor>& lengths,
                               const c10::optional<at::Tensor>& start,
                               const c10::optional<at::Tensor>& end,
                               const c10::optional<at::Tensor>& v_start,
                               const c10::optional<at::Tensor>& v_end) {
  auto s = stage_chain(unary, trans, lengths, start, end);
  s.v_unary = v_unary.contiguous();
  s.v_trans = contiguous_or_undefined(v_trans);
  s.v_start = contiguous_or_undefined(v_start);
  s.v_end = contiguous_or_undefined(v_end);
  return s;
}

}  // namespace ebm_ext
