// The teams of threads that the per-item algorithms run on: a warp or a block works through one
// item (a sequence of chain_sequence.h's passes, a sample of sparse_code's solver), member r
// taking the indices r, r + size(), ... of each loop and meeting the others at sync() and at
// the reductions, which every member of the team must reach and whose result every member
// gets. Each reduction begins by synchronising the team, so a member may rewrite what others
// read before it (chain_sequence.h's Solo is the CPU's team of one).
#pragma once

#include <cstdint>

#include "reduce.cuh"

namespace ebm_ext {

struct WarpTeam {
  static constexpr bool kHost = false;
  __device__ int rank() const { return threadIdx.x % 32; }
  __device__ static constexpr int size() { return 32; }
  __device__ void sync() const { __syncwarp(); }
  __device__ double sum(double v) const {
    __syncwarp();
    return cuda_reduce::warp_reduce(v, cuda_reduce::Sum{});
  }
  __device__ double max(double v) const {
    __syncwarp();
    return cuda_reduce::warp_reduce(v, cuda_reduce::Max{});
  }
  __device__ double min(double v) const {
    __syncwarp();
    return cuda_reduce::warp_reduce(v, cuda_reduce::Min{});
  }
  __device__ bool any(bool v) const { return __any_sync(0xffffffffu, v) != 0; }
  // The sum of v over the members before this one, and the total in `total`.
  __device__ int64_t exclusive_scan(int64_t v, int64_t& total) const {
    __syncwarp();
    const int lane = rank();
    int64_t inclusive = v;
    for (int d = 1; d < 32; d *= 2) {
      const int64_t other = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += other;
    }
    total = __shfl_sync(0xffffffffu, inclusive, 31);
    return inclusive - v;
  }
};

// The block (blockDim.x a multiple of 32), with shared scratch of one double (and for the scan
// one int64) per warp.
struct BlockTeam {
  static constexpr bool kHost = false;
  double* scratch;
  int64_t* count_scratch;  // for exclusive_scan only
  __device__ int rank() const { return threadIdx.x; }
  __device__ int size() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
  __device__ double sum(double v) const {
    return cuda_reduce::block_reduce(v, scratch, cuda_reduce::Sum{});
  }
  __device__ double max(double v) const {
    return cuda_reduce::block_reduce(v, scratch, cuda_reduce::Max{});
  }
  __device__ double min(double v) const {
    return cuda_reduce::block_reduce(v, scratch, cuda_reduce::Min{});
  }
  __device__ bool any(bool v) const { return __syncthreads_or(v) != 0; }
  __device__ int64_t exclusive_scan(int64_t v, int64_t& total) const {
    return cuda_reduce::block_exclusive_scan<int64_t>(v, count_scratch, total);
  }
};

}  // namespace ebm_ext
