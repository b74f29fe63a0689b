// SIMT emulation of the CUDA execution model, so that g++ compiles the unchanged kernels of
// csrc/ops/cuda as host code and CI executes them without a GPU (the idea of nvcc's old
// device-emulation mode and of HIP-CPU; written here from the CUDA programming guide).
//
// What is faithful:
// - every thread of a block is a real OS thread, so the kernels' races are real races
//   (ThreadSanitizer sees them) and a missing barrier gives wrong answers as on a GPU;
// - __syncthreads(_or/_and/_count) is a barrier of the whole block; a barrier that not every
//   thread reaches (a thread has returned, or threads wait at different barriers, or nobody can
//   move) is an error reported at once, not a hang;
// - warp shuffles, votes and __syncwarp exchange values between the lanes named in the mask;
//   a mask naming a lane that does not exist or has returned is an error;
// - static __shared__ variables and the dynamic (extern) shared buffer are per block; the
//   dynamic buffer is allocated at the launch's exact size (AddressSanitizer sees overflows)
//   and filled with 0xff bytes (NaN, -1) at each block's start, so reads before writes show;
// - launches are checked against the device's limits (an H100/H200): at most 1024 threads per
//   block (1024, 1024, 64 per dimension), grid limits, 48 KiB of dynamic shared memory unless
//   the kernel opted in with cudaFuncSetAttribute, 227 KiB at most. A violation is the error
//   the CUDA runtime would give, raised by the launch check (device.cuh's check_launch).
// - a planted fault (EBM_SIMT_PLANT_FAULT, simt.cpp) is sticky, as a device fault is: every
//   later launch in the process fails with it.
// What is not: blocks run one after another (launches are serialised process-wide, which is
// also what makes static __shared__ variables, function-local statics here, per block), there
// is no timing model, and static shared memory does not count against the limit.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace ebm_ext {
namespace simt {

constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultSharedBytes = 48 * 1024;  // dynamic shared memory without opting in
constexpr size_t kMaxSharedBytesOptin = 227 * 1024;  // sharedMemPerBlockOptin of an H100/H200

class Block;

// What a kernel thread knows about itself (threadIdx, blockIdx, ...).
struct ThreadState {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
  unsigned linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  unsigned char* dynamic_shared;
  Block* block;
};

// The calling kernel thread's state; an error outside a kernel.
ThreadState& self();

enum class Vote { Or, And, Count };
enum class Shuffle { Idx, Up, Down, Xor };

void syncthreads(const char* file, int line);
int syncthreads_vote(Vote vote, int predicate, const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
unsigned ballot(unsigned mask, int predicate, const char* file, int line);
// Exchanges up to 8 bytes between the lanes of `mask`: returns the bits of lane `src` (the
// caller's own when src is out of its width segment, as the hardware does for up/down).
uint64_t shuffle_bits(unsigned mask, uint64_t bits, Shuffle kind, int lane_arg, int width,
                      const char* file, int line);

template <typename T>
T shuffle(unsigned mask, T value, Shuffle kind, int lane_arg, int width, const char* file,
          int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp shuffles move at most 8 bytes of a trivially copyable type");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shuffle_bits(mask, bits, kind, lane_arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Launch: runs body() in every thread of every block of the grid, after checking the
// configuration; an error (bad configuration, a divergent barrier, an exception in a kernel
// thread) becomes the pending error that take_last_error() returns.
void launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const char* name,
            const std::function<void()>& body);
// How many kernels this process has launched (the decoding ops' one-launch rule is tested on it).
uint64_t launches();
// A failed device-side check (EBM_DEVICE_REQUIRE, csrc/ops/cuda/device.cuh): throws in the
// kernel thread, so that the launch reports the formatted message. Unlike a GPU's device-side
// assert, it does not poison later launches: the tests go on after provoking one.
[[noreturn]] void device_check_failed(const char* file, int line, const char* condition,
                                      const char* format, ...)
    __attribute__((format(printf, 4, 5)));
// cudaGetLastError's part: the pending error ("" when none), cleared.
std::string take_last_error();
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes); false when
// bytes exceeds the device maximum.
bool set_max_dynamic_shared(const void* kernel, int bytes);

// A kernel and its parameters, copied once as the launch does and handed by value to every
// thread (a kernel may modify its by-value parameters per thread, as on the GPU).
template <typename... P, typename... A>
void run_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                const char* name, A&&... args) {
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  launch(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, name,
         [&] { std::apply(kernel, params); });
}

// CUDA's atomics: relaxed read-modify-writes, as on the device.
template <typename T>
T atomic_add(T* address, T value) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    T old, next;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    do {
      next = old + value;
    } while (!__atomic_compare_exchange(address, &old, &next, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
    return old;
  }
}
template <typename T>
T atomic_update(T* address, T value, bool take_max) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while ((take_max ? value > old : value < old) &&
         !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
T atomic_cas(T* address, T compare, T value) {
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED,
                              __ATOMIC_RELAXED);
  return compare;
}

}  // namespace simt
}  // namespace ebm_ext

// ---- the CUDA names kernels use --------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

#define threadIdx (::ebm_ext::simt::self().thread_idx)
#define blockIdx (::ebm_ext::simt::self().block_idx)
#define blockDim (::ebm_ext::simt::self().block_dim)
#define gridDim (::ebm_ext::simt::self().grid_dim)
#define warpSize (::ebm_ext::simt::kWarpSize)

#define __syncthreads() ::ebm_ext::simt::syncthreads(__FILE__, __LINE__)
#define __syncthreads_or(p) ::ebm_ext::simt::Site{__FILE__, __LINE__}.vote(::ebm_ext::simt::Vote::Or, (p))
#define __syncthreads_and(p) ::ebm_ext::simt::Site{__FILE__, __LINE__}.vote(::ebm_ext::simt::Vote::And, (p))
#define __syncthreads_count(p) \
  ::ebm_ext::simt::Site{__FILE__, __LINE__}.vote(::ebm_ext::simt::Vote::Count, (p))
#define __syncwarp(...) ::ebm_ext::simt::Site{__FILE__, __LINE__}.syncwarp(__VA_ARGS__)
#define __ballot_sync(...) ::ebm_ext::simt::Site{__FILE__, __LINE__}.ballot(__VA_ARGS__)
#define __any_sync(...) ::ebm_ext::simt::Site{__FILE__, __LINE__}.any(__VA_ARGS__)
#define __all_sync(...) ::ebm_ext::simt::Site{__FILE__, __LINE__}.all(__VA_ARGS__)
#define __shfl_sync(...) \
  ::ebm_ext::simt::Site{__FILE__, __LINE__}.shuffle(::ebm_ext::simt::Shuffle::Idx, __VA_ARGS__)
#define __shfl_up_sync(...) \
  ::ebm_ext::simt::Site{__FILE__, __LINE__}.shuffle(::ebm_ext::simt::Shuffle::Up, __VA_ARGS__)
#define __shfl_down_sync(...) \
  ::ebm_ext::simt::Site{__FILE__, __LINE__}.shuffle(::ebm_ext::simt::Shuffle::Down, __VA_ARGS__)
#define __shfl_xor_sync(...) \
  ::ebm_ext::simt::Site{__FILE__, __LINE__}.shuffle(::ebm_ext::simt::Shuffle::Xor, __VA_ARGS__)

namespace ebm_ext {
namespace simt {
// Where in the kernel a barrier or warp operation is (divergence is told by its site); its
// members take the intrinsics' arguments, defaults included.
struct Site {
  const char* file;
  int line;
  int vote(Vote v, int predicate) const { return syncthreads_vote(v, predicate, file, line); }
  void syncwarp(unsigned mask = 0xffffffffu) const { ::ebm_ext::simt::syncwarp(mask, file, line); }
  unsigned ballot(unsigned mask, int predicate) const {
    return ::ebm_ext::simt::ballot(mask, predicate, file, line);
  }
  bool any(unsigned mask, int predicate) const { return ballot(mask, predicate) != 0u; }
  bool all(unsigned mask, int predicate) const { return ballot(mask, predicate != 0) == mask; }
  template <typename T>
  T shuffle(Shuffle kind, unsigned mask, T value, int lane_arg, int width = kWarpSize) const {
    return ::ebm_ext::simt::shuffle(mask, value, kind, lane_arg, width, file, line);
  }
};
}  // namespace simt
}  // namespace ebm_ext

template <typename T>
T atomicAdd(T* address, T value) { return ::ebm_ext::simt::atomic_add(address, value); }
template <typename T>
T atomicMax(T* address, T value) { return ::ebm_ext::simt::atomic_update(address, value, true); }
template <typename T>
T atomicMin(T* address, T value) { return ::ebm_ext::simt::atomic_update(address, value, false); }
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  return ::ebm_ext::simt::atomic_cas(address, compare, value);
}
template <typename T>
T atomicExch(T* address, T value) { return __atomic_exchange_n(address, value, __ATOMIC_RELAXED); }

// Device math: the float overloads (CUDA's expf, logf, ...) where a kernel passes floats, and
// min/max of floating types that ignore a NaN operand, as CUDA's (fminf/fmaxf) do.
using std::abs;
using std::exp;
using std::fabs;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::log1p;
using std::sqrt;
using std::tanh;
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
#define EBM_SIMT_INTEGER_MIN_MAX(T)                 \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
EBM_SIMT_INTEGER_MIN_MAX(int)
EBM_SIMT_INTEGER_MIN_MAX(unsigned)
EBM_SIMT_INTEGER_MIN_MAX(long)
EBM_SIMT_INTEGER_MIN_MAX(unsigned long)
EBM_SIMT_INTEGER_MIN_MAX(long long)
EBM_SIMT_INTEGER_MIN_MAX(unsigned long long)
#undef EBM_SIMT_INTEGER_MIN_MAX

// ---- the runtime API the launchers use ----------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorIllegalAddress = 700
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
  }
  return "unknown error";
}

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::ebm_ext::simt::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value)
             ? cudaSuccess
             : cudaErrorInvalidValue;
}

// ---- tensor cores: the nvcuda::wmma subset the kernels use (TF32 m16n16k8) -------------------
// A fragment holds its whole tile in every lane (the hardware spreads it over the warp's
// registers in an unspecified layout, which kernels never rely on: they go through
// load/store_matrix_sync and element-wise loops over x[0, num_elements)); every lane computes
// the whole product. store_matrix_sync writes from lane 0 only (the others hold the same
// values), so that a kernel must __syncwarp() before other lanes read the stored tile, as on
// the GPU. mma_sync sums the k products of each entry in order in float32; TF32 inputs are
// rounded by __float_to_tf32 (to nearest, ties away: cvt.rna.tf32.f32).
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct tile_shape;
template <int M, int N, int K>
struct tile_shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K>
struct tile_shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K>
struct tile_shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = tile_shape<Use, M, N, K>::rows, cols = tile_shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];  // row-major
};

inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits = (bits + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

template <typename Use, int M, int N, int K, typename T>
void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const float* p, unsigned ldm) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = p[size_t(r) * ldm + c];
}
template <typename Use, int M, int N, int K, typename T>
void load_matrix_sync(fragment<Use, M, N, K, T, col_major>& f, const float* p, unsigned ldm) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = p[size_t(c) * ldm + r];
}
template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (float& e : f.x) e = v;
}
template <int M, int N, int K, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
              const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float s = c.x[m * N + n];
      for (int k = 0; k < K; ++k) s += a.x[m * K + k] * b.x[k * N + n];
      out[m * N + n] = s;
    }
  std::memcpy(d.x, out, sizeof out);
}
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  if (::ebm_ext::simt::self().linear % ::ebm_ext::simt::kWarpSize != 0) return;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) {
      const size_t at = layout == mem_row_major ? size_t(r) * ldm + c : size_t(c) * ldm + r;
      p[at] = f.x[r * N + c];
    }
}
}  // namespace wmma
}  // namespace nvcuda
