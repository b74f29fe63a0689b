// CUDA kernel of chain_relaxed_inference: one block per sequence, all steps fused. Per step,
// the gradient of every position (threads over (t, k)), then the update of every position, a
// warp per position: the entropic update is a softmax of the accumulated energies
// e_t = -log p_t + const (warp min and sum), the projected one finds the simplex threshold by
// Michelot's algorithm (drop the entries below the threshold of the rest until none drops;
// exact, at most K rounds of warp sums).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "../chain_view.h"
#include "../relaxed_inference.h"
#include "device.cuh"
#include "reduce.cuh"

namespace ebm_ext {
namespace {

using cuda_reduce::Min;
using cuda_reduce::Sum;
using cuda_reduce::warp_reduce;

constexpr int kThreads = 256;

// The shared view (../chain_view.h), the parameters in the accumulation type, and the options.
template <typename scalar_t, typename acc_t>
struct Args : ChainView<scalar_t, acc_t> {
  acc_t lr;
  bool entropic;
  int64_t steps;
  MoveStrides moves;       // which (K, K) matrix of trans a move reads
  int64_t start_b, end_b;  // K where start / end are per sequence, else 0
};

// p_t <- projection of v_t = p_t - lr g_t onto the simplex, by one warp. `removed` (e_t) is
// +inf at the tags whose gradient was +inf once: they are out for good (v = -inf), as the
// entropic update's e = +inf keeps them; else the projection would bring them back.
template <typename acc_t>
__device__ void project_row(acc_t* p, const acc_t* g, acc_t* removed, int K, acc_t lr) {
  const int lane = threadIdx.x % 32;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  for (int k = lane; k < K; k += 32) {
    if (g[k] == inf) removed[k] = inf;
  }
  const auto value = [&](int k) { return removed[k] == inf ? -inf : p[k] - lr * g[k]; };
  acc_t theta = 0;
  bool nan = false;
  for (int k = lane; k < K; k += 32) {  // a row holding NaN or +inf becomes NaN, as on the CPU
    const acc_t v = value(k);
    nan |= isnan(v) || (isinf(v) && v > 0);
  }
  nan = __any_sync(0xffffffffu, nan);
  // Michelot: theta of the active set; entries at or below it leave; repeat until none leaves.
  acc_t floor = -std::numeric_limits<acc_t>::infinity();
  for (int round = 0; round <= K && !nan; ++round) {
    acc_t sum = 0, count = 0;
    for (int k = lane; k < K; k += 32) {
      const acc_t v = value(k);
      if (v > floor) {
        sum += v;
        count += 1;
      }
    }
    sum = warp_reduce(sum, Sum());
    count = warp_reduce(count, Sum());
    const acc_t next = (sum - 1) / count;
    bool dropped = false;
    for (int k = lane; k < K; k += 32) {
      const acc_t v = value(k);
      dropped |= v > floor && v <= next;
    }
    theta = next;
    floor = next;
    if (!__any_sync(0xffffffffu, dropped)) break;
  }
  __syncwarp();
  for (int k = lane; k < K; k += 32) {
    const acc_t v = value(k);
    p[k] = nan ? std::numeric_limits<acc_t>::quiet_NaN() : (v - theta > 0 ? v - theta : acc_t(0));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void relaxed_inference_kernel(const scalar_t* __restrict__ init, Args<scalar_t, acc_t> a,
                                         acc_t* __restrict__ p_all, acc_t* __restrict__ e_all,
                                         acc_t* __restrict__ g_all) {
  const int64_t b = blockIdx.x, T = a.T;
  const int K = a.K;
  const int64_t L = a.length(b);
  const scalar_t* __restrict__ u = a.unary_at(b, 0);
  acc_t* p = p_all + b * T * K;
  acc_t* e = e_all + b * T * K;
  acc_t* g = g_all + b * T * K;
  for (int64_t n = threadIdx.x; n < L * K; n += blockDim.x) {
    const acc_t q = init ? static_cast<acc_t>(init[b * T * K + n]) : acc_t(1) / acc_t(K);
    p[n] = q;
    e[n] = init && a.entropic ? -log(q) : acc_t(0);  // projected: see project_row
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t step = 0; step < a.steps; ++step) {
    for (int64_t n = threadIdx.x; n < L * K; n += blockDim.x) {
      const int64_t t = n / K;
      const int k = static_cast<int>(n % K);
      acc_t s = static_cast<acc_t>(u[n]);
      if (t == 0 && a.start) s += a.start[b * a.start_b + k];
      if (t == L - 1 && a.end) s += a.end[b * a.end_b + k];
      // A tag of probability 0 adds nothing, even through a forbidden (+inf) transition.
      if (t > 0) {
        const acc_t* into = a.trans + a.moves.matrix(b, t) * K * K;
        for (int i = 0; i < K; ++i) {
          const acc_t q = p[(t - 1) * K + i];
          if (q != acc_t(0)) s += q * into[i * K + k];
        }
      }
      if (t + 1 < L) {
        const acc_t* out = a.trans + a.moves.matrix(b, t + 1) * K * K;
        for (int j = 0; j < K; ++j) {
          const acc_t q = p[(t + 1) * K + j];
          if (q != acc_t(0)) s += out[k * K + j] * q;
        }
      }
      g[n] = s;
    }
    __syncthreads();
    for (int64_t t = warp; t < L; t += warps) {
      // +inf for every tag (each has mass on both sides of a forbidden move): no finite step
      // exists, and the position keeps its distribution.
      bool all_inf = true;
      for (int k = threadIdx.x % 32; k < K; k += 32) {
        all_inf &= g[t * K + k] == std::numeric_limits<acc_t>::infinity();
      }
      if (__all_sync(0xffffffffu, all_inf)) continue;
      if (a.entropic) {
        acc_t lowest = std::numeric_limits<acc_t>::infinity();
        for (int k = threadIdx.x % 32; k < K; k += 32) {
          e[t * K + k] += a.lr * g[t * K + k];
          lowest = min(lowest, e[t * K + k]);
        }
        lowest = warp_reduce(lowest, Min());
        acc_t total = 0;
        for (int k = threadIdx.x % 32; k < K; k += 32) {
          e[t * K + k] -= lowest;
          p[t * K + k] = exp(-e[t * K + k]);
          total += p[t * K + k];
        }
        total = warp_reduce(total, Sum());
        for (int k = threadIdx.x % 32; k < K; k += 32) p[t * K + k] /= total;
      } else {
        project_row(p + t * K, g + t * K, e + t * K, K, a.lr);
      }
    }
    __syncthreads();
  }
}

std::tuple<at::Tensor, at::Tensor> chain_relaxed_inference_cuda(
    const at::Tensor& unary, const at::Tensor& trans, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end, int64_t steps,
    double lr, c10::string_view method, const c10::optional<at::Tensor>& init) {
  const auto o = check_chain_relaxed_inference_inputs(unary, trans, lengths, start, end, steps, lr,
                                                      method, init);
  const DeviceGuard guard(unary.device());
  const int64_t B = unary.size(0), T = unary.size(1), K = unary.size(2);
  const auto acc = at::toOpMathType(unary.scalar_type());
  auto p = at::zeros(unary.sizes(), unary.options().dtype(acc));
  if (B > 0 && T > 0) {
    auto e = at::empty_like(p), g = at::empty_like(p);
    const auto u = unary.contiguous();
    const auto tr = trans.to(acc).contiguous();
    const auto s = start.has_value() ? start->to(acc).contiguous() : at::Tensor();
    const auto en = end.has_value() ? end->to(acc).contiguous() : at::Tensor();
    const auto l = lengths.has_value() ? lengths->contiguous() : at::Tensor();
    const auto i = init.has_value() ? init->contiguous() : at::Tensor();
    EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_relaxed_inference_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const ChainView<scalar_t, acc_t> view{u.data_ptr<scalar_t>(), tr.data_ptr<acc_t>(),
          s.defined() ? s.data_ptr<acc_t>() : nullptr, en.defined() ? en.data_ptr<acc_t>() : nullptr,
          l.defined() ? l.data_ptr<int64_t>() : nullptr, T, K};
      const Args<scalar_t, acc_t> a{view,
                                    acc_t(o.lr),
                                    o.entropic,
                                    o.steps,
                                    MoveStrides::of(trans),
                                    s.defined() && s.dim() == 2 ? K : 0,
                                    en.defined() && en.dim() == 2 ? K : 0};
      launch_kernel<relaxed_inference_kernel<scalar_t, acc_t>>(static_cast<unsigned>(B), kThreads, 0,
          i.defined() ? i.data_ptr<scalar_t>() : nullptr, a,
          p.data_ptr<acc_t>(), e.data_ptr<acc_t>(), g.data_ptr<acc_t>());
    });
  }
  const auto probs = p.to(unary.scalar_type());
  return {probs, relaxed_chain_energy(unary, trans, probs, lengths, start, end)};
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("chain_relaxed_inference", &chain_relaxed_inference_cuda);
}

}  // namespace ebm_ext
