// Linear chains with general edge energies, written once for both backends (the CPU loops over
// the batch with a team of one, CUDA gives each sequence a warp: chain_sequence.h's teams).
//
//   E(y) = start[b, y_0] + sum_{t<L} unary[b, t, y_t] + sum_{1<=t<L} trans[b, t-1, y_{t-1}, y_t]
//          + end[b, y_{L-1}]
//
// trans may be one matrix for the whole batch (K, K), one per sequence (B, K, K) or one per move
// and sequence (B, T-1, K, K) (the move into position t reads matrix t - 1, torch-struct's edge
// n = t - 1); start and end (K,) or (B, K). The shared (K, K) form with (K,) start and end keeps
// its own kernels (cpu/ and cuda/ chain_kernel, partition_kernel); these passes serve every other
// form (the other kernels stage one matrix per call; these read each move's matrix where it is).
// Everything is in float64 and in log space: each log-sum-exp takes its largest term out first,
// so no energy range under- or overflows. log Z itself runs the decoder's recursion with soft
// minima (log_partition), so that it is never below the best path's score.
//
// Non-finite rules, as the shared kernels': +inf forbids; a sequence that reads a NaN or -inf
// (its unary rows t < L, its start and end, the whole of its (K, K) matrix, or, per move, the
// matrices of its moves 1..L-1) gets NaN results; matrices past a sequence's length are never
// read. Ties in decoding go to the lexicographically smallest path, as in the shared decoders.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "chain_sequence.h"
#include "chain_view.h"

namespace ebm_ext {
namespace edge {

EBM_HD inline double inf() { return std::numeric_limits<double>::infinity(); }

// float64 from any input dtype and back (CUDA's half types convert through float).
EBM_HD inline double to_double(double v) { return v; }
template <typename S>
EBM_HD double to_double(S v) {
  return static_cast<double>(static_cast<float>(v));
}
template <typename S>
EBM_HD S from_double(double v) {
  if constexpr (std::is_same<S, double>::value) {
    return v;
  } else {
    return static_cast<S>(static_cast<float>(v));
  }
}

// A batch of chains in their own dtype S (contiguous), read in float64; a direction v of the
// same layout (an additive statistic v . phi(y), chain_sequence.h) may leave unary and trans
// null (zero).
template <typename S>
struct EdgeChain {
  const S* unary;          // (B, T, K)
  const S* trans;          // see tr()
  const S* start;          // (K,) or (B, K) by start_b; nullptr: 0
  const S* end;            // likewise
  const int64_t* lengths;  // (B,) or nullptr: all T
  int64_t T;
  int K;
  int64_t trans_b, trans_t;  // element strides of trans's sequence and move (0: shared)
  int64_t start_b, end_b;    // 0 or K

  EBM_HD int64_t length(int64_t b) const { return lengths ? lengths[b] : T; }
  EBM_HD double u(int64_t b, int64_t t, int j) const {
    return unary ? to_double(unary[(b * T + t) * K + j]) : 0.0;
  }
  // The energy of the move i -> j into position t, 1 <= t < L.
  EBM_HD double tr(int64_t b, int64_t t, int i, int j) const {
    return trans ? to_double(trans[b * trans_b + (t - 1) * trans_t + int64_t(i) * K + j]) : 0.0;
  }
  EBM_HD double st(int64_t b, int j) const {
    return start ? to_double(start[b * start_b + j]) : 0.0;
  }
  EBM_HD double en(int64_t b, int j) const {
    return end ? to_double(end[b * end_b + j]) : 0.0;
  }
  EBM_HD bool per_move() const { return trans_t != 0; }

  // The matrix of the move into t, for the loops that sweep it (hoisted out of them).
  struct Move {
    const S* m;  // null: a direction without transitions (zero)
    int K;
    EBM_HD double operator()(int i, int j) const {
      return m ? to_double(m[int64_t(i) * K + j]) : 0.0;
    }
  };
  EBM_HD Move move(int64_t b, int64_t t) const {
    return {trans ? trans + b * trans_b + (t - 1) * trans_t : nullptr, K};
  }
};

EBM_HD inline bool not_energy(double v) { return !(v > -inf()); }  // NaN or -inf

// The CPU's vectorised sweeps of one move's matrix M (K x K, row-major, row by row: 8 lanes and
// a float64 exp, cpu/edge_chain_kernel.cpp), taken by the team of one (Team::kHost) where the
// passes below have no direction; they compute the same sums as the members' loops (each sum over
// i in the order i = 0..K-1; a row's sum over j in lanes), to the exp's rounding.
namespace host {
#define EBM_EDGE_SWEEPS(S)                                                                       \
  /* cur[j] = log sum_i exp(prev[i] - M[i, j]) */                                              \
  void column_lses(const S* M, int K, const double* prev, double* cur);                          \
  /* beta[i] = softmin_j (M[i, j] + w[j]) (log_partition) */                                   \
  void row_softmins(const S* M, int K, const double* w, double* beta);                           \
  /* lb2[i] = log sum_j exp(lb[j] - M[i, j] - u[j]) */                                         \
  void row_lses(const S* M, int K, const double* lb, const S* u, double* lb2);                   \
  /* out[i, j] (= or +=) scale exp(la[i] - M[i, j] + (lb[j] - u[j] - logz)) */                \
  void pairs(const S* M, int K, const double* la, const double* lb, const S* u, double logz,    \
             double scale, double* out, bool add);
EBM_EDGE_SWEEPS(float)
EBM_EDGE_SWEEPS(double)
#undef EBM_EDGE_SWEEPS
}  // namespace host

// Whether sequence b (length L >= 1) reads a NaN or -inf (see the rules above): its unary rows
// and its matrices are contiguous runs, read as such.
template <typename Team, typename S>
EBM_HD bool invalid(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L) {
  const int K = c.K;
  bool bad = false;
  const S* u = c.unary + b * c.T * K;
  for (int64_t n = team.rank(); n < L * K; n += team.size()) bad = bad || not_energy(to_double(u[n]));
  const S* m = c.trans + b * c.trans_b;
  const int64_t cells = (c.per_move() ? L - 1 : 1) * int64_t(K) * K;
  for (int64_t n = team.rank(); n < cells; n += team.size()) bad = bad || not_energy(to_double(m[n]));
  for (int j = team.rank(); j < K; j += team.size())
    bad = bad || not_energy(c.st(b, j)) || not_energy(c.en(b, j));
  return team.any(bad);
}

// log sum_i exp(prev[i] - trans(t, i, j)), the largest term taken out first.
template <typename Move>
EBM_HD double column_lse(const Move& M, int K, const double* prev, int j) {
  double m = -inf();
  for (int i = 0; i < K; ++i) m = fmax(m, prev[i] - M(i, j));
  if (m == -inf()) return -inf();
  double s = 0.0;
  for (int i = 0; i < K; ++i) s += exp(prev[i] - M(i, j) - m);
  return m + log(s);
}

// log sum_j exp(x[j]) over the team's members' shares.
template <typename Team, typename F>
EBM_HD double team_lse(const Team& team, int K, F x) {
  double m = -inf();
  for (int j = team.rank(); j < K; j += team.size()) m = fmax(m, x(j));
  m = team.max(m);
  if (m == -inf()) return -inf();
  double s = 0.0;
  for (int j = team.rank(); j < K; j += team.size()) s += exp(x(j) - m);
  return m + log(team.sum(s));
}

// The forward pass of sequence b (valid, L >= 1): la row t (K) = log sum over the paths of
// positions 0..t ending in tag j of exp(-their energy), unary at t included. With ring, la holds
// two rows (row t at t % 2: the forward alone); otherwise L rows (the backward reads them).
// With a direction v, F row t (laid out as la) = E[v . phi over the positions <= t | y_t = j]
// and *expect = E_p[v . phi] (the expectation semiring). Returns log Z (-inf: no allowed path).
template <typename Team, typename S>
EBM_HD double forward(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L, double* la,
                      bool ring, const EdgeChain<S>* v = nullptr, double* F = nullptr,
                      double* expect = nullptr) {
  using chain_seq::weighted;
  const int K = c.K;
  const auto row = [&](int64_t t) { return (ring ? (t & 1) : t) * K; };
  for (int j = team.rank(); j < K; j += team.size()) {
    la[j] = -(c.st(b, j) + c.u(b, 0, j));
    if (v) F[j] = la[j] > -inf() ? v->st(b, j) + v->u(b, 0, j) : 0.0;
  }
  for (int64_t t = 1; t < L; ++t) {
    team.sync();  // row t - 1 complete; every member is done with row t - 2 (the ring's slot)
    const double* prev = la + row(t - 1);
    double* cur = la + row(t);
    const auto M = c.move(b, t);
    const auto VM = v ? v->move(b, t) : M;
    if constexpr (Team::kHost) {
      if (!v) {
        host::column_lses(M.m, K, prev, cur);
        for (int j = 0; j < K; ++j) cur[j] -= c.u(b, t, j);
        continue;
      }
    }
    for (int j = team.rank(); j < K; j += team.size()) {
      const double lse = column_lse(M, K, prev, j);
      cur[j] = lse - c.u(b, t, j);
      if (!v) continue;
      double acc = 0.0;
      if (cur[j] > -inf()) {
        for (int i = 0; i < K; ++i) {
          const double l = prev[i] - M(i, j);
          if (l > -inf()) acc += weighted(exp(l - lse), F[row(t - 1) + i] + VM(i, j));
        }
        acc += v->u(b, t, j);
      }
      F[row(t) + j] = acc;
    }
  }
  team.sync();
  const double* last = la + row(L - 1);
  const double lz = team_lse(team, K, [&](int j) { return last[j] - c.en(b, j); });
  if (v && expect) {
    double es = 0.0;
    if (lz > -inf())
      for (int j = team.rank(); j < K; j += team.size()) {
        const double l = last[j] - c.en(b, j);
        if (l > -inf()) es += weighted(exp(l - lz), F[row(L - 1) + j] + v->en(b, j));
      }
    *expect = team.sum(es);
  }
  return lz;
}

// log Z of sequence b (valid, L >= 1) by the decoders' recursion (decode below) with each
// minimum made soft: beta_{t-1}(i) = softmin_j trans(t, i, j) + (u(t, j) + beta_t(j)), softmin(x)
// = min x - log sum exp(min x - x), and log Z = -softmin_j (u(0, j) + beta_0(j)) + start(j).
// Every operation is the decoder's, in its order, or moves the value down (log sum >= 0), and
// rounding is monotone: so -log Z <= the decoder's best energy exactly, log Z >= the best
// path's score always, equal where one path holds all the mass. beta and w: K doubles each.
template <typename Team, typename S>
EBM_HD double log_partition(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L,
                            double* beta, double* w) {
  const int K = c.K;
  const auto softmin = [&](auto x) {  // over j of x(j), by one member
    double mn = inf();
    for (int j = 0; j < K; ++j) mn = fmin(mn, x(j));
    if (!(mn < inf())) return inf();
    double s = 0.0;
    for (int j = 0; j < K; ++j) s += exp(mn - x(j));
    return mn - log(s);
  };
  for (int i = team.rank(); i < K; i += team.size()) beta[i] = c.en(b, i);
  for (int64_t t = L - 1; t >= 1; --t) {
    team.sync();
    for (int j = team.rank(); j < K; j += team.size()) w[j] = c.u(b, t, j) + beta[j];
    team.sync();
    const auto M = c.move(b, t);
    if constexpr (Team::kHost) {
      host::row_softmins(M.m, K, w, beta);
      continue;
    }
    for (int i = team.rank(); i < K; i += team.size())
      beta[i] = softmin([&](int j) { return M(i, j) + w[j]; });
  }
  team.sync();
  for (int j = team.rank(); j < K; j += team.size()) w[j] = c.u(b, 0, j) + beta[j];
  double mn = inf();
  for (int j = team.rank(); j < K; j += team.size()) mn = fmin(mn, w[j] + c.st(b, j));
  mn = team.min(mn);
  if (!(mn < inf())) return -inf();
  double s = 0.0;
  for (int j = team.rank(); j < K; j += team.size()) s += exp(mn - (w[j] + c.st(b, j)));
  return -(mn - log(team.sum(s)));
}

// Where the backward writes sequence b's share, each scaled by `scale`: du (T, K) receives
// p(y_t = k) at t < L; dtr the pair marginals p(y_{t-1} = i, y_t = j), at
// (t - 1) * dtr_t + i * K + j (dtr_t = 0: one (K, K) matrix adds every move's); dst and den the
// first and last marginals. Any may be null. With a direction v, each entry is instead
// scale * Cov_p(phi_entry, v . phi) (the Hessian of log Z times v).
template <typename S>
struct Grads {
  S* du;
  double* dtr;
  int64_t dtr_t;
  double* dst;
  double* den;
};

// The backward pass of a valid sequence with finite log Z, after forward() kept every row of la
// (and, with v, of F, and returned expect es); lb, lb2, Bk, Bk2 are K doubles of scratch each.
template <typename Team, typename S>
EBM_HD void backward(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L,
                     const double* la, double logz, double scale, double* lb, double* lb2,
                     const Grads<S>& g, const EdgeChain<S>* v = nullptr, const double* F = nullptr,
                     double es = 0.0, double* Bk = nullptr, double* Bk2 = nullptr) {
  using chain_seq::weighted;
  const int K = c.K;
  // beta_{L-1}(i) = -end(i); beta_{t-1}(i) = log sum_j exp(-trans(t, i, j) - u(t, j) + beta_t(j)),
  // and with v, B_t(i) = E[v . phi over the positions > t, and the end | y_t = i].
  for (int i = team.rank(); i < K; i += team.size()) {
    lb[i] = -c.en(b, i);
    if (v) Bk[i] = lb[i] > -inf() ? v->en(b, i) : 0.0;
  }
  for (int64_t t = L - 1;; --t) {
    for (int i = team.rank(); i < K; i += team.size()) {  // the tags at t
      const double l = la[t * K + i] + lb[i];
      const double p = l > -inf() ? exp(l - logz) : 0.0;
      const double val = v ? weighted(scale * p, F[t * K + i] + Bk[i] - es) : scale * p;
      if (g.du) g.du[t * K + i] = from_double<S>(val);
      if (g.dst && t == 0) g.dst[i] = val;
      if (g.den && t == L - 1) g.den[i] = val;
    }
    if (t == 0) break;
    team.sync();  // beta_t (and B_t) complete
    const auto M = c.move(b, t);
    const auto VM = v ? v->move(b, t) : M;
    bool swept = false;
    if constexpr (Team::kHost) {
      if (!v) {
        const S* u_t = c.unary + (b * c.T + t) * K;
        if (g.dtr)
          host::pairs(M.m, K, la + (t - 1) * K, lb, u_t, logz, scale,
                      g.dtr + (t - 1) * g.dtr_t, g.dtr_t == 0);
        host::row_lses(M.m, K, lb, u_t, lb2);
        swept = true;
      }
    }
    if (g.dtr && !swept) {  // the moves into t: member of column j
      for (int j = team.rank(); j < K; j += team.size()) {
        const double w = lb[j] - c.u(b, t, j) - logz;
        const double tail = v ? v->u(b, t, j) + Bk[j] - es : 0.0;
        for (int i = 0; i < K; ++i) {
          const double l = la[(t - 1) * K + i] - M(i, j) + w;
          const double p = l > -inf() ? scale * exp(l) : 0.0;
          const double val = v ? weighted(p, F[(t - 1) * K + i] + VM(i, j) + tail) : p;
          double* cell = g.dtr + (t - 1) * g.dtr_t + int64_t(i) * K + j;
          *cell = g.dtr_t ? val : *cell + val;
        }
      }
    }
    for (int i = team.rank(); i < K && !swept; i += team.size()) {  // beta_{t-1}: row i
      double m = -inf();
      for (int j = 0; j < K; ++j) m = fmax(m, lb[j] - M(i, j) - c.u(b, t, j));
      double s = 0.0, acc = 0.0;
      if (m > -inf())
        for (int j = 0; j < K; ++j) s += exp(lb[j] - M(i, j) - c.u(b, t, j) - m);
      lb2[i] = m > -inf() ? m + log(s) : -inf();
      if (!v) continue;
      if (lb2[i] > -inf())
        for (int j = 0; j < K; ++j) {
          const double l = lb[j] - M(i, j) - c.u(b, t, j);
          if (l > -inf()) acc += weighted(exp(l - lb2[i]), VM(i, j) + v->u(b, t, j) + Bk[j]);
        }
      Bk2[i] = acc;
    }
    team.sync();
    double* swap = lb;
    lb = lb2;
    lb2 = swap;
    swap = Bk;
    Bk = Bk2;
    Bk2 = swap;
  }
  team.sync();
}

// NaN into everything sequence b's backward would write (an invalid sequence).
template <typename Team, typename S>
EBM_HD void fill_nan(const Team& team, const EdgeChain<S>& c, int64_t L, const Grads<S>& g) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int K = c.K;
  const int64_t KK = int64_t(K) * K;
  if (g.du)
    for (int64_t n = team.rank(); n < L * K; n += team.size()) g.du[n] = from_double<S>(nan);
  if (g.dtr) {
    const int64_t cells = g.dtr_t ? (L - 1) * KK : KK;
    for (int64_t n = team.rank(); n < cells; n += team.size()) g.dtr[n] = nan;
  }
  for (int j = team.rank(); j < K; j += team.size()) {
    if (g.dst) g.dst[j] = nan;
    if (g.den) g.den[j] = nan;
  }
  team.sync();
}

// One exact sample of sequence b after forward() kept every row of la and returned a finite
// lz: y_{L-1} from its marginal, then y_{t-1} | y_t from the forward weights, with noise[t] for
// tag t (chain_seq::pick, as the shared kernels draw). One walk: any member may run it.
template <typename S>
EBM_HD void sample(const EdgeChain<S>& c, int64_t b, int64_t L, const double* la, double lz,
                   const double* noise, int64_t* tags) {
  const int K = c.K;
  tags[L - 1] = chain_seq::pick(
      [&](int j) {
        const double l = la[(L - 1) * K + j] - c.en(b, j);
        return l > -inf() ? exp(l - lz) : 0.0;
      },
      K, noise[L - 1]);
  for (int64_t t = L - 1; t >= 1; --t) {
    const int j = static_cast<int>(tags[t]);
    const double norm = la[t * K + j] + c.u(b, t, j);  // the column's log-sum-exp
    const auto M = c.move(b, t);
    tags[t - 1] = chain_seq::pick(
        [&](int i) {
          const double l = la[(t - 1) * K + i] - M(i, j);
          return l > -inf() ? exp(l - norm) : 0.0;
        },
        K, noise[t - 1]);
  }
}

// Exact decoding of sequence b (L >= 1) by the same backward min-plus recursion as the shared
// decoders: beta_{t-1}(i) = min_j trans(t, i, j) + (u(t, j) + beta_t(j)), the smallest
// minimising j kept in ptr ((L - 1, K) int32), the first tag the smallest minimiser of
// start + u(0) + beta_0; hence the lexicographically smallest best path. With a cost (K, K) and
// this sequence's gold tags, u(t, j) is lowered by cost[gold_t, j] (loss-augmented decoding). beta
// and w are K doubles of scratch; tags (T) receives the path (member 0 walks it) and -1 past L.
// Returns the best (augmented) energy (+inf when no path is allowed).
template <typename Team, typename S>
EBM_HD double decode(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L,
                     double* beta, double* w, int32_t* ptr, int64_t* tags,
                     const S* cost = nullptr, const int64_t* gold = nullptr) {
  const int K = c.K;
  const auto fill_w = [&](int64_t t) {
    for (int j = team.rank(); j < K; j += team.size()) {
      w[j] = c.u(b, t, j) + beta[j];
      if (cost) w[j] -= to_double(cost[gold[t] * K + j]);
    }
  };
  for (int64_t t = L + team.rank(); t < c.T; t += team.size()) tags[t] = -1;
  for (int i = team.rank(); i < K; i += team.size()) beta[i] = c.en(b, i);
  for (int64_t t = L - 1; t >= 1; --t) {
    team.sync();
    fill_w(t);
    team.sync();
    const auto M = c.move(b, t);
    for (int i = team.rank(); i < K; i += team.size()) {
      double best = inf();
      int32_t arg = 0;
      for (int j = 0; j < K; ++j) {
        const double v = M(i, j) + w[j];
        if (v < best) {
          best = v;
          arg = j;
        }
      }
      beta[i] = best;
      ptr[(t - 1) * K + i] = arg;
    }
  }
  team.sync();
  fill_w(0);
  double best = inf();
  int arg = K;
  for (int j = team.rank(); j < K; j += team.size()) {
    const double v = w[j] + c.st(b, j);
    if (v < best) {
      best = v;
      arg = j;
    }
  }
  const double m = team.min(best);
  const int first = m < inf() ? int(team.min(best == m ? double(arg) : double(K))) : 0;
  if (team.rank() == 0) walk_back(first, ptr, K, L, tags);
  team.sync();
  return m;
}

// The start energies of sequence b as kbest_final_list reads a chain's (chain_view.h).
template <typename S>
struct SequenceStart {
  const EdgeChain<S>& c;
  int64_t b;
  int64_t K;
  EBM_HD double start_at(int64_t j) const { return c.st(b, int(j)); }
};

// k-best list Viterbi of sequence b (L >= 1), the shared decoders' lists (chain_view.h): for
// each (t, i) the k best suffix energies in ascending order, candidates (j, r) taken in code
// order j * k + r, ties keeping the earlier code, a suffix of +inf missing. beta, next and w are
// k K doubles each, ptr (L - 1) k K codes; energy (k) and tags (k, T) receive the paths (+inf
// and -1 where fewer exist). Returns whether the sequence read a NaN or -inf.
template <typename Team, typename S>
EBM_HD void kbest(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L, int64_t k,
                  double* beta, double* next, double* w, int32_t* ptr, int64_t* top_codes,
                  double* top, S* energy, int64_t* tags) {
  const int K = c.K;
  for (int64_t n = team.rank(); n < k * c.T; n += team.size()) tags[n] = -1;
  for (int64_t n = team.rank(); n < k * K; n += team.size())
    beta[n] = n < K ? c.en(b, int(n)) : inf();
  const auto fill_w = [&](int64_t t) {
    for (int64_t n = team.rank(); n < k * K; n += team.size())
      w[n] = c.u(b, t, int(n % K)) + beta[n];
  };
  for (int64_t t = L - 1; t >= 1; --t) {
    team.sync();
    fill_w(t);
    team.sync();
    int32_t* p = ptr + (t - 1) * k * K;
    const auto M = c.move(b, t);
    for (int i = team.rank(); i < K; i += team.size()) {
      for (int64_t s = 0; s < k; ++s) {
        next[s * K + i] = inf();
        p[s * K + i] = -1;
      }
      for (int j = 0; j < K; ++j)
        for (int64_t r = 0; r < k; ++r) {
          const double wj = w[r * K + j];
          if (!(wj < inf())) break;
          kbest_insert(next + i, p + i, k, M(i, j) + wj, static_cast<int32_t>(j * k + r), K);
        }
    }
    team.sync();
    for (int64_t n = team.rank(); n < k * K; n += team.size()) beta[n] = next[n];
  }
  team.sync();
  fill_w(0);
  team.sync();
  if (team.rank() == 0)
    kbest_final_list(SequenceStart<S>{c, b, K}, w, k, top, top_codes);
  team.sync();
  for (int64_t s = team.rank(); s < k; s += team.size()) {
    if (top_codes[s] < 0) {
      energy[s] = from_double<S>(inf());
      continue;
    }
    energy[s] = from_double<S>(top[s]);
    kbest_walk_back(top_codes[s], k, ptr, K, L, tags + s * c.T);
  }
  team.sync();
}

// E(tags[0..L)) of sequence b, in A, with the shared chains' order of the sums (chain_view.h).
template <typename A, typename S>
EBM_HD A path_energy(const EdgeChain<S>& c, int64_t b, const int64_t* tags, int64_t L) {
  if (L == 0) return A(0);
  A e = static_cast<A>(c.st(b, int(tags[0]))) + static_cast<A>(c.en(b, int(tags[L - 1])));
  for (int64_t t = 0; t < L; ++t) e += static_cast<A>(c.u(b, t, int(tags[t])));
  for (int64_t t = 1; t < L; ++t) e += static_cast<A>(c.tr(b, t, int(tags[t - 1]), int(tags[t])));
  return e == -std::numeric_limits<A>::infinity() ? std::numeric_limits<A>::quiet_NaN() : e;
}

}  // namespace edge
}  // namespace ebm_ext
