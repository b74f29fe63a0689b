// CUDA kernels of the log-partition family. First the exp domain (exp_forward_backward_kernel,
// at the end of this file's kernels: a warp per sequence, forward and backward fused), which
// takes every sequence it can; then, for the sequences it flags, the log-space kernels: one
// block per sequence, one thread per tag, transitions in shared memory when they fit. Each thread folds its log-sum-exp online
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
#include <type_traits>

#include "../edge_chain_ops.h"
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
__global__ void log_partition_kernel(ChainArgs<scalar_t, acc_t> a, const bool* __restrict__ only,
                                     double* __restrict__ alpha, double* __restrict__ offset,
                                     double* __restrict__ logz) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ double scratch[32];
  const int K = a.K;
  const int64_t T = a.T, b = blockIdx.x;
  if (!only[b]) return;  // done in the exp domain
  const bool params_invalid = block_params_invalid(a);
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
    logz[b] = params_invalid || invalid ? std::numeric_limits<double>::quiet_NaN() : z;
  }
}

// Backward: marginals scale_b * p(y_t = k) into d_unary and, when pairs is not null, the pair
// marginals summed over t into pairs[b] (thread i owns row i: no atomics, deterministic). beta
// is normalised like alpha (and like it kept in double, in shared memory with q), its running
// offset `total` the same in every thread; the message q = beta - unary is shifted by the
// forward's step offset off[t] - off[t-1] (which is about -unary).
template <typename scalar_t, typename acc_t>
__global__ void marginals_kernel(ChainArgs<scalar_t, acc_t> a, const bool* __restrict__ only,
                                 const double* __restrict__ alpha, const double* __restrict__ offset,
                                 const double* __restrict__ logz, const scalar_t* __restrict__ scale,
                                 scalar_t* __restrict__ d_unary, acc_t* __restrict__ pairs) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ double scratch[32];
  const int K = a.K;
  double* beta = reinterpret_cast<double*>(smem_raw);
  double* q = beta + K;
  const int64_t T = a.T, b = blockIdx.x;
  if (!only[b]) return;  // done in the exp domain
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

// ---- the exp domain: a warp per sequence, forward and backward fused -------------------------
//
// The CPU kernel's scaled forward-backward (cpu/partition_kernel.cpp, where the argument is
// written out): with E[i][j] = exp(tmax - trans[i][j]) in shared memory, each step is K^2 FMAs
// and K exponentials,
//   v_t(j) = sum_i a_{t-1}(i) E[i][j],   a_t(j) = v_t(j) exp(umin_t - e_t(j)) / m_t,
// every vector rescaled to a largest entry of 1 and the logs of the scales summed. With every
// transition finite and their range at most kExpRange (60 in float32, 600 in float64) nothing
// that matters underflows; a block whose transitions are forbidden somewhere (+inf) or range
// wider, or a sequence whose step mass still falls below the normal range, is flagged and left
// to the log-space kernels above, which run for the flagged sequences only. A warp keeps its
// sequence's a_t (T x K) and its pair-marginal accumulator (K x K) in shared memory; the
// backward recomputes v_t and the unary factors rather than storing them.
template <typename acc_t>
constexpr acc_t kExpRange = std::is_same<acc_t, float>::value ? acc_t(60) : acc_t(600);
constexpr int kExpWarps = 4;
constexpr int64_t kExpMaxK = 64;

// Where a block's shared memory goes: E and E^T (K^2 each), then per warp a (T x K), beta, q
// and the pair accumulator (K x K) when the op wants the parameters' gradients.
struct ExpLayout {
  int warps;
  size_t matrices, per_warp;
  size_t bytes() const { return matrices + size_t(warps) * per_warp; }
};

inline ExpLayout exp_layout(int64_t T, int64_t K, size_t value, bool pairs) {
  ExpLayout l;
  l.matrices = 2 * size_t(K * K) * value;
  l.per_warp = (size_t(std::max<int64_t>(T, 1) * K) + 2 * size_t(K) + (pairs ? size_t(K * K) : 0)) * value;
  l.warps = kExpWarps;
  const size_t budget = 96 * 1024;
  while (l.warps > 1 && l.bytes() > budget) --l.warps;
  return l;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t v) {
  return cuda_reduce::warp_reduce(v, cuda_reduce::Max());
}
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  return cuda_reduce::warp_reduce(v, cuda_reduce::Sum());
}

// log Z (into logz, as double) of the block's sequences in the exp domain and, when d_unary is
// not null, their marginals times scale[b] (every row of d_unary written, zeros past the length)
// and, when pairs is not null, their pair marginals times scale[b] into pairs[b]. A sequence
// that must run in log space gets flagged[b] = true, zero rows and zero pairs.
template <typename scalar_t, typename acc_t>
__global__ void exp_forward_backward_kernel(ChainArgs<scalar_t, acc_t> a, int64_t B, int warps,
                                            const scalar_t* __restrict__ scale,
                                            double* __restrict__ logz, scalar_t* __restrict__ d_unary,
                                            acc_t* __restrict__ pairs, bool* __restrict__ flagged) {
  EBM_DYNAMIC_SHARED(unsigned char, smem);
  __shared__ acc_t scratch[32];
  const int64_t K = a.K, T = a.T;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  acc_t* E = reinterpret_cast<acc_t*>(smem);
  acc_t* ET = E + K * K;
  // The transitions' finite range, and whether one is forbidden.
  acc_t lo = inf, hi = -inf;
  bool forbidden = false;
  for (int64_t n = threadIdx.x; n < K * K; n += blockDim.x) {
    const acc_t v = a.trans[n];
    if (v == inf) {
      forbidden = true;
    } else if (v > -inf) {  // NaN and -inf: params_invalid
      lo = min(lo, v);
      hi = max(hi, v);
    }
  }
  forbidden = __syncthreads_or(forbidden);
  const bool params_invalid = block_params_invalid(a);
  lo = cuda_reduce::block_reduce(lo, scratch, cuda_reduce::Min());
  hi = cuda_reduce::block_reduce(hi, scratch, cuda_reduce::Max());
  const bool exp_domain = !forbidden && !(hi - lo > kExpRange<acc_t>);
  const acc_t tmax = lo == inf ? acc_t(0) : hi;
  const acc_t c = lo == inf ? acc_t(1) : exp(hi - lo);
  for (int64_t n = threadIdx.x; n < K * K; n += blockDim.x) {
    const acc_t e = exp(tmax - a.trans[n]);
    E[n] = e;
    ET[(n % K) * K + n / K] = e;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = int64_t(blockIdx.x) * warps + warp;
  if (b >= B) return;  // no block barrier follows
  acc_t* A = reinterpret_cast<acc_t*>(smem + 2 * K * K * sizeof(acc_t)) +
             warp * (std::max<int64_t>(T, 1) * K + 2 * K + (pairs ? K * K : 0));
  acc_t* beta = A + std::max<int64_t>(T, 1) * K;
  acc_t* q = beta + K;
  acc_t* P = pairs ? q + K : nullptr;  // the pair accumulator
  const int64_t L = a.length(b);
  const scalar_t* u = a.unary_at(b, 0);
  scalar_t* du = d_unary ? d_unary + b * T * K : nullptr;
  const acc_t g = scale ? static_cast<acc_t>(scale[b]) : acc_t(0);
  // Zero rows and pairs: past the length always, everywhere when nothing flows back.
  const auto finish = [&](double z, bool flag, int64_t rows_from) {
    if (lane == 0) {
      logz[b] = z;
      flagged[b] = flag;
    }
    for (int64_t n = rows_from * K + lane; du && n < T * K; n += 32) du[n] = scalar_t(0);
    for (int64_t n = lane; pairs && n < K * K; n += 32) pairs[b * K * K + n] = acc_t(0);
  };
  bool invalid = params_invalid;
  for (int64_t n = lane; n < L * K; n += 32) invalid |= !(static_cast<acc_t>(u[n]) > -inf);
  invalid = __any_sync(0xffffffffu, invalid);
  if (L == 0) return finish(0.0, false, 0);
  if (invalid) return finish(std::numeric_limits<double>::quiet_NaN(), false, 0);
  if (!exp_domain) return finish(0.0, true, 0);
  // The energy of tag j at t, start and end included.
  const auto energy = [&](int64_t t, int64_t j) {
    return static_cast<acc_t>(u[t * K + j]) + (t == 0 ? a.start_at(j) : acc_t(0)) +
           (t == L - 1 ? a.end_at(j) : acc_t(0));
  };
  // The unary factors exp(umin - e_t(j)) of position t into w (this lane's tags); returns umin.
  acc_t w[kExpMaxK / 32];
  const auto unary_factor = [&](int64_t t) {
    acc_t umin = inf;
    for (int64_t j = lane; j < K; j += 32) umin = min(umin, energy(t, j));
    umin = cuda_reduce::warp_reduce(umin, cuda_reduce::Min());
    for (int64_t j = lane, s = 0; j < K; j += 32, ++s) w[s] = umin == inf ? acc_t(0) : exp(umin - energy(t, j));
    return umin;
  };

  // Forward.
  acc_t z;
  {
    acc_t m = -inf;
    for (int64_t j = lane; j < K; j += 32) m = max(m, -energy(0, j));
    m = warp_max(m);
    if (m == -inf) return finish(-std::numeric_limits<double>::infinity(), false, 0);
    for (int64_t j = lane; j < K; j += 32) A[j] = exp(-energy(0, j) - m);
    z = m;
  }
  for (int64_t t = 1; t < L; ++t) {
    __syncwarp();  // a_{t-1} written by every lane
    const acc_t umin = unary_factor(t);
    acc_t m = 0;
    for (int64_t j = lane, s = 0; j < K; j += 32, ++s) {
      acc_t v = 0;
      for (int64_t i = 0; i < K; ++i) v += A[(t - 1) * K + i] * E[i * K + j];
      A[t * K + j] = v * w[s];
      m = max(m, A[t * K + j]);
    }
    m = warp_max(m);
    if (m == acc_t(0)) return finish(-std::numeric_limits<double>::infinity(), false, 0);
    if (!(m >= std::numeric_limits<acc_t>::min())) return finish(0.0, true, 0);
    const acc_t inv = acc_t(1) / m;
    for (int64_t j = lane; j < K; j += 32) A[t * K + j] *= inv;
    z += log(m) - tmax - umin;
  }
  acc_t total = 0;
  for (int64_t j = lane; j < K; j += 32) total += A[(L - 1) * K + j];
  z += log(warp_sum(total));
  if (du == nullptr || g == acc_t(0)) return finish(double(z), false, 0);

  // Backward: marginals a_t beta_t / norm_t; q = c w_t beta_t rescaled; pair marginals
  // a_{t-1}(i) E(i, j) q(j) / Z_t with Z_t = sum_j v_t(j) q(j); beta_{t-1} = E q rescaled.
  for (int64_t j = lane; j < K; j += 32) beta[j] = acc_t(1);
  for (int64_t n = lane; P && n < K * K; n += 32) P[n] = acc_t(0);
  for (int64_t t = L - 1; t >= 0; --t) {
    __syncwarp();
    acc_t norm = 0;
    for (int64_t j = lane; j < K; j += 32) norm += A[t * K + j] * beta[j];
    const acc_t f = g / warp_sum(norm);
    for (int64_t j = lane; j < K; j += 32) du[t * K + j] = static_cast<scalar_t>(A[t * K + j] * beta[j] * f);
    if (t == 0) break;
    unary_factor(t);
    acc_t qmax = 0;
    for (int64_t j = lane, s = 0; j < K; j += 32, ++s) {
      q[j] = w[s] * (beta[j] * c);
      qmax = max(qmax, q[j]);
    }
    qmax = warp_max(qmax);
    if (!(qmax >= std::numeric_limits<acc_t>::min())) return finish(0.0, true, 0);
    const acc_t qinv = acc_t(1) / qmax;
    acc_t zt = 0;
    for (int64_t j = lane; j < K; j += 32) {
      q[j] *= qinv;
      acc_t v = 0;
      for (int64_t i = 0; i < K; ++i) v += A[(t - 1) * K + i] * E[i * K + j];
      zt += v * q[j];
    }
    zt = warp_sum(zt);
    if (P) {
      const acc_t fz = g / zt;
      for (int64_t j = lane; j < K; j += 32) {
        const acc_t next = q[j] * fz;
        for (int64_t i = 0; i < K; ++i) P[i * K + j] += A[(t - 1) * K + i] * next;
      }
    }
    __syncwarp();  // q written by every lane
    acc_t m = 0;
    for (int64_t i = lane, s = 0; i < K; i += 32, ++s) {
      acc_t nb = 0;
      for (int64_t j = 0; j < K; ++j) nb += ET[j * K + i] * q[j];
      w[s] = nb;  // beta_{t-1}(i) before rescaling (this lane's tags)
      m = max(m, nb);
    }
    m = warp_max(m);
    if (!(m >= std::numeric_limits<acc_t>::min())) return finish(0.0, true, 0);
    const acc_t inv = acc_t(1) / m;
    for (int64_t i = lane, s = 0; i < K; i += 32, ++s) beta[i] = w[s] * inv;
  }
  if (lane == 0) {
    logz[b] = double(z);
    flagged[b] = false;
  }
  for (int64_t n = L * K + lane; n < T * K; n += 32) du[n] = scalar_t(0);
  __syncwarp();  // P written by every lane
  for (int64_t n = lane; pairs && n < K * K; n += 32) pairs[b * K * K + n] = P[n] * E[n];
}

// The forward of every sequence: the exp domain for those it can take (all of them when it
// applies), then the log-space forward for the flagged ones, which leaves alpha and offset for
// their backward. With d_unary, the exp-domain kernel also runs the backward of its sequences.
struct Forward {
  Staged s;
  at::Tensor logz, flagged;  // double (B,), bool (B,)
  at::Tensor alpha, offset;  // log space, double
};

template <typename scalar_t>
Forward run_forward(const Staged& s, const at::Tensor& scale, at::Tensor* d_unary,
                    at::Tensor* pairs) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = s.unary.size(0), T = s.unary.size(1), K = s.unary.size(2);
  Forward f;
  f.s = s;
  f.logz = at::empty({B}, s.unary.options().dtype(at::kDouble));
  f.flagged = at::empty({B}, s.unary.options().dtype(at::kBool));
  auto a = chain_args<scalar_t, acc_t>(s, 0);
  const auto lay = exp_layout(T, K, sizeof(acc_t), pairs != nullptr);
  if (K <= kExpMaxK && lay.bytes() <= max_dynamic_shared_bytes()) {
    launch_kernel<exp_forward_backward_kernel<scalar_t, acc_t>>(
        static_cast<unsigned>((B + lay.warps - 1) / lay.warps), lay.warps * 32, lay.bytes(), a, B,
        lay.warps, d_unary ? scale.data_ptr<scalar_t>() : nullptr, f.logz.data_ptr<double>(),
        d_unary ? d_unary->data_ptr<scalar_t>() : nullptr,
        pairs ? pairs->data_ptr<acc_t>() : nullptr, f.flagged.data_ptr<bool>());
  } else {
    f.flagged.fill_(true);
    if (d_unary) d_unary->zero_();
    if (pairs) pairs->zero_();
  }
  f.alpha = at::empty(s.unary.sizes(), s.unary.options().dtype(at::kDouble));
  f.offset = at::empty({B, T}, s.unary.options().dtype(at::kDouble));
  launch_kernel<log_partition_kernel<scalar_t, acc_t>>(B, threads_for(K), shared_bytes(a, 0), a,
      f.flagged.data_ptr<bool>(), f.alpha.data_ptr<double>(), f.offset.data_ptr<double>(),
      f.logz.data_ptr<double>());
  return f;
}

at::Tensor chain_log_partition_cuda(const at::Tensor& unary, const at::Tensor& trans,
                                    const c10::optional<at::Tensor>& lengths,
                                    const c10::optional<at::Tensor>& start,
                                    const c10::optional<at::Tensor>& end) {
  const auto d = check_chain_inputs("chain_log_partition", unary, trans, lengths, start, end);
  if (general_chain(trans, start, end))
    return cuda_edge::log_partition(unary, trans, lengths, start, end);
  const DeviceGuard guard(unary.device());
  if (d.B == 0 || d.T == 0) return at::zeros({d.B}, unary.options());
  at::Tensor logz;
  const auto s = stage(unary, trans, lengths, start, end);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_log_partition_cuda", [&] {
    logz = run_forward<scalar_t>(s, at::Tensor(), nullptr, nullptr).logz;
  });
  return logz.to(unary.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward_cuda(
    const char* op, const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary,
    const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    bool want_params) {
  if (general_chain(trans, start, end))
    return cuda_edge::forward_backward(d, scale, unary, trans, lengths, start, end, want_params);
  const DeviceGuard guard(unary.device());
  const auto acc = at::toOpMathType(unary.scalar_type());
  check_shared_tags(op, d.K, 2 * sizeof(double));  // beta and q
  // Every row of d_unary and every sequence's pairs are written by the exp-domain kernel (zeros
  // for the sequences it flags, whose rows t < L the log-space backward then writes).
  auto d_unary = at::empty({d.B, d.T, d.K}, unary.options());
  auto d_trans = at::zeros({d.K, d.K}, unary.options());
  auto d_start = at::zeros({d.K}, unary.options());
  auto d_end = at::zeros({d.K}, unary.options());
  if (d.B == 0 || d.T == 0) return {d_unary.zero_(), d_trans, d_start, d_end};
  at::Tensor pairs = want_params ? at::empty({d.B, d.K, d.K}, unary.options().dtype(acc))
                                 : at::Tensor();
  const auto scale_c = scale.contiguous();
  const auto s = stage(unary, trans, lengths, start, end);
  at::Tensor logz;
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_marginals_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto f = run_forward<scalar_t>(s, scale_c, &d_unary, pairs.defined() ? &pairs : nullptr);
    logz = f.logz;
    const size_t before = 2 * d.K * sizeof(double);
    auto a = chain_args<scalar_t, acc_t>(f.s, before);
    acc_t* pairs_p = pairs.defined() ? pairs.data_ptr<acc_t>() : nullptr;
    launch_kernel<marginals_kernel<scalar_t, acc_t>>(
        d.B, threads_for(d.K), shared_bytes(a, before), a, f.flagged.data_ptr<bool>(),
        f.alpha.data_ptr<double>(), f.offset.data_ptr<double>(), f.logz.data_ptr<double>(),
        scale_c.data_ptr<scalar_t>(), d_unary.data_ptr<scalar_t>(), pairs_p);
  });
  // NaN inputs: the sequence's marginals at t < L (and everything summed from them) are NaN;
  // positions past the length stay 0, as on the CPU. No host synchronisation.
  const auto L = lengths.has_value() ? *lengths
                                     : at::full({d.B}, d.T, unary.options().dtype(at::kLong));
  const auto inside = at::arange(d.T, L.options()).view({1, d.T}) < L.view({d.B, 1});
  const auto nan_rows = at::isnan(logz).view({d.B, 1}).logical_and(inside).view({d.B, d.T, 1});
  d_unary.masked_fill_(nan_rows, std::numeric_limits<double>::quiet_NaN());
  if (want_params) {
    d_trans = pairs.sum(0).to(unary.scalar_type());
    d_trans.masked_fill_(at::isnan(logz).any(), std::numeric_limits<double>::quiet_NaN());
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
