// CPU kernels of the log-partition family: a scaled forward-backward in the exp domain.
//
// Scores are minus energies. With E[i][j] = exp(tmax - trans[i][j]) (tmax the largest finite
// transition, so E is in [1, exp(range)] where finite) the forward recursion is a vector-matrix
// product per step,
//   v_t(j) = sum_i a_{t-1}(i) E[i][j],   a_t(j) = v_t(j) exp(umin_t - unary[t][j]) / m_t,
// with every vector rescaled so that its largest entry is 1 and the logs of the scales summed.
// Why that is exact, and when it is not, is explained above ForwardBackward: with finite
// transitions of range <= kMaxRange (60 in float32, 600 in float64) always; with forbidden
// (+inf) transitions each sequence checks itself and reruns in log space when the check fails;
// past kMaxRange every sequence runs in log space. The tests read which path ran through
// take_partition_domain_counts().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../chain_view.h"
#include "../edge_chain_ops.h"
#include "../partition.h"
#include "simd.h"

namespace ebm_ext {
using namespace simd;
namespace {

template <typename S>
constexpr S kMaxRange = std::is_same<S, float>::value ? S(60) : S(600);

template <typename S>
constexpr S inf_v = std::numeric_limits<S>::infinity();

// out[j] = sum_{i<K} x[i] * M[i*Kp + j] for G vectors of j from j0, the sums in registers.
template <typename S, int G>
__attribute__((always_inline)) inline void vecmat_group(const S* __restrict x,
                                                        const S* __restrict M, int64_t K,
                                                        int64_t Kp, int64_t j0,
                                                        S* __restrict out) {
  using V = typename Lanes<S>::V;
  constexpr int N = Lanes<S>::N;
  V acc[G];
  for (int g = 0; g < G; ++g) acc[g] = V{};
  for (int64_t i = 0; i < K; ++i) {
    const S xi = x[i];
    const S* row = M + i * Kp + j0;
    for (int g = 0; g < G; ++g) acc[g] += xi * load<V>(row + g * N);
  }
  for (int g = 0; g < G; ++g) store(out + j0 + g * N, acc[g]);
}

template <typename S>
__attribute__((always_inline)) inline void vecmat_impl(const S* x, const S* M, int64_t K,
                                                       int64_t Kp, S* out) {
  constexpr int N = Lanes<S>::N;
  int64_t j0 = 0;
  for (; j0 + 4 * N <= Kp; j0 += 4 * N) vecmat_group<S, 4>(x, M, K, Kp, j0, out);
  switch ((Kp - j0) / N) {
    case 3: vecmat_group<S, 3>(x, M, K, Kp, j0, out); break;
    case 2: vecmat_group<S, 2>(x, M, K, Kp, j0, out); break;
    case 1: vecmat_group<S, 1>(x, M, K, Kp, j0, out); break;
    default: break;
  }
}

// out = x M over the first K rows of M (K, Kp).
EBM_CLONES void vecmat(const float* x, const float* M, int64_t K, int64_t Kp, float* out) {
  vecmat_impl(x, M, K, Kp, out);
}
EBM_CLONES void vecmat(const double* x, const double* M, int64_t K, int64_t Kp, double* out) {
  vecmat_impl(x, M, K, Kp, out);
}

// acc[i*Kp + j] += x[i] * y[j] for i < K: the outer product of one step's pair marginals.
template <typename S>
__attribute__((always_inline)) inline void add_outer_impl(const S* __restrict x,
                                                          const S* __restrict y, int64_t K,
                                                          int64_t Kp, S* __restrict acc) {
  using V = typename Lanes<S>::V;
  for (int64_t i = 0; i < K; ++i) {
    const S xi = x[i];
    if (xi == S(0)) continue;
    S* row = acc + i * Kp;
    for (int64_t j = 0; j < Kp; j += Lanes<S>::N) store(row + j, load<V>(row + j) + xi * load<V>(y + j));
  }
}
EBM_CLONES void add_outer(const float* x, const float* y, int64_t K, int64_t Kp, float* acc) {
  add_outer_impl(x, y, K, Kp, acc);
}
EBM_CLONES void add_outer(const double* x, const double* y, int64_t K, int64_t Kp, double* acc) {
  add_outer_impl(x, y, K, Kp, acc);
}

// Tag sets as bits in 64-bit words.
inline bool has(const uint64_t* set, int64_t j) { return (set[j / 64] >> (j % 64)) & 1; }
inline void add(uint64_t* set, int64_t j) { set[j / 64] |= uint64_t(1) << (j % 64); }

// Everything read about one batch (the shared view, ../chain_view.h), plus the exp-domain
// transition matrices.
template <typename S>
struct Problem : ChainView<S> {
  int64_t B, Kp, W;  // W: 64-bit words of a tag set
  bool exp_domain;   // false: every sequence in log space (the finite range exceeds kMaxRange)
  bool trans_inf;    // some transition is forbidden: the exp domain checks itself per sequence
  S tmax;            // E = exp(tmax - trans), in [1, c] where finite
  S c;               // exp(finite range of trans)
  const S* E;        // (K, Kp), E[i*Kp + j]
  const S* ET;       // (K, Kp), ET[j*Kp + i]
  std::vector<uint64_t> succ;  // (K, W): the tags j that tag i may move to
  bool params_nan;   // NaN or -inf in trans/start/end: every non-empty sequence is NaN
};

struct Inputs {
  at::Tensor unary, trans, start, end, lengths, E, ET;
};

template <typename S>
Problem<S> make_problem(Inputs& x, const at::Tensor& unary, const at::Tensor& trans,
                        const c10::optional<at::Tensor>& lengths,
                        const c10::optional<at::Tensor>& start,
                        const c10::optional<at::Tensor>& end) {
  Problem<S> p;
  x.unary = unary.contiguous();
  x.trans = trans.contiguous();
  if (start.has_value()) x.start = start->contiguous();
  if (end.has_value()) x.end = end->contiguous();
  if (lengths.has_value()) x.lengths = lengths->contiguous();
  p.unary = x.unary.data_ptr<S>();
  p.trans = x.trans.data_ptr<S>();
  p.start = x.start.defined() ? x.start.data_ptr<S>() : nullptr;
  p.end = x.end.defined() ? x.end.data_ptr<S>() : nullptr;
  p.lengths = x.lengths.defined() ? x.lengths.data_ptr<int64_t>() : nullptr;
  p.B = unary.size(0);
  p.T = unary.size(1);
  p.K = unary.size(2);
  p.Kp = padded(p.K, Lanes<S>::N);
  p.W = (p.K + 63) / 64;
  p.params_nan = any_invalid(p.trans, p.K * p.K);
  for (const S* q : {p.start, p.end})
    if (q) p.params_nan |= any_invalid(q, p.K);
  // The range of the finite transitions bounds how far a tag that is cheap later can climb back
  // from below the smallest normal number (see the top of this file): up to kMaxRange the exp
  // domain is exact, beyond it the whole call runs in log space.
  S lo = inf_v<S>, hi = -inf_v<S>;
  p.trans_inf = false;
  p.succ.assign(p.K * p.W, 0);
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.K; ++j) {
      const S v = p.trans[i * p.K + j];
      if (v == inf_v<S>) {
        p.trans_inf = true;
        continue;
      }
      add(p.succ.data() + i * p.W, j);
      if (!(v > -inf_v<S>)) continue;  // NaN/-inf: params_nan
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  p.exp_domain = !(hi - lo > kMaxRange<S>);
  p.tmax = lo == inf_v<S> ? S(0) : hi;
  p.c = lo == inf_v<S> ? S(1) : std::exp(hi - lo);
  x.E = at::zeros({p.K, p.Kp}, trans.options());
  x.ET = at::zeros({p.K, p.Kp}, trans.options());
  S* E = x.E.data_ptr<S>();
  S* ET = x.ET.data_ptr<S>();
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.K; ++j) {
      const S e = std::exp(p.tmax - p.trans[i * p.K + j]);
      E[i * p.Kp + j] = e;
      ET[j * p.Kp + i] = e;
    }
  p.E = E;
  p.ET = ET;
  return p;
}

// Scratch of one thread, and the forward-backward of one sequence in either domain.
//
// Exp domain, all transitions finite: every entry of E is in [1, c], so after a_{t-1} is
// rescaled to a largest entry of 1 each v_t(j) = sum_i a_{t-1}(i) E(i, j) is >= 1, the largest
// v_t(j) w_t(j) is >= 1 (w_t = 1 at the cheapest tag) and nothing that matters can underflow: an
// entry lost below the smallest normal number is below it relative to the largest one, and a
// later step can raise its share by at most c (the backward messages of two tags differ by at
// most the ratio of two transitions). The backward is the same with q_t = c w_t beta_t.
// With forbidden transitions that bound is gone (a tag can be the only way on), so the kernel
// tracks the tags on some complete path (`relevant`, exact, in bit sets) and checks that each of
// their rescaled values is at least tau; a sequence that fails runs again in log space.
template <typename S>
struct ForwardBackward {
  // Small enough that a relevant entry is never denormal, even as a product of two of them.
  static constexpr S tau = std::is_same<S, float>::value ? S(0x1p-62) : S(0x1p-510);

  const Problem<S>& p;
  // exp domain: a (T, Kp) rescaled forward vectors, v (T, Kp) the products before the unary
  // factor, w (T, Kp) = exp(umin_t - unary_t), beta/next (Kp).
  std::vector<S> a, v, w, beta, next, tmp;
  std::vector<double> la, lbeta, ltmp, lnext;  // log space: (T, Kp) forward, (Kp) each
  double log_z = 0;                            // of the last forward_log
  std::vector<uint64_t> relevant, allowed, reach, nxt;  // (T, W), (W), (W), (W)
  int64_t exp_runs = 0, log_runs = 0;  // sequences run in each domain, for the tests

  explicit ForwardBackward(const Problem<S>& prob)
      : p(prob), a(std::max<int64_t>(1, prob.T) * prob.Kp), v(a.size()), w(a.size()),
        beta(prob.Kp), next(prob.Kp), tmp(prob.Kp), la(a.size()), lbeta(prob.Kp),
        ltmp(prob.Kp), lnext(prob.Kp),
        relevant(std::max<int64_t>(1, prob.T) * prob.W), allowed(prob.W), reach(prob.W),
        nxt(prob.W) {}

  // NaN or -inf in the unary energies the sequence reads.
  bool invalid(int64_t b, int64_t L) const { return any_invalid(p.unary_at(b, 0), L * p.K); }

  // The energy of tag j at position t of a length-L sequence, start and end included.
  S energy_at(int64_t b, int64_t t, int64_t L, int64_t j) const {
    return p.unary_at(b, t)[j] + (t == 0 ? p.start_at(j) : S(0)) +
           (t == L - 1 ? p.end_at(j) : S(0));
  }


  // relevant_t = tags on some path of finite energy: reachable from the start and able to reach
  // the end. Returns false when there is no such path (log Z = -inf).
  bool find_relevant(int64_t b, int64_t L) {
    const int64_t W = p.W, K = p.K;
    auto fill_allowed = [&](int64_t t) {
      std::fill(allowed.begin(), allowed.end(), 0);
      for (int64_t j = 0; j < K; ++j)
        if (energy_at(b, t, L, j) < inf_v<S>) add(allowed.data(), j);
    };
    // Backward: co-reachable sets, excluding the tag's own energy, into relevant.
    uint64_t* G = relevant.data();
    std::fill(G + (L - 1) * W, G + L * W, ~uint64_t(0));
    for (int64_t t = L - 1; t >= 1; --t) {
      fill_allowed(t);
      for (int64_t w = 0; w < W; ++w) allowed[w] &= G[t * W + w];
      uint64_t* prev = G + (t - 1) * W;
      std::fill(prev, prev + W, 0);
      for (int64_t i = 0; i < K; ++i) {
        bool any = false;
        for (int64_t w = 0; w < W; ++w) any |= (p.succ[i * W + w] & allowed[w]) != 0;
        if (any) add(prev, i);
      }
    }
    // Forward: reachable sets, intersected in place.
    for (int64_t t = 0; t < L; ++t) {
      fill_allowed(t);
      if (t == 0) {
        std::copy(allowed.begin(), allowed.end(), reach.begin());
      } else {
        std::fill(nxt.begin(), nxt.end(), 0);
        for (int64_t i = 0; i < K; ++i)
          if (has(reach.data(), i))
            for (int64_t w = 0; w < W; ++w) nxt[w] |= p.succ[i * W + w];
        for (int64_t w = 0; w < W; ++w) reach[w] = nxt[w] & allowed[w];
      }
      bool any = false;
      for (int64_t w = 0; w < W; ++w) {
        G[t * W + w] &= reach[w];
        any |= G[t * W + w] != 0;
      }
      if (!any) return false;
    }
    return true;
  }

  // Every relevant entry of x (position t) is at least tau.
  bool above_tau(const S* x, int64_t t) const {
    const uint64_t* r = relevant.data() + t * p.W;
    for (int64_t j = 0; j < p.K; ++j)
      if (has(r, j) && !(x[j] >= tau)) return false;
    return true;
  }

  // Fills w_t = exp(umin - x) for x = unary_t (+ end at the last position, so that the end
  // energies are rescaled together with the unary ones); returns umin (+inf: no tag allowed).
  S unary_factor(int64_t b, int64_t t, bool last) {
    const S* u = p.unary_at(b, t);
    for (int64_t j = 0; j < p.K; ++j) tmp[j] = u[j] + (last ? p.end_at(j) : S(0));
    std::fill(tmp.begin() + p.K, tmp.end(), inf_v<S>);
    const S umin = *std::min_element(tmp.begin(), tmp.begin() + p.K);
    if (umin == inf_v<S>) {
      std::fill(w.begin() + t * p.Kp, w.begin() + (t + 1) * p.Kp, S(0));
    } else {
      exp_shifted(tmp.data(), umin, w.data() + t * p.Kp, p.Kp);
    }
    return umin;
  }

  // log Z of sequence b (exp domain); keeps a, v, w for the backward pass. The start energies
  // join the unary ones at t = 0 and the end energies at t = L - 1, so every rescaling sees the
  // whole energy of its position. Sets `exact` false when the checks of a sequence with
  // forbidden transitions fail (the result is then to be recomputed in log space).
  S forward_exp(int64_t b, int64_t L, bool& exact) {
    const int64_t K = p.K, Kp = p.Kp;
    exact = true;
    if (p.trans_inf && !find_relevant(b, L)) return -inf_v<S>;
    S logz = 0;
    {
      S* a0 = a.data();
      for (int64_t j = 0; j < K; ++j) a0[j] = -energy_at(b, 0, L, j);
      const S m = *std::max_element(a0, a0 + K);
      if (m == -inf_v<S>) return -inf_v<S>;
      for (int64_t j = 0; j < K; ++j) a0[j] = std::exp(a0[j] - m);
      std::fill(a0 + K, a0 + Kp, S(0));
      logz = m;
      if (p.trans_inf && !above_tau(a0, 0)) return exact = false, S(0);
    }
    for (int64_t t = 1; t < L; ++t) {
      S* at = a.data() + t * Kp;
      S* vt = v.data() + t * Kp;
      vecmat(a.data() + (t - 1) * Kp, p.E, K, Kp, vt);
      const S umin = unary_factor(b, t, t == L - 1);
      const S* wt = w.data() + t * Kp;
      S m = 0;
      for (int64_t j = 0; j < Kp; ++j) {
        at[j] = vt[j] * wt[j];
        m = std::max(m, at[j]);
      }
      if (m == 0 && !p.trans_inf) return -inf_v<S>;  // a position where no tag is allowed
      // With forbidden transitions the step's whole mass can fall below the normal range while
      // a finite path remains (a dead end leaves only a costly tag): 1 / m would overflow, so
      // the sequence reruns in log space. All finite, m >= 1 (see above) and this never fires.
      if (!(m >= std::numeric_limits<S>::min())) return exact = false, S(0);
      const S inv = S(1) / m;
      for (int64_t j = 0; j < Kp; ++j) at[j] *= inv;
      logz += std::log(m) - p.tmax - umin;
      if (p.trans_inf) {
        const uint64_t* r = relevant.data() + t * p.W;
        for (int64_t j = 0; j < K; ++j)
          if (has(r, j) && !(wt[j] >= std::numeric_limits<S>::min())) return exact = false, S(0);
        if (!above_tau(at, t)) return exact = false, S(0);
      }
    }
    const S* aL = a.data() + (L - 1) * Kp;
    S total = 0;
    for (int64_t j = 0; j < K; ++j) total += aL[j];  // >= 1: the largest entry is 1
    return logz + std::log(total);
  }

  // Marginals of sequence b into marg (L, K) rows, scaled by `scale`; pair marginals (times
  // scale, before the elementwise product with E) added into pair (K, Kp). Needs forward_exp.
  // Returns false when a check of a sequence with forbidden transitions fails (then marg and
  // pair hold partial sums: recompute in log space).
  bool backward_exp(int64_t L, S scale, S* marg, int64_t marg_stride, S* pair) {
    const int64_t K = p.K, Kp = p.Kp;
    std::fill(beta.begin(), beta.begin() + K, S(1));  // the end energies are in a_{L-1}
    std::fill(beta.begin() + K, beta.end(), S(0));
    for (int64_t t = L - 1; t >= 0; --t) {
      const S* at = a.data() + t * Kp;
      S norm = 0;
      for (int64_t j = 0; j < K; ++j) norm += at[j] * beta[j];
      if (marg) {
        const S f = scale / norm;
        for (int64_t j = 0; j < K; ++j) marg[t * marg_stride + j] = at[j] * beta[j] * f;
      }
      if (t == 0) break;
      // q = c w_t beta_t rescaled to a largest entry of 1; pair marginals
      // a_{t-1}(i) E(i,j) q(j) / Z_t with Z_t = sum_j v_t q.
      const S* wt = w.data() + t * Kp;
      const S* vt = v.data() + t * Kp;
      S qmax = 0;
      for (int64_t j = 0; j < Kp; ++j) {
        tmp[j] = wt[j] * (beta[j] * p.c);
        qmax = std::max(qmax, tmp[j]);
      }
      if (!(qmax >= std::numeric_limits<S>::min())) return false;  // 1 / qmax would overflow
      const S qinv = S(1) / qmax;
      S z = 0;
      for (int64_t j = 0; j < Kp; ++j) {
        tmp[j] *= qinv;
        z += vt[j] * tmp[j];
      }
      if (p.trans_inf && !above_tau(tmp.data(), t)) return false;
      if (pair) {
        const S f = scale / z;
        for (int64_t j = 0; j < Kp; ++j) next[j] = tmp[j] * f;
        add_outer(a.data() + (t - 1) * Kp, next.data(), K, Kp, pair);
      }
      vecmat(tmp.data(), p.ET, K, Kp, next.data());
      S m = 0;
      for (int64_t i = 0; i < K; ++i) m = std::max(m, next[i]);
      if (!(m >= std::numeric_limits<S>::min())) return false;
      const S inv = S(1) / m;
      for (int64_t i = 0; i < Kp; ++i) beta[i] = next[i] * inv;
      if (p.trans_inf && !above_tau(beta.data(), t - 1)) return false;
    }
    return true;
  }

  // ---- log space: the same quantities with log-sum-exp, for transitions of huge range ----
  // In float64 whatever S is: log messages reach T times the energies, and float32 would
  // resolve exp(alpha + beta - log Z) only to ~1e-5 at energies of a few hundred.
  static double logsumexp(const double* x, int64_t n) {
    double m = -inf_v<double>;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
    if (m == -inf_v<double>) return m;
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
    return m + std::log(s);
  }

  S forward_log(int64_t b, int64_t L) {
    const int64_t K = p.K, Kp = p.Kp;
    const S* u0 = p.unary_at(b, 0);
    for (int64_t j = 0; j < K; ++j) la[j] = -(double(u0[j]) + double(p.start_at(j)));
    for (int64_t t = 1; t < L; ++t) {
      const double* prev = la.data() + (t - 1) * Kp;
      const S* u = p.unary_at(b, t);
      for (int64_t j = 0; j < K; ++j) {
        for (int64_t i = 0; i < K; ++i) ltmp[i] = prev[i] - double(p.trans[i * K + j]);
        la[t * Kp + j] = logsumexp(ltmp.data(), K) - double(u[j]);
      }
    }
    const double* aL = la.data() + (L - 1) * Kp;
    for (int64_t j = 0; j < K; ++j) ltmp[j] = aL[j] - double(p.end_at(j));
    log_z = logsumexp(ltmp.data(), K);
    return S(log_z);
  }

  // Needs forward_log (its log Z in float64).
  void backward_log(int64_t b, int64_t L, S scale, S* marg, int64_t marg_stride, S* pair) {
    const int64_t K = p.K, Kp = p.Kp;
    for (int64_t i = 0; i < K; ++i) lbeta[i] = -double(p.end_at(i));
    for (int64_t t = L - 1; t >= 0; --t) {
      const double* at = la.data() + t * Kp;
      if (marg)
        for (int64_t j = 0; j < K; ++j)
          marg[t * marg_stride + j] = S(double(scale) * std::exp(at[j] + lbeta[j] - log_z));
      if (t == 0) break;
      const double* prev = la.data() + (t - 1) * Kp;
      const S* u = p.unary_at(b, t);
      for (int64_t j = 0; j < K; ++j) ltmp[j] = lbeta[j] - double(u[j]);  // log q_t(j)
      if (pair)
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < K; ++j)
            pair[i * Kp + j] += S(double(scale) *
                                  std::exp(prev[i] - double(p.trans[i * K + j]) + ltmp[j] - log_z));
      for (int64_t i = 0; i < K; ++i) {
        for (int64_t j = 0; j < K; ++j) lnext[j] = ltmp[j] - double(p.trans[i * K + j]);
        lbeta[i] = logsumexp(lnext.data(), K);
      }
    }
  }

  // log Z of a valid (finite or +inf energies) sequence of length L >= 1; sets in_exp to the
  // domain whose forward state is now held (the backward must use the same one).
  S forward(int64_t b, int64_t L, bool& in_exp) {
    if (p.exp_domain) {
      bool exact;
      const S z = forward_exp(b, L, exact);
      if (exact) {
        in_exp = true;
        ++exp_runs;
        return z;
      }
    }
    in_exp = false;
    ++log_runs;
    return forward_log(b, L);
  }
};

std::atomic<int64_t> g_exp_runs{0}, g_log_runs{0};

template <typename S>
void record_runs(const ForwardBackward<S>& fb) {
  g_exp_runs += fb.exp_runs;
  g_log_runs += fb.log_runs;
}

// Work per sequence is about T*K*K.
int64_t grain(int64_t T, int64_t K) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, T * K * K));
}

at::Tensor chain_log_partition_cpu(const at::Tensor& unary, const at::Tensor& trans,
                                   const c10::optional<at::Tensor>& lengths,
                                   const c10::optional<at::Tensor>& start,
                                   const c10::optional<at::Tensor>& end) {
  const auto d = check_chain_inputs("chain_log_partition", unary, trans, lengths, start, end);
  if (general_chain(trans, start, end))
    return cpu_edge::log_partition(unary, trans, lengths, start, end);
  auto logz = at::empty({d.B}, unary.options());
  if (d.B == 0) return logz;
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_log_partition_cpu", [&] {
    using S = scalar_t;
    Inputs x;
    const auto prob = make_problem<S>(x, unary, trans, lengths, start, end);
    auto* out = logz.data_ptr<S>();
    at::parallel_for(0, d.B, grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
      ForwardBackward<S> fb(prob);
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = prob.length(b);
        bool in_exp;
        if (L == 0) {
          out[b] = S(0);
        } else if (prob.params_nan || fb.invalid(b, L)) {
          out[b] = std::numeric_limits<S>::quiet_NaN();
        } else {
          out[b] = fb.forward(b, L, in_exp);
        }
      }
      record_runs(fb);
    });
  });
  return logz;
}

// The forward-backward shared by the gradient of log Z and the marginals: d_unary (B, T, K)
// receives scale_b * p(y_t = k); with `want_params`, also the pair, first and last marginals
// summed over the batch with the same scales. A sequence holding NaN or -inf (or any when the
// parameters do) contributes NaN; one with no feasible path (log Z = -inf) contributes nothing.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward_cpu(
    const char* /*op: only other backends raise errors here*/, const ChainDims& d,
    const at::Tensor& scale, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, bool want_params) {
  if (general_chain(trans, start, end))
    return cpu_edge::forward_backward(d, scale, unary, trans, lengths, start, end, want_params);
  auto d_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto d_trans = at::zeros({d.K, d.K}, unary.options());
  auto d_start = at::zeros({d.K}, unary.options());
  auto d_end = at::zeros({d.K}, unary.options());
  if (d.B == 0 || d.T == 0) return {d_unary, d_trans, d_start, d_end};
  const auto scale_c = scale.contiguous();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_forward_backward_cpu", [&] {
    using S = scalar_t;
    constexpr S nan = std::numeric_limits<S>::quiet_NaN();
    Inputs x;
    const auto prob = make_problem<S>(x, unary, trans, lengths, start, end);
    const S* g = scale_c.data_ptr<S>();
    S* du = d_unary.data_ptr<S>();
    const int64_t K = d.K, Kp = prob.Kp;
    // Per-chunk sums of the parameter gradients, added in chunk order: deterministic for a
    // given thread count. pair_exp still lacks the factor E(i, j); pair_log is complete.
    const int64_t chunk = grain(d.T, d.K);
    const int64_t n_chunks = (d.B + chunk - 1) / chunk;
    std::vector<std::vector<S>> pair_exp(n_chunks), pair_log(n_chunks), first(n_chunks),
        last(n_chunks);
    at::parallel_for(0, n_chunks, 1, [&](int64_t c_lo, int64_t c_hi) {
      ForwardBackward<S> fb(prob);
      // With forbidden transitions an exp-domain backward may fail half-way: its pair sums go
      // here first.
      std::vector<S> pair_seq(want_params && prob.trans_inf ? K * Kp : 0);
      for (int64_t c = c_lo; c < c_hi; ++c) {
        if (want_params) {
          pair_exp[c].assign(K * Kp, S(0));
          pair_log[c].assign(K * Kp, S(0));
          first[c].assign(K, S(0));
          last[c].assign(K, S(0));
        }
        for (int64_t b = c * chunk; b < std::min(d.B, (c + 1) * chunk); ++b) {
          const int64_t L = prob.length(b);
          if (L == 0) continue;
          S* mb = du + b * d.T * K;
          if (prob.params_nan || fb.invalid(b, L)) {
            std::fill(mb, mb + L * K, nan);
            if (want_params)
              for (auto* acc : {&pair_log[c], &first[c], &last[c]})
                std::fill(acc->begin(), acc->end(), nan);
            continue;
          }
          bool in_exp;
          const S logz = fb.forward(b, L, in_exp);
          if (logz == -inf_v<S> || g[b] == S(0)) continue;
          bool done = false;
          if (in_exp) {
            const bool local = want_params && prob.trans_inf;
            S* pr = local ? pair_seq.data() : want_params ? pair_exp[c].data() : nullptr;
            if (local) std::fill(pair_seq.begin(), pair_seq.end(), S(0));
            done = fb.backward_exp(L, g[b], mb, K, pr);
            if (done && local)
              for (int64_t n = 0; n < K * Kp; ++n) pair_exp[c][n] += pair_seq[n];
            if (!done) {  // redo the whole sequence in log space
              --fb.exp_runs;
              ++fb.log_runs;
              fb.forward_log(b, L);
            }
          }
          if (!done)
            fb.backward_log(b, L, g[b], mb, K, want_params ? pair_log[c].data() : nullptr);
          if (want_params) {
            for (int64_t j = 0; j < K; ++j) {
              first[c][j] += mb[j];
              last[c][j] += mb[(L - 1) * K + j];
            }
          }
        }
      }
      record_runs(fb);
    });
    if (want_params) {
      S* dt = d_trans.data_ptr<S>();
      S* ds = d_start.data_ptr<S>();
      S* de = d_end.data_ptr<S>();
      for (int64_t c = 0; c < n_chunks; ++c) {
        for (int64_t i = 0; i < K; ++i) {
          for (int64_t j = 0; j < K; ++j) {
            // Only exp-domain sequences add to pair_exp (E may overflow when none can run there,
            // and is 0 for a forbidden transition, which has no pair mass): keep 0 * inf out.
            const S pe = pair_exp[c][i * Kp + j];
            const S from_exp = pe == S(0) ? S(0) : pe * prob.E[i * Kp + j];
            dt[i * K + j] += from_exp + pair_log[c][i * Kp + j];
          }
          ds[i] += first[c][i];
          de[i] += last[c][i];
        }
      }
    }
  });
  return {d_unary, d_trans, d_start, d_end};
}

}  // namespace

std::pair<int64_t, int64_t> take_partition_domain_counts() {
  return {g_exp_runs.exchange(0), g_log_runs.exchange(0)};
}

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("chain_log_partition", &chain_log_partition_cpu);
  m.impl("chain_marginals", &chain_marginals_with<forward_backward_cpu>);
  m.impl("_chain_log_partition_backward", &chain_log_partition_backward_with<forward_backward_cpu>);
}

}  // namespace ebm_ext
