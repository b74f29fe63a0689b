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
// form. Everything is in float64 and in log space: a step of log Z is, per column j, a
// log-sum-exp over i with its maximum taken first, so no energy range under- or overflows.
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

// A batch of chains in their own dtype S (contiguous), read in float64.
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
    return to_double(unary[(b * T + t) * K + j]);
  }
  // The energy of the move i -> j into position t, 1 <= t < L.
  EBM_HD double tr(int64_t b, int64_t t, int i, int j) const {
    return to_double(trans[b * trans_b + (t - 1) * trans_t + int64_t(i) * K + j]);
  }
  EBM_HD double st(int64_t b, int j) const {
    return start ? to_double(start[b * start_b + j]) : 0.0;
  }
  EBM_HD double en(int64_t b, int j) const {
    return end ? to_double(end[b * end_b + j]) : 0.0;
  }
  EBM_HD bool per_move() const { return trans_t != 0; }
};

EBM_HD inline bool not_energy(double v) { return !(v > -inf()); }  // NaN or -inf

// Whether sequence b (length L >= 1) reads a NaN or -inf (see the rules above).
template <typename Team, typename S>
EBM_HD bool invalid(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L) {
  const int K = c.K;
  const int64_t KK = int64_t(K) * K;
  bool bad = false;
  for (int64_t n = team.rank(); n < L * K; n += team.size())
    bad = bad || not_energy(c.u(b, n / K, int(n % K)));
  const int64_t matrices = c.per_move() ? L - 1 : 1;
  for (int64_t n = team.rank(); n < matrices * KK; n += team.size())
    bad = bad || not_energy(c.tr(b, 1 + n / KK, int((n % KK) / K), int(n % K)));
  for (int j = team.rank(); j < K; j += team.size())
    bad = bad || not_energy(c.st(b, j)) || not_energy(c.en(b, j));
  return team.any(bad);
}

// log sum_i exp(prev[i] - trans(t, i, j)), the largest term taken out first.
template <typename S>
EBM_HD double column_lse(const EdgeChain<S>& c, int64_t b, int64_t t, const double* prev, int j) {
  double m = -inf();
  for (int i = 0; i < c.K; ++i) m = fmax(m, prev[i] - c.tr(b, t, i, j));
  if (m == -inf()) return -inf();
  double s = 0.0;
  for (int i = 0; i < c.K; ++i) s += exp(prev[i] - c.tr(b, t, i, j) - m);
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
// Returns log Z.
template <typename Team, typename S>
EBM_HD double forward(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L, double* la,
                      bool ring) {
  const int K = c.K;
  const auto row = [&](int64_t t) { return la + (ring ? (t & 1) : t) * K; };
  for (int j = team.rank(); j < K; j += team.size()) row(0)[j] = -(c.st(b, j) + c.u(b, 0, j));
  for (int64_t t = 1; t < L; ++t) {
    team.sync();  // row t - 1 complete; every member is done with row t - 2 (the ring's slot)
    const double* prev = row(t - 1);
    double* cur = row(t);
    for (int j = team.rank(); j < K; j += team.size())
      cur[j] = column_lse(c, b, t, prev, j) - c.u(b, t, j);
  }
  team.sync();
  const double* last = row(L - 1);
  return team_lse(team, K, [&](int j) { return last[j] - c.en(b, j); });
}

// Where the backward writes sequence b's share of the gradient, each scaled by `scale`:
// du (T, K) receives p(y_t = k) at t < L; dtr the pair marginals p(y_{t-1} = i, y_t = j), at
// (t - 1) * dtr_t + i * K + j (dtr_t = 0: one (K, K) matrix adds every move's); dst and den the
// first and last marginals. Any may be null.
template <typename S>
struct Grads {
  S* du;
  double* dtr;
  int64_t dtr_t;
  double* dst;
  double* den;
};

// The backward pass of a valid sequence with finite log Z, after forward() kept every row of la;
// lb and lb2 are K doubles of scratch each.
template <typename Team, typename S>
EBM_HD void backward(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L,
                     const double* la, double logz, double scale, double* lb, double* lb2,
                     const Grads<S>& g) {
  const int K = c.K;
  const auto node = [&](int64_t t, const double* beta, int i) {
    return scale * exp(la[t * K + i] + beta[i] - logz);
  };
  // beta_{L-1}(i) = -end(i); beta_{t-1}(i) = log sum_j exp(-trans(t, i, j) - u(t, j) + beta_t(j)).
  for (int i = team.rank(); i < K; i += team.size()) {
    lb[i] = -c.en(b, i);
    if (g.du) g.du[(L - 1) * K + i] = from_double<S>(node(L - 1, lb, i));
    if (g.den) g.den[i] = node(L - 1, lb, i);
  }
  for (int64_t t = L - 1; t >= 1; --t) {
    team.sync();  // beta_t complete
    if (g.dtr) {  // the moves into t: member of column j
      for (int j = team.rank(); j < K; j += team.size()) {
        const double w = lb[j] - c.u(b, t, j) - logz;
        for (int i = 0; i < K; ++i) {
          const double p = scale * exp(la[(t - 1) * K + i] - c.tr(b, t, i, j) + w);
          double* cell = g.dtr + (t - 1) * g.dtr_t + int64_t(i) * K + j;
          *cell = g.dtr_t ? p : *cell + p;
        }
      }
    }
    for (int i = team.rank(); i < K; i += team.size()) {  // beta_{t-1}: member of row i
      double m = -inf();
      for (int j = 0; j < K; ++j) m = fmax(m, lb[j] - c.tr(b, t, i, j) - c.u(b, t, j));
      double s = 0.0;
      if (m > -inf())
        for (int j = 0; j < K; ++j) s += exp(lb[j] - c.tr(b, t, i, j) - c.u(b, t, j) - m);
      lb2[i] = m > -inf() ? m + log(s) : -inf();
    }
    team.sync();
    double* swap = lb;
    lb = lb2;
    lb2 = swap;
    if (g.du)
      for (int i = team.rank(); i < K; i += team.size())
        g.du[(t - 1) * K + i] = from_double<S>(node(t - 1, lb, i));
  }
  if (g.dst)
    for (int i = team.rank(); i < K; i += team.size()) g.dst[i] = node(0, lb, i);
  team.sync();
}

// NaN into everything sequence b's gradient would write (an invalid sequence).
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

// Exact decoding of sequence b (L >= 1) by the same backward min-plus recursion as the shared
// decoders: beta_{t-1}(i) = min_j trans(t, i, j) + (u(t, j) + beta_t(j)), the smallest
// minimising j kept in ptr ((L - 1, K) int32), the first tag the smallest minimiser of
// start + u(0) + beta_0; hence the lexicographically smallest best path. beta and w are K
// doubles of scratch; tags (T) receives the path (member 0 walks it) and -1 past L. Returns the
// best energy (+inf when no path is allowed).
template <typename Team, typename S>
EBM_HD double decode(const Team& team, const EdgeChain<S>& c, int64_t b, int64_t L,
                     double* beta, double* w, int32_t* ptr, int64_t* tags) {
  const int K = c.K;
  for (int64_t t = L + team.rank(); t < c.T; t += team.size()) tags[t] = -1;
  for (int i = team.rank(); i < K; i += team.size()) beta[i] = c.en(b, i);
  for (int64_t t = L - 1; t >= 1; --t) {
    team.sync();
    for (int j = team.rank(); j < K; j += team.size()) w[j] = c.u(b, t, j) + beta[j];
    team.sync();
    for (int i = team.rank(); i < K; i += team.size()) {
      double best = inf();
      int32_t arg = 0;
      for (int j = 0; j < K; ++j) {
        const double v = c.tr(b, t, i, j) + w[j];
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
  double best = inf();
  int arg = K;
  for (int j = team.rank(); j < K; j += team.size()) {
    const double v = c.u(b, 0, j) + beta[j] + c.st(b, j);
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
