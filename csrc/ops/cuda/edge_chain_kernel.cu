// The general chains (../edge_chain.h) on CUDA: a warp per sequence, four sequences per block,
// each warp's messages in a global float64 workspace (a sequence's rows are its own: the
// matrices differ per sequence and per move, so nothing is staged per block). Called by the
// shared ops' CUDA kernels after their checks; lengths are checked on the device.
#include <ATen/ATen.h>

#include <limits>

#include "../edge_chain_ops.h"
#include "chain_common.cuh"
#include "device.cuh"
#include "team.cuh"

namespace ebm_ext {
namespace cuda_edge {
namespace {

constexpr int kWarps = 4;  // sequences per block
constexpr int kThreads = 32 * kWarps;

int blocks_for(int64_t B) { return static_cast<int>((B + kWarps - 1) / kWarps); }

__device__ __forceinline__ int64_t warp_sequence() {
  return int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
}

// The ops, for the device-side messages (a host string cannot be handed to a kernel).
enum Op : int {
  kViterbi, kKBest, kLossAugmented, kLogPartition, kMarginals, kEnergy, kExpectation,
  kCovariance, kSample
};

__device__ const char* op_name(Op op) {
  switch (op) {
    case kViterbi: return "viterbi";
    case kKBest: return "viterbi_kbest";
    case kLossAugmented: return "loss_augmented_viterbi";
    case kLogPartition: return "chain_log_partition";
    case kMarginals: return "chain_marginals";
    case kEnergy: return "chain_energy";
    case kExpectation: return "chain_expectation";
    case kCovariance: return "_chain_covariance";
    default: return "chain_sample";
  }
}

template <typename S>
__device__ __forceinline__ int64_t checked_length(const edge::EdgeChain<S>& c, int64_t b, Op op) {
  return cuda_chain::require_length(c.length(b), c.T, b, op_name(op));
}

// viterbi and, with gold and cost, loss_augmented_viterbi (one decoder, as the one-matrix
// kernels share theirs): beta, w (K doubles each) and ptr ((T - 1) K int32) per sequence in the
// workspaces. Viterbi's energy is the recursion's minimum (log_partition's bound relies on it);
// the loss-augmented energy is E(y*) summed along the path, with delta its cost.
template <typename S>
__global__ void __launch_bounds__(kThreads)
    edge_decode_kernel(edge::EdgeChain<S> c, int64_t B, const int64_t* __restrict__ gold,
                       const S* __restrict__ cost, double* __restrict__ scratch,
                       int32_t* __restrict__ ptr, S* __restrict__ energy, S* __restrict__ delta,
                       int64_t* __restrict__ tags) {
  using acc_t = at::opmath_type<S>;
  const int64_t b = warp_sequence();
  if (b >= B) return;
  const WarpTeam team;
  const int64_t L = checked_length(c, b, cost ? kLossAugmented : kViterbi);
  int64_t* y = tags + b * c.T;
  if (L == 0) {
    for (int64_t t = team.rank(); t < c.T; t += team.size()) y[t] = -1;
    if (team.rank() == 0) {
      energy[b] = S(0);
      if (cost) delta[b] = S(0);
    }
    return;
  }
  double* beta = scratch + b * 2 * c.K;
  const double best =
      edge::decode(team, c, b, L, beta, beta + c.K, ptr + b * std::max<int64_t>(c.T - 1, 1) * c.K,
                   y, cost, cost ? gold + b * c.T : nullptr);
  const bool bad = edge::invalid(team, c, b, L);
  if (team.rank() != 0) return;
  const S nan = edge::from_double<S>(std::numeric_limits<double>::quiet_NaN());
  if (!cost) {
    energy[b] = bad ? nan : edge::from_double<S>(best);
    return;
  }
  acc_t dsum = 0;
  for (int64_t t = 0; t < L; ++t) dsum += static_cast<acc_t>(cost[gold[b * c.T + t] * c.K + y[t]]);
  energy[b] = bad ? nan : static_cast<S>(edge::path_energy<acc_t>(c, b, y, L));
  delta[b] = static_cast<S>(dsum);
}

// log Z per sequence (edge::log_partition); la holds each sequence's beta and w.
template <typename S>
__global__ void __launch_bounds__(kThreads)
    edge_logz_kernel(edge::EdgeChain<S> c, int64_t B, double* __restrict__ la,
                         S* __restrict__ logz) {
  const int64_t b = warp_sequence();
  if (b >= B) return;
  const WarpTeam team;
  const int64_t L = checked_length(c, b, kLogPartition);
  double z = 0.0;
  if (L > 0) {
    z = edge::invalid(team, c, b, L)
            ? std::numeric_limits<double>::quiet_NaN()
            : edge::log_partition(team, c, b, L, la + b * 2 * c.K, la + b * 2 * c.K + c.K);
  }
  if (team.rank() == 0) logz[b] = edge::from_double<S>(z);
}

// The forward-backward per sequence, scaled by scale_b: the marginals, or with a direction v
// (has_v), scale_b Cov(phi, v . phi); la and F (T K each) and 4 K doubles per sequence.
template <typename S>
__global__ void __launch_bounds__(kThreads)
    edge_backward_kernel(edge::EdgeChain<S> c, edge::EdgeChain<S> v, bool has_v, Op op, int64_t B,
                    double* __restrict__ scratch, const S* __restrict__ scale,
                    S* __restrict__ d_unary, double* __restrict__ d_trans, int64_t d_trans_per_b,
                    int64_t d_trans_t, double* __restrict__ d_start, double* __restrict__ d_end) {
  const int64_t b = warp_sequence();
  if (b >= B) return;
  const WarpTeam team;
  const int64_t L = checked_length(c, b, op);
  if (L == 0) return;
  const int K = c.K;
  const edge::Grads<S> g{d_unary + b * c.T * K, d_trans ? d_trans + b * d_trans_per_b : nullptr,
                         d_trans_t, d_start ? d_start + b * K : nullptr,
                         d_end ? d_end + b * K : nullptr};
  if (edge::invalid(team, c, b, L)) {
    edge::fill_nan(team, c, L, g);
    return;
  }
  double* la = scratch + b * (2 * c.T + 4) * K;
  double* F = la + c.T * K;
  double* q = F + c.T * K;
  const edge::EdgeChain<S>* dir = has_v ? &v : nullptr;
  double es = 0.0;
  const double lz = edge::forward(team, c, b, L, la, false, dir, F, &es);
  const double s = edge::to_double(scale[b]);
  if (lz == -edge::inf() || s == 0.0) return;
  edge::backward(team, c, b, L, la, lz, s, q, q + K, g, dir, F, es, q + 2 * K, q + 3 * K);
}

template <typename S>
__global__ void edge_energy_kernel(edge::EdgeChain<S> c, int64_t n, int64_t C, bool candidates,
                              const int64_t* __restrict__ tags, S* __restrict__ energy) {
  using acc_t = at::opmath_type<S>;
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n) return;
  const int64_t b = p / C;
  const int64_t L = checked_length(c, b, kEnergy);
  const int64_t* y = tags + p * c.T;
  cuda_chain::require_path_tags(y, L, c.K, b, p % C, candidates);
  energy[p] = static_cast<S>(edge::path_energy<acc_t>(c, b, y, L));
}

// k-best lists: beta, next, w (k K each) and top (k) doubles, codes (k) and ptr ((T-1) k K).
template <typename S>
__global__ void __launch_bounds__(kThreads)
    edge_kbest_kernel(edge::EdgeChain<S> c, int64_t B, int64_t k, double* __restrict__ scratch,
                 int64_t* __restrict__ codes, int32_t* __restrict__ ptr, S* __restrict__ energy,
                 int64_t* __restrict__ tags) {
  const int64_t b = warp_sequence();
  if (b >= B) return;
  const WarpTeam team;
  const int64_t L = checked_length(c, b, kKBest);
  S* eb = energy + b * k;
  int64_t* yb = tags + b * k * c.T;
  if (L == 0) {  // the empty path is the only one
    for (int64_t n = team.rank(); n < k * c.T; n += team.size()) yb[n] = -1;
    for (int64_t s = team.rank(); s < k; s += team.size())
      eb[s] = s == 0 ? S(0) : edge::from_double<S>(edge::inf());
    return;
  }
  const int64_t kK = k * c.K;
  double* q = scratch + b * (3 * kK + k);
  int64_t* top_codes = codes + b * k;
  edge::kbest(team, c, b, L, k, q, q + kK, q + 2 * kK,
              ptr + b * std::max<int64_t>(c.T - 1, 1) * kK, top_codes, q + 3 * kK, eb, yb);
  if (edge::invalid(team, c, b, L))
    for (int64_t s = team.rank(); s < k; s += team.size())
      if (top_codes[s] >= 0) eb[s] = edge::from_double<S>(std::numeric_limits<double>::quiet_NaN());
}

// log Z and E_p[v . phi]: la and F, two rows each (4 K doubles) per sequence.
template <typename S>
__global__ void __launch_bounds__(kThreads)
    edge_expectation_kernel(edge::EdgeChain<S> c, edge::EdgeChain<S> v, int64_t B,
                       double* __restrict__ scratch, S* __restrict__ logz, S* __restrict__ mean) {
  const int64_t b = warp_sequence();
  if (b >= B) return;
  const WarpTeam team;
  const int64_t L = checked_length(c, b, kExpectation);
  double z = 0.0, m = 0.0;
  if (L > 0) {
    if (edge::invalid(team, c, b, L)) {
      z = m = std::numeric_limits<double>::quiet_NaN();
    } else {
      double* q = scratch + b * 4 * c.K;
      z = edge::forward(team, c, b, L, q, true, &v, q + 2 * c.K, &m);
    }
  }
  if (team.rank() == 0) {
    logz[b] = edge::from_double<S>(z);
    mean[b] = edge::from_double<S>(m);
  }
}

// Samples: the warp's forward (la, T K doubles per sequence), then each lane walks samples
// n = lane, lane + 32, ...
template <typename S>
__global__ void __launch_bounds__(kThreads)
    edge_sample_kernel(edge::EdgeChain<S> c, int64_t B, int64_t N, double* __restrict__ scratch,
                  const double* __restrict__ noise, int64_t* __restrict__ tags) {
  const int64_t b = warp_sequence();
  if (b >= B) return;
  const WarpTeam team;
  const int64_t L = checked_length(c, b, kSample);
  if (L == 0 || edge::invalid(team, c, b, L)) return;  // tags stay -1
  double* la = scratch + b * c.T * c.K;
  const double lz = edge::forward(team, c, b, L, la, false);
  if (!(lz > -edge::inf())) return;
  for (int64_t n = team.rank(); n < N; n += team.size())
    edge::sample(c, b, L, la, lz, noise + (n * B + b) * c.T, tags + (n * B + b) * c.T);
}

// viterbi, or with gold and cost (contiguous) loss_augmented_viterbi: (energy, delta, tags),
// delta undefined without cost.
std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_all(
    const at::Tensor& unary, const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const at::Tensor& gold, const at::Tensor& cost) {
  const DeviceGuard guard(unary.device());
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto energy = at::empty({B}, unary.options());
  auto delta = cost.defined() ? at::empty({B}, unary.options()) : at::Tensor();
  auto tags = at::empty({B, T}, unary.options().dtype(at::kLong));
  if (B == 0) return {energy, delta, tags};
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  auto scratch = at::empty({B, 2 * K}, unary.options().dtype(at::kDouble));
  auto ptr = at::empty({B, std::max<int64_t>(T - 1, 1) * K}, unary.options().dtype(at::kInt));
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "edge_decode_cuda", [&] {
    launch_kernel<edge_decode_kernel<scalar_t>>(
        blocks_for(B), kThreads, 0, edge::view<scalar_t>(x), B,
        gold.defined() ? gold.data_ptr<int64_t>() : nullptr,
        cost.defined() ? cost.data_ptr<scalar_t>() : nullptr, scratch.data_ptr<double>(),
        ptr.data_ptr<int32_t>(), energy.data_ptr<scalar_t>(),
        delta.defined() ? delta.data_ptr<scalar_t>() : nullptr, tags.data_ptr<int64_t>());
  });
  return {energy, delta, tags};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_pass(
    Op op, const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary,
    const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const edge::Inputs* direction, bool want_params) {
  const DeviceGuard guard(unary.device());
  auto d_unary = at::zeros({d.B, d.T, d.K}, unary.options());
  auto g = edge::grad_buffers(d, trans);
  if (d.B > 0 && d.T > 0) {
    const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
    const auto scale_c = scale.contiguous();
    auto scratch = at::empty({d.B, (2 * d.T + 4) * d.K}, unary.options().dtype(at::kDouble));
    EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "edge_backward_cuda", [&] {
      const auto c = edge::view<scalar_t>(x);
      launch_kernel<edge_backward_kernel<scalar_t>>(
          blocks_for(d.B), kThreads, 0, c, direction ? edge::view<scalar_t>(*direction) : c,
          direction != nullptr, op, d.B, scratch.data_ptr<double>(),
          scale_c.data_ptr<scalar_t>(), d_unary.data_ptr<scalar_t>(),
          want_params ? g.trans.data_ptr<double>() : nullptr, g.trans.numel() / d.B,
          trans.dim() == 4 ? d.K * d.K : int64_t(0),
          want_params ? g.start.data_ptr<double>() : nullptr,
          want_params ? g.end.data_ptr<double>() : nullptr);
    });
  }
  return edge::finish_grads(d_unary, g, trans, start, end);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> viterbi(const at::Tensor& unary, const at::Tensor& trans,
                                           const c10::optional<at::Tensor>& lengths,
                                           const c10::optional<at::Tensor>& start,
                                           const c10::optional<at::Tensor>& end) {
  const auto out = decode_all(unary, trans, lengths, start, end, at::Tensor(), at::Tensor());
  return {std::get<0>(out), std::get<2>(out)};
}

at::Tensor log_partition(const at::Tensor& unary, const at::Tensor& trans,
                         const c10::optional<at::Tensor>& lengths,
                         const c10::optional<at::Tensor>& start,
                         const c10::optional<at::Tensor>& end) {
  const DeviceGuard guard(unary.device());
  const int64_t B = unary.size(0), K = unary.size(2);
  auto logz = at::empty({B}, unary.options());
  if (B == 0) return logz;
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  auto la = at::empty({B, 2 * K}, unary.options().dtype(at::kDouble));
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "edge_log_partition_cuda", [&] {
    launch_kernel<edge_logz_kernel<scalar_t>>(blocks_for(B), kThreads, 0,
                                                  edge::view<scalar_t>(x), B,
                                                  la.data_ptr<double>(),
                                                  logz.data_ptr<scalar_t>());
  });
  return logz;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_backward(
    const ChainDims& d, const at::Tensor& scale, const at::Tensor& unary, const at::Tensor& trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, bool want_params) {
  return backward_pass(kMarginals, d, scale, unary, trans, lengths, start, end, nullptr,
                       want_params);
}

at::Tensor energy(const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& tags,
                  const c10::optional<at::Tensor>& lengths,
                  const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const DeviceGuard guard(unary.device());
  const int64_t C = tags.dim() == 3 ? tags.size(1) : 1;
  auto out_shape = tags.sizes().vec();
  out_shape.pop_back();
  auto energy = at::empty(out_shape, unary.options());
  const int64_t n = energy.numel();
  if (n == 0) return energy;
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  const auto tags_c = tags.contiguous();
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "edge_energy_cuda", [&] {
    launch_kernel<edge_energy_kernel<scalar_t>>(static_cast<int>((n + 255) / 256), 256, 0,
                                           edge::view<scalar_t>(x), n, C,
                                           tags.dim() == 3, tags_c.data_ptr<int64_t>(),
                                           energy.data_ptr<scalar_t>());
  });
  return energy;
}

std::tuple<at::Tensor, at::Tensor> viterbi_kbest(const at::Tensor& unary, const at::Tensor& trans,
                                                 int64_t k,
                                                 const c10::optional<at::Tensor>& lengths,
                                                 const c10::optional<at::Tensor>& start,
                                                 const c10::optional<at::Tensor>& end) {
  const DeviceGuard guard(unary.device());
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto energy = at::empty({B, k}, unary.options());
  auto tags = at::empty({B, k, T}, unary.options().dtype(at::kLong));
  if (B == 0) return {energy, tags};
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  auto scratch = at::empty({B, 3 * k * K + k}, unary.options().dtype(at::kDouble));
  auto codes = at::empty({B, k}, unary.options().dtype(at::kLong));
  auto ptr = at::empty({B, std::max<int64_t>(T - 1, 1) * k * K}, unary.options().dtype(at::kInt));
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "edge_viterbi_kbest_cuda", [&] {
    launch_kernel<edge_kbest_kernel<scalar_t>>(
        blocks_for(B), kThreads, 0, edge::view<scalar_t>(x), B, k, scratch.data_ptr<double>(),
        codes.data_ptr<int64_t>(), ptr.data_ptr<int32_t>(), energy.data_ptr<scalar_t>(),
        tags.data_ptr<int64_t>());
  });
  return {energy, tags};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_augmented_viterbi(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& gold,
    const at::Tensor& cost, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  return decode_all(unary, trans, lengths, start, end, gold.contiguous(), cost.contiguous());
}

std::tuple<at::Tensor, at::Tensor> expectation(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& v_unary,
    const c10::optional<at::Tensor>& v_trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
    const c10::optional<at::Tensor>& v_start, const c10::optional<at::Tensor>& v_end) {
  const DeviceGuard guard(unary.device());
  const int64_t B = unary.size(0), K = unary.size(2);
  auto logz = at::empty({B}, unary.options());
  auto mean = at::empty({B}, unary.options());
  if (B == 0) return {logz, mean};
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  const auto xv = edge::contiguous_inputs(v_unary, v_trans, c10::nullopt, v_start, v_end);
  auto scratch = at::empty({B, 4 * K}, unary.options().dtype(at::kDouble));
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "edge_expectation_cuda", [&] {
    launch_kernel<edge_expectation_kernel<scalar_t>>(
        blocks_for(B), kThreads, 0, edge::view<scalar_t>(x), edge::view<scalar_t>(xv), B,
        scratch.data_ptr<double>(), logz.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>());
  });
  return {logz, mean};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> covariance(
    const at::Tensor& weight, const at::Tensor& unary, const at::Tensor& trans,
    const at::Tensor& v_unary, const c10::optional<at::Tensor>& v_trans,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
    const c10::optional<at::Tensor>& end, const c10::optional<at::Tensor>& v_start,
    const c10::optional<at::Tensor>& v_end) {
  const auto direction = edge::contiguous_inputs(v_unary, v_trans, c10::nullopt, v_start, v_end);
  return backward_pass(kCovariance, {unary.size(0), unary.size(1), unary.size(2)}, weight, unary,
                       trans, lengths, start, end, &direction, true);
}

at::Tensor sample(const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& noise,
                  const c10::optional<at::Tensor>& lengths,
                  const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const DeviceGuard guard(unary.device());
  const int64_t N = noise.size(0), B = unary.size(0), T = unary.size(1), K = unary.size(2);
  auto tags = at::full({N, B, T}, -1, unary.options().dtype(at::kLong));
  if (N == 0 || B == 0 || T == 0) return tags;
  const auto x = edge::contiguous_inputs(unary, trans, lengths, start, end);
  const auto noise_c = noise.contiguous();
  auto scratch = at::empty({B, T * K}, unary.options().dtype(at::kDouble));
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "edge_sample_cuda", [&] {
    launch_kernel<edge_sample_kernel<scalar_t>>(blocks_for(B), kThreads, 0, edge::view<scalar_t>(x),
                                           B, N, scratch.data_ptr<double>(),
                                           noise_c.data_ptr<double>(), tags.data_ptr<int64_t>());
  });
  return tags;
}

}  // namespace cuda_edge
}  // namespace ebm_ext
