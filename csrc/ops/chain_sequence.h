// One sequence of a linear chain in float64, written once for both backends: the CPU kernels
// loop over the batch, the CUDA kernels run one thread per sequence (csrc/ops/cpu and cuda
// distribution_kernel). Three passes over the chain energy
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

// Scratch of one sequence: work_doubles(T, K) doubles.
struct Work {
  double *la, *a, *m, *r, *F;        // (T, K) log forward messages (unary at t included), their
                                      // exp scaled to a largest entry of 1 (max in m, (T,)), 1/S_j
                                      // (-1: the column ran in log space), and F
  double *lb, *lb2, *bt, *Bk, *Bk2, *mu;  // (K) each: the backward pass
};

EBM_HD inline int64_t work_doubles(int64_t T, int K) { return 4 * T * K + T + 6 * int64_t(K); }

EBM_HD inline Work make_work(double* p, int64_t T, int K) {
  Work w;
  w.la = p;
  w.a = p + T * K;
  w.r = p + 2 * T * K;
  w.F = p + 3 * T * K;
  w.m = p + 4 * T * K;
  double* q = w.m + T;
  w.lb = q;
  w.lb2 = q + K;
  w.bt = q + 2 * K;
  w.Bk = q + 3 * K;
  w.Bk2 = q + 4 * K;
  w.mu = q + 5 * K;
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

// Fills a and m of row t from la.
EBM_HD inline double scale_row(const Work& w, int64_t t, int K) {
  double mx = -inf();
  for (int j = 0; j < K; ++j) mx = fmax(mx, w.la[t * K + j]);
  w.m[t] = mx;
  for (int j = 0; j < K; ++j) w.a[t * K + j] = mx > -inf() ? exp(w.la[t * K + j] - mx) : 0.0;
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
        log_norm(w_.la[t_ * e_.K + j_] + e_.u(b_, t_, j_)) {}
  EBM_HD double operator()(int i) const {
    const int K = e.K;
    const double r = w.r[t * K + j];
    if (r > 0) return w.a[(t - 1) * K + i] * x.E[i * K + j] * r;
    const double l = w.la[(t - 1) * K + i] - e.tr(i, j);
    return l > -inf() ? exp(l - log_norm) : 0.0;
  }
};

// The forward pass of sequence b, length L >= 1: log Z (-inf without an allowed path, NaN when
// it reads a NaN or -inf energy); with a direction v, *expect = E_p[v . phi] (0 without a path).
template <typename S>
EBM_HD double forward(const Chain<S>& e, const Chain<S>* v, const ExpTrans& x, int64_t b,
                      int64_t L, const Work& w, double* expect) {
  const int K = e.K;
  if (expect) *expect = 0.0;
  for (int64_t t = 0; t < L; ++t)
    for (int j = 0; j < K; ++j)
      if (!(e.u(b, t, j) > -inf())) return std::numeric_limits<double>::quiet_NaN();
  for (int j = 0; j < K; ++j) {
    w.la[j] = -(e.st(j) + e.u(b, 0, j));
    w.F[j] = v && w.la[j] > -inf() ? v->st(j) + v->u(b, 0, j) : 0.0;
  }
  if (!(scale_row(w, 0, K) > -inf())) return -inf();
  for (int64_t t = 1; t < L; ++t) {
    const double* ap = w.a + (t - 1) * K;
    const double* lap = w.la + (t - 1) * K;
    const double* Fp = w.F + (t - 1) * K;
    for (int j = 0; j < K; ++j) {
      const int64_t at = t * K + j;
      const double uj = e.u(b, t, j);
      w.r[at] = -1.0;
      w.F[at] = 0.0;
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
        c = w.m[t - 1] - x.tmin + log(s);
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
    if (!(scale_row(w, t, K) > -inf())) return -inf();
  }
  double mx = -inf(), sum = 0.0;
  for (int j = 0; j < K; ++j) lse_add(w.la[(L - 1) * K + j] - e.en(j), mx, sum);
  const double lz = lse_value(mx, sum);
  if (v && expect && lz > -inf()) {
    double es = 0.0;
    for (int j = 0; j < K; ++j) {
      const double l = w.la[(L - 1) * K + j] - e.en(j);
      if (l > -inf()) es += weighted(exp(l - lz), w.F[(L - 1) * K + j] + v->en(j));
    }
    *expect = es;
  }
  return lz;
}

// weight * Cov_p(phi, v . phi) of sequence b, after forward() with the same v returned a finite
// lz and expectation es: the unary entries into cu ((T, K) of this sequence, in S), the
// transition, first and last ones added to ct (K, K), cs and ce (K) (double accumulators).
template <typename S>
EBM_HD void covariance(const Chain<S>& e, const Chain<S>& v, const ExpTrans& x, int64_t b,
                       int64_t L, const Work& w, double lz, double es, double weight, S* cu,
                       double* ct, double* cs, double* ce) {
  const int K = e.K;
  double *lb = w.lb, *lb2 = w.lb2, *Bk = w.Bk, *Bk2 = w.Bk2;
  for (int j = 0; j < K; ++j) {
    lb[j] = -e.en(j);
    Bk[j] = lb[j] > -inf() ? v.en(j) : 0.0;
  }
  for (int64_t t = L - 1; t >= 0; --t) {
    const double* lat = w.la + t * K;
    for (int j = 0; j < K; ++j) {
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
    for (int j = 0; j < K; ++j) {
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
    for (int j = 0; j < K; ++j) {
      const double q = lb[j] - e.u(b, t, j);
      w.bt[j] = q;
      mq = fmax(mq, q);
    }
    for (int j = 0; j < K; ++j) w.bt[j] = mq > -inf() && w.bt[j] > -inf() ? exp(w.bt[j] - mq) : 0.0;
    for (int i = 0; i < K; ++i) {
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
    const double l = w.la[(L - 1) * e.K + j] - e.en(j);
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
