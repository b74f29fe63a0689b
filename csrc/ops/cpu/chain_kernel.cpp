// CPU kernels of the linear-chain ops: parallel over the batch (at::parallel_for), vectorised
// over tags. Decoding runs the min-plus recursion right to left,
//   beta[t][i] = min_j trans[i][j] + unary[t+1][j] + beta[t+1][j],
// keeping for each (t, i) the smallest minimising j. Reading the path left to right through
// those pointers yields, among all minimum-energy paths, the lexicographically smallest one:
// that is the tie rule, and the CUDA kernels follow the same recursion.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../chain.h"
#include "../chain_view.h"
#include "../edge_chain_ops.h"
#include "simd.h"

namespace ebm_ext {
using namespace simd;
namespace {

// best[i] = min_j transT[j*Kp + i] + w[j] and arg[i] = the smallest minimising j (0 when none is
// finite) for G vectors of i starting at i0. G independent chains keep the pipeline full; the
// running minima stay in registers for the whole sweep over j.
template <typename S, int G>
__attribute__((always_inline)) inline void minplus_group(const S* __restrict transT,
                                                         const S* __restrict w, int64_t K,
                                                         int64_t Kp, int64_t i0,
                                                         S* __restrict best,
                                                         int32_t* __restrict arg) {
  using V = typename Lanes<S>::V;
  using I = typename Lanes<S>::I;
  constexpr int N = Lanes<S>::N;
  V b[G];
  I a[G];
  for (int g = 0; g < G; ++g) {
    b[g] = V{} + std::numeric_limits<S>::infinity();
    a[g] = I{};
  }
  for (int64_t j = 0; j < K; ++j) {
    const S wj = w[j];
    const I jj = I{} + static_cast<typename std::remove_reference<decltype(a[0][0])>::type>(j);
    const S* row = transT + j * Kp + i0;
    for (int g = 0; g < G; ++g) {
      const V c = load<V>(row + g * N) + wj;
      const I lt = c < b[g];
      b[g] = lt ? c : b[g];
      a[g] = lt ? jj : a[g];
    }
  }
  for (int g = 0; g < G; ++g) {
    store(best + i0 + g * N, b[g]);
    store_index<S>(arg + i0 + g * N, a[g]);
  }
}

template <typename S>
__attribute__((always_inline)) inline void minplus_argmin_impl(const S* transT, const S* w,
                                                               int64_t K, int64_t Kp, S* best,
                                                               int32_t* arg) {
  constexpr int N = Lanes<S>::N;
  int64_t i0 = 0;
  for (; i0 + 4 * N <= Kp; i0 += 4 * N) minplus_group<S, 4>(transT, w, K, Kp, i0, best, arg);
  switch ((Kp - i0) / N) {
    case 3: minplus_group<S, 3>(transT, w, K, Kp, i0, best, arg); break;
    case 2: minplus_group<S, 2>(transT, w, K, Kp, i0, best, arg); break;
    case 1: minplus_group<S, 1>(transT, w, K, Kp, i0, best, arg); break;
    default: break;
  }
}

EBM_CLONES void minplus_argmin(const float* transT, const float* w, int64_t K, int64_t Kp,
                               float* best, int32_t* arg) {
  minplus_argmin_impl(transT, w, K, Kp, best, arg);
}
EBM_CLONES void minplus_argmin(const double* transT, const double* w, int64_t K, int64_t Kp,
                               double* best, int32_t* arg) {
  minplus_argmin_impl(transT, w, K, Kp, best, arg);
}

// One k-best step for one vector of i, KB slots in registers. Candidates (j, r) arrive in
// code order j*KB + r; each goes into the ascending list at the first slot it strictly beats
// (ties keep the earlier candidate first). Rank r of j is >= ranks 0..r-1 of j, which are already
// in the list, so it can only land at slot r or later.
template <typename S, int KB, int G>
__attribute__((always_inline)) inline void kbest_vectors(const S* __restrict transT,
                                                         const S* __restrict w, int64_t K,
                                                         int64_t Kp, int64_t i0,
                                                         S* __restrict best,
                                                         int32_t* __restrict code) {
  using V = typename Lanes<S>::V;
  using I = typename Lanes<S>::I;
  using E = typename std::remove_reference<decltype(I{}[0])>::type;
  constexpr int N = Lanes<S>::N;
  const S inf = std::numeric_limits<S>::infinity();
  V b[G][KB];
  I p[G][KB];
  for (int g = 0; g < G; ++g)
    for (int s = 0; s < KB; ++s) {
      b[g][s] = V{} + inf;
      p[g][s] = I{} - 1;
    }
  for (int64_t j = 0; j < K; ++j) {
    V t[G];
    for (int g = 0; g < G; ++g) t[g] = load<V>(transT + j * Kp + i0 + g * N);
    for (int r = 0; r < KB; ++r) {
      const S wj = w[r * K + j];
      if (!(wj < inf)) break;  // ranks ascend: the rest of j's list is missing too
      const I cc = I{} + static_cast<E>(j * KB + r);
      for (int g = 0; g < G; ++g) {
        const V c = t[g] + wj;
        for (int s = KB - 1; s >= r; --s) {
          const I ins = c < b[g][s];
          if (s == r) {
            b[g][s] = ins ? c : b[g][s];
            p[g][s] = ins ? cc : p[g][s];
          } else {
            const I shift = c < b[g][s - 1];
            b[g][s] = ins ? (shift ? b[g][s - 1] : c) : b[g][s];
            p[g][s] = ins ? (shift ? p[g][s - 1] : cc) : p[g][s];
          }
        }
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int s = 0; s < KB; ++s) {
      store(best + s * Kp + i0 + g * N, b[g][s]);
      store_index<S>(code + s * Kp + i0 + g * N, p[g][s]);
    }
}

template <typename S, int KB>
__attribute__((always_inline)) inline void kbest_step_impl(const S* transT, const S* w, int64_t K,
                                                           int64_t Kp, S* best, int32_t* code) {
  // Two vectors at a time for independent chains, while both lists still fit in registers.
  constexpr int N = Lanes<S>::N;
  constexpr int G = KB <= 2 ? 2 : 1;
  int64_t i0 = 0;
  for (; i0 + G * N <= Kp; i0 += G * N) kbest_vectors<S, KB, G>(transT, w, K, Kp, i0, best, code);
  for (; i0 < Kp; i0 += N) kbest_vectors<S, KB, 1>(transT, w, K, Kp, i0, best, code);
}

// The register version for k <= kMaxRegisterK, where the lists fit in registers.
constexpr int kMaxRegisterK = 4;

template <typename S>
__attribute__((always_inline)) inline void kbest_step_any(const S* transT, const S* w, int64_t K,
                                                          int64_t Kp, int k, S* best,
                                                          int32_t* code) {
  switch (k) {
    case 1: kbest_step_impl<S, 1>(transT, w, K, Kp, best, code); break;
    case 2: kbest_step_impl<S, 2>(transT, w, K, Kp, best, code); break;
    case 3: kbest_step_impl<S, 3>(transT, w, K, Kp, best, code); break;
    case 4: kbest_step_impl<S, 4>(transT, w, K, Kp, best, code); break;
    default: break;
  }
}
EBM_CLONES void kbest_step(const float* transT, const float* w, int64_t K, int64_t Kp, int k,
                           float* best, int32_t* code) {
  kbest_step_any(transT, w, K, Kp, k, best, code);
}
EBM_CLONES void kbest_step(const double* transT, const double* w, int64_t K, int64_t Kp, int k,
                           double* best, int32_t* code) {
  kbest_step_any(transT, w, K, Kp, k, best, code);
}

// For k > 4: one slot of the insertion at a time, vectorised over i through memory. Slots are
// visited from k-1 down, so best[s-1] still holds its old value.
template <typename S>
inline void kbest_slot_impl(const S* __restrict c, int32_t code, int64_t K, S* __restrict bs,
                            int32_t* __restrict ps, const S* __restrict bprev,
                            const int32_t* __restrict pprev) {
  if (bprev == nullptr) {
    for (int64_t i = 0; i < K; ++i) {
      const bool ins = c[i] < bs[i];
      bs[i] = ins ? c[i] : bs[i];
      ps[i] = ins ? code : ps[i];
    }
    return;
  }
  for (int64_t i = 0; i < K; ++i) {
    const bool ins = c[i] < bs[i];
    const bool shift = c[i] < bprev[i];
    bs[i] = ins ? (shift ? bprev[i] : c[i]) : bs[i];
    ps[i] = ins ? (shift ? pprev[i] : code) : ps[i];
  }
}

EBM_CLONES void kbest_slot(const float* c, int32_t code, int64_t K, float* bs, int32_t* ps,
                           const float* bprev, const int32_t* pprev) {
  kbest_slot_impl(c, code, K, bs, ps, bprev, pprev);
}
EBM_CLONES void kbest_slot(const double* c, int32_t code, int64_t K, double* bs, int32_t* ps,
                           const double* bprev, const int32_t* pprev) {
  kbest_slot_impl(c, code, K, bs, ps, bprev, pprev);
}

// out[i] = col[i] + wj
EBM_CLONES void add_column(const float* __restrict col, float wj, int64_t K,
                           float* __restrict out) {
  for (int64_t i = 0; i < K; ++i) out[i] = col[i] + wj;
}
EBM_CLONES void add_column(const double* __restrict col, double wj, int64_t K,
                           double* __restrict out) {
  for (int64_t i = 0; i < K; ++i) out[i] = col[i] + wj;
}

// Everything a kernel reads about one batch of chains: the shared view (../chain_view.h) and
// the transposed, padded transitions that the vectorised min-plus sweeps read.
template <typename S>
struct Chain : ChainView<S> {
  const S* transT;  // (K, Kp), transT[j*Kp + i] = trans[i*K + j], +inf for i >= K
  int64_t B, Kp;
  bool trans_has_nan;  // NaN or -inf in trans, start or end
};

struct Tensors {
  at::Tensor unary, trans, transT, start, end, lengths;
};

Tensors contiguous_inputs(const at::Tensor& unary, const at::Tensor& trans,
                          const c10::optional<at::Tensor>& lengths,
                          const c10::optional<at::Tensor>& start,
                          const c10::optional<at::Tensor>& end) {
  Tensors x;
  x.unary = unary.contiguous();
  x.trans = trans.contiguous();
  const int64_t K = trans.size(0);
  const int64_t lanes = unary.scalar_type() == at::kDouble ? Lanes<double>::N : Lanes<float>::N;
  x.transT = at::full({K, padded(K, lanes)}, std::numeric_limits<double>::infinity(),
                      trans.options());
  x.transT.narrow(1, 0, K).copy_(trans.t());
  if (start.has_value()) x.start = start->contiguous();
  if (end.has_value()) x.end = end->contiguous();
  if (lengths.has_value()) x.lengths = lengths->contiguous();
  return x;
}

template <typename S>
Chain<S> make_chain(const Tensors& x) {
  Chain<S> c;
  c.unary = x.unary.data_ptr<S>();
  c.trans = x.trans.data_ptr<S>();
  c.start = x.start.defined() ? x.start.data_ptr<S>() : nullptr;
  c.end = x.end.defined() ? x.end.data_ptr<S>() : nullptr;
  c.lengths = x.lengths.defined() ? x.lengths.data_ptr<int64_t>() : nullptr;
  c.T = x.unary.size(1);
  c.K = x.unary.size(2);
  c.transT = x.transT.data_ptr<S>();
  c.B = x.unary.size(0);
  c.Kp = x.transT.size(1);
  bool nan = any_invalid_energy(x.trans).item<bool>();
  if (x.start.defined()) nan = nan || any_invalid_energy(x.start).item<bool>();
  if (x.end.defined()) nan = nan || any_invalid_energy(x.end).item<bool>();
  c.trans_has_nan = nan;
  return c;
}

// Work per sequence is about T*K*K; keep chunks big enough to amortise the scratch allocation.
int64_t batch_grain(int64_t T, int64_t K) {
  const int64_t per_seq = std::max<int64_t>(1, T * K * K);
  return std::max<int64_t>(1, 32768 / per_seq);
}

// ---------------------------------------------------------------------------------------------
// viterbi and loss_augmented_viterbi share one decoder: with gold/cost, the unary of tag j at t is
// lowered by cost[gold[t], j] on the fly (no augmented copy of unary is made).
template <typename S>
struct Decoder {
  const Chain<S>& c;
  const int64_t* gold;  // (B, T) or nullptr
  const S* cost;        // (K, K) or nullptr
  std::vector<S> beta, w;
  std::vector<int32_t> ptr;  // (T-1, Kp)

  explicit Decoder(const Chain<S>& chain, const int64_t* gold_, const S* cost_)
      : c(chain), gold(gold_), cost(cost_), beta(chain.Kp), w(chain.K),
        ptr(std::max<int64_t>(1, (chain.T - 1) * chain.Kp)) {}

  // w[j] = unary[b,t,j] - cost[gold_t, j] + beta[j]; returns whether anything was NaN.
  bool fill_w(int64_t b, int64_t t) {
    const S* u = c.unary_at(b, t);
    const S* cr = cost ? cost + gold[b * c.T + t] * c.K : nullptr;
    const int64_t K = c.K;
    if (cr) {
      for (int64_t j = 0; j < K; ++j) w[j] = u[j] + beta[j] - cr[j];
    } else {
      for (int64_t j = 0; j < K; ++j) w[j] = u[j] + beta[j];
    }
    return any_invalid(w.data(), K);
  }

  // Decodes sequence b into tags[0..T) (-1 past its length); returns the minimum of the
  // (possibly cost-augmented) energy.
  S decode(int64_t b, int64_t* tags) {
    const int64_t K = c.K, Kp = c.Kp, L = c.length(b);
    for (int64_t t = 0; t < c.T; ++t) tags[t] = -1;
    if (L == 0) return S(0);
    for (int64_t i = 0; i < K; ++i) beta[i] = c.end_at(i);
    bool nan = c.trans_has_nan;
    for (int64_t t = L - 1; t >= 1; --t) {
      nan |= fill_w(b, t);
      minplus_argmin(c.transT, w.data(), K, Kp, beta.data(), ptr.data() + (t - 1) * Kp);
    }
    nan |= fill_w(b, 0);
    int64_t y = 0;
    S best = std::numeric_limits<S>::infinity();
    for (int64_t j = 0; j < K; ++j) {
      const S v = w[j] + c.start_at(j);
      if (v < best) {
        best = v;
        y = j;
      }
    }
    walk_back(y, ptr.data(), Kp, L, tags);
    return nan ? std::numeric_limits<S>::quiet_NaN() : best;
  }
};

std::tuple<at::Tensor, at::Tensor> viterbi_cpu(const at::Tensor& unary, const at::Tensor& trans,
                                               const c10::optional<at::Tensor>& lengths,
                                               const c10::optional<at::Tensor>& start,
                                               const c10::optional<at::Tensor>& end) {
  const auto d = check_chain_inputs("viterbi", unary, trans, lengths, start, end);
  if (general_chain(trans, start, end)) return cpu_edge::viterbi(unary, trans, lengths, start, end);
  auto energy = at::empty({d.B}, unary.options());
  auto tags = at::empty({d.B, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, tags};
  const auto x = contiguous_inputs(unary, trans, lengths, start, end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "viterbi_cpu", [&] {
    const auto chain = make_chain<scalar_t>(x);
    auto* e = energy.data_ptr<scalar_t>();
    auto* y = tags.data_ptr<int64_t>();
    at::parallel_for(0, d.B, batch_grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
      Decoder<scalar_t> dec(chain, nullptr, nullptr);
      for (int64_t b = lo; b < hi; ++b) e[b] = dec.decode(b, y + b * d.T);
    });
  });
  return {energy, tags};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_augmented_viterbi_cpu(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& gold,
    const at::Tensor& cost, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const auto d = check_loss_augmented_inputs(unary, trans, gold, cost, lengths, start, end);
  if (general_chain(trans, start, end))
    return cpu_edge::loss_augmented_viterbi(unary, trans, gold, cost, lengths, start, end);
  auto energy = at::empty({d.B}, unary.options());
  auto delta = at::empty({d.B}, unary.options());
  auto tags = at::empty({d.B, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, delta, tags};
  const auto x = contiguous_inputs(unary, trans, lengths, start, end);
  const auto gold_c = gold.contiguous();
  const auto cost_c = cost.contiguous();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "loss_augmented_viterbi_cpu", [&] {
    const auto chain = make_chain<scalar_t>(x);
    const auto* g = gold_c.data_ptr<int64_t>();
    const auto* cs = cost_c.data_ptr<scalar_t>();
    auto* e = energy.data_ptr<scalar_t>();
    auto* dl = delta.data_ptr<scalar_t>();
    auto* y = tags.data_ptr<int64_t>();
    at::parallel_for(0, d.B, batch_grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
      Decoder<scalar_t> dec(chain, g, cs);
      for (int64_t b = lo; b < hi; ++b) {
        int64_t* yb = y + b * d.T;
        const scalar_t augmented = dec.decode(b, yb);
        const int64_t L = chain.length(b);
        scalar_t dsum = 0;
        for (int64_t t = 0; t < L; ++t) dsum += cs[g[b * d.T + t] * d.K + yb[t]];
        // E(y*) summed along the path: exact, rather than augmented + delta with its rounding.
        e[b] = std::isnan(augmented) ? augmented : chain.path_energy(b, yb, L);
        dl[b] = dsum;
      }
    });
  });
  return {energy, delta, tags};
}

// ---------------------------------------------------------------------------------------------
// k-best: list Viterbi. For each (t, i) an ascending list of the k best suffix energies, each
// entry pointing at (next tag j, rank r of j's list): code = j * k + r. Entries come from
// distinct (j, r), so the k paths are distinct. A suffix of energy +inf counts as missing.
template <typename S>
struct KBestDecoder {
  const Chain<S>& c;
  int64_t k;
  std::vector<S> beta, next, w, cand;  // beta/next: (k, Kp) slot-major; w: (k, K)
  std::vector<int32_t> ptr;           // (T-1, k, Kp)

  KBestDecoder(const Chain<S>& chain, int64_t k_)
      : c(chain), k(k_), beta(k_ * chain.Kp), next(k_ * chain.Kp), w(k_ * chain.K),
        cand(chain.K), ptr(std::max<int64_t>(1, (chain.T - 1) * k_ * chain.Kp)) {}

  // Fills w[r*K + j] = unary[b,t,j] + beta[r*Kp + j]; returns whether anything was NaN.
  bool fill_w(int64_t b, int64_t t) {
    const S* u = c.unary_at(b, t);
    for (int64_t r = 0; r < k; ++r) {
      const S* br = beta.data() + r * c.Kp;
      S* wr = w.data() + r * c.K;
      for (int64_t j = 0; j < c.K; ++j) wr[j] = u[j] + br[j];
    }
    return any_invalid(w.data(), k * c.K);
  }

  // The same step as kbest_step, for any k: one slot at a time through memory.
  void step_any_k(int32_t* p) {
    const S inf = std::numeric_limits<S>::infinity();
    const int64_t K = c.K, Kp = c.Kp;
    std::fill(next.begin(), next.end(), inf);
    std::fill(p, p + k * Kp, -1);
    for (int32_t j = 0; j < K; ++j) {
      for (int64_t r = 0; r < k; ++r) {
        const S wj = w[r * K + j];
        if (!(wj < inf)) break;
        add_column(c.transT + j * Kp, wj, K, cand.data());
        const int32_t code = static_cast<int32_t>(j * k + r);
        for (int64_t s = k - 1; s >= r; --s) {
          const bool lowest = s == r;  // rank r cannot beat the slots before it
          kbest_slot(cand.data(), code, K, next.data() + s * Kp, p + s * Kp,
                     lowest ? nullptr : next.data() + (s - 1) * Kp,
                     lowest ? nullptr : p + (s - 1) * Kp);
        }
      }
    }
  }

  void decode(int64_t b, S* energy, int64_t* tags) {
    const S inf = std::numeric_limits<S>::infinity();
    const int64_t K = c.K, Kp = c.Kp, T = c.T, L = c.length(b);
    for (int64_t i = 0; i < k * T; ++i) tags[i] = -1;
    for (int64_t s = 0; s < k; ++s) energy[s] = inf;
    if (L == 0) {  // the empty path is the only one
      energy[0] = S(0);
      return;
    }
    std::fill(beta.begin(), beta.end(), inf);
    for (int64_t i = 0; i < K; ++i) beta[i] = c.end_at(i);
    bool nan = c.trans_has_nan;
    for (int64_t t = L - 1; t >= 1; --t) {
      nan |= fill_w(b, t);
      int32_t* p = ptr.data() + (t - 1) * k * Kp;
      if (k <= kMaxRegisterK) {
        kbest_step(c.transT, w.data(), K, Kp, static_cast<int>(k), next.data(), p);
      } else {
        step_any_k(p);
      }
      std::swap(beta, next);
    }
    nan |= fill_w(b, 0);
    // Final list over (j, r), in the same order and tie rule as the steps.
    std::vector<S> top(k);
    std::vector<int64_t> code(k);
    kbest_final_list(c, w.data(), k, top.data(), code.data());
    for (int64_t s = 0; s < k; ++s) {
      if (code[s] < 0) break;
      energy[s] = nan ? std::numeric_limits<S>::quiet_NaN() : top[s];
      kbest_walk_back(code[s], k, ptr.data(), Kp, L, tags + s * T);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> viterbi_kbest_cpu(const at::Tensor& unary,
                                                     const at::Tensor& trans, int64_t k,
                                                     const c10::optional<at::Tensor>& lengths,
                                                     const c10::optional<at::Tensor>& start,
                                                     const c10::optional<at::Tensor>& end) {
  const char* op = "viterbi_kbest";
  check_kbest_k(op, k);
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  check_kbest_size(op, k, d, /*cuda=*/false);
  if (general_chain(trans, start, end))
    return cpu_edge::viterbi_kbest(unary, trans, k, lengths, start, end);
  auto energy = at::empty({d.B, k}, unary.options());
  auto tags = at::empty({d.B, k, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, tags};
  const auto x = contiguous_inputs(unary, trans, lengths, start, end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "viterbi_kbest_cpu", [&] {
    const auto chain = make_chain<scalar_t>(x);
    auto* e = energy.data_ptr<scalar_t>();
    auto* y = tags.data_ptr<int64_t>();
    at::parallel_for(0, d.B, std::max<int64_t>(1, batch_grain(d.T, d.K) / k),
                     [&](int64_t lo, int64_t hi) {
                       KBestDecoder<scalar_t> dec(chain, k);
                       for (int64_t b = lo; b < hi; ++b) dec.decode(b, e + b * k, y + b * k * d.T);
                     });
  });
  return {energy, tags};
}

// ---------------------------------------------------------------------------------------------
at::Tensor chain_energy_cpu(const at::Tensor& unary, const at::Tensor& trans,
                            const at::Tensor& tags, const c10::optional<at::Tensor>& lengths,
                            const c10::optional<at::Tensor>& start,
                            const c10::optional<at::Tensor>& end) {
  if (check_chain_energy_inputs(unary, trans, tags, lengths, start, end)) {
    return relaxed_chain_energy(unary, trans, tags, lengths, start, end);
  }
  if (general_chain(trans, start, end)) return cpu_edge::energy(unary, trans, tags, lengths, start, end);
  const int64_t B = unary.size(0), T = unary.size(1);
  const int64_t C = tags.dim() == 3 ? tags.size(1) : 1;
  auto out_shape = tags.sizes().vec();
  out_shape.pop_back();
  auto energy = at::empty(out_shape, unary.options());
  if (energy.numel() == 0) return energy;
  const auto x = contiguous_inputs(unary, trans, lengths, start, end);
  const auto tags_c = tags.contiguous();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_energy_cpu", [&] {
    const auto chain = make_chain<scalar_t>(x);
    const auto* y = tags_c.data_ptr<int64_t>();
    auto* e = energy.data_ptr<scalar_t>();
    at::parallel_for(0, B * C, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, T)),
                     [&](int64_t lo, int64_t hi) {
                       for (int64_t n = lo; n < hi; ++n) {
                         const int64_t b = n / C;
                         e[n] = chain.path_energy(b, y + n * T, chain.length(b));
                       }
                     });
  });
  return energy;
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("chain_energy", &chain_energy_cpu);
  m.impl("viterbi", &viterbi_cpu);
  m.impl("viterbi_kbest", &viterbi_kbest_cpu);
  m.impl("loss_augmented_viterbi", &loss_augmented_viterbi_cpu);
}

}  // namespace ebm_ext
