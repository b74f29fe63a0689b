// The general chains (../edge_chain.h) on the CPU: a team of one per sequence, sequences in
// parallel. Called by the shared ops' CPU kernels after their checks.
#include <ATen/Parallel.h>

#include <vector>

#include "../chain_sequence.h"
#include "../edge_chain_ops.h"

namespace ebm_ext {
namespace cpu_edge {
namespace {

using chain_seq::Solo;

// Work per sequence is about T*K*K.
int64_t grain(int64_t T, int64_t K) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, T * K * K));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> viterbi(const at::Tensor& unary, const at::Tensor& trans,
                                           const c10::optional<at::Tensor>& lengths,
                                           const c10::optional<at::Tensor>& start,
                                           const c10::optional<at::Tensor>& end) {
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto energy = at::empty({B}, unary.options());
  auto tags = at::empty({B, T}, unary.options().dtype(at::kLong));
  if (B == 0) return {energy, tags};
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_viterbi_cpu", [&] {
    using S = scalar_t;
    const auto c = edge::view<S>(x);
    S* e = energy.data_ptr<S>();
    int64_t* y = tags.data_ptr<int64_t>();
    at::parallel_for(0, B, grain(T, K), [&](int64_t lo, int64_t hi) {
      const Solo team;
      std::vector<double> beta(K), w(K);
      std::vector<int32_t> ptr(std::max<int64_t>(1, (T - 1) * K));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = c.length(b);
        if (L == 0) {
          std::fill(y + b * T, y + (b + 1) * T, int64_t(-1));
          e[b] = S(0);
          continue;
        }
        const double best = edge::decode(team, c, b, L, beta.data(), w.data(), ptr.data(),
                                         y + b * T);
        e[b] = edge::invalid(team, c, b, L) ? std::numeric_limits<S>::quiet_NaN()
                                            : edge::from_double<S>(best);
      }
    });
  });
  return {energy, tags};
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
      std::vector<double> la(2 * K);
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t L = c.length(b);
        if (L == 0)
          out[b] = S(0);
        else if (edge::invalid(team, c, b, L))
          out[b] = std::numeric_limits<S>::quiet_NaN();
        else
          out[b] = edge::from_double<S>(edge::forward(team, c, b, L, la.data(), true));
      }
    });
  });
  return logz;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward(
    const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, bool want_params) {
  auto d_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto g = edge::grad_buffers(d, trans);
  if (d.B > 0 && d.T > 0) {
    const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
    const auto scale_c = scale.contiguous();
    AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "edge_forward_backward_cpu", [&] {
      using S = scalar_t;
      const auto c = edge::view<S>(x);
      const S* sc = scale_c.data_ptr<S>();
      const int64_t KK = d.K * d.K, per_b = g.trans.numel() / d.B;
      at::parallel_for(0, d.B, grain(d.T, d.K), [&](int64_t lo, int64_t hi) {
        const Solo team;
        std::vector<double> la(d.T * d.K), lb(d.K), lb2(d.K);
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
          const double logz = edge::forward(team, c, b, L, la.data(), false);
          if (logz == -edge::inf() || sc[b] == S(0)) continue;
          edge::backward(team, c, b, L, la.data(), logz, edge::to_double(sc[b]), lb.data(),
                         lb2.data(), out);
        }
      });
    });
  }
  return edge::finish_grads(d_unary, g, trans, start, end);
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

}  // namespace cpu_edge
}  // namespace ebm_ext
