// CPU kernels of the sparse-coding family. sparse_code runs ISTA/FISTA one sample at a time
// (samples in parallel), so each sample stops on its own duality gap and a converged sample
// costs nothing more. Everything a sample needs comes from the Gram matrix G = D^T D and
// b = D^T y, computed once by GEMM:
//   gradient of ||y - D z||^2 at x    2 (G x - b)          G x over the nonzeros of x only:
//                                                          nnz(x) rows of G, not n x m
//   ||y - D z||^2                     ||y||^2 - 2 b.z + z.G z
//   D^T (y - D z)                     b - G z              (for the dual point)
// With codes of a few percent nonzeros this is several times fewer operations than forming
// D z and D^T r. Rows of G and the per-sample vectors are padded to whole 64-byte registers
// with zeros, which stay zero through the iteration.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "../sparse_coding.h"
#include "simd.h"

namespace ebm_ext {
namespace {

using simd::Lanes;
using simd::load;
using simd::store;

template <typename S>
struct Problem {
  const S* G;  // (m, mp): row i is column i of D^T D, zero past m
  int64_t m, mp;
  S lam, step;  // step = 1 / L
  double tol;
  bool fista, nonneg;
  int64_t max_iter, check_every;
};

template <typename S>
struct Workspace {
  Workspace(int64_t m, int64_t mp)
      : x(mp), next(mp), gx(mp), sub_G(m * mp), sub_b(mp), sub_z(mp), support(mp), set(mp),
        violation(mp) {}
  std::vector<S> x, next, gx;          // iterate, next iterate, G x
  std::vector<S> sub_G, sub_b, sub_z;  // the problem restricted to the working set
  std::vector<int32_t> support, set;   // nonzeros of x, the working set
  std::vector<std::pair<double, int32_t>> violation;  // (excess, coordinate) off the support
};

template <typename S>
inline S horizontal_sum(const typename Lanes<S>::V& v) {
  S s = 0;
  for (int l = 0; l < Lanes<S>::N; ++l) s += v[l];
  return s;
}

// gx = G v, reading only the rows of G where v is nonzero.
template <typename S>
__attribute__((always_inline)) inline void gram_times(const Problem<S>& p, const S* v, S* gx,
                                                      int32_t* support) {
  using V = typename Lanes<S>::V;
  constexpr int L = Lanes<S>::N;
  using I = typename Lanes<S>::I;
  // The nonzeros of v, a register at a time: a bit per nonzero lane, then its set bits.
  I weight;
  for (int l = 0; l < L; ++l) weight[l] = int64_t(1) << l;
  int64_t nnz = 0;
  for (int64_t c = 0; c < p.mp; c += L) {
    const I bits = (load<V>(v + c) != 0) & weight;
    uint32_t mask = 0;
    for (int l = 0; l < L; ++l) mask |= static_cast<uint32_t>(bits[l]);
    while (mask) {
      support[nnz++] = static_cast<int32_t>(c + __builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
  int64_t c = 0;
  for (; c + 4 * L <= p.mp; c += 4 * L) {
    V a0{}, a1{}, a2{}, a3{};
    for (int64_t q = 0; q < nnz; ++q) {
      const int64_t i = support[q];
      const V vi = V{} + v[i];
      const S* row = p.G + i * p.mp + c;
      a0 += vi * load<V>(row);
      a1 += vi * load<V>(row + L);
      a2 += vi * load<V>(row + 2 * L);
      a3 += vi * load<V>(row + 3 * L);
    }
    store(gx + c, a0);
    store(gx + c + L, a1);
    store(gx + c + 2 * L, a2);
    store(gx + c + 3 * L, a3);
  }
  for (; c < p.mp; c += L) {
    V a{};
    for (int64_t q = 0; q < nnz; ++q) {
      const int64_t i = support[q];
      a += (V{} + v[i]) * load<V>(p.G + i * p.mp + c);
    }
    store(gx + c, a);
  }
}

// The duality gap of code z, as (gap, primal). For the lasso in the usual scaling,
// 1/2 ||y - D z||^2 + a ||z||_1 with a = lam / 2 (our energy is twice that), the scaled
// residual theta = s r, s = min(1, a / ||D^T r||_inf), is dual feasible, and the dual value
// is 1/2 ||y||^2 - 1/2 ||y - theta||^2; with nonneg the constraint is max_j (D^T theta)_j <= a.
template <typename S>
__attribute__((always_inline)) inline void duality_gap(const Problem<S>& p, const S* b, double yy,
                                                       const S* z, Workspace<S>& w, double& gap,
                                                       double& primal) {
  gram_times(p, z, w.gx.data(), w.support.data());
  double bz = 0, zGz = 0, l1 = 0, cmax = 0;
  for (int64_t j = 0; j < p.m; ++j) {
    bz += double(b[j]) * z[j];
    zGz += double(z[j]) * w.gx[j];
    l1 += std::abs(double(z[j]));
    const double c = double(b[j]) - w.gx[j];  // (D^T r)_j
    cmax = std::max(cmax, p.nonneg ? c : std::abs(c));
  }
  const double rr = std::max(0.0, yy - 2 * bz + zGz);
  const double a = double(p.lam) / 2;
  const double s = cmax > a ? a / cmax : 1.0;
  primal = rr + double(p.lam) * l1;
  const double dual = 2 * s * (yy - bz) - s * s * rr;
  gap = primal - dual;
}

// ISTA/FISTA iterations on problem p (the whole problem or a working set) from code z, until
// its relative duality gap is at most tol (checked every p.check_every iterations) or after
// `budget` iterations. Returns the iterations taken; leaves the last gap in gap/primal.
template <typename S>
__attribute__((always_inline)) inline int64_t iterate(const Problem<S>& p, const S* b, double yy,
                                                      S* z, Workspace<S>& w, double tol,
                                                      int64_t budget, double& gap, double& primal) {
  using V = typename Lanes<S>::V;
  constexpr int L = Lanes<S>::N;
  const V threshold = V{} + p.lam * p.step, two_step = V{} + 2 * p.step;
  S* x = w.x.data();
  S* next = w.next.data();
  std::copy(z, z + p.mp, x);
  double t = 1;
  int64_t it = 1;
  for (;; ++it) {
    gram_times(p, x, w.gx.data(), w.support.data());
    V restart{};
    for (int64_t c = 0; c < p.mp; c += L) {
      const V xv = load<V>(x + c), zv = load<V>(z + c);
      const V v = xv - two_step * (load<V>(w.gx.data() + c) - load<V>(b + c));
      V above = v - threshold;
      above = above > 0 ? above : V{};
      V shrunk = above;
      if (!p.nonneg) {
        V below = v + threshold;
        below = below < 0 ? below : V{};
        shrunk += below;
      }
      store(next + c, shrunk);
      restart += (xv - shrunk) * (shrunk - zv);
    }
    // FISTA's momentum, reset whenever the step went against the momentum direction
    // (O'Donoghue & Candes' gradient restart); ISTA has none.
    S beta = 0;
    if (p.fista && horizontal_sum<S>(restart) <= 0) {
      const double t_next = (1 + std::sqrt(1 + 4 * t * t)) / 2;
      beta = S((t - 1) / t_next);
      t = t_next;
    } else {
      t = 1;
    }
    const V bv = V{} + beta;
    for (int64_t c = 0; c < p.mp; c += L) {
      const V nv = load<V>(next + c);
      store(x + c, nv + bv * (nv - load<V>(z + c)));
      store(z + c, nv);
    }
    if (it % p.check_every == 0 || it == budget) {
      duality_gap(p, b, yy, z, w, gap, primal);
      if (gap <= tol * primal || it == budget) return it;
    }
  }
}

// One sample. The iterations run on a working set W: the code's support plus the worst of the
// coordinates whose optimality condition fails (|(D^T r)_j| > lam / 2). Outside W the code stays 0, so an
// iteration there costs nnz x |W| instead of nnz x m. After each solve on W the gap of the
// whole problem decides: done, or a new W. A W of more than half the atoms is not worth the
// gathering: then the whole problem is iterated (and always when lam = 0).
template <typename S>
__attribute__((always_inline)) inline void solve(const Problem<S>& p, const S* b, double yy, S* z,
                                                 Workspace<S>& w, S* rel_gap, int64_t* iterations) {
  constexpr int L = Lanes<S>::N;
  const double a = double(p.lam) / 2;
  double gap = 0, primal = 0;
  int64_t used = 0;
  duality_gap(p, b, yy, z, w, gap, primal);
  while (!(gap <= p.tol * primal) && used < p.max_iter) {
    // The working set, from D^T r = b - G z left in w.gx by duality_gap: the support, plus as
    // many of the worst violators as the support has members (at least 8), sorted.
    int64_t size = 0, violators = 0;
    for (int64_t j = 0; j < p.m; ++j) {
      const double c = double(b[j]) - w.gx[j];
      const double excess = (p.nonneg ? c : std::abs(c)) - a;
      if (z[j] != 0) {
        w.set[size++] = static_cast<int32_t>(j);
      } else if (excess > 0) {
        w.violation[violators] = {excess, static_cast<int32_t>(j)};
        ++violators;
      }
    }
    const int64_t extra = std::min(violators, std::max<int64_t>(8, size));
    std::nth_element(w.violation.begin(), w.violation.begin() + extra,
                     w.violation.begin() + violators, std::greater<>());
    for (int64_t k = 0; k < extra; ++k) w.set[size++] = w.violation[k].second;
    std::sort(w.set.begin(), w.set.begin() + size);
    const int64_t budget = p.max_iter - used;
    if (2 * size > p.m || p.lam == 0) {  // lam = 0: no sparsity to exploit, and no useful gap
      used += iterate(p, b, yy, z, w, p.tol, budget, gap, primal);
      break;
    }
    Problem<S> sub = p;
    sub.m = size;
    sub.mp = simd::padded(size, L);
    std::fill(w.sub_G.begin(), w.sub_G.begin() + size * sub.mp, S(0));
    std::fill(w.sub_b.begin(), w.sub_b.begin() + sub.mp, S(0));
    std::fill(w.sub_z.begin(), w.sub_z.begin() + sub.mp, S(0));
    for (int64_t i = 0; i < size; ++i) {
      const S* row = p.G + w.set[i] * p.mp;
      for (int64_t k = 0; k < size; ++k) w.sub_G[i * sub.mp + k] = row[w.set[k]];
      w.sub_b[i] = b[w.set[i]];
      w.sub_z[i] = z[w.set[i]];
    }
    sub.G = w.sub_G.data();
    // A step for W's own curvature: L_W = 2 lambda_max(G_WW) is at most L, often several times
    // less, and Gershgorin's bound (max row sum of |G_WW|) is a safe estimate of it.
    double row_max = 0;
    for (int64_t i = 0; i < size; ++i) {
      double row = 0;
      for (int64_t k = 0; k < size; ++k) row += std::abs(double(w.sub_G[i * sub.mp + k]));
      row_max = std::max(row_max, row);
    }
    sub.step = std::max(p.step, S(1 / (2 * row_max)));
    // Solve on W only as well as the whole problem is solved so far (a third of its gap, as
    // Celer does), and down to half the tolerance, so that once W holds the optimum's support
    // the whole problem's gap, which can only be larger, still passes.
    const double inner_tol = std::max(p.tol / 2, 0.3 * gap / primal);
    used += iterate(sub, w.sub_b.data(), yy, w.sub_z.data(), w, inner_tol, budget, gap, primal);
    for (int64_t i = 0; i < size; ++i) z[w.set[i]] = w.sub_z[i];
    duality_gap(p, b, yy, z, w, gap, primal);
  }
  *rel_gap = primal > 0 ? S(gap / primal) : S(0);
  *iterations = used;
}

template <typename S>
EBM_CLONES void solve_range(const Problem<S>& p, const S* b, const double* yy, S* z, S* gap,
                            int64_t* iterations, int64_t lo, int64_t hi) {
  Workspace<S> w(p.m, p.mp);
  for (int64_t i = lo; i < hi; ++i) {
    solve(p, b + i * p.mp, yy[i], z + i * p.mp, w, gap + i, iterations + i);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_code_cpu(
    const at::Tensor& y, const at::Tensor& D, double lam, int64_t max_iter, double tol,
    c10::string_view method, bool nonneg, const c10::optional<at::Tensor>& z0,
    const c10::optional<at::Tensor>& lipschitz, int64_t check_every) {
  const auto o = check_sparse_code_inputs("sparse_code", y, D, lam, max_iter, tol, method, nonneg,
                                          z0, lipschitz, check_every);
  check_cpu_dtype("sparse_code", "y", y);
  const int64_t B = y.size(0), m = D.size(1);
  auto gap = at::zeros({B}, y.options());
  auto iterations = at::zeros({B}, y.options().dtype(at::kLong));
  if (B == 0) return {at::zeros({0, m}, y.options()), gap, iterations};
  const double L = lipschitz_value(D, lipschitz);
  if (L == 0) {  // D = 0: every code has energy ||y||^2 + lam ||z||_1, so z = 0
    auto z = at::zeros({B, m}, y.options());
    finish_sparse_code(y, z, gap, L, lipschitz.has_value());
    return {z, gap, iterations};
  }
  at::Tensor codes;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sparse_code_cpu", [&] {
    using S = scalar_t;
    const int64_t mp = simd::padded(m, Lanes<S>::N);
    auto Dp = at::zeros({D.size(0), mp}, D.options());
    Dp.narrow(1, 0, m).copy_(D);
    const auto G = at::mm(D.t(), Dp).contiguous();  // (m, mp)
    const auto b = at::mm(y, Dp).contiguous();      // (B, mp)
    const auto yy = y.to(at::kDouble).square().sum(1).contiguous();
    auto z = at::zeros({B, mp}, y.options());
    if (z0.has_value()) z.narrow(1, 0, m).copy_(*z0);
    Problem<S> p{G.data_ptr<S>(), m, mp, S(o.lam), S(1.0 / L), o.tol, o.fista, o.nonneg,
                 o.max_iter, o.check_every};
    const S* bp = b.data_ptr<S>();
    const double* yyp = yy.data_ptr<double>();
    S* zp = z.data_ptr<S>();
    S* gp = gap.data_ptr<S>();
    int64_t* ip = iterations.data_ptr<int64_t>();
    at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
      solve_range<S>(p, bp, yyp, zp, gp, ip, lo, hi);
    });
    codes = mp == m ? z : z.narrow(1, 0, m).contiguous();
  });
  finish_sparse_code(y, codes, gap, L, lipschitz.has_value());
  return {codes, gap, iterations};
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("sparse_code", &sparse_code_cpu);
}

}  // namespace ebm_ext
