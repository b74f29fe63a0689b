// CPU kernels of the distribution family: the per-sequence passes of chain_sequence.h over the
// batch, in parallel chunks. Parameter sums are kept per chunk in float64 and added in chunk
// order: deterministic for a given thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../distribution.h"

namespace ebm_ext {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The exp-domain transitions of a call (chain_sequence.h), staged once before the batch loop.
struct ExpStage {
  std::vector<double> E;
  chain_seq::StagedTransitions staged;

  template <typename S>
  explicit ExpStage(const chain_seq::Chain<S>& e) : E(e.K * e.K) {
    staged = chain_seq::stage_transitions(chain_seq::Solo{}, e, E.data());
  }
  chain_seq::ExpTrans view() const { return {E.data(), staged.tmin}; }
  bool invalid() const { return staged.invalid; }
};

int64_t grain(int64_t T, int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, T * K * K)); }

std::tuple<at::Tensor, at::Tensor> chain_expectation_cpu(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,
    const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end) {
  const auto d = check_expectation_inputs("chain_expectation", unary, trans, v_unary, v_trans,
                                          lengths, start, end, v_start, v_end);
  if (general_expectation(trans, start, end, v_trans, v_start, v_end))
    return cpu_edge::expectation(unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end);
  auto log_z = at::zeros({d.B}, unary.options());
  auto expect = at::zeros({d.B}, unary.options());
  if (d.B == 0 || d.T == 0) return {log_z, expect};
  const auto s = stage_chain(unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_expectation_cpu", [&] {
    using S = scalar_t;
    const auto e = s.energies<S>();
    const auto v = s.direction<S>();
    const ExpStage stage(e);
    const bool invalid = stage.invalid();
    const auto ex = stage.view();
    S* lz = log_z.data_ptr<S>();
    S* es = expect.data_ptr<S>();
    at::parallel_for(0, d.B, grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
      // The forward alone: two rows of messages.
      std::vector<double> buf(chain_seq::work_doubles(chain_seq::kRingRows, int(d.K)));
      const auto w = chain_seq::make_work(buf.data(), chain_seq::kRingRows, int(d.K));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = e.length(b);
        if (L == 0) continue;
        if (invalid) {
          lz[b] = es[b] = S(kNaN);
          continue;
        }
        double expectation;
        const double z = chain_seq::forward(chain_seq::Solo{}, e, &v, ex, b, L, w, &expectation);
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
  if (general_expectation(trans, start, end, v_trans, v_start, v_end))
    return cpu_edge::covariance(weight, unary, trans, v_unary, v_trans, lengths, start, end, v_start,
                              v_end);
  auto c_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  const auto acc = unary.options().dtype(at::kDouble);
  auto c_trans = at::zeros({d.K, d.K}, acc), c_start = at::zeros({d.K}, acc),
       c_end = at::zeros({d.K}, acc);
  const auto dtype = unary.scalar_type();
  if (d.B == 0 || d.T == 0) return {c_unary, c_trans.to(dtype), c_start.to(dtype), c_end.to(dtype)};
  const auto staged = stage_chain(unary, trans, v_unary, v_trans, lengths, start, end, v_start,
                                  v_end);
  const int64_t K = d.K;
  AT_DISPATCH_FLOATING_TYPES(dtype, "chain_covariance_cpu", [&] {
    using S = scalar_t;
    const auto wt = weight.contiguous();
    const auto e = staged.energies<S>();
    const auto v = staged.direction<S>();
    const ExpStage stage(e);
    const bool invalid = stage.invalid();
    const auto ex = stage.view();
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
          const int64_t L = e.length(b);
          if (L == 0 || g[b] == S(0)) continue;
          double es = kNaN;
          const double z =
              invalid ? kNaN : chain_seq::forward(chain_seq::Solo{}, e, &v, ex, b, L, w, &es);
          if (std::isnan(z) || std::isnan(es)) {  // NaN in, NaN out (as the marginals)
            std::fill(cu + b * d.T * K, cu + (b * d.T + L) * K, S(kNaN));
            std::fill(s.begin(), s.end(), kNaN);
            continue;
          }
          if (z == -chain_seq::inf()) continue;  // no allowed path: no mass, no covariance
          chain_seq::covariance(chain_seq::Solo{}, e, v, ex, b, L, w, z, es, double(g[b]),
                                cu + b * d.T * K, s.data(), s.data() + K * K,
                                s.data() + K * K + K);
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
  if (general_chain(trans, start, end)) return cpu_edge::sample(unary, trans, noise, lengths, start, end);
  const int64_t N = noise.size(0);
  auto tags = at::full({N, d.B, d.T}, -1, unary.options().dtype(at::kLong));
  if (N == 0 || d.B == 0 || d.T == 0) return tags;
  const auto s = stage_chain(unary, trans, lengths, start, end);
  const auto nz = noise.contiguous();
  const double* np = nz.data_ptr<double>();
  int64_t* out = tags.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_sample_cpu", [&] {
    using S = scalar_t;
    const auto e = s.energies<S>();
    const ExpStage stage(e);
    if (stage.invalid()) return;  // NaN energies: tags stay -1
    const auto ex = stage.view();
    at::parallel_for(0, d.B, std::max<int64_t>(1, grain(d.T, d.K) / std::max<int64_t>(1, N)),
                     [&](int64_t lo, int64_t hi) {
      std::vector<double> buf(chain_seq::work_doubles(d.T, int(d.K)));
      const auto w = chain_seq::make_work(buf.data(), d.T, int(d.K));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = e.length(b);
        if (L == 0) continue;
        const chain_seq::Chain<S>* no_direction = nullptr;
        const double z =
            chain_seq::forward(chain_seq::Solo{}, e, no_direction, ex, b, L, w, nullptr);
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
