// The SIMT emulation against what CUDA specifies: thread and block indices, barriers and their
// votes, shuffles of every kind and width, ballots, atomics, static and dynamic shared memory,
// the launch limits, and the errors a divergent barrier or a bad warp mask must give.
// Kernels are written as in a .cu file. Exit status 0 when every check holds.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../simt.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

// Runs a kernel and returns the error its launch check raised ("" when none).
template <typename... P, typename... A>
std::string run(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared, A... args) {
  ebm_ext::simt::run_kernel(kernel, grid, block, shared, "test kernel", args...);
  return ebm_ext::simt::take_last_error();
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

__global__ void indices_kernel(int* out) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  out[b * blockDim.x * blockDim.y * blockDim.z + t] = static_cast<int>(b * 1000 + t);
}

// Each thread writes its slot, the barrier, then reads its neighbour's (a race without it).
__global__ void barrier_kernel(int* out) {
  __shared__ int slots[1024];
  slots[threadIdx.x] = threadIdx.x * 2;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

__global__ void vote_kernel(int* out) {
  const int t = threadIdx.x;
  const int any = __syncthreads_or(t == 5);
  const int all = __syncthreads_and(t < 1000);
  const int none = __syncthreads_or(0);
  const int count = __syncthreads_count(t % 3 == 0);
  if (t == 0) {
    out[0] = any;
    out[1] = all;
    out[2] = none;
    out[3] = count;
  }
}

__global__ void shuffle_kernel(int* out, int width) {
  const int lane = threadIdx.x % 32;
  const int v = static_cast<int>(threadIdx.x) * 10;
  int* o = out + threadIdx.x * 5;
  o[0] = __shfl_sync(0xffffffffu, v, 3, width);
  o[1] = __shfl_up_sync(0xffffffffu, v, 2, width);
  o[2] = __shfl_down_sync(0xffffffffu, v, 2, width);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 1, width);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 2 == 0));
}

__global__ void wide_shuffle_kernel(double* dout, int64_t* iout) {
  const double v = 0.5 + threadIdx.x;
  const int64_t w = (int64_t(1) << 40) + threadIdx.x;
  dout[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 16);
  iout[threadIdx.x] = __shfl_xor_sync(0xffffffffu, w, 16);
}

__global__ void any_all_kernel(int* out) {
  const int lane = threadIdx.x % 32;
  const bool any = __any_sync(0xffffffffu, lane == 7);
  const bool all = __all_sync(0xffffffffu, lane < 32);
  const bool not_all = __all_sync(0xffffffffu, lane < 31);
  __syncwarp();
  if (threadIdx.x == 0) {
    out[0] = any;
    out[1] = all;
    out[2] = not_all;
  }
}

// Half a warp exchanges among itself: the other half takes no part.
__global__ void half_warp_kernel(int* out) {
  const int lane = threadIdx.x % 32;
  if (lane < 16) out[lane] = __shfl_xor_sync(0x0000ffffu, lane, 8);
}

__global__ void atomic_kernel(int* counter, float* total, int* maximum) {
  atomicAdd(counter, 1);
  atomicAdd(total, 0.5f);
  atomicMax(maximum, static_cast<int>(threadIdx.x + blockIdx.x * blockDim.x));
}

__global__ void poisoned_shared_kernel(unsigned* out) {
  const unsigned char* s = ::ebm_ext::simt::self().dynamic_shared;
  if (threadIdx.x == 0) out[blockIdx.x] = s[0] | (s[1] << 8);
  __syncthreads();
  if (threadIdx.x == 0) ::ebm_ext::simt::self().dynamic_shared[0] = 7;  // not seen by block 1
}

__global__ void exits_early_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void different_barriers_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void shuffle_returned_lane_kernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void partial_warp_kernel(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

// Lane 5 waits at __syncthreads, the rest of its warp at a shuffle that needs lane 5, the other
// warp at __syncthreads that needs warp 0: nothing can move.
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 5 || threadIdx.x >= 32) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
  }
}

__global__ void empty_kernel(int*) {}

}  // namespace

int main() {
  {  // indices, 3-D grid and block
    std::vector<int> out(2 * 3 * 2 * 4 * 2 * 2, -1);
    const std::string e = run(indices_kernel, dim3(2, 3, 2), dim3(4, 2, 2), 0, out.data());
    expect(e.empty(), "indices: " + e);
    bool ok = true;
    for (size_t n = 0; n < out.size(); ++n) ok &= out[n] == int(n / 16 * 1000 + n % 16);
    expect(ok, "every thread of every block sees its own threadIdx and blockIdx");
  }
  {  // barrier
    std::vector<int> out(3 * 256);
    expect(run(barrier_kernel, dim3(3), dim3(256), 0, out.data()).empty(), "barrier runs");
    bool ok = true;
    for (int n = 0; n < 3 * 256; ++n) ok &= out[n] == ((n % 256 + 1) % 256) * 2;
    expect(ok, "__syncthreads orders shared-memory writes before reads");
  }
  {  // votes
    std::vector<int> out(4, -1);
    expect(run(vote_kernel, dim3(1), dim3(100), 0, out.data()).empty(), "votes run");
    expect(out[0] == 1 && out[1] == 1 && out[2] == 0 && out[3] == 34,
           "__syncthreads_or/and/count: got " + std::to_string(out[0]) + " " +
               std::to_string(out[1]) + " " + std::to_string(out[2]) + " " +
               std::to_string(out[3]));
  }
  for (int width : {32, 16, 8}) {  // shuffles against CUDA's definitions
    std::vector<int> out(64 * 5, -1);
    expect(run(shuffle_kernel, dim3(1), dim3(64), 0, out.data(), width).empty(), "shuffles run");
    bool ok = true;
    for (int t = 0; t < 64; ++t) {
      const int lane = t % 32, base = lane / width * width, warp0 = t - lane;
      const int* o = &out[t * 5];
      ok &= o[0] == (warp0 + base + 3) * 10;
      ok &= o[1] == (lane - base >= 2 ? t - 2 : t) * 10;
      ok &= o[2] == (lane - base + 2 < width ? t + 2 : t) * 10;
      ok &= o[3] == (t ^ 1) * 10;
      ok &= unsigned(o[4]) == 0x55555555u;
    }
    expect(ok, "__shfl(_up/_down/_xor)_sync and __ballot_sync with width " + std::to_string(width));
  }
  {
    std::vector<double> d(32);
    std::vector<int64_t> i(32);
    expect(run(wide_shuffle_kernel, dim3(1), dim3(32), 0, d.data(), i.data()).empty(),
           "8-byte shuffles run");
    bool ok = true;
    for (int t = 0; t < 32; ++t) ok &= d[t] == 0.5 + (t ^ 16) && i[t] == (int64_t(1) << 40) + (t ^ 16);
    expect(ok, "double and int64 shuffles move all 8 bytes");
  }
  {
    std::vector<int> out(3, -1);
    expect(run(any_all_kernel, dim3(1), dim3(32), 0, out.data()).empty(), "votes run");
    expect(out[0] == 1 && out[1] == 1 && out[2] == 0, "__any_sync / __all_sync");
  }
  {
    std::vector<int> out(16, -1);
    expect(run(half_warp_kernel, dim3(1), dim3(32), 0, out.data()).empty(), "half-warp mask runs");
    bool ok = true;
    for (int l = 0; l < 16; ++l) ok &= out[l] == (l ^ 8);
    expect(ok, "a shuffle among the lanes of a partial mask");
  }
  {
    int counter = 0, maximum = -1;
    float total = 0;
    expect(run(atomic_kernel, dim3(4), dim3(128), 0, &counter, &total, &maximum).empty(),
           "atomics run");
    expect(counter == 512 && total == 256.0f && maximum == 511, "atomicAdd / atomicMax");
  }
  {  // the dynamic buffer: poisoned at every block's start
    std::vector<unsigned> out(2, 0);
    expect(run(poisoned_shared_kernel, dim3(2), dim3(32), 16, out.data()).empty(),
           "dynamic shared runs");
    expect(out[0] == 0xffffu && out[1] == 0xffffu,
           "dynamic shared memory starts as 0xff bytes in every block");
  }
  // ---- the device's limits -------------------------------------------------------------------
  {
    int x = 0;
    std::string e = run(empty_kernel, dim3(1), dim3(1025), 0, &x);
    expect(contains(e, "invalid configuration argument") && contains(e, "1025 threads"),
           "1025 threads per block is refused: " + e);
    e = run(empty_kernel, dim3(1), dim3(32, 32, 2), 0, &x);
    expect(contains(e, "invalid configuration argument"), "2048 threads in 3-D refused: " + e);
    e = run(empty_kernel, dim3(0), dim3(32), 0, &x);
    expect(contains(e, "invalid configuration argument"), "an empty grid is refused: " + e);
    e = run(empty_kernel, dim3(1), dim3(1024), 0, &x);
    expect(e.empty(), "1024 threads are allowed: " + e);
    e = run(empty_kernel, dim3(1), dim3(32), 48 * 1024, &x);
    expect(e.empty(), "48 KiB of dynamic shared memory without opting in: " + e);
    e = run(empty_kernel, dim3(1), dim3(32), 48 * 1024 + 1, &x);
    expect(contains(e, "invalid argument") && contains(e, "opting in"),
           "over 48 KiB without opting in is refused: " + e);
    expect(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                100 * 1024) == cudaSuccess,
           "opting in to 100 KiB");
    e = run(empty_kernel, dim3(1), dim3(32), 100 * 1024, &x);
    expect(e.empty(), "100 KiB after opting in: " + e);
    e = run(empty_kernel, dim3(1), dim3(32), 100 * 1024 + 1, &x);
    expect(contains(e, "invalid argument"), "more than the opted-in size is refused: " + e);
    expect(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                227 * 1024 + 1) == cudaErrorInvalidValue,
           "opting in above 227 KiB is refused");
  }
  // ---- divergence is an error, at once ---------------------------------------------------------
  {
    std::vector<int> out(64, 0);
    std::string e = run(exits_early_kernel, dim3(1), dim3(64), 0, out.data());
    expect(contains(e, "divergent barrier"), "a barrier after some threads returned: " + e);
    e = run(different_barriers_kernel, dim3(1), dim3(64), 0, out.data());
    expect(contains(e, "divergent __syncthreads"), "threads at two different barriers: " + e);
    e = run(shuffle_returned_lane_kernel, dim3(1), dim3(32), 0, out.data());
    expect(contains(e, "returned"), "a shuffle naming a returned lane: " + e);
    e = run(partial_warp_kernel, dim3(1), dim3(20), 0, out.data());
    expect(contains(e, "do not exist"), "a full mask in a warp of 20 lanes: " + e);
    e = run(deadlock_kernel, dim3(1), dim3(64), 0, out.data());
    expect(contains(e, "deadlock"), "a warp waiting for a lane that waits at a barrier: " + e);
    e = run(empty_kernel, dim3(2), dim3(64), 0, out.data());
    expect(e.empty(), "the emulation recovers after failed launches: " + e);
  }
  if (failures == 0) std::printf("simt selftest: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
