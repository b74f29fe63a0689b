// CUDA kernel of nearest_centroid: a tile of 64 points x 64 centroids per block of 256 threads,
// each thread accumulating 4 x 4 dot products over d from shared-memory tiles (SGEMM-style),
// then folding ||W_j||^2 - 2 y.W_j into its running minimum. The N x k matrix never exists:
// each thread keeps one (value, index) per point over the centroid tiles, and the 16 threads
// that share a point reduce theirs with warp shuffles at the end (ties to the smallest index).
// A second kernel recomputes the distance to the chosen centroid as sum (y - W_j)^2.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "../kmeans.h"
#include "device.cuh"
#include "reduce.cuh"

namespace ebm_ext {
namespace {

constexpr int kTile = 64;    // points and centroids per block tile
constexpr int kDepth = 16;   // d per shared-memory stage
constexpr int kSide = 16;    // threads per side: 16 x 16 threads, 4 x 4 results each
constexpr int kPer = kTile / kSide;

template <typename scalar_t, typename acc_t>
__global__ void nearest_centroid_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ W,
                                        const acc_t* __restrict__ norm, int64_t N, int64_t k,
                                        int64_t d, int64_t* __restrict__ index) {
  __shared__ acc_t ys[kDepth][kTile];
  __shared__ acc_t ws[kDepth][kTile];
  __shared__ acc_t ns[kTile];
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  const int64_t first_point = int64_t(blockIdx.x) * kTile;
  acc_t best[kPer];
  int64_t best_index[kPer];
  for (int a = 0; a < kPer; ++a) {
    best[a] = std::numeric_limits<acc_t>::infinity();
    best_index[a] = 0;
  }
  for (int64_t c0 = 0; c0 < k; c0 += kTile) {
    acc_t acc[kPer][kPer] = {};
    for (int64_t q0 = 0; q0 < d; q0 += kDepth) {
      for (int e = threadIdx.x; e < kTile * kDepth; e += blockDim.x) {
        const int row = e / kDepth, q = e % kDepth;
        const int64_t p = first_point + row, c = c0 + row, col = q0 + q;
        ys[q][row] = (p < N && col < d) ? static_cast<acc_t>(y[p * d + col]) : acc_t(0);
        ws[q][row] = (c < k && col < d) ? static_cast<acc_t>(W[c * d + col]) : acc_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int q = 0; q < kDepth; ++q) {
        acc_t yv[kPer], wv[kPer];
#pragma unroll
        for (int a = 0; a < kPer; ++a) yv[a] = ys[q][ty + kSide * a];
#pragma unroll
        for (int b = 0; b < kPer; ++b) wv[b] = ws[q][tx + kSide * b];
#pragma unroll
        for (int a = 0; a < kPer; ++a) {
#pragma unroll
          for (int b = 0; b < kPer; ++b) acc[a][b] += yv[a] * wv[b];
        }
      }
      __syncthreads();
    }
    for (int e = threadIdx.x; e < kTile; e += blockDim.x) {
      ns[e] = c0 + e < k ? norm[c0 + e] : std::numeric_limits<acc_t>::infinity();
    }
    __syncthreads();
    // This thread's centroids c0 + tx + 16 b come in increasing order: strict < keeps the first.
#pragma unroll
    for (int b = 0; b < kPer; ++b) {
      const acc_t n = ns[tx + kSide * b];
#pragma unroll
      for (int a = 0; a < kPer; ++a) {
        const acc_t v = n - acc_t(2) * acc[a][b];
        if (v < best[a]) {
          best[a] = v;
          best_index[a] = c0 + tx + kSide * b;
        }
      }
    }
    __syncthreads();  // ns is rewritten by the next tile
  }
  // The 16 threads of a row (same ty) are 16 consecutive lanes of one warp.
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    acc_t v = best[a];
    int64_t j = best_index[a];
    for (int offset = kSide / 2; offset > 0; offset /= 2) {
      const acc_t ov = __shfl_xor_sync(0xffffffffu, v, offset);
      const int64_t oj = __shfl_xor_sync(0xffffffffu, j, offset);
      if (ov < v || (ov == v && oj < j)) {
        v = ov;
        j = oj;
      }
    }
    const int64_t p = first_point + ty + kSide * a;
    if (tx == 0 && p < N) index[p] = j;
  }
}

// One warp per point: dist2[p] = sum_q (y[p, q] - W[index[p], q])^2.
template <typename scalar_t, typename acc_t>
__global__ void distance_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ W,
                                const int64_t* __restrict__ index, int64_t N, int64_t d,
                                scalar_t* __restrict__ dist2) {
  const int64_t p = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (p >= N) return;
  const scalar_t* yp = y + p * d;
  const scalar_t* wj = W + index[p] * d;
  acc_t s = 0;
  for (int64_t q = lane; q < d; q += 32) {
    const acc_t diff = static_cast<acc_t>(yp[q]) - static_cast<acc_t>(wj[q]);
    s += diff * diff;
  }
  s = cuda_reduce::warp_reduce(s, cuda_reduce::Sum());
  if (lane == 0) dist2[p] = static_cast<scalar_t>(s);
}

std::tuple<at::Tensor, at::Tensor> nearest_centroid_cuda(const at::Tensor& y, const at::Tensor& W) {
  check_nearest_centroid_inputs(y, W);
  const DeviceGuard guard(y.device());
  const int64_t N = y.size(0), d = y.size(1), k = W.size(0);
  auto dist2 = at::empty({N}, y.options());
  auto index = at::empty({N}, y.options().dtype(at::kLong));
  if (N == 0) return {dist2, index};
  const auto yc = y.contiguous();
  const auto Wc = W.contiguous();
  EBM_DISPATCH_CUDA_FLOATS(y.scalar_type(), "nearest_centroid_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto norm = Wc.to(c10::CppTypeToScalarType<acc_t>::value).square().sum(1).contiguous();
    const unsigned blocks = static_cast<unsigned>((N + kTile - 1) / kTile);
    launch_kernel<nearest_centroid_kernel<scalar_t, acc_t>>(blocks, kSide * kSide, 0,
        yc.data_ptr<scalar_t>(), Wc.data_ptr<scalar_t>(), norm.data_ptr<acc_t>(), N, k, d,
        index.data_ptr<int64_t>());
    constexpr int threads = 256;
    const unsigned warp_blocks = static_cast<unsigned>((N * 32 + threads - 1) / threads);
    launch_kernel<distance_kernel<scalar_t, acc_t>>(warp_blocks, threads, 0,
        yc.data_ptr<scalar_t>(), Wc.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), N, d,
        dist2.data_ptr<scalar_t>());
  });
  return {dist2, index};
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("nearest_centroid", &nearest_centroid_cuda);
}

}  // namespace ebm_ext
