// CPU kernel of chain_relaxed_inference: one sequence per task, all steps fused. Per step, the
// gradient of every position (two vector-matrix products with trans, its rows and columns
// padded to whole registers), then the update of every position. The entropic update keeps
// the accumulated energy e_t = -log p_t + const, so a step is e_t += lr g_t and
// p_t = exp(min e_t - e_t) / sum: one exponential per entry, no logarithm.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../chain_view.h"
#include "../relaxed_inference.h"
#include "../simplex.h"
#include "simd.h"

namespace ebm_ext {
namespace {

using simd::Lanes;
using simd::load;
using simd::store;

// The shared view (../chain_view.h), whose start and end point at copies padded to Kp (zeros
// past K, and zeros when absent) so that the vector loops read whole lanes, and the rows and
// columns of each transition matrix padded likewise; per sequence where given so.
template <typename S>
struct Chain : ChainView<S> {
  const S* rows;  // (M, K, Kp): row i of each matrix
  const S* cols;  // (M, K, Kp): column j of each matrix
  int64_t Kp;
  MoveStrides moves;
  int64_t start_b, end_b;  // Kp or 0
  RelaxedInferenceOptions o;

  const S* rows_of(int64_t b, int64_t t) const { return rows + moves.matrix(b, t) * this->K * Kp; }
  const S* cols_of(int64_t b, int64_t t) const { return cols + moves.matrix(b, t) * this->K * Kp; }
};

template <typename S>
struct Buffers {
  explicit Buffers(int64_t T, int64_t Kp) : p(T * Kp), e(T * Kp), g(T * Kp), row(Kp) {}
  std::vector<S> p, e, g, row;
  std::vector<S> sort;
};

// g_t = dE/dp_t for every t < L, from p.
template <typename S>
__attribute__((always_inline)) inline void gradient(const Chain<S>& c, int64_t b, const S* u,
                                                    int64_t L, Buffers<S>& w) {
  using V = typename Lanes<S>::V;
  constexpr int N = Lanes<S>::N;
  const S* start = c.start + b * c.start_b;
  const S* end = c.end + b * c.end_b;
  for (int64_t t = 0; t < L; ++t) {
    S* g = w.g.data() + t * c.Kp;
    for (int64_t k = 0; k < c.K; ++k) g[k] = u[t * c.K + k];
    std::fill(g + c.K, g + c.Kp, S(0));
    if (t == 0)
      for (int64_t k = 0; k < c.Kp; k += N) store(g + k, load<V>(g + k) + load<V>(start + k));
    if (t == L - 1)
      for (int64_t k = 0; k < c.Kp; k += N) store(g + k, load<V>(g + k) + load<V>(end + k));
    const S* rows = t > 0 ? c.rows_of(b, t) : nullptr;         // the move into t
    const S* cols = t + 1 < L ? c.cols_of(b, t + 1) : nullptr;  // the move out of t
    for (int64_t k = 0; k < c.Kp; k += N) {
      V acc = load<V>(g + k);
      // A tag of probability 0 adds nothing, even through a forbidden (+inf) transition.
      if (t > 0) {
        const S* prev = w.p.data() + (t - 1) * c.Kp;
        for (int64_t i = 0; i < c.K; ++i)
          if (prev[i] != S(0)) acc += (V{} + prev[i]) * load<V>(rows + i * c.Kp + k);
      }
      if (t + 1 < L) {
        const S* next = w.p.data() + (t + 1) * c.Kp;
        for (int64_t j = 0; j < c.K; ++j)
          if (next[j] != S(0)) acc += (V{} + next[j]) * load<V>(cols + j * c.Kp + k);
      }
      store(g + k, acc);
    }
  }
}

template <typename S>
__attribute__((always_inline)) inline void infer(const Chain<S>& c, const S* init, int64_t b,
                                                 S* out, Buffers<S>& w) {
  const int64_t L = c.length(b);
  const S* u = c.unary_at(b, 0);
  const S inf = std::numeric_limits<S>::infinity();
  for (int64_t t = 0; t < L; ++t) {
    S* p = w.p.data() + t * c.Kp;
    S* e = w.e.data() + t * c.Kp;
    for (int64_t k = 0; k < c.Kp; ++k) {
      const bool real = k < c.K;
      p[k] = !real ? S(0) : init ? init[(b * c.T + t) * c.K + k] : S(1) / S(c.K);
      // Entropic: the accumulated energy (padding: probability 0 forever). Projected: +inf
      // marks a tag removed for good (its gradient was +inf once), 0 the others.
      e[k] = !real ? inf : init && c.o.entropic ? -std::log(p[k]) : S(0);
    }
  }
  for (int64_t step = 0; step < c.o.steps; ++step) {
    gradient(c, b, u, L, w);
    for (int64_t t = 0; t < L; ++t) {
      S* p = w.p.data() + t * c.Kp;
      const S* g = w.g.data() + t * c.Kp;
      // +inf for every tag (each has mass on both sides of a forbidden move): no finite step
      // exists, and the position keeps its distribution.
      if (std::all_of(g, g + c.K, [inf](S x) { return x == inf; })) continue;
      if (c.o.entropic) {
        S* e = w.e.data() + t * c.Kp;
        S lowest = inf;
        for (int64_t k = 0; k < c.K; ++k) {
          e[k] += S(c.o.lr) * g[k];
          lowest = std::min(lowest, e[k]);
        }
        for (int64_t k = 0; k < c.K; ++k) e[k] -= lowest;  // keep the energies near 0
        simd::exp_shifted(e, S(0), p, c.Kp);
        S total = 0;
        for (int64_t k = 0; k < c.K; ++k) total += p[k];
        for (int64_t k = 0; k < c.K; ++k) p[k] /= total;
      } else {
        // A tag whose gradient was +inf is out for good, as the entropic update's e = +inf
        // keeps it: else the projection would bring it back and the move it forbids with it.
        S* e = w.e.data() + t * c.Kp;
        for (int64_t k = 0; k < c.K; ++k) {
          if (g[k] == inf) e[k] = inf;
          w.row[k] = e[k] == inf ? -inf : p[k] - S(c.o.lr) * g[k];
        }
        project_simplex_row(w.row.data(), p, c.K, w.sort);
      }
    }
  }
  S* o = out + b * c.T * c.K;
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t k = 0; k < c.K; ++k) o[t * c.K + k] = t < L ? w.p[t * c.Kp + k] : S(0);
  }
}

template <typename S>
EBM_CLONES void infer_range(const Chain<S>& c, const S* init, S* out, int64_t lo, int64_t hi) {
  Buffers<S> w(c.T, c.Kp);
  for (int64_t b = lo; b < hi; ++b) infer(c, init, b, out, w);
}

// (..., K) rows padded with zeros to (..., Kp).
at::Tensor padded_rows(const at::Tensor& m, int64_t Kp) {
  auto shape = m.sizes().vec();
  shape.back() = Kp;
  auto out = at::zeros(shape, m.options());
  out.narrow(-1, 0, m.size(-1)).copy_(m);
  return out;
}

std::tuple<at::Tensor, at::Tensor> chain_relaxed_inference_cpu(
    const at::Tensor& unary, const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end, int64_t steps,
    double lr, c10::string_view method, const c10::optional<at::Tensor>& init) {
  const auto o = check_chain_relaxed_inference_inputs(unary, trans, lengths, start, end, steps, lr,
                                                      method, init);
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto probs = at::zeros_like(unary, at::MemoryFormat::Contiguous);
  if (B > 0 && T > 0) {
    AT_DISPATCH_FLOATING_TYPES(unary.scalar_type(), "chain_relaxed_inference_cpu", [&] {
      using S = scalar_t;
      const int64_t Kp = simd::padded(K, Lanes<S>::N);
      const auto u = unary.contiguous();
      const auto tr = trans.contiguous();
      const auto rows = padded_rows(trans, Kp);
      const auto cols = padded_rows(trans.transpose(-1, -2), Kp);
      const auto zeros = at::zeros({Kp}, unary.options());
      const auto s = start.has_value() ? padded_rows(*start, Kp) : zeros;
      const auto e = end.has_value() ? padded_rows(*end, Kp) : zeros;
      const auto l = lengths.has_value() ? lengths->contiguous() : at::Tensor();
      const auto i = init.has_value() ? init->contiguous() : at::Tensor();
      const ChainView<S> view{u.data_ptr<S>(), tr.data_ptr<S>(), s.data_ptr<S>(), e.data_ptr<S>(),
                              l.defined() ? l.data_ptr<int64_t>() : nullptr, T, K};
      const Chain<S> c{view,
                       rows.data_ptr<S>(),
                       cols.data_ptr<S>(),
                       Kp,
                       MoveStrides::of(trans),
                       s.dim() == 2 ? Kp : 0,
                       e.dim() == 2 ? Kp : 0,
                       o};
      const S* ip = i.defined() ? i.data_ptr<S>() : nullptr;
      S* out = probs.data_ptr<S>();
      at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) { infer_range(c, ip, out, lo, hi); });
    });
  }
  return {probs, relaxed_chain_energy(unary, trans, probs, lengths, start, end)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("chain_relaxed_inference", &chain_relaxed_inference_cpu);
}

}  // namespace ebm_ext
