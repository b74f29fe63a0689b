// CUDA kernels of the sparse-coding family. sparse_code: a team per sample (a block when the
// batch is small, a warp when it is large enough to fill the device with warps), so a sample
// stops on its own duality gap (a converged team simply exits), with the CPU kernel's
// algorithm (csrc/ops/cpu/sparse_coding_kernel.cpp) and so its accuracy and the meaning of
// `iterations`: ISTA/FISTA with gradient restart on a working set W (the support plus the worst
// violators of the optimality condition), at W's own Gershgorin step, to Celer's inner
// tolerance, until the whole problem's duality gap passes; the whole problem is iterated when W
// would hold more than half of the atoms. Everything comes from the Gram matrix G = D^T D and
// b = D^T y, formed in float64 whatever the dtype (and so whatever the TF32 switch says) and
// rounded once: (G v)_k sums G[i, k] v_i over the nonzero v_i only, a test uniform across the
// team (v is shared). Team-wide sums and counts go through warp shuffles; the working set is
// compacted with a team scan, in increasing order.
//
// Why two layouts: most of the iterations run on a working set of a few dozen atoms, where a
// member per atom leaves most of a 256-thread block idle at every barrier. Once the batch
// holds more samples than the device runs blocks at once (8 per SM), a warp per sample keeps 8
// times as many samples in flight and trades the block's barriers for warp synchronisation;
// below that, a block per sample gives each of the few samples all the threads it can use.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "../sparse_coding.h"
#include "device.cuh"
#include "team.cuh"

namespace ebm_ext {
namespace {

constexpr int kMaxThreads = 256;            // a block per sample: up to one thread per atom
constexpr int kWarpsPerBlock = 4;           // a warp per sample: 4 samples per block
constexpr size_t kSharedBytes = 32 * 1024;  // the iterates x of a block in shared memory up to this

template <typename acc_t>
struct Params {
  int64_t m, max_iter, check_every;
  acc_t lam, step;
  double tol;
  bool fista, nonneg;
};

// The coordinates a solve runs on: all m atoms (set == nullptr) or the n of a working set.
struct Coords {
  const int32_t* set;
  int64_t n;
  __device__ __forceinline__ int64_t operator[](int64_t k) const { return set ? set[k] : k; }
};

// Per-sample scratch in global memory, m entries each.
template <typename acc_t>
struct Scratch {
  acc_t *x, *next, *sub_b, *sub_z, *c;
  int32_t* set;
};

// (G_SS v)_k over the nonzeros of v (v indexed by position in S).
template <typename acc_t>
__device__ __forceinline__ acc_t gram_times(const acc_t* __restrict__ G, int64_t m, Coords S,
                                            const acc_t* v, int64_t k) {
  const int64_t col = S[k];
  acc_t s = 0;
  for (int64_t i = 0; i < S.n; ++i) {
    const acc_t vi = v[i];
    if (vi != acc_t(0)) s += G[S[i] * m + col] * vi;
  }
  return s;
}

// The duality gap of z on S, as in the CPU kernel, the same in every thread; with `c`, also
// (D^T r)_k = b_k - (G z)_k per position.
template <typename Team, typename acc_t>
__device__ void duality_gap(const Team& team, const acc_t* __restrict__ G, int64_t m, Coords S,
                            const acc_t* b, double yy, const acc_t* z, const Params<acc_t>& p,
                            double& gap, double& primal, acc_t* c = nullptr) {
  double bz = 0, zGz = 0, l1 = 0, cmax = 0;
  for (int64_t k = team.rank(); k < S.n; k += team.size()) {
    const double gz = gram_times(G, m, S, z, k), zk = z[k], bk = b[k];
    bz += bk * zk;
    zGz += zk * gz;
    l1 += fabs(zk);
    cmax = fmax(cmax, p.nonneg ? bk - gz : fabs(bk - gz));
    if (c) c[k] = static_cast<acc_t>(bk - gz);
  }
  bz = team.sum(bz);
  zGz = team.sum(zGz);
  l1 = team.sum(l1);
  cmax = team.max(cmax);
  const double rr = fmax(0.0, yy - 2 * bz + zGz), a = double(p.lam) / 2;
  const double s = cmax > a ? a / cmax : 1.0;
  primal = rr + double(p.lam) * l1;
  gap = primal - (2 * s * (yy - bz) - s * s * rr);
}

// ISTA/FISTA on S from z until the relative gap is at most tol (checked every check_every
// iterations) or after `budget` iterations; returns the iterations taken, the last gap in
// gap/primal. x is where the iterate lives (shared memory when it fits).
template <typename Team, typename acc_t>
__device__ int64_t iterate(const Team& team, const acc_t* __restrict__ G, int64_t m, Coords S,
                           const acc_t* b, double yy, acc_t* z, acc_t* x, acc_t* next,
                           const Params<acc_t>& p, acc_t step, double tol, int64_t budget,
                           double& gap, double& primal) {
  for (int64_t k = team.rank(); k < S.n; k += team.size()) x[k] = z[k];
  team.sync();
  const acc_t threshold = p.lam * step, two_step = 2 * step;
  double t = 1;
  for (int64_t it = 1;; ++it) {
    double restart = 0;
    for (int64_t k = team.rank(); k < S.n; k += team.size()) {
      const acc_t v = x[k] - two_step * (gram_times(G, m, S, x, k) - b[k]);
      acc_t shrunk = v - threshold > acc_t(0) ? v - threshold : acc_t(0);
      if (!p.nonneg && v + threshold < acc_t(0)) shrunk = v + threshold;
      next[k] = shrunk;
      restart += double((x[k] - shrunk) * (shrunk - z[k]));
    }
    restart = team.sum(restart);  // also: every x[i] read before rewriting
    acc_t beta = 0;
    if (p.fista && restart <= 0) {
      const double t_next = (1 + sqrt(1 + 4 * t * t)) / 2;
      beta = acc_t((t - 1) / t_next);
      t = t_next;
    } else {
      t = 1;
    }
    for (int64_t k = team.rank(); k < S.n; k += team.size()) {
      const acc_t n = next[k];
      x[k] = n + beta * (n - z[k]);
      z[k] = n;
    }
    team.sync();
    if (it % p.check_every == 0 || it == budget) {
      duality_gap(team, G, m, S, b, yy, z, p, gap, primal);
      if (gap <= tol * primal || it == budget) return it;  // uniform across the team
    }
  }
}

// The excess of coordinate j over the optimality condition, > 0 for a violator at z_j = 0.
template <typename acc_t>
__device__ __forceinline__ double excess(const Params<acc_t>& p, acc_t c) {
  return (p.nonneg ? double(c) : fabs(double(c))) - double(p.lam) / 2;
}

template <bool kWarp>
__device__ auto make_team(double* scratch, int64_t* count_scratch) {
  if constexpr (kWarp) {
    return WarpTeam{};
  } else {
    return BlockTeam{scratch, count_scratch};
  }
}

// One sample per team: a block per sample (kWarp false; x_capacity the block's iterate room),
// or a warp per sample, kWarpsPerBlock per block (each warp x_capacity of the shared memory).
template <typename acc_t, bool kWarp>
__global__ void sparse_code_kernel(const acc_t* __restrict__ G, const acc_t* __restrict__ b_all,
                                   const double* __restrict__ yy_all, Params<acc_t> p,
                                   acc_t* __restrict__ z_all, Scratch<acc_t> work,
                                   int64_t x_capacity, acc_t* __restrict__ gap_out,
                                   int64_t* __restrict__ iterations_out, int64_t B) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ double scratch[32];
  __shared__ int64_t count_scratch[32];
  const int64_t sample = kWarp ? int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32
                               : int64_t(blockIdx.x);
  if (sample >= B) return;  // a whole warp (the block layout has no such thread)
  const auto team = make_team<kWarp>(scratch, count_scratch);
  const int64_t m = p.m;
  const acc_t* b = b_all + sample * m;
  const double yy = yy_all[sample];
  acc_t* z = z_all + sample * m;
  Scratch<acc_t> w{work.x + sample * m, work.next + sample * m, work.sub_b + sample * m,
                   work.sub_z + sample * m, work.c + sample * m, work.set + sample * m};
  acc_t* shared_x =
      reinterpret_cast<acc_t*>(smem_raw) + (kWarp ? (threadIdx.x / 32) * x_capacity : 0);
  const Coords all{nullptr, m};
  double gap = 0, primal = 0;
  int64_t used = 0;
  duality_gap(team, G, m, all, b, yy, z, p, gap, primal, w.c);
  while (!(gap <= p.tol * primal) && used < p.max_iter) {
    // The working set from c = D^T r: the support, plus as many of the worst violators as the
    // support has members (at least 8). The violators' cut is the extra-th largest excess,
    // found by bisection on its bit pattern (positive doubles order as their bits).
    double size = 0, violators = 0, worst = 0;
    for (int64_t j = team.rank(); j < m; j += team.size()) {
      const double e = excess(p, w.c[j]);
      if (z[j] != acc_t(0)) {
        size += 1;
      } else if (e > 0) {
        violators += 1;
        worst = fmax(worst, e);
      }
    }
    size = team.sum(size);
    violators = team.sum(violators);
    worst = team.max(worst);
    const double extra = fmin(violators, fmax(8.0, size));
    const int64_t budget = p.max_iter - used;
    if (2 * (size + extra) > double(m) || p.lam == acc_t(0)) {
      acc_t* x = m <= x_capacity ? shared_x : w.x;
      used += iterate(team, G, m, all, b, yy, z, x, w.next, p, p.step, p.tol, budget, gap, primal);
      break;
    }
    double cut = 0;  // violators with excess >= cut join: the `extra` worst (ties all join)
    if (violators > extra) {
      uint64_t lo = 0, hi;
      memcpy(&hi, &worst, sizeof(hi));
      while (lo < hi) {  // the largest bit pattern with at least `extra` violators at or above it
        const uint64_t mid = lo + (hi - lo + 1) / 2;
        double t;
        memcpy(&t, &mid, sizeof(t));
        double above = 0;
        for (int64_t j = team.rank(); j < m; j += team.size()) {
          above += z[j] == acc_t(0) && excess(p, w.c[j]) >= t;
        }
        above = team.sum(above);
        if (above >= extra) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      memcpy(&cut, &lo, sizeof(cut));
    }
    int64_t n = 0;
    for (int64_t base = 0; base < m; base += team.size()) {
      const int64_t j = base + team.rank();
      bool in = false;
      if (j < m) {
        const double e = excess(p, w.c[j]);
        in = z[j] != acc_t(0) || (e > 0 && e >= cut);
      }
      int64_t total;
      const int64_t at = team.exclusive_scan(in, total);
      if (in) w.set[n + at] = static_cast<int32_t>(j);
      n += total;
    }
    team.sync();
    if (n == 0) break;  // nothing to move: z = 0 is optimal to the gap's precision
    const Coords S{w.set, n};
    double row_max = 0;  // Gershgorin's bound of lambda_max(G_WW): W's own, safe step
    for (int64_t k = team.rank(); k < n; k += team.size()) {
      w.sub_b[k] = b[S[k]];
      w.sub_z[k] = z[S[k]];
      double row = 0;
      for (int64_t i = 0; i < n; ++i) row += fabs(double(G[S[k] * m + S[i]]));
      row_max = fmax(row_max, row);
    }
    row_max = team.max(row_max);
    const acc_t step = row_max > 0 ? acc_t(fmax(double(p.step), 1 / (2 * row_max))) : p.step;
    // Solve on W as well as the whole problem is solved so far (a third of its gap), and down
    // to half the tolerance, so that the whole problem's gap, which can only be larger, passes
    // once W holds the optimum's support.
    const double inner_tol = fmax(p.tol / 2, 0.3 * gap / primal);
    acc_t* x = n <= x_capacity ? shared_x : w.x;
    used += iterate(team, G, m, S, w.sub_b, yy, w.sub_z, x, w.next, p, step, inner_tol, budget,
                    gap, primal);
    for (int64_t k = team.rank(); k < n; k += team.size()) z[S[k]] = w.sub_z[k];
    team.sync();
    duality_gap(team, G, m, all, b, yy, z, p, gap, primal, w.c);
  }
  if (team.rank() == 0) {
    gap_out[sample] = primal > 0 ? acc_t(gap / primal) : acc_t(0);
    iterations_out[sample] = used;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_code_cuda(
    const at::Tensor& y, const at::Tensor& D, double lam, int64_t max_iter, double tol,
    c10::string_view method, bool nonneg, const c10::optional<at::Tensor>& z0,
    const c10::optional<at::Tensor>& lipschitz, int64_t check_every) {
  const auto o = check_sparse_code_inputs("sparse_code", y, D, lam, max_iter, tol, method, nonneg,
                                          z0, lipschitz, check_every);
  const DeviceGuard guard(y.device());
  const int64_t B = y.size(0), m = D.size(1);
  const auto acc = at::toOpMathType(y.scalar_type());
  auto iterations = at::zeros({B}, y.options().dtype(at::kLong));
  if (B == 0) return {at::zeros({0, m}, y.options()), at::zeros({0}, y.options()), iterations};
  const double L = lipschitz_value(D, lipschitz);
  if (L == 0) {  // D = 0: z = 0 is exact
    auto codes = at::zeros({B, m}, y.options());
    auto gaps = at::zeros({B}, y.options());
    finish_sparse_code(y, codes, gaps, L, lipschitz.has_value());
    return {codes, gaps, iterations};
  }
  // G and b in float64, rounded once: exact to the accumulation type, and independent of
  // torch.backends.cuda.matmul.allow_tf32 (TF32 would raise the float32 gap floor ~100x).
  const auto Dd = D.to(at::kDouble);
  const auto G = at::mm(Dd.t(), Dd).to(acc).contiguous();
  const auto b = at::mm(y.to(at::kDouble), Dd).to(acc).contiguous();
  const auto yy = y.to(at::kDouble).square().sum(1).contiguous();
  auto z = z0.has_value() ? z0->to(acc).contiguous().clone()
                          : at::zeros({B, m}, y.options().dtype(acc));
  auto gap = at::zeros({B}, y.options().dtype(acc));
  auto work = at::empty({5, B, m}, y.options().dtype(acc));
  auto set = at::empty({B, m}, y.options().dtype(at::kInt));
  // A warp per sample once the samples outnumber the blocks the device runs at once.
  const bool warp_per_sample = B >= 8 * int64_t(multiprocessor_count());
  AT_DISPATCH_FLOATING_TYPES(acc, "sparse_code_cuda", [&] {
    Params<scalar_t> p{m, o.max_iter, o.check_every, scalar_t(o.lam), scalar_t(1.0 / L), o.tol,
                       o.fista, o.nonneg};
    scalar_t* w = work.data_ptr<scalar_t>();
    const int64_t n = B * m;
    Scratch<scalar_t> scratch{w, w + n, w + 2 * n, w + 3 * n, w + 4 * n, set.data_ptr<int32_t>()};
    const int64_t room = static_cast<int64_t>(kSharedBytes / sizeof(scalar_t));
    // One launch of either layout: `per_block` samples of `threads` threads, `capacity` iterate
    // entries of shared memory per sample.
    const auto launch = [&](auto warp, unsigned blocks, int threads, int64_t per_block,
                            int64_t capacity) {
      launch_kernel<sparse_code_kernel<scalar_t, decltype(warp)::value>>(
          blocks, threads, size_t(per_block * capacity) * sizeof(scalar_t),
          G.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), yy.data_ptr<double>(), p,
          z.data_ptr<scalar_t>(), scratch, capacity, gap.data_ptr<scalar_t>(),
          iterations.data_ptr<int64_t>(), B);
    };
    if (warp_per_sample) {
      launch(std::true_type{}, static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock),
             32 * kWarpsPerBlock, kWarpsPerBlock, std::min(m, room / kWarpsPerBlock));
    } else {
      launch(std::false_type{}, static_cast<unsigned>(B),
             static_cast<int>(std::min<int64_t>(kMaxThreads, (m + 31) / 32 * 32)), 1,
             std::min(m, room));
    }
  });
  auto codes = z.to(y.scalar_type());
  auto gaps = gap.to(y.scalar_type());
  finish_sparse_code(y, codes, gaps, L, lipschitz.has_value());
  return {codes, gaps, iterations};
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("sparse_code", &sparse_code_cuda);
}

}  // namespace ebm_ext
