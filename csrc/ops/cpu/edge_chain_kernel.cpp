// The general chains (../edge_chain.h) on the CPU: a team of one per sequence, sequences in
// parallel. Called by the shared ops' CPU kernels after their checks.
#include <ATen/Parallel.h>

#include <vector>

#include "../chain_sequence.h"
#include "../edge_chain_ops.h"
#include "simd.h"

namespace ebm_ext {

// ---- edge::host: the vectorised sweeps of one move (declared in ../edge_chain.h) -------------
namespace edge {
namespace host {
namespace {

using V = simd::Lanes<double>::V;
using I = simd::Lanes<double>::I;
constexpr int N = simd::Lanes<double>::N;
const V kNegInf = V{} - std::numeric_limits<double>::infinity();

// 8 entries of a row of S as float64 lanes.
template <typename S>
__attribute__((always_inline)) inline V lanes(const S* p) {
  if constexpr (std::is_same<S, double>::value) {
    return simd::load<V>(p);
  } else {
    typedef float F __attribute__((vector_size(32)));
    return __builtin_convertvector(simd::load<F>(p), V);
  }
}

__attribute__((always_inline)) inline V vmax(V a, V b) { return a > b ? a : b; }
__attribute__((always_inline)) inline V vmin(V a, V b) { return a < b ? a : b; }
__attribute__((always_inline)) inline double hsum(V a) {
  double s = 0.0;
  for (int l = 0; l < N; ++l) s += a[l];
  return s;
}

// Scratch of K doubles per thread.
double* scratch(int K, int which) {
  thread_local std::vector<double> buf[2];
  if (int64_t(buf[which].size()) < K) buf[which].resize(K);
  return buf[which].data();
}

template <typename S>
__attribute__((always_inline)) inline void column_lses_impl(const S* M, int K, const double* prev,
                                                            double* cur) {
  double* m = scratch(K, 0);
  double* s = scratch(K, 1);
  const int K8 = K - K % N;
  for (int j = 0; j < K; ++j) m[j] = -edge::inf(), s[j] = 0.0;
  for (int i = 0; i < K; ++i) {
    const double p = prev[i];
    if (!(p > -edge::inf())) continue;  // its terms are all -inf: nothing to the max or the sum
    const S* row = M + int64_t(i) * K;
    int j = 0;
    for (; j < K8; j += N) simd::store(m + j, vmax(simd::load<V>(m + j), p - lanes(row + j)));
    for (; j < K; ++j) m[j] = std::fmax(m[j], p - double(row[j]));
  }
  for (int i = 0; i < K; ++i) {
    const double p = prev[i];
    if (!(p > -edge::inf())) continue;
    const S* row = M + int64_t(i) * K;
    int j = 0;
    for (; j < K8; j += N) {
      const V mj = simd::load<V>(m + j);
      const V d = p - lanes(row + j) - mj;
      const V e = simd::exp_nonpositive(mj == kNegInf ? kNegInf : d);
      simd::store(s + j, simd::load<V>(s + j) + e);
    }
    for (; j < K; ++j)
      if (m[j] > -edge::inf()) s[j] += std::exp(p - double(row[j]) - m[j]);
  }
  for (int j = 0; j < K; ++j) cur[j] = m[j] > -edge::inf() ? m[j] + std::log(s[j]) : -edge::inf();
}

template <typename S>
__attribute__((always_inline)) inline void row_softmins_impl(const S* M, int K, const double* w,
                                                             double* beta) {
  const int K8 = K - K % N;
  const V inf = V{} + edge::inf();
  for (int i = 0; i < K; ++i) {
    const S* row = M + int64_t(i) * K;
    V mn = inf;
    int j = 0;
    for (; j < K8; j += N) mn = vmin(mn, lanes(row + j) + simd::load<V>(w + j));
    double lo = edge::inf();
    for (int l = 0; l < N; ++l) lo = std::fmin(lo, mn[l]);
    for (; j < K; ++j) lo = std::fmin(lo, double(row[j]) + w[j]);
    if (!(lo < edge::inf())) {
      beta[i] = edge::inf();
      continue;
    }
    V acc = V{};
    for (j = 0; j < K8; j += N)
      acc += simd::exp_nonpositive(lo - (lanes(row + j) + simd::load<V>(w + j)));
    double sum = hsum(acc);
    for (; j < K; ++j) sum += std::exp(lo - (double(row[j]) + w[j]));
    beta[i] = lo - std::log(sum);
  }
}

template <typename S>
__attribute__((always_inline)) inline void row_lses_impl(const S* M, int K, const double* lb,
                                                         const S* u, double* lb2) {
  const int K8 = K - K % N;
  for (int i = 0; i < K; ++i) {
    const S* row = M + int64_t(i) * K;
    V mx = kNegInf;
    int j = 0;
    for (; j < K8; j += N) mx = vmax(mx, simd::load<V>(lb + j) - lanes(row + j) - lanes(u + j));
    double hi = -edge::inf();
    for (int l = 0; l < N; ++l) hi = std::fmax(hi, mx[l]);
    for (; j < K; ++j) hi = std::fmax(hi, lb[j] - double(row[j]) - double(u[j]));
    if (!(hi > -edge::inf())) {
      lb2[i] = -edge::inf();
      continue;
    }
    V acc = V{};
    for (j = 0; j < K8; j += N)
      acc += simd::exp_nonpositive(simd::load<V>(lb + j) - lanes(row + j) - lanes(u + j) - hi);
    double sum = hsum(acc);
    for (; j < K; ++j) sum += std::exp(lb[j] - double(row[j]) - double(u[j]) - hi);
    lb2[i] = hi + std::log(sum);
  }
}

template <typename S>
__attribute__((always_inline)) inline void pairs_impl(const S* M, int K, const double* la,
                                                      const double* lb, const S* u, double logz,
                                                      double scale, double* out, bool add) {
  double* w = scratch(K, 0);
  for (int j = 0; j < K; ++j) w[j] = lb[j] - double(u[j]) - logz;
  const int K8 = K - K % N;
  for (int i = 0; i < K; ++i) {
    const S* row = M + int64_t(i) * K;
    double* o = out + int64_t(i) * K;
    const double x = la[i];
    int j = 0;
    for (; j < K8; j += N) {
      const V p = scale * simd::exp_nonpositive(x - lanes(row + j) + simd::load<V>(w + j));
      simd::store(o + j, add ? simd::load<V>(o + j) + p : p);
    }
    for (; j < K; ++j) {
      const double l = x - double(row[j]) + w[j];
      const double p = l > -edge::inf() ? scale * std::exp(l) : 0.0;
      o[j] = add ? o[j] + p : p;
    }
  }
}

}  // namespace

#define EBM_EDGE_SWEEPS_IMPL(S)                                                                  \
  EBM_CLONES void column_lses(const S* M, int K, const double* prev, double* cur) {              \
    column_lses_impl(M, K, prev, cur);                                                           \
  }                                                                                              \
  EBM_CLONES void row_softmins(const S* M, int K, const double* w, double* beta) {               \
    row_softmins_impl(M, K, w, beta);                                                            \
  }                                                                                              \
  EBM_CLONES void row_lses(const S* M, int K, const double* lb, const S* u, double* lb2) {       \
    row_lses_impl(M, K, lb, u, lb2);                                                             \
  }                                                                                              \
  EBM_CLONES void pairs(const S* M, int K, const double* la, const double* lb, const S* u,       \
                        double logz, double scale, double* out, bool add) {                      \
    pairs_impl(M, K, la, lb, u, logz, scale, out, add);                                          \
  }
EBM_EDGE_SWEEPS_IMPL(float)
EBM_EDGE_SWEEPS_IMPL(double)
#undef EBM_EDGE_SWEEPS_IMPL

}  // namespace host
}  // namespace edge

namespace cpu_edge {
namespace {

using chain_seq::Solo;

// Work per sequence is about T*K*K.
int64_t grain(int64_t T, int64_t K) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, T * K * K));
}

// The forward-backward of every sequence, scaled by scale_b: the marginals (d_unary and, with
// want_params, the pair, first and last marginals in the parameters' shapes), or with a
// direction v, scale_b Cov(phi, v . phi) in the same places.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_pass(
    const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, const edge::Inputs* direction, bool want_params) {
  auto d_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto g = edge::grad_buffers(d, trans);
  if (d.B > 0 && d.T > 0) {
    const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
    const auto scale_c = scale.contiguous();
    AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_backward_cpu", [&] {
      using S = scalar_t;
      const auto c = edge::view<S>(x);
      edge::EdgeChain<S> v_view;
      const edge::EdgeChain<S>* v = nullptr;
      if (direction) {
        v_view = edge::view<S>(*direction);
        v = &v_view;
      }
      const S* sc = scale_c.data_ptr<S>();
      const int64_t KK = d.K * d.K, per_b = g.trans.numel() / d.B;
      at::parallel_for(0, d.B, grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
        const Solo team;
        std::vector<double> la(d.T * d.K), F(v ? d.T * d.K : 0), q(4 * d.K);
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t L = c.length(b);
          if (L == 0) continue;
          edge::Grads<S> out{d_unary.data_ptr<S>() + b * d.T * d.K, nullptr,
                             trans.dim() == 4 ? KK : 0, nullptr, nullptr};
          if (want_params) {
            out.dtr = g.trans.data_ptr<double>() + b * per_b;
            out.dst = g.start.data_ptr<double>() + b * d.K;
            out.den = g.end.data_ptr<double>() + b * d.K;
          }
          if (edge::invalid(team, c, b, L)) {
            edge::fill_nan(team, c, L, out);
            continue;
          }
          double es = 0.0;
          const double lz = edge::forward(team, c, b, L, la.data(), false, v, F.data(), &es);
          if (lz == -edge::inf() || sc[b] == S(0)) continue;
          edge::backward(team, c, b, L, la.data(), lz, edge::to_double(sc[b]), q.data(),
                         q.data() + d.K, out, v, F.data(), es, q.data() + 2 * d.K,
                         q.data() + 3 * d.K);
        }
      });
    });
  }
  return edge::finish_grads(d_unary, g, trans, start, end);
}

// viterbi and, with gold and cost (contiguous), loss_augmented_viterbi: one decoder, as the
// one-matrix kernels share theirs. Returns (energy, delta, tags), delta undefined without cost.
// Viterbi's energy is the recursion's minimum (log_partition's bound relies on it); the
// loss-augmented energy is E(y*) summed along the path, as the one-matrix kernels return it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_all(
    const at::Tensor& unary, const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const at::Tensor& gold, const at::Tensor& cost) {
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto energy = at::empty({B}, unary.options());
  auto delta = cost.defined() ? at::empty({B}, unary.options()) : at::Tensor();
  auto tags = at::empty({B, T}, unary.options().dtype(at::kLong));
  if (B == 0) return {energy, delta, tags};
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_decode_cpu", [&] {
    using S = scalar_t;
    const auto c = edge::view<S>(x);
    const S* cs = cost.defined() ? cost.data_ptr<S>() : nullptr;
    const int64_t* g = gold.defined() ? gold.data_ptr<int64_t>() : nullptr;
    S* e = energy.data_ptr<S>();
    S* dl = cs ? delta.data_ptr<S>() : nullptr;
    int64_t* y = tags.data_ptr<int64_t>();
    at::parallel_for(0, B, grain(T, K), [&](int64_t lo, int64_t hi) {
      const Solo team;
      std::vector<double> beta(K), w(K);
      std::vector<int32_t> ptr(std::max<int64_t>(1, (T - 1) * K));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = c.length(b);
        int64_t* yb = y + b * T;
        if (L == 0) {
          std::fill(yb, yb + T, int64_t(-1));
          e[b] = S(0);
          if (dl) dl[b] = S(0);
          continue;
        }
        const double best = edge::decode(team, c, b, L, beta.data(), w.data(), ptr.data(), yb,
                                         cs, cs ? g + b * T : nullptr);
        const bool bad = edge::invalid(team, c, b, L);
        if (!cs) {
          e[b] = bad ? std::numeric_limits<S>::quiet_NaN() : edge::from_double<S>(best);
          continue;
        }
        S dsum = 0;
        for (int64_t t = 0; t < L; ++t) dsum += cs[g[b * T + t] * K + yb[t]];
        e[b] = bad ? std::numeric_limits<S>::quiet_NaN() : edge::path_energy<S>(c, b, yb, L);
        dl[b] = dsum;
      }
    });
  });
  return {energy, delta, tags};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> viterbi(const at::Tensor& unary, const at::Tensor& trans,
                                           const c10::optional<at::Tensor>& lengths,
                                           const c10::optional<at::Tensor>& start,
                                           const c10::optional<at::Tensor>& end) {
  const auto out = decode_all(unary, trans, lengths, start, end, at::Tensor(), at::Tensor());
  return {std::get<0>(out), std::get<2>(out)};
}

at::Tensor log_partition(const at::Tensor& unary, const at::Tensor& trans,
                         const c10::optional<at::Tensor>& lengths,
                         const c10::optional<at::Tensor>& start,
                         const c10::optional<at::Tensor>& end) {
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto logz = at::empty({B}, unary.options());
  if (B == 0) return logz;
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_log_partition_cpu", [&] {
    using S = scalar_t;
    const auto c = edge::view<S>(x);
    S* out = logz.data_ptr<S>();
    at::parallel_for(0, B, grain(T, K), [&](int64_t lo, int64_t hi) {
      const Solo team;
      std::vector<double> beta(K), w(K);
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = c.length(b);
        if (L == 0)
          out[b] = S(0);
        else if (edge::invalid(team, c, b, L))
          out[b] = std::numeric_limits<S>::quiet_NaN();
        else
          out[b] = edge::from_double<S>(edge::log_partition(team, c, b, L, beta.data(), w.data()));
      }
    });
  });
  return logz;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward(
    const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, bool want_params) {
  return backward_pass(d, scale, unary, trans, lengths, start, end, nullptr, want_params);
}

at::Tensor energy(const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& tags,
                  const c10::optional<at::Tensor>& lengths,
                  const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const int64_t T = unary.size(1);
  const int64_t C = tags.dim() == 3 ? tags.size(1) : 1;
  auto out_shape = tags.sizes().vec();
  out_shape.pop_back();
  auto energy = at::empty(out_shape, unary.options());
  if (energy.numel() == 0) return energy;
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  const auto tags_c = tags.contiguous();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_energy_cpu", [&] {
    using S = scalar_t;
    const auto c = edge::view<S>(x);
    const int64_t* y = tags_c.data_ptr<int64_t>();
    S* e = energy.data_ptr<S>();
    at::parallel_for(0, energy.numel(), std::max<int64_t>(1, 4096 / std::max<int64_t>(1, T)),
                     [&](int64_t lo, int64_t hi) {
                       for (int64_t n = lo; n < hi; ++n)
                         e[n] = edge::path_energy<S>(c, n / C, y + n * T, c.length(n / C));
                     });
  });
  return energy;
}

std::tuple<at::Tensor, at::Tensor> viterbi_kbest(const at::Tensor& unary, const at::Tensor& trans,
                                                 int64_t k,
                                                 const c10::optional<at::Tensor>& lengths,
                                                 const c10::optional<at::Tensor>& start,
                                                 const c10::optional<at::Tensor>& end) {
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto energy = at::empty({B, k}, unary.options());
  auto tags = at::empty({B, k, T}, unary.options().dtype(at::kLong));
  if (B == 0) return {energy, tags};
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_viterbi_kbest_cpu", [&] {
    using S = scalar_t;
    const auto c = edge::view<S>(x);
    S* e = energy.data_ptr<S>();
    int64_t* y = tags.data_ptr<int64_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, grain(T, K) / k), [&](int64_t lo, int64_t hi) {
      const Solo team;
      std::vector<double> beta(k * K), next(k * K), w(k * K), top(k);
      std::vector<int32_t> ptr(std::max<int64_t>(1, (T - 1) * k * K));
      std::vector<int64_t> codes(k);
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = c.length(b);
        S* eb = e + b * k;
        int64_t* yb = y + b * k * T;
        if (L == 0) {  // the empty path is the only one
          std::fill(yb, yb + k * T, int64_t(-1));
          std::fill(eb, eb + k, std::numeric_limits<S>::infinity());
          eb[0] = S(0);
          continue;
        }
        edge::kbest(team, c, b, L, k, beta.data(), next.data(), w.data(), ptr.data(),
                    codes.data(), top.data(), eb, yb);
        if (edge::invalid(team, c, b, L))
          for (int64_t s = 0; s < k; ++s)
            if (codes[s] >= 0) eb[s] = std::numeric_limits<S>::quiet_NaN();
      }
    });
  });
  return {energy, tags};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_augmented_viterbi(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& gold,
    const at::Tensor& cost, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  return decode_all(unary, trans, lengths, start, end, gold.contiguous(), cost.contiguous());
}

std::tuple<at::Tensor, at::Tensor> expectation(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,
    const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end) {
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto logz = at::empty({B}, unary.options());
  auto mean = at::empty({B}, unary.options());
  if (B == 0) return {logz, mean};
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  const auto xv = edge::contiguous_inputs(v_unary, v_trans, c10::nullopt, v_start, v_end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_expectation_cpu", [&] {
    using S = scalar_t;
    const auto c = edge::view<S>(x);
    const auto v = edge::view<S>(xv);
    S* lz = logz.data_ptr<S>();
    S* es = mean.data_ptr<S>();
    at::parallel_for(0, B, grain(T, K), [&](int64_t lo, int64_t hi) {
      const Solo team;
      std::vector<double> la(2 * K), F(2 * K);
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = c.length(b);
        double z = 0.0, m = 0.0;
        if (L > 0 && edge::invalid(team, c, b, L)) {
          z = m = std::numeric_limits<double>::quiet_NaN();
        } else if (L > 0) {
          z = edge::forward(team, c, b, L, la.data(), true, &v, F.data(), &m);
        }
        lz[b] = edge::from_double<S>(z);
        es[b] = edge::from_double<S>(m);
      }
    });
  });
  return {logz, mean};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> covariance(
    const at::Tensor& weight, const at::Tensor& unary, const at::Tensor& trans,
    const at::Tensor& v_unary, const c10::optional<at::Tensor>& v_trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, const c10::optional<at::Tensor>& v_start,
    const c10::optional<at::Tensor>& v_end) {
  const auto direction = edge::contiguous_inputs(v_unary, v_trans, c10::nullopt, v_start, v_end);
  return backward_pass({unary.size(0), unary.size(1), unary.size(2)}, weight, unary, trans,
                       lengths, start, end, &direction, true);
}

at::Tensor sample(const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& noise,
                  const c10::optional<at::Tensor>& lengths,
                  const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const int64_t N = noise.size(0), B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto tags = at::full({N, B, T}, -1, unary.options().dtype(at::kLong));
  if (N == 0 || B == 0 || T == 0) return tags;
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  const auto noise_c = noise.contiguous();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_sample_cpu", [&] {
    using S = scalar_t;
    const auto c = edge::view<S>(x);
    const double* u = noise_c.data_ptr<double>();
    int64_t* y = tags.data_ptr<int64_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, grain(T, K) / std::max<int64_t>(1, N)),
                     [&](int64_t lo, int64_t hi) {
      const Solo team;
      std::vector<double> la(T * K);
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = c.length(b);
        if (L == 0 || edge::invalid(team, c, b, L)) continue;  // -1: no path to draw
        const double lz = edge::forward(team, c, b, L, la.data(), false);
        if (!(lz > -edge::inf())) continue;
        for (int64_t n = 0; n < N; ++n)
          edge::sample(c, b, L, la.data(), lz, u + (n * B + b) * T, y + (n * B + b) * T);
      }
    });
  });
  return tags;
}

}  // namespace cpu_edge
}  // namespace ebm_ext
