// CUDA kernels of the log-partition family, in log space: one block per sequence, one thread
// per tag, transitions in shared memory when they fit. Each thread folds its log-sum-exp online
// (running maximum, rescaled sum), so any energy range is exact; exponentials are cheap here.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../partition.h"
#include "device.cuh"
#include "chain_common.cuh"

namespace ebm_ext {
using namespace cuda_chain;
namespace {

// Online log-sum-exp: fold x into (m, s) with sum = s * exp(m).
template <typename acc_t>
__device__ __forceinline__ void lse_add(acc_t x, acc_t& m, acc_t& s) {
  if (x == -std::numeric_limits<acc_t>::infinity()) return;
  if (x > m) {
    s = s * exp(m - x) + acc_t(1);
    m = x;
  } else {
    s += exp(x - m);  // NaN x lands here and poisons s, as it should
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t lse_value(acc_t m, acc_t s) {
  return m == -std::numeric_limits<acc_t>::infinity() ? m : m + log(s);
}

// Forward: alpha[b, t, j] (log, unary at t included) into `alpha` and log Z into logz.
template <typename scalar_t, typename acc_t>
__global__ void log_partition_kernel(const scalar_t* __restrict__ unary, ChainArgs<acc_t> a,
                                     acc_t* __restrict__ alpha, acc_t* __restrict__ logz) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int K = a.K;
  const int64_t T = a.T, b = blockIdx.x;
  const int64_t L = a.lengths ? a.lengths[b] : T;
  if (L == 0) {
    if (threadIdx.x == 0) logz[b] = acc_t(0);
    return;
  }
  const acc_t* tr = stage_matrix(a.trans, a, reinterpret_cast<acc_t*>(smem_raw));
  const scalar_t* u = unary + b * T * K;
  acc_t* al = alpha + b * T * K;
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    al[j] = -(static_cast<acc_t>(u[j]) + at_or_zero(a.start, j));
  }
  __syncthreads();
  for (int64_t t = 1; t < L; ++t) {
    const acc_t* prev = al + (t - 1) * K;
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
      acc_t m = -std::numeric_limits<acc_t>::infinity(), s = 0;
      for (int i = 0; i < K; ++i) lse_add(prev[i] - tr[i * K + j], m, s);
      al[t * K + j] = lse_value(m, s) - static_cast<acc_t>(u[t * K + j]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    acc_t m = -std::numeric_limits<acc_t>::infinity(), s = 0;
    for (int j = 0; j < K; ++j) lse_add(al[(L - 1) * K + j] - at_or_zero(a.end, j), m, s);
    logz[b] = lse_value(m, s);
  }
}

// Backward: marginals scale_b * p(y_t = k) into d_unary and, when pairs is not null, the pair
// marginals summed over t into pairs[b] (thread i owns row i: no atomics, deterministic).
template <typename scalar_t, typename acc_t>
__global__ void marginals_kernel(const scalar_t* __restrict__ unary, ChainArgs<acc_t> a,
                                 const acc_t* __restrict__ alpha, const acc_t* __restrict__ logz,
                                 const scalar_t* __restrict__ scale,
                                 scalar_t* __restrict__ d_unary, acc_t* __restrict__ pairs) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int K = a.K;
  acc_t* beta = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* q = beta + K;
  const acc_t* trT = stage_trans(a, q + K);
  const int64_t T = a.T, b = blockIdx.x;
  const int64_t L = a.lengths ? a.lengths[b] : T;
  const acc_t lz = logz[b];
  const acc_t g = static_cast<acc_t>(scale[b]);
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  if (L == 0 || g == acc_t(0) || lz == -inf || lz == inf) return;  // nothing flows
  const scalar_t* u = unary + b * T * K;
  const acc_t* al = alpha + b * T * K;
  scalar_t* du = d_unary + b * T * K;
  acc_t* pr = pairs ? pairs + b * K * K : nullptr;
  for (int i = threadIdx.x; i < K; i += blockDim.x) beta[i] = -at_or_zero(a.end, i);
  __syncthreads();
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      du[t * K + k] = static_cast<scalar_t>(g * exp(al[t * K + k] + beta[k] - lz));
    }
    if (t == 0) break;
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
      q[j] = beta[j] - static_cast<acc_t>(u[t * K + j]);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      const acc_t ai = al[(t - 1) * K + i];
      acc_t m = -inf, s = 0;
      for (int j = 0; j < K; ++j) {
        const acc_t x = q[j] - trT[j * K + i];
        lse_add(x, m, s);
        if (pr) pr[i * K + j] += g * exp(ai + x - lz);
      }
      beta[i] = lse_value(m, s);  // every thread has read q and its own beta[i] only
    }
    __syncthreads();
  }
}

struct Launch {
  Staged s;
  at::Tensor alpha, logz;
};

// Runs the forward kernel; alpha (B, T, K) and log Z (B,) in the accumulation type.
Launch run_forward(const at::Tensor& unary, const at::Tensor& trans,
                   const c10::optional<at::Tensor>& lengths,
                   const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  Launch l;
  l.s = stage(unary, trans, lengths, start, end);
  const auto acc = at::toOpMathType(unary.scalar_type());
  l.alpha = at::empty(unary.sizes(), unary.options().dtype(acc));
  l.logz = at::empty({unary.size(0)}, unary.options().dtype(acc));
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_log_partition_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = chain_args<acc_t>(l.s, 0);
    launch_kernel<log_partition_kernel<scalar_t, acc_t>>(unary.size(0), threads_for(a.K), shared_bytes(a, 0),
            l.s.unary.data_ptr<scalar_t>(), a, l.alpha.data_ptr<acc_t>(), l.logz.data_ptr<acc_t>());
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
    const char* op, const at::Tensor& scale, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, bool want_params) {
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  const DeviceGuard guard(unary.device());
  auto d_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto d_trans = at::zeros({d.K, d.K}, unary.options());
  auto d_start = at::zeros({d.K}, unary.options());
  auto d_end = at::zeros({d.K}, unary.options());
  if (d.B == 0 || d.T == 0) return {d_unary, d_trans, d_start, d_end};
  auto l = run_forward(unary, trans, lengths, start, end);
  const auto acc = at::toOpMathType(unary.scalar_type());
  at::Tensor pairs = want_params ? at::zeros({d.B, d.K, d.K}, unary.options().dtype(acc))
                                 : at::Tensor();
  const auto scale_c = scale.contiguous();
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_marginals_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t before = 2 * d.K * sizeof(acc_t);
    auto a = chain_args<acc_t>(l.s, before);
    acc_t* pairs_p = pairs.defined() ? pairs.data_ptr<acc_t>() : nullptr;
    launch_kernel<marginals_kernel<scalar_t, acc_t>>(d.B, threads_for(d.K), shared_bytes(a, before),
            l.s.unary.data_ptr<scalar_t>(), a, l.alpha.data_ptr<acc_t>(),
            l.logz.data_ptr<acc_t>(), scale_c.data_ptr<scalar_t>(), d_unary.data_ptr<scalar_t>(),
            pairs_p);
  });
  // NaN inputs: the sequence's marginals (and everything summed from them) are NaN.
  const auto nan_rows = at::isnan(l.logz).view({d.B, 1, 1});
  d_unary.masked_fill_(nan_rows, std::numeric_limits<double>::quiet_NaN());
  if (want_params) {
    d_trans = pairs.sum(0).to(unary.scalar_type());
    d_start = d_unary.select(1, 0).sum(0);
    auto L = lengths.has_value() ? *lengths
                                 : at::full({d.B}, d.T, unary.options().dtype(at::kLong));
    auto last = (L - 1).clamp_min(0).view({d.B, 1, 1}).expand({d.B, 1, d.K});
    auto has = (L > 0).view({d.B, 1}).to(unary.scalar_type());
    d_end = (d_unary.gather(1, last).squeeze(1) * has).sum(0);
    if (at::isnan(l.logz).any().item<bool>()) d_trans.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return {d_unary, d_trans, d_start, d_end};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chain_log_partition_backward_cuda(
    const at::Tensor& grad, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end) {
  const char* op = "_chain_log_partition_backward";
  check_partition_grad(op, grad, unary);
  return forward_backward_cuda(op, -grad, unary, trans, lengths, start, end, true);
}

at::Tensor chain_marginals_cuda(const at::Tensor& unary, const at::Tensor& trans,
                                const c10::optional<at::Tensor>& lengths,
                                const c10::optional<at::Tensor>& start,
                                const c10::optional<at::Tensor>& end) {
  TORCH_CHECK(unary.dim() == 3, "chain_marginals: unary must be a 3-D tensor (B, T, K), got shape ",
              shape_str(unary));
  const auto ones = at::ones({unary.size(0)}, unary.options());
  return std::get<0>(
      forward_backward_cuda("chain_marginals", ones, unary, trans, lengths, start, end, false));
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("chain_log_partition", &chain_log_partition_cuda);
  m.impl("chain_marginals", &chain_marginals_cuda);
  m.impl("_chain_log_partition_backward", &chain_log_partition_backward_cuda);
}

}  // namespace ebm_ext
