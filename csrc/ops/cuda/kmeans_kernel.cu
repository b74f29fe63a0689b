// CUDA kernels of nearest_centroid. float32 with d <= 256: the tensor-core kernel below
// (nearest_centroid_tc_kernel). Other dtypes and widths: a tile of 64 points x 64 centroids per
// block of 256 threads,
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
    cuda_reduce::warp_argmin(v, j, kSide);
    const int64_t p = first_point + ty + kSide * a;
    if (tx == 0 && p < N) index[p] = j;
  }
}

// sum_q (y[q] - w[q * w_stride])^2 over the lanes of a full warp (lane-strided partial sums,
// then a butterfly), in every lane: the one summation both kernels' distances use.
template <typename acc_t, typename Y, typename Wt>
__device__ acc_t warp_squared_distance(const Y* y, const Wt* w, int64_t w_stride, int64_t d) {
  const int lane = threadIdx.x % 32;
  acc_t s = 0;
  for (int64_t q = lane; q < d; q += 32) {
    const acc_t diff = static_cast<acc_t>(y[q]) - static_cast<acc_t>(w[q * w_stride]);
    s += diff * diff;
  }
  return cuda_reduce::warp_reduce(s, cuda_reduce::Sum());
}

// One warp per point: dist2[p] = sum_q (y[p, q] - W[index[p], q])^2.
template <typename scalar_t, typename acc_t>
__global__ void distance_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ W,
                                const int64_t* __restrict__ index, int64_t N, int64_t d,
                                scalar_t* __restrict__ dist2) {
  const int64_t p = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (p >= N) return;
  const acc_t s = warp_squared_distance<acc_t>(y + p * d, W + index[p] * d, 1, d);
  if (lane == 0) dist2[p] = static_cast<scalar_t>(s);
}

// ---- float32: the distances on the tensor cores (TF32), the argmin exact --------------------
//
// A block takes 128 points (a warp each 16) and streams the centroids through shared memory 64
// at a time; per 16 x 16 tile a warp computes y . W_j with TF32 wmma (m16n16k8) and folds
// s_j = ||W_j||^2 - 2 y . W_j into the two smallest values of its row (m1 at j1, and m2).
// TF32 rounds each input to 10 mantissa bits (2^-11 relative), so the tensor-core s_j differs
// from the float32 value the SIMT kernel computes by at most
//   delta = (2^-9 + d 2^-20) |y| max_j |W_j| + 2^-22 (max_j ||W_j||^2 + 2 |y| max_j |W_j|)
// (twice the bound of the products' rounding and both accumulations). Where m2 - m1 > 2 delta
// no other centroid can reach j1's float32 value, so j1 is the exact argmin; elsewhere (a near
// tie, an exact tie, a NaN or an infinity) the warp recomputes the row's float32 values over
// every centroid, exactly as the SIMT kernel does, ties to the smallest index. The distance to
// the chosen centroid is then summed as distance_kernel sums it (warp_squared_distance).
// One launch, no second pass.
constexpr int kTcWarps = 8;
constexpr int kTcPoints = 16 * kTcWarps;  // per block
constexpr int kTcCentroids = 64;          // per shared-memory tile
constexpr int64_t kTcMaxD = 256;

inline int64_t tc_ld(int64_t d) { return (d + 7) / 8 * 8 + 4; }  // a row in shared memory
inline size_t tc_shared_bytes(int64_t d) {
  return sizeof(float) * ((kTcPoints + kTcCentroids) * tc_ld(d) + 2 * kTcCentroids +
                          kTcWarps * 256 + 2);
}

__global__ void __launch_bounds__(kTcWarps * 32)
    nearest_centroid_tc_kernel(const float* __restrict__ y, int64_t ys0, int64_t ys1,
                               const float* __restrict__ W, int64_t ws0, int64_t ws1,
                               const float* __restrict__ norm, int64_t N, int64_t k, int d,
                               int ld, int64_t* __restrict__ index, float* __restrict__ dist2) {
  using namespace nvcuda;
  EBM_DYNAMIC_SHARED(float, sm);
  float* ys = sm;                             // (64 points, ld)
  float* wsh = ys + kTcPoints * ld;           // (64 centroids, ld)
  float* cn = wsh + kTcCentroids * ld;        // the tile's ||W_j||^2
  float* cw = cn + kTcCentroids;              // the tile's |W_j|
  float* scratch = cw + kTcCentroids;         // a 16 x 16 tile per warp
  float* tile_max = scratch + kTcWarps * 256;  // the tile's max |W_j| and max ||W_j||^2
  const float inf = std::numeric_limits<float>::infinity();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = lane / 2, half = lane % 2;  // this lane's row of the warp's 16, its 8 columns
  const int dpad = (d + 7) / 8 * 8;
  const int64_t p0 = int64_t(blockIdx.x) * kTcPoints;
  for (int e = threadIdx.x; e < kTcPoints * ld; e += blockDim.x) {
    const int row = e / ld, q = e % ld;
    const int64_t p = p0 + row;
    ys[e] = (p < N && q < d) ? y[p * ys0 + q * ys1] : 0.0f;
  }
  __syncthreads();
  const float* yr = ys + (warp * 16 + r) * ld;  // this lane's point
  float yn = 0;
  for (int q = 0; q < d; ++q) yn += yr[q] * yr[q];
  yn = sqrt(yn);
  float m1 = inf, m2 = inf, wmax = 0, nmax = 0;
  int64_t j1 = 0;
  for (int64_t c0 = 0; c0 < k; c0 += kTcCentroids) {
    __syncthreads();  // the previous tile is read no more
    for (int e = threadIdx.x; e < kTcCentroids * ld; e += blockDim.x) {
      const int row = e / ld, q = e % ld;
      const int64_t c = c0 + row;
      wsh[e] = (c < k && q < d) ? W[c * ws0 + q * ws1] : 0.0f;
    }
    for (int i = threadIdx.x; i < kTcCentroids; i += blockDim.x) {
      cn[i] = c0 + i < k ? norm[c0 + i] : inf;
      cw[i] = sqrt(cn[i]);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float a = 0, b = 0;
      for (int i = 0; i < kTcCentroids && c0 + i < k; ++i) {
        a = fmax(a, cw[i]);
        b = fmax(b, cn[i]);
      }
      tile_max[0] = a;
      tile_max[1] = b;
    }
    __syncthreads();
    wmax = fmax(wmax, tile_max[0]);
    nmax = fmax(nmax, tile_max[1]);
    for (int sub = 0; sub < kTcCentroids / 16 && c0 + sub * 16 < k; ++sub) {
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int q0 = 0; q0 < dpad; q0 += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b;
        wmma::load_matrix_sync(a, ys + warp * 16 * ld + q0, ld);
        wmma::load_matrix_sync(b, wsh + sub * 16 * ld + q0, ld);
        for (int t = 0; t < a.num_elements; ++t) a.x[t] = wmma::__float_to_tf32(a.x[t]);
        for (int t = 0; t < b.num_elements; ++t) b.x[t] = wmma::__float_to_tf32(b.x[t]);
        wmma::mma_sync(acc, a, b, acc);
      }
      float* mine = scratch + warp * 256;
      wmma::store_matrix_sync(mine, acc, 16, wmma::mem_row_major);
      __syncwarp();
      for (int cc = half * 8; cc < half * 8 + 8; ++cc) {
        const int ci = sub * 16 + cc;
        if (c0 + ci >= k) break;
        const float s = cn[ci] - 2.0f * mine[r * 16 + cc];
        if (s < m1) {
          m2 = m1;
          m1 = s;
          j1 = c0 + ci;
        } else if (s < m2) {
          m2 = s;
        }
      }
      __syncwarp();  // the scratch tile is rewritten by the next one
    }
  }
  // The row's two lanes: the smallest of both, and the second smallest of the four values.
  {
    const float om1 = __shfl_xor_sync(0xffffffffu, m1, 1), om2 = __shfl_xor_sync(0xffffffffu, m2, 1);
    const int64_t oj1 = __shfl_xor_sync(0xffffffffu, j1, 1);
    if (om1 < m1 || (om1 == m1 && oj1 < j1)) {
      m2 = fmin(m1, om2);
      m1 = om1;
      j1 = oj1;
    } else {
      m2 = fmin(m2, om1);
    }
  }
  const float delta = (0x1p-9f + float(d) * 0x1p-20f) * yn * wmax + 0x1p-22f * (nmax + 2.0f * yn * wmax);
  const bool exact = m2 - m1 > 2.0f * delta;  // false for NaN and infinite values
  // Rows left to recompute in float32, one at a time by the whole warp; then the distances.
  for (int rr = 0; rr < 16; ++rr) {
    const int64_t p = p0 + warp * 16 + rr;
    if (p >= N) break;  // the same for every lane
    int64_t j = __shfl_sync(0xffffffffu, j1, 2 * rr);
    const float* yp = ys + (warp * 16 + rr) * ld;
    if (!__shfl_sync(0xffffffffu, exact, 2 * rr)) {
      float best = inf;
      j = 0;
      for (int64_t c = lane; c < k; c += 32) {  // ascending per lane
        float e = 0;
        for (int q = 0; q < d; ++q) e += yp[q] * W[c * ws0 + q * ws1];
        const float v = norm[c] - 2.0f * e;
        if (v < best) {
          best = v;
          j = c;
        }
      }
      cuda_reduce::warp_argmin(best, j);
    }
    const float s = warp_squared_distance<float>(yp, W + j * ws0, ws1, d);
    if (lane == 0) {
      index[p] = j;
      dist2[p] = s;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_centroid_cuda(const at::Tensor& y, const at::Tensor& W) {
  check_nearest_centroid_inputs(y, W);
  const DeviceGuard guard(y.device());
  const int64_t N = y.size(0), d = y.size(1), k = W.size(0);
  auto dist2 = at::empty({N}, y.options());
  auto index = at::empty({N}, y.options().dtype(at::kLong));
  if (N == 0) return {dist2, index};
  if (y.scalar_type() == at::kFloat && d >= 1 && d <= kTcMaxD) {
    const auto norm = W.square().sum(1).contiguous();
    const int ld = static_cast<int>(tc_ld(d));
    launch_kernel<nearest_centroid_tc_kernel>(
        static_cast<unsigned>((N + kTcPoints - 1) / kTcPoints), kTcWarps * 32, tc_shared_bytes(d),
        y.data_ptr<float>(), y.stride(0), y.stride(1), W.data_ptr<float>(), W.stride(0),
        W.stride(1), norm.data_ptr<float>(), N, k, static_cast<int>(d), ld,
        index.data_ptr<int64_t>(), dist2.data_ptr<float>());
    return {dist2, index};
  }
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
