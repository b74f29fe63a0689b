// Linear-chain energies: input checks shared by the CPU and CUDA kernels.
//
// E(x, y) = start[y_0] + sum_{t<L} unary[b,t,y_t] + sum_{1<=t<L} trans[y_{t-1}, y_t] + end[y_{L-1}]
// Lower is better. Every precondition a user can break is checked here, once, and both
// backends call the same check before touching memory.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "checks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unistd.h>
#include <vector>

namespace ebm_ext {

struct ChainDims {
  int64_t B, T, K;
};

// Whether t holds NaN or -inf, the energies the non-finite rules turn into NaN results (a 0-dim
// bool tensor on t's device: no synchronisation until it is read).
inline at::Tensor any_invalid_energy(const at::Tensor& t) {
  return at::logical_not(t > -std::numeric_limits<double>::infinity()).any();
}

// Value checks read the data: on CPU with a plain loop (an ATen reduction costs more than the
// decoding of a small batch), on CUDA with reductions (one synchronisation each).
inline void check_lengths_range(const char* op, const at::Tensor& lengths, int64_t T) {
  if (lengths.numel() == 0) return;
  int64_t lo, hi;
  if (!on_cuda(lengths)) {
    const auto l = lengths.contiguous();
    const int64_t* p = l.data_ptr<int64_t>();
    lo = *std::min_element(p, p + l.numel());
    hi = *std::max_element(p, p + l.numel());
  } else {
    auto mm = at::aminmax(lengths);
    lo = std::get<0>(mm).item<int64_t>();
    hi = std::get<1>(mm).item<int64_t>();
  }
  TORCH_CHECK(lo >= 0, op, ": lengths must be >= 0, got ", lo);
  TORCH_CHECK(hi <= T, op, ": lengths must be <= T=", T, ", got ", hi);
}

// Where the checks that read a tensor's values run. The decoding kernels and the distribution
// family check their values on the device (csrc/ops/cuda/chain_kernel.cu and
// distribution_kernel.cu, EBM_DEVICE_REQUIRE): a host check there would cost a synchronisation
// per call. Every other op, and every CPU kernel, checks on the host.
enum class ValueChecks { Host, Device };

// Whether a call's parameters take the general chains' kernels (edge_chain.h).
inline bool general_chain(const at::Tensor& trans, const c10::optional<at::Tensor>& start,
                          const c10::optional<at::Tensor>& end) {
  return trans.dim() != 2 || (start.has_value() && start->dim() == 2) ||
         (end.has_value() && end->dim() == 2);
}

// A transition tensor (trans, or a direction's v_trans) must be (K,K), per sequence (B,K,K) or
// per move (B,T-1,K,K); a start or end tensor (K,) or per sequence (B,K); both like unary.
inline void check_transitions(const char* op, const char* name, const at::Tensor& t,
                              const ChainDims& d, const at::Tensor& unary) {
  const int64_t moves = std::max<int64_t>(d.T - 1, 0);
  const auto s = t.sizes();
  TORCH_CHECK(s == c10::IntArrayRef({d.K, d.K}) || s == c10::IntArrayRef({d.B, d.K, d.K}) ||
                  s == c10::IntArrayRef({d.B, moves, d.K, d.K}),
              op, ": ", name, " must have shape (K, K) = (", d.K, ", ", d.K, "), (B, K, K) = (",
              d.B, ", ", d.K, ", ", d.K, ") or (B, T-1, K, K) = (", d.B, ", ", moves, ", ", d.K,
              ", ", d.K, "), got ", shape_str(t));
  check_like(op, name, t, "unary", unary);
}

inline void check_ends(const char* op, const char* name, const c10::optional<at::Tensor>& t,
                       const ChainDims& d, const at::Tensor& unary) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->sizes() == c10::IntArrayRef({d.K}) || t->sizes() == c10::IntArrayRef({d.B, d.K}),
              op, ": ", name, " must have shape (K,) = (", d.K, ",) or (B, K) = (", d.B, ", ",
              d.K, "), got ", shape_str(*t));
  check_like(op, name, *t, "unary", unary);
}

// Checks unary (B,T,K), trans (K,K) or per sequence (B,K,K) or per move (B,T-1,K,K), lengths
// (B,) int64, start/end (K,) or per sequence (B,K), and returns the dims.
// With ValueChecks::Device a CUDA kernel checks the lengths' range itself.
inline ChainDims check_chain_inputs(const char* op, const at::Tensor& unary,
                                    const at::Tensor& trans,
                                    const c10::optional<at::Tensor>& lengths,
                                    const c10::optional<at::Tensor>& start,
                                    const c10::optional<at::Tensor>& end,
                                    ValueChecks values = ValueChecks::Host) {
  check_defined(op, "unary", unary);
  check_defined(op, "trans", trans);
  TORCH_CHECK(unary.dim() == 3, op, ": unary must be a 3-D tensor (B, T, K), got shape ",
              shape_str(unary));
  check_floating(op, "unary", unary);
  check_cpu_dtype(op, "unary", unary);
  const ChainDims d{unary.size(0), unary.size(1), unary.size(2)};
  TORCH_CHECK(d.K >= 1, op, ": unary must have at least one tag (K >= 1), got shape ",
              shape_str(unary));
  check_transitions(op, "trans", trans, d, unary);
  check_ends(op, "start", start, d, unary);
  check_ends(op, "end", end, d, unary);
  if (lengths.has_value()) {
    const auto& l = *lengths;
    TORCH_CHECK(l.scalar_type() == at::kLong, op, ": lengths must be int64, got ",
                l.scalar_type());
    TORCH_CHECK(l.dim() == 1 && l.size(0) == d.B, op, ": lengths must have shape (B,) = (", d.B,
                ",), got ", shape_str(l));
    check_same_device(op, "lengths", l, "unary", unary);
    if (values == ValueChecks::Host || !on_cuda(l)) check_lengths_range(op, l, d.T);
  }
  return d;
}

// Positions t < L of an integer tag tensor must hold a tag in [0, K); positions t >= L are ignored.
// `tags` has shape (B, ..., T); `lengths` (B,) or none.
inline void report_bad_tag(const char* op, const char* name, int64_t K, int64_t value,
                           c10::IntArrayRef index) {
  TORCH_CHECK(false, op, ": ", name, " must hold tags in [0, K=", K,
              ") at positions t < length, got ", value, " at index ", index);
}

inline void check_tag_values(const char* op, const char* name, const at::Tensor& tags,
                             const c10::optional<at::Tensor>& lengths, int64_t K) {
  if (tags.numel() == 0) return;
  const int64_t B = tags.size(0), T = tags.size(-1), C = tags.numel() / (B * T);
  if (!on_cuda(tags)) {
    const auto y = tags.contiguous();
    const int64_t* p = y.data_ptr<int64_t>();
    const auto l = lengths.has_value() ? lengths->contiguous() : at::Tensor();
    for (int64_t n = 0; n < B * C; ++n) {
      const int64_t L = l.defined() ? l.data_ptr<int64_t>()[n / C] : T;
      for (int64_t t = 0; t < L; ++t) {
        const int64_t v = p[n * T + t];
        if (v >= 0 && v < K) continue;
        std::vector<int64_t> index{n / C};
        if (tags.dim() == 3) index.push_back(n % C);
        index.push_back(t);
        report_bad_tag(op, name, K, v, index);
      }
    }
    return;
  }
  at::Tensor valid;
  if (lengths.has_value()) {
    auto pos = at::arange(T, tags.options());
    std::vector<int64_t> shape(tags.dim(), 1);
    shape[0] = B;
    valid = pos.expand_as(tags) < lengths->view(shape);
  } else {
    valid = at::ones_like(tags, tags.options().dtype(at::kBool));
  }
  auto bad = valid & ((tags < 0) | (tags >= K));
  if (bad.any().item<bool>()) {
    const auto first = at::nonzero(bad)[0].cpu();
    std::vector<int64_t> index(first.data_ptr<int64_t>(), first.data_ptr<int64_t>() + first.numel());
    report_bad_tag(op, name, K, tags.masked_select(bad)[0].item<int64_t>(), index);
  }
}

inline void check_tags(const char* op, const char* name, const at::Tensor& tags,
                       const at::Tensor& unary) {
  check_defined(op, name, tags);
  TORCH_CHECK(tags.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              tags.scalar_type());
  check_same_device(op, name, tags, "unary", unary);
}

// chain_energy: integer tags (B, T) or (B, C, T) candidates per sequence, or relaxed tags
// (B, T, K) of the same dtype as unary. Returns whether the tags are relaxed.
// With ValueChecks::Device the CUDA kernel checks the lengths and integer tags itself (relaxed
// tags go through ATen ops, which need their lengths checked here).
inline bool check_chain_energy_inputs(const at::Tensor& unary, const at::Tensor& trans,
                                      const at::Tensor& tags,
                                      const c10::optional<at::Tensor>& lengths,
                                      const c10::optional<at::Tensor>& start,
                                      const c10::optional<at::Tensor>& end,
                                      ValueChecks values = ValueChecks::Host) {
  const char* op = "chain_energy";
  const bool relaxed = tags.defined() && at::isFloatingType(tags.scalar_type());
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end,
                                    relaxed ? ValueChecks::Host : values);
  check_defined(op, "tags", tags);
  if (at::isFloatingType(tags.scalar_type())) {
    TORCH_CHECK(tags.dim() == 3, op, ": tags must be int64 tags (B, T) or (B, C, T), or relaxed "
                "tags (B, T, K) = ", shape_str(unary), "; got ", tags.scalar_type(),
                " tags of shape ", shape_str(tags), " (cast tag indices to int64)");
    TORCH_CHECK(tags.sizes() == unary.sizes(), op,
                ": relaxed tags must have the shape of unary (B, T, K) = ", shape_str(unary),
                ", got ", shape_str(tags));
    check_like(op, "tags", tags, "unary", unary);
    return true;
  }
  TORCH_CHECK(tags.scalar_type() == at::kLong, op,
              ": tags must be int64 (B, T) / (B, C, T) or floating (B, T, K), got ",
              tags.scalar_type());
  check_same_device(op, "tags", tags, "unary", unary);
  TORCH_CHECK((tags.dim() == 2 || tags.dim() == 3) && tags.size(0) == d.B && tags.size(-1) == d.T,
              op, ": tags must have shape (B, T) = (", d.B, ", ", d.T, ") or (B, C, T), got ",
              shape_str(tags));
  if (values == ValueChecks::Host || !on_cuda(tags)) check_tag_values(op, "tags", tags, lengths, d.K);
  return false;
}

// (B, T, 1) mask of the positions t < L, in the dtype of `like`.
inline at::Tensor position_mask(const at::Tensor& like, const c10::optional<at::Tensor>& lengths) {
  const int64_t B = like.size(0), T = like.size(1);
  if (!lengths.has_value()) return at::ones({B, T, 1}, like.options());
  auto pos = at::arange(T, lengths->options());
  return (pos.unsqueeze(0) < lengths->unsqueeze(1)).unsqueeze(2).to(like.scalar_type());
}

// a * y where y == 0 gives exactly 0, whatever a holds: in a relaxed energy a tag with no mass
// costs nothing, even when it is forbidden (+inf) or NaN.
inline at::Tensor weighted(const at::Tensor& a, const at::Tensor& y) {
  return at::where(y == 0, at::zeros({}, y.options()), a * y);
}

// y (..., K) @ M (K, N) with the same rule: the finite part by matmul, the non-finite entries of
// M through indicator products (only when there are any on CPU; always on CUDA, which would
// otherwise synchronise to find out).
inline at::Tensor weighted_matmul(const at::Tensor& y, const at::Tensor& M) {
  const auto finite = at::isfinite(M);
  auto out = at::matmul(y, at::where(finite, M, at::zeros({}, M.options())));
  if (!on_cuda(M) && finite.all().item<bool>()) return out;
  const double inf = std::numeric_limits<double>::infinity();
  const auto ind = [&](const at::Tensor& m) { return m.to(y.scalar_type()); };
  const auto pos_inf = ind(M == inf), invalid = ind(at::logical_not(finite) & (M != inf));
  const auto zero = at::zeros({}, y.options());
  out = out + at::where(at::matmul(ind(y > 0), pos_inf) > 0, at::full({}, inf, y.options()), zero);
  out = out + at::where(at::matmul(ind(y < 0), pos_inf) > 0, at::full({}, -inf, y.options()), zero);
  out = out + at::where(at::matmul(ind(y != 0), invalid) > 0,
                        at::full({}, std::numeric_limits<double>::quiet_NaN(), y.options()), zero);
  return out;
}

// E of relaxed tags y (B, T, K), per-position distributions: unary, start and end terms are
// linear, the transition term is y_{t-1}^T trans y_t. Positions t >= L are not read (nor their
// transitions), entries of weight 0 contribute 0, and a result of -inf is NaN (-inf follows
// NaN's rule). ATen ops, so one code serves both devices.
inline at::Tensor relaxed_chain_energy(const at::Tensor& unary, const at::Tensor& trans,
                                       const at::Tensor& tags,
                                       const c10::optional<at::Tensor>& lengths,
                                       const c10::optional<at::Tensor>& start,
                                       const c10::optional<at::Tensor>& end) {
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  if (B == 0 || T == 0) return at::zeros({B}, unary.options());
  const auto inside = position_mask(unary, lengths) > 0;
  const auto y = at::where(inside, tags, at::zeros({}, tags.options()));
  auto energy = weighted(unary, y).sum({1, 2});
  if (T > 1) {
    // y_{t-1}^T trans y_t: one matrix (K, K), one per sequence (B, K, K: a batched product over
    // b), or one per move (B, T-1, K, K: each row of y times its own matrix).
    const auto before = y.narrow(1, 0, T - 1);
    const auto moved = trans.dim() == 4
                           ? weighted_matmul(before.unsqueeze(2), trans).squeeze(2)
                           : weighted_matmul(before, trans);
    energy = energy + weighted(moved, y.narrow(1, 1, T - 1)).sum({1, 2});
  }
  if (start.has_value()) energy = energy + weighted(*start, y.select(1, 0)).sum(-1);
  if (end.has_value()) {
    auto last = lengths.has_value() ? (*lengths - 1).clamp_min(0)
                                    : at::full({B}, T - 1, unary.options().dtype(at::kLong));
    auto y_last = y.gather(1, last.view({B, 1, 1}).expand({B, 1, K})).squeeze(1);
    energy = energy + weighted(*end, y_last).sum(-1);  // rows of length 0 are all zero
  }
  const double inf = std::numeric_limits<double>::infinity();
  return at::where(energy == -inf,
                   at::full({}, std::numeric_limits<double>::quiet_NaN(), energy.options()),
                   energy);
}

inline void check_kbest_k(const char* op, int64_t k) {
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
}

// k-best's sizes, in double so that nothing wraps (k = 2^61 used to pass an int64 k * K check):
// k * K indexes the back-pointers in int32, and a request whose outputs and back-pointers
// (B (T - 1) k K int32) would not fit in this machine's memory is refused before allocating.
inline void check_kbest_size(const char* op, int64_t k, const ChainDims& d, bool cuda) {
  const double kK = double(k) * double(d.K);
  const double bytes = double(d.B) * double(k) * (8.0 + 8.0 * double(d.T)) +
                       double(cuda ? d.B : 1) * double(std::max<int64_t>(d.T - 1, 1)) * kK * 4.0;
  const auto gib = [](double b) { return c10::str(b / double(1 << 30), " GiB"); };
  TORCH_CHECK(kK < double(std::numeric_limits<int32_t>::max()), op,
              ": k * K must be < 2^31, got k * K = ", kK, " (k=", k, ", K=", d.K,
              "); the outputs and back-pointers would need ", gib(bytes));
  if (!cuda) {
    const double memory = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
    TORCH_CHECK(memory <= 0 || bytes <= memory, op, ": k=", k, " would need ", gib(bytes),
                " for the outputs and back-pointers, more than this machine's ", gib(memory));
  }
}

// loss_augmented_viterbi: gold (B, T) int64 tags, cost (K, K) non-negative with zero diagonal.
// The CUDA kernel checks the values of lengths, gold and cost itself (ValueChecks::Device).
inline ChainDims check_loss_augmented_inputs(const at::Tensor& unary, const at::Tensor& trans,
                                             const at::Tensor& gold, const at::Tensor& cost,
                                             const c10::optional<at::Tensor>& lengths,
                                             const c10::optional<at::Tensor>& start,
                                             const c10::optional<at::Tensor>& end,
                                             ValueChecks values = ValueChecks::Host) {
  const char* op = "loss_augmented_viterbi";
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end, values);
  check_tags(op, "gold", gold, unary);
  TORCH_CHECK(gold.dim() == 2 && gold.size(0) == d.B && gold.size(1) == d.T, op,
              ": gold must have shape (B, T) = (", d.B, ", ", d.T, "), got ", shape_str(gold));
  check_defined(op, "cost", cost);
  TORCH_CHECK(cost.dim() == 2 && cost.size(0) == cost.size(1), op,
              ": cost must be a square (K, K) matrix, got shape ", shape_str(cost));
  TORCH_CHECK(cost.size(0) == d.K, op, ": cost must have shape (K, K) = (", d.K, ", ", d.K,
              "), got ", shape_str(cost));
  check_like(op, "cost", cost, "unary", unary);
  // The general chains' kernel (edge_chain.h) checks only the lengths on the device.
  if (values == ValueChecks::Device && on_cuda(cost) && !general_chain(trans, start, end)) return d;
  check_tag_values(op, "gold", gold, lengths, d.K);
  // Every entry finite and >= 0 (NaN fails the comparison wherever it sits).
  const auto bad = at::logical_not((cost >= 0) & at::isfinite(cost));
  if (bad.any().item<bool>()) {
    const auto at_ = at::nonzero(bad)[0].cpu();
    const int64_t i = at_[0].item<int64_t>(), j = at_[1].item<int64_t>();
    TORCH_CHECK(false, op, ": cost must be finite and non-negative, got ",
                cost.select(0, i).select(0, j).item<double>(), " at index [", i, ", ", j, "]");
  }
  const double largest_diagonal = cost.diagonal().abs().max().item<double>();
  TORCH_CHECK(largest_diagonal == 0, op,
              ": cost must have a zero diagonal (cost[y, y] = 0), got a largest diagonal entry of ",
              largest_diagonal);
  return d;
}

}  // namespace ebm_ext
