// CUDA kernels of the distribution family: the per-sequence passes of chain_sequence.h, the
// same code the CPU kernels run, one thread per sequence (and one per sample and sequence for
// the sampling walk), with each sequence's scratch in global memory. Parameter sums are written
// per sequence and reduced by ATen afterwards: no atomics, deterministic.
//
// Why a thread per sequence: the passes are exact float64 recursions whose per-column log-space
// fallback branches per tag; keeping them one code for both backends was worth more, at this
// stage, than a block-per-sequence layout. With B >= a few hundred it fills a fraction of the
// device; the kernels have not run on a GPU yet (only in the SIMT emulation), so they have not
// been tuned there.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../distribution.h"
#include "device.cuh"

namespace ebm_ext {
namespace {

using chain_seq::Chain;

constexpr int kThreads = 128;

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// Pointers of one launch, read by every thread.
template <typename S>
struct Args {
  Chain<S> e, v;
  const double* E;
  const double* tmin;
  const bool* params_invalid;
  double* work;  // (B, work_doubles(T, K))
  int64_t B;
};

template <typename S>
__device__ chain_seq::Work work_of(const Args<S>& a, int64_t b) {
  const int64_t n = chain_seq::work_doubles(a.e.T, a.e.K);
  return chain_seq::make_work(a.work + b * n, a.e.T, a.e.K);
}

template <typename S>
__global__ void expectation_kernel(Args<S> a, bool with_v, S* __restrict__ log_z,
                                   S* __restrict__ expect, double* __restrict__ log_z_double) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= a.B) return;
  const int64_t L = a.e.length(b);
  if (L == 0) {
    if (log_z) log_z[b] = S(0);
    if (expect) expect[b] = S(0);
    if (log_z_double) log_z_double[b] = 0.0;
    return;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  double es = 0.0;
  const double z = *a.params_invalid
                       ? nan
                       : chain_seq::forward(a.e, with_v ? &a.v : nullptr,
                                            chain_seq::ExpTrans{a.E, *a.tmin}, b, L, work_of(a, b),
                                            &es);
  if (log_z) log_z[b] = static_cast<S>(z);
  if (log_z_double) log_z_double[b] = z;
  if (expect) expect[b] = static_cast<S>(isnan(z) ? nan : es);
}

// weight_b Cov(phi, v . phi) of each sequence: the unary part into c_unary, the rest into the
// per-sequence rows of pairs (B, K*K + 2K) (transitions, first, last).
template <typename S>
__global__ void covariance_kernel(Args<S> a, const S* __restrict__ weight, S* __restrict__ c_unary,
                                  double* __restrict__ pairs) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= a.B) return;
  const int64_t L = a.e.length(b);
  const double g = static_cast<double>(weight[b]);
  if (L == 0 || g == 0.0) return;
  const int K = a.e.K;
  const int64_t T = a.e.T;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const chain_seq::ExpTrans x{a.E, *a.tmin};
  const auto w = work_of(a, b);
  double* row = pairs + b * (int64_t(K) * K + 2 * K);
  S* cu = c_unary + b * T * K;
  double es = nan;
  const double z = *a.params_invalid ? nan : chain_seq::forward(a.e, &a.v, x, b, L, w, &es);
  if (isnan(z) || isnan(es)) {
    for (int64_t n = 0; n < L * K; ++n) cu[n] = static_cast<S>(nan);
    for (int64_t n = 0; n < int64_t(K) * K + 2 * K; ++n) row[n] = nan;
    return;
  }
  if (z == -chain_seq::inf()) return;
  chain_seq::covariance(a.e, a.v, x, b, L, w, z, es, g, cu, row, row + K * K, row + K * K + K);
}

// The walk of sample n of sequence b, after expectation_kernel left its forward messages in the
// scratch and log Z in log_z.
template <typename S>
__global__ void sample_kernel(Args<S> a, const double* __restrict__ log_z,
                              const double* __restrict__ noise, int64_t N,
                              int64_t* __restrict__ tags) {
  const int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= N * a.B) return;
  const int64_t n = id / a.B, b = id % a.B;
  const int64_t L = a.e.length(b);
  const double z = log_z[b];
  if (L == 0 || !isfinite(z)) return;  // tags stay -1
  const int64_t row = (n * a.B + b) * a.e.T;
  chain_seq::sample(a.e, chain_seq::ExpTrans{a.E, *a.tmin}, b, L, work_of(a, b), z, noise + row,
                    tags + row);
}

// The launch arguments of a staged call, with `work` (B, work_doubles(T, K)) as the scratch.
template <typename S>
Args<S> args_of(const StagedChain& s, const at::Tensor& work) {
  Args<S> a;
  a.e = s.energies<S>();
  a.v = s.direction<S>();
  a.E = s.exp.E.data_ptr<double>();
  a.tmin = s.exp.tmin.data_ptr<double>();
  a.params_invalid = s.exp.params_invalid.data_ptr<bool>();
  a.work = work.data_ptr<double>();
  a.B = s.unary.size(0);
  return a;
}

at::Tensor scratch_for(const at::Tensor& unary) {
  return at::empty({unary.size(0) * chain_seq::work_doubles(unary.size(1), int(unary.size(2)))},
                   unary.options().dtype(at::kDouble));
}

std::tuple<at::Tensor, at::Tensor> chain_expectation_cuda(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,
    const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end) {
  const auto d = check_expectation_inputs("chain_expectation", unary, trans, v_unary, v_trans,
                                          lengths, start, end, v_start, v_end);
  const DeviceGuard guard(unary.device());
  auto log_z = at::zeros({d.B}, unary.options());
  auto expect = at::zeros({d.B}, unary.options());
  if (d.B == 0 || d.T == 0) return {log_z, expect};
  const auto s = stage_chain(unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end);
  const auto work = scratch_for(unary);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_expectation_cuda", [&] {
    launch_kernel<expectation_kernel<scalar_t>>(blocks_for(d.B), kThreads, 0,
                                                args_of<scalar_t>(s, work),
                                                true, log_z.data_ptr<scalar_t>(),
                                                expect.data_ptr<scalar_t>(),
                                                static_cast<double*>(nullptr));
  });
  return {log_z, expect};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chain_covariance_cuda(
    const at::Tensor& weight, const at::Tensor& unary, const at::Tensor& trans,
    const at::Tensor& v_unary, const c10::optional<at::Tensor>& v_trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, const c10::optional<at::Tensor>& v_start,
    const c10::optional<at::Tensor>& v_end) {
  const char* op = "_chain_covariance";
  const auto d = check_expectation_inputs(op, unary, trans, v_unary, v_trans, lengths, start, end,
                                          v_start, v_end);
  check_covariance_weight(op, weight, unary);
  const DeviceGuard guard(unary.device());
  auto c_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto pairs = at::zeros({d.B, d.K * d.K + 2 * d.K}, unary.options().dtype(at::kDouble));
  if (d.B > 0 && d.T > 0) {
    const auto s =
        stage_chain(unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end);
    const auto work = scratch_for(unary);
    const auto w = weight.contiguous();
    EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_covariance_cuda", [&] {
      launch_kernel<covariance_kernel<scalar_t>>(blocks_for(d.B), kThreads, 0,
                                                 args_of<scalar_t>(s, work), w.data_ptr<scalar_t>(),
                                                 c_unary.data_ptr<scalar_t>(),
                                                 pairs.data_ptr<double>());
    });
  }
  const auto total = pairs.sum(0).to(unary.scalar_type());
  const int64_t K = d.K;
  // Three outputs of their own (views of one buffer would alias).
  return {c_unary, total.narrow(0, 0, K * K).view({K, K}).clone(), total.narrow(0, K * K, K).clone(),
          total.narrow(0, K * K + K, K).clone()};
}

at::Tensor chain_sample_cuda(const at::Tensor& unary, const at::Tensor& trans,
                             const at::Tensor& noise, const c10::optional<at::Tensor>& lengths,
                             const c10::optional<at::Tensor>& start,
                             const c10::optional<at::Tensor>& end) {
  const char* op = "chain_sample";
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  check_sample_noise(op, noise, d, unary);
  const DeviceGuard guard(unary.device());
  const int64_t N = noise.size(0);
  auto tags = at::full({N, d.B, d.T}, -1, unary.options().dtype(at::kLong));
  if (N == 0 || d.B == 0 || d.T == 0) return tags;
  const auto s = stage_chain(unary, trans, lengths, start, end);
  const auto work = scratch_for(unary);
  auto log_z = at::empty({d.B}, unary.options().dtype(at::kDouble));
  const auto nz = noise.contiguous();
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_sample_cuda", [&] {
    using S = scalar_t;
    const auto a = args_of<S>(s, work);
    // The forward messages, and log Z in double whatever S is (the walk reads it).
    launch_kernel<expectation_kernel<S>>(blocks_for(d.B), kThreads, 0, a, false,
                                         static_cast<S*>(nullptr), static_cast<S*>(nullptr),
                                         log_z.data_ptr<double>());
    launch_kernel<sample_kernel<S>>(blocks_for(N * d.B), kThreads, 0, a,
                                    log_z.data_ptr<double>(), nz.data_ptr<double>(), N,
                                    tags.data_ptr<int64_t>());
  });
  return tags;
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("chain_expectation", &chain_expectation_cuda);
  m.impl("_chain_covariance", &chain_covariance_cuda);
  m.impl("chain_sample", &chain_sample_cuda);
}

}  // namespace ebm_ext
