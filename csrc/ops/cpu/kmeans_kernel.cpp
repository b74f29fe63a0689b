// CPU kernel of nearest_centroid: distances to all centroids and their argmin, fused and
// register-tiled like a GEMM micro-kernel, so the N x k distance matrix never exists.
//
// argmin_j ||y - W_j||^2 = argmin_j (||W_j||^2 - 2 y.W_j): the centroids are packed once as
// -2 W^T in blocks of C registers (C * L centroids, L lanes per register), and a tile of R
// points x C*L centroids is accumulated in R*C registers over d, starting from ||W_j||^2.
// Each lane keeps its running minimum and index (centroids in increasing order, strict <, so
// the first minimum wins); the lanes are reduced at the end, ties to the smallest index. The
// returned distance is recomputed as sum_p (y_p - W_jp)^2, which does not suffer from the
// cancellation of the expanded form.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "../kmeans.h"
#include "simd.h"

namespace ebm_ext {
namespace {

using simd::Lanes;
using simd::load;

// Centroids packed for the micro-kernel: wT (blocks, d, C*L) = -2 W^T, norm (blocks * C*L) =
// ||W_j||^2, +inf for the padding past k (never a minimum).
template <typename S>
struct PackedCentroids {
  at::Tensor wT, norm;
  int64_t blocks;
};

template <typename S, int C>
PackedCentroids<S> pack_centroids(const at::Tensor& W) {
  constexpr int64_t width = C * Lanes<S>::N;
  const int64_t k = W.size(0), d = W.size(1);
  PackedCentroids<S> p;
  p.blocks = (k + width - 1) / width;
  p.wT = at::zeros({p.blocks, d, width}, W.options());
  p.norm = at::full({p.blocks * width}, std::numeric_limits<S>::infinity(), W.options());
  const auto Wc = W.contiguous();
  const S* w = Wc.template data_ptr<S>();
  S* wT = p.wT.template data_ptr<S>();
  S* norm = p.norm.template data_ptr<S>();
  for (int64_t j = 0; j < k; ++j) {
    S* dst = wT + (j / width) * d * width + j % width;
    double sq = 0;
    for (int64_t q = 0; q < d; ++q) {
      dst[q * width] = S(-2) * w[j * d + q];
      sq += double(w[j * d + q]) * w[j * d + q];
    }
    norm[j] = S(sq);
  }
  return p;
}

// One tile: R points against the C*L centroids of one packed block, folded into the lanes'
// running minima.
template <typename S, int R, int C>
__attribute__((always_inline)) inline void tile(
    const S* y, int64_t d, const S* wT, const S* norm, typename Lanes<S>::I first,
    typename Lanes<S>::V* best, typename Lanes<S>::I* best_index) {
  using V = typename Lanes<S>::V;
  constexpr int L = Lanes<S>::N;
  V acc[R][C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const V n = load<V>(norm + c * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][c] = n;
  }
  for (int64_t q = 0; q < d; ++q) {
    V w[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) w[c] = load<V>(wT + q * C * L + c * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V b = V{} + y[r * d + q];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] += b * w[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const auto better = acc[r][c] < best[r];
      best[r] = better ? acc[r][c] : best[r];
      best_index[r] = better ? first + c * L : best_index[r];
    }
  }
}

// R consecutive points (y rows) against every centroid: writes their index and distance.
template <typename S, int R, int C>
__attribute__((always_inline)) inline void rows(
    const S* y, const S* W, int64_t d, const PackedCentroids<S>& p, S* dist2, int64_t* index) {
  using V = typename Lanes<S>::V;
  using I = typename Lanes<S>::I;
  constexpr int L = Lanes<S>::N;
  constexpr int width = C * L;
  using Index = std::remove_reference_t<decltype(std::declval<I>()[0])>;
  I lane{};
  for (int l = 0; l < L; ++l) lane[l] = l;
  V best[R];
  I best_index[R];
  for (int r = 0; r < R; ++r) {
    best[r] = V{} + std::numeric_limits<S>::infinity();
    best_index[r] = I{};
  }
  const S* wT = p.wT.template data_ptr<S>();
  const S* norm = p.norm.template data_ptr<S>();
  for (int64_t b = 0; b < p.blocks; ++b) {
    const I first = lane + static_cast<Index>(b * width);
    tile<S, R, C>(y, d, wT + b * d * width, norm + b * width, first, best, best_index);
  }
  for (int r = 0; r < R; ++r) {
    S v = best[r][0];
    int64_t j = best_index[r][0];
    for (int l = 1; l < L; ++l) {
      if (best[r][l] < v || (best[r][l] == v && best_index[r][l] < j)) {
        v = best[r][l];
        j = best_index[r][l];
      }
    }
    const S* yr = y + r * d;
    const S* wj = W + j * d;
    S sq = 0;
    for (int64_t q = 0; q < d; ++q) sq += (yr[q] - wj[q]) * (yr[q] - wj[q]);
    index[r] = j;
    dist2[r] = sq;
  }
}

template <typename S, int R, int C>
EBM_CLONES void assign_range(const S* y, const S* W, int64_t d, const PackedCentroids<S>& p,
                             S* dist2, int64_t* index, int64_t lo, int64_t hi) {
  int64_t i = lo;
  for (; i + R <= hi; i += R) rows<S, R, C>(y + i * d, W, d, p, dist2 + i, index + i);
  for (; i < hi; ++i) rows<S, 1, C>(y + i * d, W, d, p, dist2 + i, index + i);
}

// Tile shape by register file: 6 x 4 registers of accumulators fill AVX-512's 32; AVX2 has 16
// registers of half the width, so a 64-byte register costs two of them there.
template <typename S, int R, int C>
void assign(const at::Tensor& y, const at::Tensor& W, at::Tensor& dist2, at::Tensor& index) {
  const int64_t N = y.size(0), d = y.size(1), k = W.size(0);
  const auto p = pack_centroids<S, C>(W);
  const S* yp = y.data_ptr<S>();
  const S* Wp = W.data_ptr<S>();
  S* out = dist2.data_ptr<S>();
  int64_t* idx = index.data_ptr<int64_t>();
  const int64_t tiles = (N + R - 1) / R;
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, R * k * d));
  at::parallel_for(0, tiles, grain, [&](int64_t lo, int64_t hi) {
    assign_range<S, R, C>(yp, Wp, d, p, out, idx, lo * R, std::min(N, hi * R));
  });
}

std::tuple<at::Tensor, at::Tensor> nearest_centroid_cpu(const at::Tensor& y, const at::Tensor& W) {
  check_nearest_centroid_inputs(y, W);
  const int64_t N = y.size(0);
  auto dist2 = at::empty({N}, y.options());
  auto index = at::empty({N}, y.options().dtype(at::kLong));
  if (N == 0) return {dist2, index};
  const auto yc = y.contiguous();
  const auto Wc = W.contiguous();
  static const bool wide = __builtin_cpu_supports("avx512f");
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "nearest_centroid_cpu", [&] {
    if (wide) {
      assign<scalar_t, 6, 4>(yc, Wc, dist2, index);
    } else {
      assign<scalar_t, 3, 2>(yc, Wc, dist2, index);
    }
  });
  return {dist2, index};
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("nearest_centroid", &nearest_centroid_cpu);
}

}  // namespace ebm_ext
