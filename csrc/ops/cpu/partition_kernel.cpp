// CPU kernels of the log-partition family: a scaled forward-backward in the exp domain.
//
// Scores are minus energies. With E[i][j] = exp(tmin - trans[i][j]) (tmin the smallest finite
// transition) the forward recursion is a vector-matrix product per step,
//   v_t(j) = sum_i a_{t-1}(i) E[i][j],   a_t(j) = v_t(j) exp(umin_t - unary[t][j]) / m_t,
// with every vector rescaled so that its largest entry is 1 and the logs of the scales summed.
// That is exact as long as no transition is more than kMaxRange below the best one into the
// same tag, because then every v_t(j) of a reachable j is at least exp(-kMaxRange): the range of
// finite transitions is checked once per call and, past it (energies of 1e4 in trans), the
// kernels switch to a log-space recursion that is slower but has no such limit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

// Everything read about one batch, plus the exp-domain transition matrices.
template <typename S>
struct Problem {
  const S* unary;
  const S* trans;
  const S* start;
  const S* end;
  const int64_t* lengths;
  int64_t B, T, K, Kp;
  bool exp_domain;   // false: the log-space fallback
  S tmin;            // E = exp(tmin - trans)
  const S* E;        // (K, Kp), E[i*Kp + j]
  const S* ET;       // (K, Kp), ET[j*Kp + i]
  bool params_nan;

  int64_t length(int64_t b) const { return lengths ? lengths[b] : T; }
  S start_at(int64_t j) const { return start ? start[j] : S(0); }
  S end_at(int64_t j) const { return end ? end[j] : S(0); }
  const S* unary_at(int64_t b, int64_t t) const { return unary + (b * T + t) * K; }
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
  // Range of the finite transitions decides the recursion; -inf or NaN anywhere also goes to
  // the log-space path, which propagates them.
  S lo = inf_v<S>, hi = -inf_v<S>;
  bool odd = false;
  for (int64_t n = 0; n < p.K * p.K; ++n) {
    const S v = p.trans[n];
    if (v == inf_v<S>) continue;
    if (!(v > -inf_v<S>)) {
      odd = true;
      continue;
    }
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool nan = false;
  for (const S* q : {p.start, p.end}) {
    if (!q) continue;
    for (int64_t j = 0; j < p.K; ++j) nan |= std::isnan(q[j]);
  }
  p.params_nan = nan || any_nan(p.trans, p.K * p.K);
  p.exp_domain = !odd && !(hi - lo > kMaxRange<S>);
  p.tmin = lo == inf_v<S> ? S(0) : lo;
  x.E = at::zeros({p.K, p.Kp}, trans.options());
  x.ET = at::zeros({p.K, p.Kp}, trans.options());
  S* E = x.E.data_ptr<S>();
  S* ET = x.ET.data_ptr<S>();
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.K; ++j) {
      const S e = std::exp(p.tmin - p.trans[i * p.K + j]);
      E[i * p.Kp + j] = e;
      ET[j * p.Kp + i] = e;
    }
  p.E = E;
  p.ET = ET;
  return p;
}

// Scratch of one thread, and the forward-backward of one sequence in either domain.
template <typename S>
struct ForwardBackward {
  const Problem<S>& p;
  // exp domain: a (T, Kp) rescaled forward vectors, v (T, Kp) the products before the unary
  // factor, w (T, Kp) = exp(umin_t - unary_t), beta/next (Kp).
  // log space: a (T, Kp) log forward, beta (Kp) log backward.
  std::vector<S> a, v, w, beta, next, tmp;

  explicit ForwardBackward(const Problem<S>& prob)
      : p(prob), a(std::max<int64_t>(1, prob.T) * prob.Kp), v(a.size()), w(a.size()),
        beta(prob.Kp), next(prob.Kp), tmp(prob.Kp) {}

  // Fills w_t = exp(umin - x) for x = unary_t (+ end at the last position, so that the end
  // energies are rescaled together with the unary ones); returns umin (+inf: no tag allowed,
  // NaN: NaN input).
  S unary_factor(int64_t b, int64_t t, bool last) {
    const S* u = p.unary_at(b, t);
    for (int64_t j = 0; j < p.K; ++j) tmp[j] = u[j] + (last ? p.end_at(j) : S(0));
    std::fill(tmp.begin() + p.K, tmp.end(), inf_v<S>);
    if (any_nan(tmp.data(), p.K)) return std::numeric_limits<S>::quiet_NaN();
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
  // whole energy of its position.
  S forward_exp(int64_t b, int64_t L) {
    const int64_t K = p.K, Kp = p.Kp;
    S logz = 0;
    {
      const S* u = p.unary_at(b, 0);
      S* a0 = a.data();
      for (int64_t j = 0; j < K; ++j) {
        a0[j] = -(u[j] + p.start_at(j) + (L == 1 ? p.end_at(j) : S(0)));
      }
      if (any_nan(a0, K)) return std::numeric_limits<S>::quiet_NaN();
      const S m = *std::max_element(a0, a0 + K);
      if (m == -inf_v<S>) return -inf_v<S>;
      for (int64_t j = 0; j < K; ++j) a0[j] = std::exp(a0[j] - m);
      std::fill(a0 + K, a0 + Kp, S(0));
      logz = m;
    }
    for (int64_t t = 1; t < L; ++t) {
      S* at = a.data() + t * Kp;
      S* vt = v.data() + t * Kp;
      vecmat(a.data() + (t - 1) * Kp, p.E, K, Kp, vt);
      const S umin = unary_factor(b, t, t == L - 1);
      if (std::isnan(umin)) return umin;
      const S* wt = w.data() + t * Kp;
      S m = 0;
      for (int64_t j = 0; j < Kp; ++j) {
        at[j] = vt[j] * wt[j];
        m = std::max(m, at[j]);
      }
      if (m == 0) return -inf_v<S>;
      const S inv = S(1) / m;
      for (int64_t j = 0; j < Kp; ++j) at[j] *= inv;
      logz += std::log(m) - p.tmin - umin;
    }
    const S* aL = a.data() + (L - 1) * Kp;
    S total = 0;
    for (int64_t j = 0; j < K; ++j) total += aL[j];  // >= 1: the largest entry is 1
    return logz + std::log(total);
  }

  // Marginals of sequence b into marg (L, K) rows, scaled by `scale`; pair marginals (times
  // scale, before the elementwise product with E) added into pair (K, Kp). Needs forward_exp.
  void backward_exp(int64_t L, S scale, S* marg, int64_t marg_stride, S* pair) {
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
      // q = w_t * beta_t; pair marginals a_{t-1}(i) E(i,j) q(j) / Z_t with Z_t = sum_j v_t q.
      const S* wt = w.data() + t * Kp;
      const S* vt = v.data() + t * Kp;
      S z = 0;
      for (int64_t j = 0; j < Kp; ++j) {
        tmp[j] = wt[j] * beta[j];
        z += vt[j] * tmp[j];
      }
      if (pair) {
        const S f = scale / z;
        for (int64_t j = 0; j < Kp; ++j) next[j] = tmp[j] * f;
        add_outer(a.data() + (t - 1) * Kp, next.data(), K, Kp, pair);
      }
      vecmat(tmp.data(), p.ET, K, Kp, next.data());
      S m = 0;
      for (int64_t i = 0; i < K; ++i) m = std::max(m, next[i]);
      const S inv = S(1) / m;
      for (int64_t i = 0; i < Kp; ++i) beta[i] = next[i] * inv;
    }
  }

  // ---- log space: the same quantities with log-sum-exp, for transitions of huge range ----
  static S logsumexp(const S* x, int64_t n) {
    S m = -inf_v<S>;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
    if (std::isnan(m) || any_nan(x, n)) return std::numeric_limits<S>::quiet_NaN();
    if (m == -inf_v<S> || m == inf_v<S>) return m;
    S s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
    return m + std::log(s);
  }

  S forward_log(int64_t b, int64_t L) {
    const int64_t K = p.K, Kp = p.Kp;
    const S* u0 = p.unary_at(b, 0);
    for (int64_t j = 0; j < K; ++j) a[j] = -(u0[j] + p.start_at(j));
    for (int64_t t = 1; t < L; ++t) {
      const S* prev = a.data() + (t - 1) * Kp;
      const S* u = p.unary_at(b, t);
      for (int64_t j = 0; j < K; ++j) {
        for (int64_t i = 0; i < K; ++i) tmp[i] = prev[i] - p.trans[i * K + j];
        a[t * Kp + j] = logsumexp(tmp.data(), K) - u[j];
      }
    }
    const S* aL = a.data() + (L - 1) * Kp;
    for (int64_t j = 0; j < K; ++j) tmp[j] = aL[j] - p.end_at(j);
    return logsumexp(tmp.data(), K);
  }

  void backward_log(int64_t b, int64_t L, S logz, S scale, S* marg, int64_t marg_stride,
                    S* pair) {
    const int64_t K = p.K, Kp = p.Kp;
    for (int64_t i = 0; i < K; ++i) beta[i] = -p.end_at(i);
    for (int64_t t = L - 1; t >= 0; --t) {
      const S* at = a.data() + t * Kp;
      if (marg)
        for (int64_t j = 0; j < K; ++j)
          marg[t * marg_stride + j] = scale * std::exp(at[j] + beta[j] - logz);
      if (t == 0) break;
      const S* prev = a.data() + (t - 1) * Kp;
      const S* u = p.unary_at(b, t);
      for (int64_t j = 0; j < K; ++j) tmp[j] = beta[j] - u[j];  // log q_t(j)
      if (pair)
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < K; ++j)
            pair[i * Kp + j] += scale * std::exp(prev[i] - p.trans[i * K + j] + tmp[j] - logz);
      for (int64_t i = 0; i < K; ++i) {
        for (int64_t j = 0; j < K; ++j) next[j] = tmp[j] - p.trans[i * K + j];
        beta[i] = logsumexp(next.data(), K);
      }
    }
  }

  S forward(int64_t b, int64_t L) { return p.exp_domain ? forward_exp(b, L) : forward_log(b, L); }
};

// Work per sequence is about T*K*K.
int64_t grain(int64_t T, int64_t K) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, T * K * K));
}

at::Tensor chain_log_partition_cpu(const at::Tensor& unary, const at::Tensor& trans,
                                   const c10::optional<at::Tensor>& lengths,
                                   const c10::optional<at::Tensor>& start,
                                   const c10::optional<at::Tensor>& end) {
  const auto d = check_chain_inputs("chain_log_partition", unary, trans, lengths, start, end);
  auto logz = at::empty({d.B}, unary.options());
  if (d.B == 0) return logz;
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_log_partition_cpu", [&] {
    Inputs x;
    const auto prob = make_problem<scalar_t>(x, unary, trans, lengths, start, end);
    auto* out = logz.data_ptr<scalar_t>();
    at::parallel_for(0, d.B, grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
      ForwardBackward<scalar_t> fb(prob);
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = prob.length(b);
        const scalar_t z = L == 0 ? scalar_t(0) : fb.forward(b, L);
        out[b] = L > 0 && prob.params_nan ? std::numeric_limits<scalar_t>::quiet_NaN() : z;
      }
    });
  });
  return logz;
}

// The forward-backward shared by the gradient of log Z and the marginals: d_unary (B, T, K)
// receives scale_b * p(y_t = k); with `want_params`, also the pair, first and last marginals
// summed over the batch with the same scales. Sequences with log Z = +-inf or NaN contribute NaN
// (NaN inputs) or nothing (no feasible path).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward_cpu(
    const char* op, const at::Tensor& scale, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, bool want_params) {
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  auto d_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto d_trans = at::zeros({d.K, d.K}, unary.options());
  auto d_start = at::zeros({d.K}, unary.options());
  auto d_end = at::zeros({d.K}, unary.options());
  if (d.B == 0 || d.T == 0) return {d_unary, d_trans, d_start, d_end};
  const auto scale_c = scale.contiguous();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_forward_backward_cpu", [&] {
    using S = scalar_t;
    Inputs x;
    const auto prob = make_problem<S>(x, unary, trans, lengths, start, end);
    const S* g = scale_c.data_ptr<S>();
    S* du = d_unary.data_ptr<S>();
    const int64_t K = d.K, Kp = prob.Kp;
    // Per-chunk sums of the parameter gradients, added in chunk order: deterministic for a
    // given thread count.
    const int64_t chunk = grain(d.T, d.K);
    const int64_t n_chunks = (d.B + chunk - 1) / chunk;
    std::vector<std::vector<S>> pair(n_chunks), first(n_chunks), last(n_chunks);
    at::parallel_for(0, n_chunks, 1, [&](int64_t c_lo, int64_t c_hi) {
      ForwardBackward<S> fb(prob);
      std::vector<S> marg;
      for (int64_t c = c_lo; c < c_hi; ++c) {
        if (want_params) {
          pair[c].assign(K * Kp, S(0));
          first[c].assign(K, S(0));
          last[c].assign(K, S(0));
        }
        for (int64_t b = c * chunk; b < std::min(d.B, (c + 1) * chunk); ++b) {
          const int64_t L = prob.length(b);
          if (L == 0) continue;
          const S logz = fb.forward(b, L);
          S* mb = du + b * d.T * K;
          if (std::isnan(logz) || prob.params_nan) {
            std::fill(mb, mb + L * K, std::numeric_limits<S>::quiet_NaN());
            if (want_params) {
              std::fill(pair[c].begin(), pair[c].end(), std::numeric_limits<S>::quiet_NaN());
              std::fill(first[c].begin(), first[c].end(), std::numeric_limits<S>::quiet_NaN());
              std::fill(last[c].begin(), last[c].end(), std::numeric_limits<S>::quiet_NaN());
            }
            continue;
          }
          if (std::isinf(logz) || g[b] == S(0)) continue;
          S* pr = want_params ? pair[c].data() : nullptr;
          if (prob.exp_domain) {
            fb.backward_exp(L, g[b], mb, K, pr);
          } else {
            fb.backward_log(b, L, logz, g[b], mb, K, pr);
          }
          if (want_params) {
            for (int64_t j = 0; j < K; ++j) {
              first[c][j] += mb[j];
              last[c][j] += mb[(L - 1) * K + j];
            }
          }
        }
      }
    });
    if (want_params) {
      S* dt = d_trans.data_ptr<S>();
      S* ds = d_start.data_ptr<S>();
      S* de = d_end.data_ptr<S>();
      for (int64_t c = 0; c < n_chunks; ++c) {
        for (int64_t i = 0; i < K; ++i) {
          for (int64_t j = 0; j < K; ++j) {
            // exp domain: pair sums still lack the factor E(i, j).
            const S e = prob.exp_domain ? prob.E[i * Kp + j] : S(1);
            dt[i * K + j] += pair[c][i * Kp + j] * e;
          }
          ds[i] += first[c][i];
          de[i] += last[c][i];
        }
      }
    }
  });
  return {d_unary, d_trans, d_start, d_end};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chain_log_partition_backward_cpu(
    const at::Tensor& grad, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end) {
  const char* op = "_chain_log_partition_backward";
  check_partition_grad(op, grad, unary);
  // d log Z = -(marginals): run the forward-backward with scale -grad.
  return forward_backward_cpu(op, -grad, unary, trans, lengths, start, end, true);
}

at::Tensor chain_marginals_cpu(const at::Tensor& unary, const at::Tensor& trans,
                               const c10::optional<at::Tensor>& lengths,
                               const c10::optional<at::Tensor>& start,
                               const c10::optional<at::Tensor>& end) {
  TORCH_CHECK(unary.dim() == 3, "chain_marginals: unary must be a 3-D tensor (B, T, K), got shape ",
              shape_str(unary));
  const auto ones = at::ones({unary.size(0)}, unary.options());
  return std::get<0>(
      forward_backward_cpu("chain_marginals", ones, unary, trans, lengths, start, end, false));
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("chain_log_partition", &chain_log_partition_cpu);
  m.impl("chain_marginals", &chain_marginals_cpu);
  m.impl("_chain_log_partition_backward", &chain_log_partition_backward_cpu);
}

}  // namespace ebm_ext
