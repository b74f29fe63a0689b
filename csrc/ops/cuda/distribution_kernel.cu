// CUDA kernels of the distribution family: the per-sequence passes of chain_sequence.h, the
// same code the CPU kernels run, with a warp per sequence (the team of chain_sequence.h: lane r
// owns the tags r, r + 32, ... of every step) and kWarps sequences per block. The forward alone
// (chain_expectation) keeps two rows of messages per sequence in shared memory; the passes that
// read the forward messages back (covariance, the sampling walk) keep them in global memory,
// where a step's row is one coalesced line per warp. Parameter sums are written per sequence
// and reduced by ATen afterwards: no atomics, deterministic. The sampling walk runs one thread
// per sample and sequence.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../distribution.h"
#include "chain_common.cuh"
#include "device.cuh"
#include "team.cuh"

namespace ebm_ext {
namespace {

using chain_seq::Chain;

constexpr int kWarps = 4;  // sequences per block
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockScratch = kWarps;  // doubles: one per warp, for the block's reductions

inline int blocks_for(int64_t n, int per_block) {
  return static_cast<int>((n + per_block - 1) / per_block);
}

// Pointers of one launch, read by every thread. Each block's dynamic shared memory holds the
// block's reduction scratch (kBlockScratch doubles), then E (K * K) unless `E` is given, then
// each warp's rows of messages unless `work` is given (from ring_at on).
template <typename S>
struct Args {
  Chain<S> e, v;
  const double* E;       // (K, K) staged by stage_kernel, and staged = {tmin, invalid}; or
  const double* staged;  // null: each block stages them into its shared memory
  double* work;  // (B, work_doubles(rows, K)); null: each warp's rows in shared memory
  int64_t rows;  // T, or chain_seq::kRingRows for the forward alone
  int64_t ring_at;
  int64_t B;
  int op;  // Op: for the device-side checks' messages
};

enum Op { kExpectation, kCovariance, kSample };

__device__ __forceinline__ const char* op_name(int op) {
  return op == kExpectation ? "chain_expectation"
                            : op == kCovariance ? "_chain_covariance" : "chain_sample";
}

// Sequence b's length, checked on the device (the host does not read lengths: no sync).
template <typename S>
__device__ int64_t checked_length(const Args<S>& a, int64_t b) {
  return cuda_chain::require_length(a.e.length(b), a.e.T, b, op_name(a.op));
}

// The exp-domain transitions for the block (every thread of the block must call it).
template <typename S>
__device__ chain_seq::ExpTrans stage_block(const Args<S>& a, double* shared, bool& invalid) {
  if (a.E) {
    invalid = a.staged[1] != 0.0;
    return {a.E, a.staged[0]};
  }
  double* E = shared + kBlockScratch;
  const auto st = chain_seq::stage_transitions(BlockTeam{shared, nullptr}, a.e, E);
  invalid = st.invalid;
  return {E, st.tmin};
}

// For K too large for shared memory: E and {tmin, invalid} once, in global memory (one block).
template <typename S>
__global__ void stage_kernel(Chain<S> e, double* __restrict__ E, double* __restrict__ staged) {
  EBM_DYNAMIC_SHARED(double, shared);
  const auto st = chain_seq::stage_transitions(BlockTeam{shared, nullptr}, e, E);
  if (threadIdx.x == 0) {
    staged[0] = st.tmin;
    staged[1] = st.invalid ? 1.0 : 0.0;
  }
}

// The sequence of this thread's warp (B or beyond: none; the whole warp leaves).
__device__ int64_t warp_sequence() { return int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; }

template <typename S>
__device__ chain_seq::Work work_of(const Args<S>& a, int64_t b, double* shared) {
  const int64_t n = chain_seq::work_doubles(a.rows, a.e.K);
  return chain_seq::make_work(
      a.work ? a.work + b * n : shared + a.ring_at + (threadIdx.x / 32) * n, a.rows, a.e.K);
}

// log Z (and with_v, E_p[v . phi]) of each sequence, a warp per sequence; lane 0 writes.
template <typename S>
__global__ void expectation_kernel(Args<S> a, bool with_v, S* __restrict__ log_z,
                                   S* __restrict__ expect, double* __restrict__ log_z_double) {
  EBM_DYNAMIC_SHARED(double, shared);
  bool invalid;
  const auto x = stage_block(a, shared, invalid);
  const int64_t b = warp_sequence();
  if (b >= a.B) return;
  const bool writer = threadIdx.x % 32 == 0;
  const int64_t L = checked_length(a, b);
  if (L == 0) {
    if (writer) {
      if (log_z) log_z[b] = S(0);
      if (expect) expect[b] = S(0);
      if (log_z_double) log_z_double[b] = 0.0;
    }
    return;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  double es = 0.0;
  const double z = invalid ? nan
                           : chain_seq::forward(WarpTeam{}, a.e, with_v ? &a.v : nullptr, x, b, L,
                                                work_of(a, b, shared), &es);
  if (!writer) return;
  if (log_z) log_z[b] = static_cast<S>(z);
  if (log_z_double) log_z_double[b] = z;
  if (expect) expect[b] = static_cast<S>(isnan(z) ? nan : es);
}

// weight_b Cov(phi, v . phi) of each sequence, a warp per sequence: the unary part into c_unary,
// the rest into the per-sequence rows of pairs (B, K*K + 2K) (transitions, first, last).
template <typename S>
__global__ void covariance_kernel(Args<S> a, const S* __restrict__ weight, S* __restrict__ c_unary,
                                  double* __restrict__ pairs) {
  EBM_DYNAMIC_SHARED(double, shared);
  bool invalid;
  const auto x = stage_block(a, shared, invalid);
  const int64_t b = warp_sequence();
  if (b >= a.B) return;
  const int64_t L = checked_length(a, b);
  const double g = static_cast<double>(weight[b]);
  if (L == 0 || g == 0.0) return;
  const int K = a.e.K;
  const int64_t T = a.e.T;
  const int lane = threadIdx.x % 32;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto w = work_of(a, b, shared);
  double* row = pairs + b * (int64_t(K) * K + 2 * K);
  S* cu = c_unary + b * T * K;
  double es = nan;
  const double z = invalid ? nan : chain_seq::forward(WarpTeam{}, a.e, &a.v, x, b, L, w, &es);
  if (isnan(z) || isnan(es)) {
    for (int64_t n = lane; n < L * K; n += 32) cu[n] = static_cast<S>(nan);
    for (int64_t n = lane; n < int64_t(K) * K + 2 * K; n += 32) row[n] = nan;
    return;
  }
  if (z == -chain_seq::inf()) return;
  chain_seq::covariance(WarpTeam{}, a.e, a.v, x, b, L, w, z, es, g, cu, row, row + K * K,
                        row + K * K + K);
}

// The walk of sample n of sequence b, one thread each, after expectation_kernel left the
// sequence's forward messages in the scratch (rows = T) and log Z in log_z.
template <typename S>
__global__ void sample_kernel(Args<S> a, const double* __restrict__ log_z,
                              const double* __restrict__ noise, int64_t N,
                              int64_t* __restrict__ tags) {
  EBM_DYNAMIC_SHARED(double, shared);
  bool invalid;
  const auto x = stage_block(a, shared, invalid);
  const int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= N * a.B) return;
  const int64_t n = id / a.B, b = id % a.B;
  const int64_t L = a.e.length(b);
  const double z = log_z[b];
  if (L == 0 || !isfinite(z)) return;  // tags stay -1 (z is NaN where invalid)
  const int64_t row = (n * a.B + b) * a.e.T;
  chain_seq::sample(a.e, x, b, L, work_of(a, b, shared), z, noise + row, tags + row);
}

// Which forward messages a call keeps: the two rows a forward alone needs, or every row, which
// the covariance and the sampling walk read back (from global memory, after the forward).
enum class Messages { kTwoRows, kAllRows };

// One call's launches: where E and the messages live, the shared memory that takes, and the
// arguments. Two rows of messages live in shared memory where they fit; all rows in global
// memory.
template <typename S>
struct Launch {
  Args<S> args;
  size_t shared;
  at::Tensor E, staged, work;  // owned here while the launches run

  Launch(const StagedChain& s, Messages messages, Op op) {
    const int K = int(s.unary.size(2));
    const int64_t rows = messages == Messages::kTwoRows ? chain_seq::kRingRows : s.unary.size(1);
    const int64_t ring = chain_seq::work_doubles(rows, K);
    const size_t most = max_dynamic_shared_bytes() / sizeof(double);
    // Not by rows == kRingRows: with T = 2 the walk must still find every row in global memory.
    const bool rings_in_shared =
        messages == Messages::kTwoRows && size_t(kBlockScratch + kWarps * ring) <= most;
    const size_t rings = rings_in_shared ? size_t(kWarps * ring) : 0;
    const bool E_in_shared = size_t(kBlockScratch) + size_t(K) * K + rings <= most;
    args.e = s.energies<S>();
    args.v = s.direction<S>();
    const auto dbl = s.unary.options().dtype(at::kDouble);
    if (!E_in_shared) {
      E = at::empty({K, K}, dbl);
      staged = at::empty({2}, dbl);
      launch_kernel<stage_kernel<S>>(1, kThreads, kBlockScratch * sizeof(double), args.e,
                                     E.data_ptr<double>(), staged.data_ptr<double>());
    }
    args.E = E.defined() ? E.data_ptr<double>() : nullptr;
    args.staged = staged.defined() ? staged.data_ptr<double>() : nullptr;
    args.ring_at = kBlockScratch + (E_in_shared ? int64_t(K) * K : 0);
    if (!rings_in_shared) work = at::empty({s.unary.size(0) * ring}, dbl);
    args.work = work.defined() ? work.data_ptr<double>() : nullptr;
    args.rows = rows;
    args.B = s.unary.size(0);
    args.op = op;
    shared = (args.ring_at + rings) * sizeof(double);
  }
};

std::tuple<at::Tensor, at::Tensor> chain_expectation_cuda(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,
    const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end) {
  const auto d = check_expectation_inputs("chain_expectation", unary, trans, v_unary, v_trans,
                                          lengths, start, end, v_start, v_end, ValueChecks::Device);
  if (general_expectation(trans, start, end, v_trans, v_start, v_end))
    return cuda_edge::expectation(unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end);
  const DeviceGuard guard(unary.device());
  if (d.B == 0 || d.T == 0) {
    return {at::zeros({d.B}, unary.options()), at::zeros({d.B}, unary.options())};
  }
  auto log_z = at::empty({d.B}, unary.options());  // every entry written by the kernel
  auto expect = at::empty({d.B}, unary.options());
  const auto s = stage_chain(unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_expectation_cuda", [&] {
    const Launch<scalar_t> l(s, Messages::kTwoRows, kExpectation);
    launch_kernel<expectation_kernel<scalar_t>>(blocks_for(d.B, kWarps), kThreads, l.shared,
                                                l.args, true, log_z.data_ptr<scalar_t>(),
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
                                          v_start, v_end, ValueChecks::Device);
  check_covariance_weight(op, weight, unary);
  if (general_expectation(trans, start, end, v_trans, v_start, v_end))
    return cuda_edge::covariance(weight, unary, trans, v_unary, v_trans, lengths, start, end, v_start,
                              v_end);
  const DeviceGuard guard(unary.device());
  auto c_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto pairs = at::zeros({d.B, d.K * d.K + 2 * d.K}, unary.options().dtype(at::kDouble));
  if (d.B > 0 && d.T > 0) {
    const auto s =
        stage_chain(unary, trans, v_unary, v_trans, lengths, start, end, v_start, v_end);
    const auto w = weight.contiguous();
    EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_covariance_cuda", [&] {
      const Launch<scalar_t> l(s, Messages::kAllRows, kCovariance);
      launch_kernel<covariance_kernel<scalar_t>>(blocks_for(d.B, kWarps), kThreads, l.shared,
                                                 l.args, w.data_ptr<scalar_t>(),
                                                 c_unary.data_ptr<scalar_t>(),
                                                 pairs.data_ptr<double>());
    });
  }
  const auto total = pairs.sum(0).to(unary.scalar_type());
  const int64_t K = d.K;
  // Three outputs of their own (views of one buffer would alias).
  return {c_unary, total.narrow(0, 0, K * K).view({K, K}).clone(),
          total.narrow(0, K * K, K).clone(), total.narrow(0, K * K + K, K).clone()};
}

at::Tensor chain_sample_cuda(const at::Tensor& unary, const at::Tensor& trans,
                             const at::Tensor& noise, const c10::optional<at::Tensor>& lengths,
                             const c10::optional<at::Tensor>& start,
                             const c10::optional<at::Tensor>& end) {
  const char* op = "chain_sample";
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end,
                                    ValueChecks::Device);
  check_sample_noise(op, noise, d, unary);
  if (general_chain(trans, start, end)) return cuda_edge::sample(unary, trans, noise, lengths, start, end);
  const DeviceGuard guard(unary.device());
  const int64_t N = noise.size(0);
  auto tags = at::full({N, d.B, d.T}, -1, unary.options().dtype(at::kLong));
  if (N == 0 || d.B == 0 || d.T == 0) return tags;
  const auto s = stage_chain(unary, trans, lengths, start, end);
  auto log_z = at::empty({d.B}, unary.options().dtype(at::kDouble));
  const auto nz = noise.contiguous();
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_sample_cuda", [&] {
    using S = scalar_t;
    const Launch<S> l(s, Messages::kAllRows, kSample);
    // The forward messages, and log Z in double whatever S is (the walk reads it).
    launch_kernel<expectation_kernel<S>>(blocks_for(d.B, kWarps), kThreads, l.shared, l.args,
                                         false, static_cast<S*>(nullptr),
                                         static_cast<S*>(nullptr), log_z.data_ptr<double>());
    launch_kernel<sample_kernel<S>>(blocks_for(N * d.B, kThreads), kThreads, l.shared, l.args,
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
