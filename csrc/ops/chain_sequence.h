// One sequence of a linear chain in float64, written once for both backends: the CPU kernels
// loop over the batch with a team of one thread per sequence, the CUDA kernels give each
// sequence a warp (csrc/ops/cpu and cuda distribution_kernel). Three passes over the chain energy
//   E(y) = start[y_0] + sum_t unary[t, y_t] + sum_t trans[y_{t-1}, y_t] + end[y_{L-1}]:
//
//   forward:    log Z and, for a direction v of the same layout (an additive statistic
//               s(y) = v . phi(y), phi the indicator features of E), F_t(j) = E[s over the
//               positions <= t | y_t = j], hence E_p[s] (the expectation semiring);
//   covariance: the backward messages and B_t(j) = E[s over the positions > t | y_t = j],
//               hence Cov_p(phi, s) for every parameter (the Hessian of log Z times v: the
//               double backward of log Z, and the gradient of the entropy);
//   sample:     forward-filtering backward-sampling, exact, from uniform noise.
//
// Teams. A pass is run by a team (Solo here; a warp, cuda/team.cuh): member r owns the tags
// j = r, r + size, ... of every step, computes their columns, and the team meets at sync()
// (before a member reads what another wrote) and at its reductions over the tags (max, min,
// sum, any), which sync the team too. Each column's own sum over i runs in one member, in the
// order i = 0..K-1, so a team of any size computes the same columns; only the sums over the
// tags (log Z's last log-sum-exp, the expectation) are added in another order.
//
// Precision. Each step computes, per column j, S_j = sum_i a(i) E(i, j) with a = exp(la - max la)
// and E = exp(tmin - trans) (tmin the smallest finite transition: both in [0, 1], +inf energies
// exactly 0). Where S_j >= kTau every term that underflowed is below 2^-1074 / kTau = 2^-574 of
// the sum, so the column's log-sum-exp and its conditional weights a(i) E(i, j) / S_j are exact
// to float64 rounding; a column below kTau (a dead end, a huge energy range) is recomputed in
// log space. The messages themselves are kept as logs, so no underflow carries from step to step.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "chain_view.h"

namespace ebm_ext {
namespace chain_seq {

constexpr double kTau = 0x1p-500;

EBM_HD inline double inf() { return std::numeric_limits<double>::infinity(); }

// The team of one: the CPU kernels' (see "Teams" above).
struct Solo {
  static constexpr bool kHost = true;  // the CPU's: edge_chain.h's vectorised sweeps apply
  EBM_HD static constexpr int size() { return 1; }
  EBM_HD int rank() const { return 0; }
  EBM_HD void sync() const {}
  EBM_HD double max(double x) const { return x; }
  EBM_HD double min(double x) const { return x; }
  EBM_HD double sum(double x) const { return x; }
  EBM_HD bool any(bool x) const { return x; }
};

// A batch of chain energies (or of directions v: the same layout) in their own dtype S, read
// in float64; here unary and trans may be null too (a zero term: a direction need not touch
// every parameter).
template <typename S>
struct Chain : ChainView<S> {
  EBM_HD double u(int64_t b, int64_t t, int j) const {
    return this->unary ? static_cast<double>(this->unary_at(b, t)[j]) : 0.0;
  }
  EBM_HD double tr(int i, int j) const {
    return this->trans ? static_cast<double>(this->trans[i * this->K + j]) : 0.0;
  }
  EBM_HD double st(int j) const { return static_cast<double>(this->start_at(j)); }
  EBM_HD double en(int j) const { return static_cast<double>(this->end_at(j)); }
};

// The exp-domain transitions shared by every sequence of a call.
struct ExpTrans {
  const double* E;  // (K, K): exp(tmin - trans), 0 where trans = +inf
  double tmin;
};

struct StagedTransitions {
  double tmin;   // the smallest finite transition (0 if none)
  bool invalid;  // trans, start or end holds NaN or -inf: every non-empty sequence is NaN
};

// Fills E (K, K) = exp(tmin - trans) in float64 (0 where trans = +inf), by the team; every
// member gets tmin and the flag.
template <typename Team, typename S>
EBM_HD StagedTransitions stage_transitions(const Team& team, const Chain<S>& e, double* E) {
  const int K = e.K;
  double lo = inf();
  bool invalid = false;
  for (int n = team.rank(); n < K * K; n += team.size()) {
    const double t = e.tr(n / K, n % K);
    invalid = invalid || !(t > -inf());
    if (t > -inf() && t < inf()) lo = fmin(lo, t);
  }
  for (int j = team.rank(); j < K; j += team.size())
    invalid = invalid || !(e.st(j) > -inf()) || !(e.en(j) > -inf());
  lo = team.min(lo);
  const double tmin = lo < inf() ? lo : 0.0;
  for (int n = team.rank(); n < K * K; n += team.size()) {
    const double t = e.tr(n / K, n % K);
    E[n] = t == inf() ? 0.0 : exp(tmin - t);
  }
  invalid = team.any(invalid);
  team.sync();  // E complete for every member
  return {tmin, invalid};
}

// Scratch of one sequence: work_doubles(rows, K) doubles, rows = T for the passes that read the
// forward messages back (covariance, sample), or kRingRows for a forward alone, which keeps only
// the step it computes and the one before (a ring: row t is t % 2).
struct Work {
  double *la, *a, *m, *r, *F;        // (rows, K) log forward messages (unary at t included),
                                      // their exp scaled to a largest entry of 1 (max in m,
                                      // (rows,)), 1/S_j (-1: the column ran in log space), and F
  double *lb, *lb2, *bt, *Bk, *Bk2, *mu;  // (K) each: the backward pass
  bool ring;

  EBM_HD int64_t row(int64_t t) const { return ring ? (t & 1) : t; }
};

constexpr int64_t kRingRows = 2;

EBM_HD inline int64_t work_doubles(int64_t rows, int K) {
  return 4 * rows * K + rows + 6 * int64_t(K);
}

EBM_HD inline Work make_work(double* p, int64_t rows, int K) {
  Work w;
  w.la = p;
  w.a = p + rows * K;
  w.r = p + 2 * rows * K;
  w.F = p + 3 * rows * K;
  w.m = p + 4 * rows * K;
  double* q = w.m + rows;
  w.lb = q;
  w.lb2 = q + K;
  w.bt = q + 2 * K;
  w.Bk = q + 3 * K;
  w.Bk2 = q + 4 * K;
  w.mu = q + 5 * K;
  w.ring = rows == kRingRows;  // with T = 2 all rows are the ring's: row(t) = t either way
  return w;
}

// x * y where x == 0 gives 0 whatever y holds (a path of no mass adds nothing, even an infinite
// statistic).
EBM_HD inline double weighted(double x, double y) { return x == 0.0 ? 0.0 : x * y; }

// Online log-sum-exp: folds x into (mx, s) with the sum s * exp(mx).
EBM_HD inline void lse_add(double x, double& mx, double& s) {
  if (!(x > -inf())) return;
  if (x > mx) {
    s = s * exp(mx - x) + 1.0;
    mx = x;
  } else {
    s += exp(x - mx);
  }
}

EBM_HD inline double lse_value(double mx, double s) { return s == 0.0 ? -inf() : mx + log(s); }

// Fills a and m of step t from la, by the team; returns the row's largest log message.
template <typename Team>
EBM_HD double scale_row(const Team& team, const Work& w, int64_t t, int K) {
  const double* la = w.la + w.row(t) * K;
  double* a = w.a + w.row(t) * K;
  double mx = -inf();
  for (int j = team.rank(); j < K; j += team.size()) mx = fmax(mx, la[j]);
  mx = team.max(mx);
  if (team.rank() == 0) w.m[w.row(t)] = mx;
  for (int j = team.rank(); j < K; j += team.size()) a[j] = mx > -inf() ? exp(la[j] - mx) : 0.0;
  team.sync();
  return mx;
}

// P(y_{t-1} = i | y_t = j, x_{<=t}): the forward weights of column j at step t >= 1.
template <typename S>
struct ForwardColumn {
  const Chain<S>& e;
  const ExpTrans& x;
  const Work& w;
  int64_t b, t;
  int j;
  double log_norm;  // the column's log-sum-exp, for the log-space columns
  EBM_HD ForwardColumn(const Chain<S>& e_, const ExpTrans& x_, const Work& w_, int64_t b_,
                       int64_t t_, int j_)
      : e(e_), x(x_), w(w_), b(b_), t(t_), j(j_),
        log_norm(w_.la[w_.row(t_) * e_.K + j_] + e_.u(b_, t_, j_)) {}
  EBM_HD double operator()(int i) const {
    const int K = e.K;
    const double r = w.r[w.row(t) * K + j];
    if (r > 0) return w.a[w.row(t - 1) * K + i] * x.E[i * K + j] * r;
    const double l = w.la[w.row(t - 1) * K + i] - e.tr(i, j);
    return l > -inf() ? exp(l - log_norm) : 0.0;
  }
};

// The forward pass of sequence b, length L >= 1, by the team: log Z (-inf without an allowed
// path, NaN when it reads a NaN or -inf energy); with a direction v, *expect = E_p[v . phi] (0
// without a path). Every member returns the same values.
template <typename Team, typename S>
EBM_HD double forward(const Team& team, const Chain<S>& e, const Chain<S>* v, const ExpTrans& x,
                      int64_t b, int64_t L, const Work& w, double* expect) {
  const int K = e.K;
  const int first = team.rank();
  const int stride = team.size();
  if (expect) *expect = 0.0;
  bool invalid = false;
  for (int64_t t = 0; t < L && !invalid; ++t)
    for (int j = first; j < K; j += stride) invalid = invalid || !(e.u(b, t, j) > -inf());
  if (team.any(invalid)) return std::numeric_limits<double>::quiet_NaN();
  for (int j = first; j < K; j += stride) {
    w.la[j] = -(e.st(j) + e.u(b, 0, j));
    if (v) w.F[j] = w.la[j] > -inf() ? v->st(j) + v->u(b, 0, j) : 0.0;  // F: only with v
  }
  if (!(scale_row(team, w, 0, K) > -inf())) return -inf();
  for (int64_t t = 1; t < L; ++t) {
    const int64_t prev = w.row(t - 1) * K, cur = w.row(t) * K;
    const double* ap = w.a + prev;
    const double* lap = w.la + prev;
    const double* Fp = w.F + prev;
    const double mp = w.m[w.row(t - 1)];
    for (int j = first; j < K; j += stride) {
      const int64_t at = cur + j;
      const double uj = e.u(b, t, j);
      w.r[at] = -1.0;
      if (v) w.F[at] = 0.0;
      if (uj == inf()) {
        w.la[at] = -inf();
        continue;
      }
      double s = 0.0, acc = 0.0;
      for (int i = 0; i < K; ++i) {
        const double p = ap[i] * x.E[i * K + j];
        s += p;
        if (v) acc += weighted(p, Fp[i] + v->tr(i, j));
      }
      double c;
      if (s >= kTau) {
        c = mp - x.tmin + log(s);
        w.r[at] = 1.0 / s;
        acc /= s;
      } else {
        double mx = -inf(), sum = 0.0;
        for (int i = 0; i < K; ++i) lse_add(lap[i] - e.tr(i, j), mx, sum);
        c = lse_value(mx, sum);
        acc = 0.0;
        if (v && c > -inf())
          for (int i = 0; i < K; ++i) {
            const double l = lap[i] - e.tr(i, j);
            if (l > -inf()) acc += weighted(exp(l - c), Fp[i] + v->tr(i, j));
          }
      }
      w.la[at] = c - uj;
      if (v && c > -inf()) w.F[at] = acc + v->u(b, t, j);
    }
    if (!(scale_row(team, w, t, K) > -inf())) return -inf();
  }
  // log Z = log-sum-exp_j (la_{L-1}(j) - end(j)): the largest term, then the sum below it.
  const int64_t last = w.row(L - 1) * K;
  double mx = -inf();
  for (int j = first; j < K; j += stride) mx = fmax(mx, w.la[last + j] - e.en(j));
  mx = team.max(mx);
  if (!(mx > -inf())) return -inf();
  double sum = 0.0;
  for (int j = first; j < K; j += stride) {
    const double l = w.la[last + j] - e.en(j);
    if (l > -inf()) sum += exp(l - mx);
  }
  const double lz = mx + log(team.sum(sum));
  if (v && expect) {
    double es = 0.0;
    for (int j = first; j < K; j += stride) {
      const double l = w.la[last + j] - e.en(j);
      if (l > -inf()) es += weighted(exp(l - lz), w.F[last + j] + v->en(j));
    }
    *expect = team.sum(es);
  }
  return lz;
}

// weight * Cov_p(phi, v . phi) of sequence b, by the team, after forward() with the same v and
// the same work (rows = T) returned a finite lz and expectation es: the unary entries into cu
// ((T, K) of this sequence, in S), the transition, first and last ones added to ct (K, K), cs and
// ce (K) (double accumulators; member r adds only to the columns j it owns).
template <typename Team, typename S>
EBM_HD void covariance(const Team& team, const Chain<S>& e, const Chain<S>& v, const ExpTrans& x,
                       int64_t b, int64_t L, const Work& w, double lz, double es, double weight,
                       S* cu, double* ct, double* cs, double* ce) {
  const int K = e.K;
  const int first = team.rank();
  const int stride = team.size();
  double *lb = w.lb, *lb2 = w.lb2, *Bk = w.Bk, *Bk2 = w.Bk2;
  for (int j = first; j < K; j += stride) {
    lb[j] = -e.en(j);
    Bk[j] = lb[j] > -inf() ? v.en(j) : 0.0;
  }
  team.sync();
  for (int64_t t = L - 1; t >= 0; --t) {
    const double* lat = w.la + t * K;
    for (int j = first; j < K; j += stride) {
      const double l = lat[j] + lb[j];
      const double mu = l > -inf() ? exp(l - lz) : 0.0;
      w.mu[j] = mu;
      const double c = weighted(weight * mu, w.F[t * K + j] + Bk[j] - es);
      cu[t * K + j] = static_cast<S>(c);
      if (t == 0) cs[j] += c;
      if (t == L - 1) ce[j] += c;
    }
    if (t == 0) break;
    // Pairs (y_{t-1} = i, y_t = j): P = mu_t(j) P(i | j), E[s | i, j] = F_{t-1}(i) + v.trans(i, j)
    // + v.unary(t, j) + B_t(j).
    for (int j = first; j < K; j += stride) {
      if (w.mu[j] == 0.0) continue;
      const ForwardColumn<S> col(e, x, w, b, t, j);
      const double base = v.u(b, t, j) + Bk[j] - es;
      const double scale = weight * w.mu[j];
      for (int i = 0; i < K; ++i) {
        const double p = col(i);
        if (p != 0.0) ct[i * K + j] += weighted(scale * p, w.F[(t - 1) * K + i] + v.tr(i, j) + base);
      }
    }
    // The backward message to t - 1: q(j) = lb(j) - unary(t, j).
    double mq = -inf();
    for (int j = first; j < K; j += stride) {
      const double q = lb[j] - e.u(b, t, j);
      w.bt[j] = q;
      mq = fmax(mq, q);
    }
    mq = team.max(mq);
    for (int j = first; j < K; j += stride)
      w.bt[j] = mq > -inf() && w.bt[j] > -inf() ? exp(w.bt[j] - mq) : 0.0;
    team.sync();
    for (int i = first; i < K; i += stride) {
      lb2[i] = -inf();
      Bk2[i] = 0.0;
      // A tag the front cannot reach has no mass, and its messages reach no tag that has any.
      if (!(w.la[(t - 1) * K + i] > -inf()) || !(mq > -inf())) continue;
      double R = 0.0;
      for (int j = 0; j < K; ++j) R += x.E[i * K + j] * w.bt[j];
      double acc = 0.0;
      if (R >= kTau) {
        lb2[i] = mq - x.tmin + log(R);
        for (int j = 0; j < K; ++j) {
          const double p = x.E[i * K + j] * w.bt[j] / R;
          if (p != 0.0) acc += weighted(p, v.tr(i, j) + v.u(b, t, j) + Bk[j]);
        }
      } else {
        double mx = -inf(), sum = 0.0;
        for (int j = 0; j < K; ++j) lse_add(lb[j] - e.u(b, t, j) - e.tr(i, j), mx, sum);
        lb2[i] = lse_value(mx, sum);
        if (lb2[i] > -inf())
          for (int j = 0; j < K; ++j) {
            const double l = lb[j] - e.u(b, t, j) - e.tr(i, j);
            if (l > -inf()) acc += weighted(exp(l - lb2[i]), v.tr(i, j) + v.u(b, t, j) + Bk[j]);
          }
      }
      Bk2[i] = acc;
    }
    team.sync();  // every member reads the new messages of every tag at the next step
    double* s1 = lb;
    lb = lb2;
    lb2 = s1;
    double* s2 = Bk;
    Bk = Bk2;
    Bk2 = s2;
  }
}

// The first index whose running sum of weight(i) exceeds u times the total; never a tag of
// weight 0 (the last one of positive weight if rounding leaves the scan short).
template <typename Weights>
EBM_HD int pick(const Weights& weight, int K, double u) {
  double total = 0.0;
  for (int i = 0; i < K; ++i) total += weight(i);
  const double target = u * total;
  double run = 0.0;
  int last = -1;
  for (int i = 0; i < K; ++i) {
    const double p = weight(i);
    if (p <= 0.0) continue;
    run += p;
    last = i;
    if (run > target) return i;
  }
  return last;
}

template <typename S>
struct LastTag {
  const Chain<S>& e;
  const Work& w;
  int64_t L;
  double lz;
  EBM_HD double operator()(int j) const {
    const double l = w.la[w.row(L - 1) * e.K + j] - e.en(j);
    return l > -inf() ? exp(l - lz) : 0.0;
  }
};

// One exact sample of sequence b after forward() returned a finite lz: y_{L-1} from its
// marginal, then y_{t-1} | y_t from the forward weights, with the uniform noise[t] for tag t.
template <typename S>
EBM_HD void sample(const Chain<S>& e, const ExpTrans& x, int64_t b, int64_t L, const Work& w,
                   double lz, const double* noise, int64_t* tags) {
  const LastTag<S> last{e, w, L, lz};
  tags[L - 1] = pick(last, e.K, noise[L - 1]);
  for (int64_t t = L - 1; t >= 1; --t) {
    const ForwardColumn<S> col(e, x, w, b, t, static_cast<int>(tags[t]));
    tags[t - 1] = pick(col, e.K, noise[t - 1]);
  }
}

}  // namespace chain_seq
}  // namespace ebm_ext
