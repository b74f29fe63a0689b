// CPU kernels of the distribution family: the per-sequence passes of chain_sequence.h over the
// batch, in parallel chunks. Parameter sums are kept per chunk in float64 and added in chunk
// order: deterministic for a given thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../chain_sequence.h"
#include "../distribution.h"

namespace ebm_ext {
namespace {

using chain_seq::Chain;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The contiguous inputs of one call and the views the per-sequence code reads.
struct Inputs {
  at::Tensor unary, trans, start, end, lengths;
  at::Tensor v_unary, v_trans, v_start, v_end;
  ExpTransTensors exp;
};

at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

template <typename S>
const S* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<S>() : nullptr;
}

template <typename S>
Chain<S> chain_view(const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& start,
                    const at::Tensor& end, int64_t T, int K) {
  return Chain<S>{ptr<S>(unary), ptr<S>(trans), ptr<S>(start), ptr<S>(end), T, K};
}

int64_t grain(int64_t T, int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, T * K * K)); }

std::tuple<at::Tensor, at::Tensor> chain_expectation_cpu(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,
    const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end) {
  const auto d = check_expectation_inputs("chain_expectation", unary, trans, v_unary, v_trans,
                                          lengths, start, end, v_start, v_end);
  auto log_z = at::zeros({d.B}, unary.options());
  auto expect = at::zeros({d.B}, unary.options());
  if (d.B == 0 || d.T == 0) return {log_z, expect};
  const auto x = exp_transitions(trans, start, end);
  const bool invalid = x.params_invalid.item<bool>();
  const chain_seq::ExpTrans ex{x.E.data_ptr<double>(), x.tmin.item<double>()};
  const auto lens = contiguous_or_undefined(lengths);
  const int64_t* lp = ptr<int64_t>(lens);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_expectation_cpu", [&] {
    using S = scalar_t;
    const auto u = unary.contiguous(), tr = trans.contiguous();
    const auto st = contiguous_or_undefined(start), en = contiguous_or_undefined(end);
    const auto vu = v_unary.contiguous(), vt = contiguous_or_undefined(v_trans);
    const auto vs = contiguous_or_undefined(v_start), ve = contiguous_or_undefined(v_end);
    const auto e = chain_view<S>(u, tr, st, en, d.T, int(d.K));
    const auto v = chain_view<S>(vu, vt, vs, ve, d.T, int(d.K));
    S* lz = log_z.data_ptr<S>();
    S* es = expect.data_ptr<S>();
    at::parallel_for(0, d.B, grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
      std::vector<double> buf(chain_seq::work_doubles(d.T, int(d.K)));
      const auto w = chain_seq::make_work(buf.data(), d.T, int(d.K));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = lp ? lp[b] : d.T;
        if (L == 0) continue;
        if (invalid) {
          lz[b] = es[b] = S(kNaN);
          continue;
        }
        double expectation;
        const double z = chain_seq::forward(e, &v, ex, b, L, w, &expectation);
        lz[b] = S(z);
        es[b] = S(std::isnan(z) ? kNaN : expectation);
      }
    });
  });
  return {log_z, expect};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chain_covariance_cpu(
    const at::Tensor& weight, const at::Tensor& unary, const at::Tensor& trans,
    const at::Tensor& v_unary, const c10::optional<at::Tensor>& v_trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, const c10::optional<at::Tensor>& v_start,
    const c10::optional<at::Tensor>& v_end) {
  const char* op = "_chain_covariance";
  const auto d = check_expectation_inputs(op, unary, trans, v_unary, v_trans, lengths, start, end,
                                          v_start, v_end);
  check_covariance_weight(op, weight, unary);
  auto c_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  const auto acc = unary.options().dtype(at::kDouble);
  auto c_trans = at::zeros({d.K, d.K}, acc), c_start = at::zeros({d.K}, acc),
       c_end = at::zeros({d.K}, acc);
  const auto dtype = unary.scalar_type();
  if (d.B == 0 || d.T == 0) return {c_unary, c_trans.to(dtype), c_start.to(dtype), c_end.to(dtype)};
  const auto x = exp_transitions(trans, start, end);
  const bool invalid = x.params_invalid.item<bool>();
  const chain_seq::ExpTrans ex{x.E.data_ptr<double>(), x.tmin.item<double>()};
  const auto lens = contiguous_or_undefined(lengths);
  const int64_t* lp = ptr<int64_t>(lens);
  const int64_t K = d.K;
  AT_DISPATCH_FLOATING_TYPES(dtype, "chain_covariance_cpu", [&] {
    using S = scalar_t;
    const auto u = unary.contiguous(), tr = trans.contiguous(), wt = weight.contiguous();
    const auto st = contiguous_or_undefined(start), en = contiguous_or_undefined(end);
    const auto vu = v_unary.contiguous(), vt = contiguous_or_undefined(v_trans);
    const auto vs = contiguous_or_undefined(v_start), ve = contiguous_or_undefined(v_end);
    const auto e = chain_view<S>(u, tr, st, en, d.T, int(K));
    const auto v = chain_view<S>(vu, vt, vs, ve, d.T, int(K));
    const S* g = wt.data_ptr<S>();
    S* cu = c_unary.data_ptr<S>();
    const int64_t chunk = grain(d.T, K);
    const int64_t n_chunks = (d.B + chunk - 1) / chunk;
    // Per chunk: K*K transition sums, then K first and K last.
    std::vector<std::vector<double>> sums(n_chunks);
    at::parallel_for(0, n_chunks, 1, [&](int64_t c_lo, int64_t c_hi) {
      std::vector<double> buf(chain_seq::work_doubles(d.T, int(K)));
      const auto w = chain_seq::make_work(buf.data(), d.T, int(K));
      for (int64_t c = c_lo; c < c_hi; ++c) {
        auto& s = sums[c];
        s.assign(K * K + 2 * K, 0.0);
        for (int64_t b = c * chunk; b < std::min(d.B, (c + 1) * chunk); ++b) {
          const int64_t L = lp ? lp[b] : d.T;
          if (L == 0 || g[b] == S(0)) continue;
          double es = kNaN;
          const double z = invalid ? kNaN : chain_seq::forward(e, &v, ex, b, L, w, &es);
          if (std::isnan(z) || std::isnan(es)) {  // NaN in, NaN out (as the marginals)
            std::fill(cu + b * d.T * K, cu + (b * d.T + L) * K, S(kNaN));
            std::fill(s.begin(), s.end(), kNaN);
            continue;
          }
          if (z == -chain_seq::inf()) continue;  // no allowed path: no mass, no covariance
          chain_seq::covariance(e, v, ex, b, L, w, z, es, double(g[b]), cu + b * d.T * K,
                                s.data(), s.data() + K * K, s.data() + K * K + K);
        }
      }
    });
    double* ct = c_trans.data_ptr<double>();
    double* cs = c_start.data_ptr<double>();
    double* ce = c_end.data_ptr<double>();
    for (const auto& s : sums) {
      for (int64_t n = 0; n < K * K; ++n) ct[n] += s[n];
      for (int64_t j = 0; j < K; ++j) {
        cs[j] += s[K * K + j];
        ce[j] += s[K * K + K + j];
      }
    }
  });
  return {c_unary, c_trans.to(dtype), c_start.to(dtype), c_end.to(dtype)};
}

at::Tensor chain_sample_cpu(const at::Tensor& unary, const at::Tensor& trans,
                            const at::Tensor& noise, const c10::optional<at::Tensor>& lengths,
                            const c10::optional<at::Tensor>& start,
                            const c10::optional<at::Tensor>& end) {
  const char* op = "chain_sample";
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  check_sample_noise(op, noise, d, unary);
  const int64_t N = noise.size(0);
  auto tags = at::full({N, d.B, d.T}, -1, unary.options().dtype(at::kLong));
  if (N == 0 || d.B == 0 || d.T == 0) return tags;
  const auto x = exp_transitions(trans, start, end);
  if (x.params_invalid.item<bool>()) return tags;
  const chain_seq::ExpTrans ex{x.E.data_ptr<double>(), x.tmin.item<double>()};
  const auto lens = contiguous_or_undefined(lengths);
  const int64_t* lp = ptr<int64_t>(lens);
  const auto nz = noise.contiguous();
  const double* np = nz.data_ptr<double>();
  int64_t* out = tags.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_sample_cpu", [&] {
    using S = scalar_t;
    const auto u = unary.contiguous(), tr = trans.contiguous();
    const auto st = contiguous_or_undefined(start), en = contiguous_or_undefined(end);
    const auto e = chain_view<S>(u, tr, st, en, d.T, int(d.K));
    at::parallel_for(0, d.B, std::max<int64_t>(1, grain(d.T, d.K) / std::max<int64_t>(1, N)),
                     [&](int64_t lo, int64_t hi) {
      std::vector<double> buf(chain_seq::work_doubles(d.T, int(d.K)));
      const auto w = chain_seq::make_work(buf.data(), d.T, int(d.K));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = lp ? lp[b] : d.T;
        if (L == 0) continue;
        const double z = chain_seq::forward<S>(e, nullptr, ex, b, L, w, nullptr);
        if (!std::isfinite(z)) continue;  // NaN, or no allowed path: tags stay -1
        for (int64_t n = 0; n < N; ++n) {
          const int64_t row = (n * d.B + b) * d.T;
          chain_seq::sample(e, ex, b, L, w, z, np + row, out + row);
        }
      }
    });
  });
  return tags;
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("chain_expectation", &chain_expectation_cpu);
  m.impl("_chain_covariance", &chain_covariance_cpu);
  m.impl("chain_sample", &chain_sample_cpu);
}

}  // namespace ebm_ext
