// CUDA kernels of the linear-chain ops. One block per sequence, one thread per tag (strided
// when K exceeds the block); transitions live in shared memory when they fit, backpointers in a
// compact global buffer (uint8 for K <= 256). The recursion, its order and its tie rule are the
// CPU kernel's (right-to-left min-plus, smallest minimising index), so both return the same tags.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../chain.h"
#include "device.cuh"
#include "chain_common.cuh"

namespace ebm_ext {
using namespace cuda_chain;
namespace {

// viterbi / loss_augmented_viterbi: gold and cost are nullptr for plain decoding.
template <typename scalar_t, typename acc_t, typename ptr_t>
__global__ void viterbi_kernel(ChainArgs<scalar_t, acc_t> a,
                               const int64_t* __restrict__ gold, const acc_t* __restrict__ cost,
                               ptr_t* __restrict__ ptr, scalar_t* __restrict__ energy_out,
                               scalar_t* __restrict__ delta_out, int64_t* __restrict__ tags_out) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* beta = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* w = beta + a.K;
  const int64_t b = blockIdx.x;
  const int K = a.K;
  const int64_t T = a.T;
  const int64_t L = a.length(b);
  int64_t* tags = tags_out + b * T;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) tags[t] = -1;
  if (L == 0) {
    if (threadIdx.x == 0) {
      energy_out[b] = scalar_t(0);
      if (delta_out) delta_out[b] = scalar_t(0);
    }
    return;
  }
  const acc_t* tT = stage_trans(a, w + K);
  const scalar_t* __restrict__ u = a.unary_at(b, 0);
  const int64_t* g = gold ? gold + b * T : nullptr;
  ptr_t* p = ptr + b * (T > 1 ? T - 1 : 1) * K;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  bool nan = *a.params_nan;
  for (int i = threadIdx.x; i < K; i += blockDim.x) beta[i] = a.end_at(i);
  __syncthreads();
  for (int64_t t = L - 1; t >= 0; --t) {
    const acc_t* cr = cost ? cost + g[t] * K : nullptr;
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
      const acc_t v = static_cast<acc_t>(u[t * K + j]) + beta[j] - (cr ? cr[j] : acc_t(0));
      nan |= !(v > -inf);  // NaN or -inf (-inf follows NaN's rule)
      w[j] = v;
    }
    __syncthreads();
    if (t == 0) break;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      acc_t best = inf;
      int arg = 0;
      for (int j = 0; j < K; ++j) {
        const acc_t c = tT[j * K + i] + w[j];
        if (c < best) {
          best = c;
          arg = j;
        }
      }
      beta[i] = best;
      p[(t - 1) * K + i] = static_cast<ptr_t>(arg);
    }
    __syncthreads();
  }
  nan = __syncthreads_or(nan);
  if (threadIdx.x != 0) return;
  int y = 0;
  acc_t best = inf;
  for (int j = 0; j < K; ++j) {
    const acc_t v = w[j] + a.start_at(j);
    if (v < best) {
      best = v;
      y = j;
    }
  }
  walk_back(y, p, K, L, tags);
  if (delta_out == nullptr) {
    energy_out[b] = nan ? scalar_t(NAN) : static_cast<scalar_t>(best);
    return;
  }
  // loss-augmented: report E(y*) summed along the path, and Delta(y*, gold).
  const acc_t e = a.template path_energy<acc_t>(b, tags, L);
  acc_t dl = 0;
  for (int64_t t = 0; t < L; ++t) dl += cost[g[t] * K + tags[t]];
  energy_out[b] = nan ? scalar_t(NAN) : static_cast<scalar_t>(e);
  delta_out[b] = static_cast<scalar_t>(dl);
}

// k-best list Viterbi, the CPU kernel's recursion: entries code = j * k + r, ascending, ties kept
// in (j, r) order, +inf suffixes missing.
template <typename scalar_t, typename acc_t>
__global__ void kbest_kernel(ChainArgs<scalar_t, acc_t> a, int k,
                             int32_t* __restrict__ ptr, scalar_t* __restrict__ energy_out,
                             int64_t* __restrict__ tags_out) {
  EBM_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int K = a.K;
  // Shared layout: beta (k, K) | w (k, K) | final values (k) | transT (K, K) if staged |
  // final codes (k int32, last so that the acc_t arrays stay aligned).
  acc_t* beta = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* w = beta + k * K;
  acc_t* top = w + k * K;
  int32_t* code = reinterpret_cast<int32_t*>(top + k + (a.trans_in_shared ? K * K : 0));
  const int64_t b = blockIdx.x;
  const int64_t T = a.T;
  const int64_t L = a.length(b);
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  int64_t* tags = tags_out + b * k * T;
  for (int64_t n = threadIdx.x; n < k * T; n += blockDim.x) tags[n] = -1;
  for (int s = threadIdx.x; s < k; s += blockDim.x) energy_out[b * k + s] = static_cast<scalar_t>(inf);
  __syncthreads();
  if (L == 0) {
    if (threadIdx.x == 0) energy_out[b * k] = scalar_t(0);
    return;
  }
  const acc_t* tT = stage_trans(a, top + k);
  const scalar_t* __restrict__ u = a.unary_at(b, 0);
  int32_t* p = ptr + b * (T > 1 ? T - 1 : 1) * k * K;
  bool nan = *a.params_nan;
  for (int i = threadIdx.x; i < k * K; i += blockDim.x) beta[i] = i < K ? a.end_at(i) : inf;
  __syncthreads();
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int n = threadIdx.x; n < k * K; n += blockDim.x) {
      const acc_t v = static_cast<acc_t>(u[t * K + n % K]) + beta[n];
      nan |= !(v > -inf);  // NaN or -inf (-inf follows NaN's rule)
      w[n] = v;
    }
    __syncthreads();
    if (t == 0) break;
    int32_t* pt = p + (t - 1) * k * K;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      // This thread's list lives in beta[s*K + i] (column i), rewritten in place: w already
      // holds everything the step reads from the old beta.
      for (int s = 0; s < k; ++s) {
        beta[s * K + i] = inf;
        pt[s * K + i] = -1;
      }
      for (int j = 0; j < K; ++j)
        for (int r = 0; r < k; ++r)
          if (!kbest_insert(beta + i, pt + i, k, tT[j * K + i] + w[r * K + j],
                            static_cast<int32_t>(j * k + r), K))
            break;  // later ranks of j are larger still (and +inf or NaN never enter)
    }
    __syncthreads();
  }
  nan = __syncthreads_or(nan);
  if (threadIdx.x != 0) return;
  kbest_final_list(a, w, k, top, code);
  for (int s = 0; s < k; ++s) {
    if (code[s] < 0) break;
    energy_out[b * k + s] = nan ? scalar_t(NAN) : static_cast<scalar_t>(top[s]);
    kbest_walk_back(code[s], k, p, K, L, tags + s * T);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void chain_energy_kernel(ChainArgs<scalar_t, acc_t> a, const int64_t* __restrict__ tags,
                                    int64_t n_paths, int64_t C, scalar_t* __restrict__ energy_out) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= n_paths) return;
  const int64_t b = n / C;
  energy_out[n] =
      static_cast<scalar_t>(a.template path_energy<acc_t>(b, tags + n * a.T, a.length(b)));
}

template <typename scalar_t, typename ptr_t>
void launch_viterbi(const Staged& s, const at::Tensor& gold, const at::Tensor& cost,
                    at::Tensor& energy, at::Tensor* delta, at::Tensor& tags) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = s.unary.size(0), T = s.unary.size(1), K = s.unary.size(2);
  const size_t before = 2 * K * sizeof(acc_t);
  auto a = chain_args<scalar_t, acc_t>(s, before);
  const auto backptr = at::empty({B, std::max<int64_t>(T - 1, 1), K},
                                 s.unary.options().dtype(c10::CppTypeToScalarType<ptr_t>::value));
  const at::Tensor cost_acc =
      cost.defined() ? cost.to(at::toOpMathType(s.unary.scalar_type())).contiguous() : cost;
  const int64_t* gold_p = gold.defined() ? gold.data_ptr<int64_t>() : nullptr;
  const acc_t* cost_p = cost_acc.defined() ? cost_acc.data_ptr<acc_t>() : nullptr;
  scalar_t* delta_p = delta ? delta->data_ptr<scalar_t>() : nullptr;
  auto* ptr_p = static_cast<ptr_t*>(backptr.data_ptr());
  const auto smem = shared_bytes(a, before);
  launch_kernel<viterbi_kernel<scalar_t, acc_t, ptr_t>>(B, threads_for(K), smem, a, gold_p, cost_p, ptr_p, energy.data_ptr<scalar_t>(), delta_p,
      tags.data_ptr<int64_t>());
}

template <typename scalar_t>
void decode_cuda(const Staged& s, const at::Tensor& gold, const at::Tensor& cost,
                 at::Tensor& energy, at::Tensor* delta, at::Tensor& tags) {
  const int64_t K = s.unary.size(2);
  if (K <= 256) {
    launch_viterbi<scalar_t, uint8_t>(s, gold, cost, energy, delta, tags);
  } else if (K <= 32767) {
    launch_viterbi<scalar_t, int16_t>(s, gold, cost, energy, delta, tags);
  } else {
    launch_viterbi<scalar_t, int32_t>(s, gold, cost, energy, delta, tags);
  }
}

std::tuple<at::Tensor, at::Tensor> viterbi_cuda(const at::Tensor& unary, const at::Tensor& trans,
                                                const c10::optional<at::Tensor>& lengths,
                                                const c10::optional<at::Tensor>& start,
                                                const c10::optional<at::Tensor>& end) {
  const auto d = check_chain_inputs("viterbi", unary, trans, lengths, start, end);
  const DeviceGuard guard(unary.device());
  auto energy = at::empty({d.B}, unary.options());
  auto tags = at::empty({d.B, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, tags};
  check_shared_tags("viterbi", d.K, 2 * c10::elementSize(at::toOpMathType(unary.scalar_type())));
  const auto s = stage(unary, trans, lengths, start, end);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "viterbi_cuda", [&] {
    decode_cuda<scalar_t>(s, at::Tensor(), at::Tensor(), energy, nullptr, tags);
  });
  return {energy, tags};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_augmented_viterbi_cuda(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& gold,
    const at::Tensor& cost, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const auto d = check_loss_augmented_inputs(unary, trans, gold, cost, lengths, start, end);
  const DeviceGuard guard(unary.device());
  auto energy = at::empty({d.B}, unary.options());
  auto delta = at::empty({d.B}, unary.options());
  auto tags = at::empty({d.B, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, delta, tags};
  check_shared_tags("loss_augmented_viterbi", d.K,
                    2 * c10::elementSize(at::toOpMathType(unary.scalar_type())));
  const auto s = stage(unary, trans, lengths, start, end);
  const auto gold_c = gold.contiguous();
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "loss_augmented_viterbi_cuda", [&] {
    decode_cuda<scalar_t>(s, gold_c, cost, energy, &delta, tags);
  });
  return {energy, delta, tags};
}

std::tuple<at::Tensor, at::Tensor> viterbi_kbest_cuda(const at::Tensor& unary,
                                                      const at::Tensor& trans, int64_t k,
                                                      const c10::optional<at::Tensor>& lengths,
                                                      const c10::optional<at::Tensor>& start,
                                                      const c10::optional<at::Tensor>& end) {
  const char* op = "viterbi_kbest";
  check_kbest_k(op, k);
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end);
  check_kbest_size(op, k, d, /*cuda=*/true);
  const DeviceGuard guard(unary.device());
  auto energy = at::empty({d.B, k}, unary.options());
  auto tags = at::empty({d.B, k, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, tags};
  // Shared memory holds beta and w (k K values each) and the final list (k values, k codes).
  const size_t value = c10::elementSize(at::toOpMathType(unary.scalar_type()));
  const size_t most = max_dynamic_shared_bytes(), per_rank = value + sizeof(int32_t);
  TORCH_CHECK(2 * k * d.K * value + k * per_rank <= most, op, ": k * K must be at most ",
              most > k * per_rank ? (most - k * per_rank) / (2 * value) : 0,
              " on this CUDA device (", most, " bytes of shared memory per block), got k * K = ",
              k * d.K);
  const auto s = stage(unary, trans, lengths, start, end);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "viterbi_kbest_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // beta and w (k*K each) and the final list (k values) before transT, its k codes after.
    const size_t before = (2 * k * d.K + k) * sizeof(acc_t);
    auto a = chain_args<scalar_t, acc_t>(s, before);
    const size_t smem = shared_bytes(a, before) + k * sizeof(int32_t);
    const auto backptr = at::empty({d.B, std::max<int64_t>(d.T - 1, 1), k, d.K},
                                   unary.options().dtype(at::kInt));
    launch_kernel<kbest_kernel<scalar_t, acc_t>>(d.B, threads_for(d.K), smem, a,
                                                 static_cast<int>(k), backptr.data_ptr<int32_t>(),
                                                 energy.data_ptr<scalar_t>(),
                                                 tags.data_ptr<int64_t>());
  });
  return {energy, tags};
}

at::Tensor chain_energy_cuda(const at::Tensor& unary, const at::Tensor& trans,
                             const at::Tensor& tags, const c10::optional<at::Tensor>& lengths,
                             const c10::optional<at::Tensor>& start,
                             const c10::optional<at::Tensor>& end) {
  if (check_chain_energy_inputs(unary, trans, tags, lengths, start, end)) {
    return relaxed_chain_energy(unary, trans, tags, lengths, start, end);
  }
  const DeviceGuard guard(unary.device());
  auto out_shape = tags.sizes().vec();
  out_shape.pop_back();
  auto energy = at::empty(out_shape, unary.options());
  if (energy.numel() == 0) return energy;
  const auto s = stage(unary, trans, lengths, start, end);
  const auto tags_c = tags.contiguous();
  const int64_t n_paths = energy.numel();
  const int64_t C = tags.dim() == 3 ? tags.size(1) : 1;
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_energy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = chain_args<scalar_t, acc_t>(s, 0);
    const int threads = 128;
    const auto blocks = static_cast<unsigned>((n_paths + threads - 1) / threads);
    launch_kernel<chain_energy_kernel<scalar_t, acc_t>>(blocks, threads, 0, a,
        tags_c.data_ptr<int64_t>(), n_paths, C, energy.data_ptr<scalar_t>());
  });
  return energy;
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("chain_energy", &chain_energy_cuda);
  m.impl("viterbi", &viterbi_cuda);
  m.impl("viterbi_kbest", &viterbi_kbest_cuda);
  m.impl("loss_augmented_viterbi", &loss_augmented_viterbi_cuda);
}

}  // namespace ebm_ext
