// Warp and block reductions shared by the CUDA kernels: every lane (or thread) gets the result.
#pragma once

namespace ebm_ext {
namespace cuda_reduce {

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Min {  // min() of floating types ignores a NaN operand, like fmin
  template <typename T>
  __device__ T operator()(T a, T b) const { return min(a, b); }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Over the 32 lanes of a full warp.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The smallest value over each `width`-lane segment of a full warp, with its index: ties go to
// the smaller index. A NaN never wins a comparison: start every lane at +inf so that it stays
// out. Every lane of the segment gets the result.
template <typename T, typename I>
__device__ __forceinline__ void warp_argmin(T& value, I& index, int width = 32) {
  for (int offset = width / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, value, offset);
    const I other_index = __shfl_xor_sync(0xffffffffu, index, offset);
    if (other < value || (other == value && other_index < index)) {
      value = other;
      index = other_index;
    }
  }
}

// Over the block (blockDim.x a multiple of 32); `scratch` holds one T per warp.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* scratch, Op op) {
  v = warp_reduce(v, op);
  __syncthreads();  // the scratch may still be read from the previous reduction
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w) r = op(r, scratch[w]);
  return r;
}

// Exclusive prefix sum over the block in thread order (blockDim.x a multiple of 32); `total`
// gets the block's sum in every thread. `scratch` holds one T per warp.
template <typename T>
__device__ T block_exclusive_scan(T v, T* scratch, T& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T inclusive = v;
  for (int d = 1; d < 32; d *= 2) {
    const T other = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += other;
  }
  __syncthreads();  // the scratch may still be read from the previous scan
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  T before = 0;
  total = 0;
  for (int w = 0; w < int(blockDim.x / 32); ++w) {
    if (w < warp) before += scratch[w];
    total += scratch[w];
  }
  return before + inclusive - v;
}

}  // namespace cuda_reduce
}  // namespace ebm_ext
