// CUDA kernels of the sparse-coding family. sparse_code: one block per sample, each thread
// owning coordinates j = threadIdx.x + k * blockDim.x, so a sample stops on its own duality gap
// (a converged block simply exits). As on the CPU, the iteration reads the Gram matrix
// G = D^T D and b = D^T y (one GEMM each, on the stream): (G x)_j sums G[i, j] x_i over the
// nonzero x_i only, a test that is uniform across the block (x is in shared memory), and rows of
// G are read coalesced. Block-wide sums (the restart test, the gap) go through warp shuffles.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include "../sparse_coding.h"
#include "device.cuh"
#include "reduce.cuh"

namespace ebm_ext {
namespace {

using cuda_reduce::block_reduce;
using cuda_reduce::Max;
using cuda_reduce::Sum;

constexpr int kMaxThreads = 256;
constexpr size_t kSharedBytes = 32 * 1024;  // x in shared memory up to this size

template <typename acc_t>
struct Params {
  int64_t m, max_iter, check_every;
  acc_t lam, step;
  double tol;
  bool fista, nonneg;
};

// (G v)_j over the nonzeros of v.
template <typename acc_t>
__device__ __forceinline__ acc_t gram_times(const acc_t* __restrict__ G, const acc_t* v, int64_t m,
                                            int64_t j) {
  acc_t s = 0;
  for (int64_t i = 0; i < m; ++i) {
    const acc_t vi = v[i];
    if (vi != acc_t(0)) s += G[i * m + j] * vi;
  }
  return s;
}

// The duality gap of z as in the CPU kernel (csrc/ops/cpu/sparse_coding_kernel.cpp), the same
// in every thread.
template <typename acc_t>
__device__ void duality_gap(const acc_t* __restrict__ G, const acc_t* b, double yy, const acc_t* z,
                            const Params<acc_t>& p, double* scratch, double& gap, double& primal) {
  double bz = 0, zGz = 0, l1 = 0, cmax = 0;
  for (int64_t j = threadIdx.x; j < p.m; j += blockDim.x) {
    const double gz = gram_times(G, z, p.m, j), zj = z[j], bj = b[j];
    bz += bj * zj;
    zGz += zj * gz;
    l1 += fabs(zj);
    cmax = fmax(cmax, p.nonneg ? bj - gz : fabs(bj - gz));
  }
  bz = block_reduce(bz, scratch, Sum());
  zGz = block_reduce(zGz, scratch, Sum());
  l1 = block_reduce(l1, scratch, Sum());
  cmax = block_reduce(cmax, scratch, Max());
  const double rr = fmax(0.0, yy - 2 * bz + zGz), a = double(p.lam) / 2;
  const double s = cmax > a ? a / cmax : 1.0;
  primal = rr + double(p.lam) * l1;
  gap = primal - (2 * s * (yy - bz) - s * s * rr);
}

template <typename acc_t>
__global__ void sparse_code_kernel(const acc_t* __restrict__ G, const acc_t* __restrict__ b_all,
                                   const double* __restrict__ yy_all, Params<acc_t> p,
                                   acc_t* __restrict__ x_global, acc_t* __restrict__ z_all,
                                   acc_t* __restrict__ next_all, acc_t* __restrict__ gap_out,
                                   int64_t* __restrict__ iterations_out, bool x_in_shared) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ double scratch[32];
  const int64_t sample = blockIdx.x, m = p.m;
  const acc_t* b = b_all + sample * m;
  acc_t* z = z_all + sample * m;
  acc_t* next = next_all + sample * m;
  acc_t* x = x_in_shared ? reinterpret_cast<acc_t*>(smem_raw) : x_global + sample * m;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) x[j] = z[j];
  __syncthreads();
  const acc_t threshold = p.lam * p.step, two_step = 2 * p.step;
  double t = 1, gap = 0, primal = 0;
  duality_gap(G, b, yy_all[sample], z, p, scratch, gap, primal);
  int64_t it = gap <= p.tol * primal ? 0 : 1;  // a warm start may already be good enough
  for (; it > 0; ++it) {
    double restart = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const acc_t v = x[j] - two_step * (gram_times(G, x, m, j) - b[j]);
      acc_t shrunk = v - threshold > acc_t(0) ? v - threshold : acc_t(0);
      if (!p.nonneg && v + threshold < acc_t(0)) shrunk = v + threshold;
      next[j] = shrunk;
      restart += double((x[j] - shrunk) * (shrunk - z[j]));
    }
    restart = block_reduce(restart, scratch, Sum());  // also: every x[i] read before rewriting
    acc_t beta = 0;
    if (p.fista && restart <= 0) {
      const double t_next = (1 + sqrt(1 + 4 * t * t)) / 2;
      beta = acc_t((t - 1) / t_next);
      t = t_next;
    } else {
      t = 1;
    }
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const acc_t n = next[j];
      x[j] = n + beta * (n - z[j]);
      z[j] = n;
    }
    __syncthreads();
    if (it % p.check_every == 0 || it == p.max_iter) {
      duality_gap(G, b, yy_all[sample], z, p, scratch, gap, primal);
      if (gap <= p.tol * primal || it == p.max_iter) break;  // uniform across the block
    }
  }
  if (threadIdx.x == 0) {
    gap_out[sample] = primal > 0 ? acc_t(gap / primal) : acc_t(0);
    iterations_out[sample] = it;
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
  if (L == 0) return {at::zeros({B, m}, y.options()), at::zeros({B}, y.options()), iterations};
  const auto Da = D.to(acc);
  const auto G = at::mm(Da.t(), Da).contiguous();
  const auto b = at::mm(y.to(acc), Da).contiguous();
  const auto yy = y.to(at::kDouble).square().sum(1).contiguous();
  auto z = z0.has_value() ? z0->to(acc).contiguous().clone() : at::zeros({B, m}, y.options().dtype(acc));
  auto next = at::empty_like(z);
  auto gap = at::zeros({B}, y.options().dtype(acc));
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, (m + 31) / 32 * 32));
  AT_DISPATCH_FLOATING_TYPES(acc, "sparse_code_cuda", [&] {
    const size_t x_bytes = size_t(m) * sizeof(scalar_t);
    const bool x_in_shared = x_bytes <= kSharedBytes;
    at::Tensor x_global = x_in_shared ? at::Tensor() : at::empty_like(z);
    Params<scalar_t> p{m, o.max_iter, o.check_every, scalar_t(o.lam), scalar_t(1.0 / L), o.tol,
                       o.fista, o.nonneg};
    launch_kernel<sparse_code_kernel<scalar_t>>(static_cast<unsigned>(B), threads, x_in_shared ? x_bytes : 0,
        G.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), yy.data_ptr<double>(), p,
        x_in_shared ? nullptr : x_global.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
        next.data_ptr<scalar_t>(), gap.data_ptr<scalar_t>(), iterations.data_ptr<int64_t>(),
        x_in_shared);
  });
  return {z.to(y.scalar_type()), gap.to(y.scalar_type()), iterations};
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("sparse_code", &sparse_code_cuda);
  m.impl("sparse_coding_energy", &sparse_coding_energy_aten);
  m.impl("sparse_coding_lipschitz", &sparse_coding_lipschitz_aten);
}

}  // namespace ebm_ext
