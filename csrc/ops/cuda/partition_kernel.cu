// CUDA kernels of the log-partition family, in log space: one block per sequence, one thread
// per tag, transitions in shared memory when they fit. Each thread folds its log-sum-exp online
// (running maximum, rescaled sum), so any energy range is exact; exponentials are cheap here.
// The forward and backward messages are normalised at every position (their maximum
// subtracted, the offsets summed in double) and kept in double, with only the differences
// that meet an exponential (each at most 0 against its running maximum) rounded to the
// accumulation type. Normalising by the maximum alone is not enough for float32: where that
// maximum belongs to no complete path (a dead end), the tags that carry the mass lie hundreds
// below it, and a float32 message of -440 is only good to 3e-5 (found by the aimed search of
// tests/test_partition.py); in double both halves of alpha + beta keep their precision.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../partition.h"
#include "device.cuh"
#include "chain_common.cuh"
#include "reduce.cuh"

namespace ebm_ext {
using namespace cuda_chain;
namespace {

// Online log-sum-exp: fold x into (m, s) with sum = s * exp(m); the running maximum m in
// double, the rescaled sum s and its exponentials in the accumulation type.
template <typename acc_t>
__device__ __forceinline__ void lse_add(double x, double& m, acc_t& s) {
  if (x == -std::numeric_limits<double>::infinity()) return;
  if (x > m) {
    s = s * exp(static_cast<acc_t>(m - x)) + acc_t(1);
    m = x;
  } else {
    s += exp(static_cast<acc_t>(x - m));  // NaN x lands here and poisons s, as it should
  }
}

// No term is s == 0 (log 0 = -inf); a NaN term left s NaN, whatever m is.
template <typename acc_t>
__device__ __forceinline__ double lse_value(double m, acc_t s) {
  return s == acc_t(0) ? -std::numeric_limits<double>::infinity() : m + log(double(s));
}

// The block's largest value of `local` (one per thread), as the offset to subtract: 0 when it
// is not finite (all -inf: nothing to normalise; +inf or NaN: left to propagate).
__device__ __forceinline__ double block_offset(double local, double* scratch) {
  const double c = cuda_reduce::block_reduce(local, scratch, cuda_reduce::Max());
  return isfinite(c) ? c : 0.0;
}

// Forward: alpha[b, t, j] - offset[b, t] (log, unary at t included) into `alpha`, the
// offsets into `offset`, log Z into logz, all three in double.
template <typename scalar_t, typename acc_t>
__global__ void log_partition_kernel(ChainArgs<scalar_t, acc_t> a,
                                     double* __restrict__ alpha, double* __restrict__ offset,
                                     double* __restrict__ logz) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ double scratch[32];
  const int K = a.K;
  const int64_t T = a.T, b = blockIdx.x;
  const int64_t L = a.length(b);
  if (L == 0) {
    if (threadIdx.x == 0) logz[b] = 0;  // one empty path, whatever the parameters hold
    return;
  }
  const acc_t* tr = stage_matrix(a.trans, a, reinterpret_cast<acc_t*>(smem_raw));
  const scalar_t* __restrict__ u = a.unary_at(b, 0);
  double* al = alpha + b * T * K;
  double* off = offset + b * T;
  const double inf = std::numeric_limits<double>::infinity();
  const auto first = [&](int j) {
    return -(static_cast<double>(u[j]) + static_cast<double>(a.start_at(j)));
  };
  // NaN or -inf in a unary energy the sequence reads makes its log Z NaN (-inf follows NaN).
  bool invalid = false;
  double top = -inf;
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    top = fmax(top, first(j));
    invalid |= !(u[j] > -inf);
  }
  double c = block_offset(top, scratch);
  for (int j = threadIdx.x; j < K; j += blockDim.x) al[j] = first(j) - c;
  double total = c;  // the same in every thread
  if (threadIdx.x == 0) off[0] = total;
  __syncthreads();
  for (int64_t t = 1; t < L; ++t) {
    const double* prev = al + (t - 1) * K;
    top = -inf;
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
      double m = -inf;
      acc_t s = 0;
      for (int i = 0; i < K; ++i) lse_add(prev[i] - double(tr[i * K + j]), m, s);
      const double l = lse_value(m, s);
      al[t * K + j] = l;  // the log-sum-exp alone until the offset is known
      const double v = l - double(u[t * K + j]);
      top = isnan(v) ? v : fmax(top, v);
      invalid |= !(u[t * K + j] > -inf);
    }
    c = block_offset(top, scratch);  // its barriers: every prev[i] read before it is needed
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
      al[t * K + j] = al[t * K + j] - double(u[t * K + j]) - c;
    }
    total += c;
    if (threadIdx.x == 0) off[t] = total;
    __syncthreads();
  }
  invalid = __syncthreads_or(invalid);
  if (threadIdx.x == 0) {
    double m = -inf;
    acc_t s = 0;
    for (int j = 0; j < K; ++j) lse_add(al[(L - 1) * K + j] - double(a.end_at(j)), m, s);
    const double z = total + lse_value(m, s);
    logz[b] = *a.params_nan || invalid ? std::numeric_limits<double>::quiet_NaN() : z;
  }
}

// Backward: marginals scale_b * p(y_t = k) into d_unary and, when pairs is not null, the pair
// marginals summed over t into pairs[b] (thread i owns row i: no atomics, deterministic). beta
// is normalised like alpha (and like it kept in double, in shared memory with q), its running
// offset `total` the same in every thread; the message q = beta - unary is shifted by the
// forward's step offset off[t] - off[t-1] (which is about -unary).
template <typename scalar_t, typename acc_t>
__global__ void marginals_kernel(ChainArgs<scalar_t, acc_t> a,
                                 const double* __restrict__ alpha, const double* __restrict__ offset,
                                 const double* __restrict__ logz, const scalar_t* __restrict__ scale,
                                 scalar_t* __restrict__ d_unary, acc_t* __restrict__ pairs) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ double scratch[32];
  const int K = a.K;
  double* beta = reinterpret_cast<double*>(smem_raw);
  double* q = beta + K;
  const int64_t T = a.T, b = blockIdx.x;
  const int64_t L = a.length(b);
  const double lz = logz[b];
  const acc_t g = static_cast<acc_t>(scale[b]);
  const double inf = std::numeric_limits<double>::infinity();
  if (L == 0 || g == acc_t(0) || !isfinite(lz)) return;  // nothing flows (NaN rows: the host)
  const acc_t* trT = stage_trans(a, reinterpret_cast<acc_t*>(q + K));
  const scalar_t* __restrict__ u = a.unary_at(b, 0);
  const double* al = alpha + b * T * K;
  const double* off = offset + b * T;
  scalar_t* du = d_unary + b * T * K;
  acc_t* pr = pairs ? pairs + b * K * K : nullptr;
  double top = -inf;
  for (int i = threadIdx.x; i < K; i += blockDim.x) top = fmax(top, -double(a.end_at(i)));
  double c = block_offset(top, scratch);
  for (int i = threadIdx.x; i < K; i += blockDim.x) {
    beta[i] = -double(a.end_at(i)) - c;
  }
  double total = c;
  for (int64_t t = L - 1; t >= 0; --t) {
    // Each thread reads only the beta entries it wrote.
    const double shift = off[t] + total - lz;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const acc_t log_p = static_cast<acc_t>(al[t * K + k] + beta[k] + shift);
      du[t * K + k] = static_cast<scalar_t>(g * exp(log_p));
    }
    if (t == 0) break;
    const double step = off[t] - off[t - 1];
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
      q[j] = beta[j] - double(u[t * K + j]) - step;
    }
    __syncthreads();
    top = -inf;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      const double ai = al[(t - 1) * K + i] + shift;
      double m = -inf;
      acc_t s = 0;
      for (int j = 0; j < K; ++j) {
        const double x = q[j] - double(trT[j * K + i]);
        lse_add(x, m, s);
        if (pr) pr[i * K + j] += g * exp(static_cast<acc_t>(ai + x));
      }
      beta[i] = lse_value(m, s);
      top = isnan(beta[i]) ? beta[i] : fmax(top, beta[i]);
    }
    c = block_offset(top, scratch);  // its barriers: every q[j] read before q is rewritten
    for (int i = threadIdx.x; i < K; i += blockDim.x) beta[i] -= c;
    total += step + c;
  }
}

struct Launch {
  Staged s;
  at::Tensor alpha, offset, logz;  // double
};

// Runs the forward kernel.
Launch run_forward(const at::Tensor& unary, const at::Tensor& trans,
                   const c10::optional<at::Tensor>& lengths,
                   const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  Launch l;
  l.s = stage(unary, trans, lengths, start, end);
  l.alpha = at::empty(unary.sizes(), unary.options().dtype(at::kDouble));
  l.offset = at::empty({unary.size(0), unary.size(1)}, unary.options().dtype(at::kDouble));
  l.logz = at::empty({unary.size(0)}, unary.options().dtype(at::kDouble));
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_log_partition_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = chain_args<scalar_t, acc_t>(l.s, 0);
    launch_kernel<log_partition_kernel<scalar_t, acc_t>>(unary.size(0), threads_for(a.K),
        shared_bytes(a, 0), a,
        l.alpha.data_ptr<double>(), l.offset.data_ptr<double>(), l.logz.data_ptr<double>());
  });
  return l;
}

at::Tensor chain_log_partition_cuda(const at::Tensor& unary, const at::Tensor& trans,
                                    const c10::optional<at::Tensor>& lengths,
                                    const c10::optional<at::Tensor>& start,
                                    const c10::optional<at::Tensor>& end) {
  const auto d = check_chain_inputs("chain_log_partition", unary, trans, lengths, start, end);
  const DeviceGuard guard(unary.device());
  if (d.B == 0 || d.T == 0) return at::zeros({d.B}, unary.options());
  return run_forward(unary, trans, lengths, start, end).logz.to(unary.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward_cuda(
    const char* op, const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary,
    const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    bool want_params) {
  const DeviceGuard guard(unary.device());
  const auto acc = at::toOpMathType(unary.scalar_type());
  check_shared_tags(op, d.K, 2 * sizeof(double));  // beta and q
  auto d_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto d_trans = at::zeros({d.K, d.K}, unary.options());
  auto d_start = at::zeros({d.K}, unary.options());
  auto d_end = at::zeros({d.K}, unary.options());
  if (d.B == 0 || d.T == 0) return {d_unary, d_trans, d_start, d_end};
  auto l = run_forward(unary, trans, lengths, start, end);
  at::Tensor pairs = want_params ? at::zeros({d.B, d.K, d.K}, unary.options().dtype(acc))
                                 : at::Tensor();
  const auto scale_c = scale.contiguous();
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_marginals_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t before = 2 * d.K * sizeof(double);
    auto a = chain_args<scalar_t, acc_t>(l.s, before);
    acc_t* pairs_p = pairs.defined() ? pairs.data_ptr<acc_t>() : nullptr;
    launch_kernel<marginals_kernel<scalar_t, acc_t>>(
        d.B, threads_for(d.K), shared_bytes(a, before), a,
        l.alpha.data_ptr<double>(), l.offset.data_ptr<double>(), l.logz.data_ptr<double>(),
        scale_c.data_ptr<scalar_t>(), d_unary.data_ptr<scalar_t>(), pairs_p);
  });
  // NaN inputs: the sequence's marginals at t < L (and everything summed from them) are NaN;
  // positions past the length stay 0, as on the CPU. No host synchronisation.
  const auto L = lengths.has_value() ? *lengths
                                     : at::full({d.B}, d.T, unary.options().dtype(at::kLong));
  const auto inside = at::arange(d.T, L.options()).view({1, d.T}) < L.view({d.B, 1});
  const auto nan_rows = at::isnan(l.logz).view({d.B, 1}).logical_and(inside).view({d.B, d.T, 1});
  d_unary.masked_fill_(nan_rows, std::numeric_limits<double>::quiet_NaN());
  if (want_params) {
    d_trans = pairs.sum(0).to(unary.scalar_type());
    d_trans.masked_fill_(at::isnan(l.logz).any(), std::numeric_limits<double>::quiet_NaN());
    d_start = d_unary.select(1, 0).sum(0);
    auto last = (L - 1).clamp_min(0).view({d.B, 1, 1}).expand({d.B, 1, d.K});
    auto has = (L > 0).view({d.B, 1}).to(unary.scalar_type());
    d_end = (d_unary.gather(1, last).squeeze(1) * has).sum(0);
  }
  return {d_unary, d_trans, d_start, d_end};
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("chain_log_partition", &chain_log_partition_cuda);
  m.impl("chain_marginals", &chain_marginals_with<forward_backward_cuda>);
  m.impl("_chain_log_partition_backward", &chain_log_partition_backward_with<forward_backward_cuda>);
}

}  // namespace ebm_ext
