// Planted bugs, to show that the sanitizer runs of the emulated kernels can fail: each kernel has
// a flag that plants one bug, and ctest expects the tool meant for it to report it:
//   shared_overflow          a write one past a static __shared__ array   (AddressSanitizer)
//   dynamic_shared_overflow  a write one past the dynamic shared buffer   (AddressSanitizer)
//   missing_barrier          a read of another thread's shared write with no barrier (ThreadSanitizer)
//   divergent_barrier        __syncthreads reached by half of the block   (the emulator)
//   fixed                    all four with the bug left out: must run clean under both tools
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../simt.h"

namespace {

constexpr unsigned kThreads = 64;

__global__ void shared_overflow_kernel(float* out, bool planted) {
  __shared__ float tile[kThreads];
  tile[threadIdx.x + (planted ? 1 : 0)] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % kThreads];
}

__global__ void dynamic_shared_overflow_kernel(float* out, bool planted) {
  float* tile = reinterpret_cast<float*>(::ebm_ext::simt::self().dynamic_shared);
  tile[threadIdx.x + (planted ? 1 : 0)] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % kThreads];
}

__global__ void missing_barrier_kernel(float* out, bool planted) {
  __shared__ float tile[kThreads];
  tile[threadIdx.x] = float(threadIdx.x);
  if (!planted) __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % kThreads];
}

__global__ void divergent_barrier_kernel(float* out, bool planted) {
  if (!planted || threadIdx.x < kThreads / 2) __syncthreads();
  out[threadIdx.x] = 1;
}

bool run(void (*kernel)(float*, bool), bool planted) {
  std::vector<float> out(kThreads);
  ebm_ext::simt::run_kernel(kernel, dim3(2), dim3(kThreads), kThreads * sizeof(float), "planted",
                            out.data(), planted);
  const std::string e = ebm_ext::simt::take_last_error();
  if (!e.empty()) std::printf("%s\n", e.c_str());
  return e.empty();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "shared_overflow") return run(shared_overflow_kernel, true) ? 0 : 1;
  if (mode == "dynamic_shared_overflow") return run(dynamic_shared_overflow_kernel, true) ? 0 : 1;
  if (mode == "missing_barrier") return run(missing_barrier_kernel, true) ? 0 : 1;
  if (mode == "divergent_barrier") return run(divergent_barrier_kernel, true) ? 0 : 1;
  if (mode == "fixed") {
    bool ok = true;
    for (auto* k : {shared_overflow_kernel, dynamic_shared_overflow_kernel, missing_barrier_kernel,
                    divergent_barrier_kernel}) {
      ok &= run(k, false);
    }
    std::printf(ok ? "planted kernels without their bugs: clean\n" : "unexpected error\n");
    return ok ? 0 : 1;
  }
  std::printf("usage: %s shared_overflow|dynamic_shared_overflow|missing_barrier|"
              "divergent_barrier|fixed\n", argv[0]);
  return 2;
}
