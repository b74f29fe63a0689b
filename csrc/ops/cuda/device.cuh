// What every CUDA kernel file includes instead of the CUDA headers: the device, its stream and
// guard, the launch, and the op namespace the kernels register under. Under nvcc these are
// CUDA's; in the SIMT emulation build (EBM_SIMT_EMULATION: g++ compiles the same .cu files as
// host code, csrc/simt/simt.h) they are the emulator's, the kernels run on CPU tensors, and the
// ops register as ebm_ext_emu::<op> for CPU tensors, beside the real CPU kernels. This file is
// the only place the two builds differ: no kernel body and no launcher forks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "../backend.h"

#ifdef EBM_SIMT_EMULATION
#include "../../simt/simt.h"

// CUDA's error macro and guard, as the emulation gives them.
#define C10_CUDA_CHECK(expr)                                                             \
  do {                                                                                   \
    const cudaError_t ebm_status = (expr);                                               \
    TORCH_CHECK(ebm_status == cudaSuccess, "CUDA error (SIMT emulation): ",               \
                cudaGetErrorString(ebm_status), " from ", #expr);                        \
  } while (0)

namespace ebm_ext {
// The emulated device is the CPU: its guard only checks where the tensors are.
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device& device) {
    TORCH_CHECK(device.is_cpu(), "SIMT emulation: the emulated CUDA kernels take CPU tensors, got ",
                device);
  }
};
inline size_t max_dynamic_shared_bytes() { return simt::kMaxSharedBytesOptin; }
// A small device, so that the layouts kernels choose by batch size against it (a block or a
// warp per item) are both reached by small emulated tests.
inline int multiprocessor_count() { return 2; }
// The launch's error (a bad configuration, a barrier not every thread reached, a planted fault),
// already naming the kernel.
template <typename Name>
void check_launch(Name /*kernel: in the emulator's message*/) {
  const std::string error = simt::take_last_error();
  TORCH_CHECK(error.empty(), error);
}
}  // namespace ebm_ext

#define EBM_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(EBM_OP_NAMESPACE, CPU, m)
#define EBM_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::ebm_ext::simt::self().dynamic_shared)
#define EBM_DEVICE_REQUIRE(cond, ...)                                                     \
  do {                                                                                    \
    if (!(cond)) ::ebm_ext::simt::device_check_failed(__FILE__, __LINE__, #cond, __VA_ARGS__); \
  } while (0)

#else  // nvcc
#include <mma.h>  // nvcuda::wmma: the tensor cores (emulated by simt.h in the other build)

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace ebm_ext {
using DeviceGuard = c10::cuda::CUDAGuard;
inline size_t max_dynamic_shared_bytes() {
  return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}
inline int multiprocessor_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}
// The launch's error, named by kernel (`kernel()` gives the name; it is only called on an
// error, so a launch pays nothing for it). With CUDA_LAUNCH_BLOCKING=1 (the GPU check's kernel
// driver) the stream is also synchronised here, so a fault inside the kernel (an illegal
// address, a trap) is reported by the launch that caused it and not by a later op.
template <typename Name>
void check_launch(Name kernel) {
  static const bool blocking = [] {
    const char* v = std::getenv("CUDA_LAUNCH_BLOCKING");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  cudaError_t error = cudaGetLastError();
  if (error == cudaSuccess && blocking) {
    error = cudaStreamSynchronize(at::cuda::getCurrentCUDAStream());
  }
  TORCH_CHECK(error == cudaSuccess, "CUDA error in kernel ", kernel(), ": ",
              cudaGetErrorString(error));
}
}  // namespace ebm_ext

#define EBM_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(EBM_OP_NAMESPACE, CUDA, m)
// 32-byte aligned: wmma loads and stores need 256-bit aligned addresses.
#define EBM_DYNAMIC_SHARED(type, name) extern __shared__ __align__(32) type name[]
#define EBM_DEVICE_REQUIRE(cond, ...)                         \
  do {                                                        \
    if (!(cond)) {                                            \
      printf(__VA_ARGS__);                                    \
      printf("\n");                                           \
      __assert_fail(#cond, __FILE__, __LINE__, __func__);     \
    }                                                         \
  } while (0)
#endif

// EBM_DEVICE_REQUIRE(cond, format, ...): a value check inside a kernel, where a host check would
// cost a synchronisation per call (the decoders' lengths, gold and cost). It works as PyTorch's
// own device-side asserts (CUDA_KERNEL_ASSERT, torch._assert_async): on a GPU the failing thread
// prints the message (the op, the argument, what was expected and what came) and the kernel
// stops with "device-side assert triggered", reported by the next synchronising call (or by the
// op itself under CUDA_LAUNCH_BLOCKING=1), and the CUDA context is then unusable, as after any
// device-side assert. In the emulation the launch raises the message at once.

namespace ebm_ext {

constexpr size_t kSharedBytesWithoutOptin = 48 * 1024;

// The kernel's name, from this function's signature ("... [with auto Kernel = name; ...]").
template <auto Kernel>
std::string kernel_name() {
  const std::string s = __PRETTY_FUNCTION__;
  const auto at = s.find("Kernel = ");
  if (at == std::string::npos) return s;
  const auto from = at + 9;
  return s.substr(from, s.find_first_of(";]", from) - from);
}

// The one launch of every kernel: on the current stream, after opting in to the dynamic shared
// memory it needs above 48 KiB (a clear error beyond the device's maximum), followed by the
// launch check, which names the kernel.
template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  if (shared_bytes > kSharedBytesWithoutOptin) {
    const size_t most = max_dynamic_shared_bytes();
    TORCH_CHECK(shared_bytes <= most, kernel_name<Kernel>(), ": needs ", shared_bytes,
                " bytes of shared memory per block; the device allows at most ", most);
    C10_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  }
#ifdef EBM_SIMT_EMULATION
  simt::run_kernel(Kernel, grid, block, shared_bytes, kernel_name<Kernel>().c_str(),
                   std::forward<Args>(args)...);
#else
  Kernel<<<grid, block, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
      std::forward<Args>(args)...);
#endif
  check_launch([] { return kernel_name<Kernel>(); });
}

}  // namespace ebm_ext

#define EBM_DISPATCH_CUDA_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
