// Shared by the CUDA kernels of the chain families: how a batch of chains is handed to a
// kernel (inputs staged once in the accumulation type), and the launch shape.
#pragma once

#include "../chain_view.h"
#include "device.cuh"

#include <cstdint>
#include <limits>

namespace ebm_ext {
namespace cuda_chain {

constexpr int kMaxThreads = 256;
constexpr size_t kSharedTransBytes = 32 * 1024;

inline int threads_for(int64_t K) {
  const int64_t warps = (K + 31) / 32;
  return static_cast<int>(std::min<int64_t>(kMaxThreads, warps * 32));
}

// The shared view (../chain_view.h): unary in its own dtype, the parameters staged in the
// accumulation type; with the transposed transitions and the launch's flags.
template <typename scalar_t, typename acc_t>
struct ChainArgs : ChainView<scalar_t, acc_t> {
  const acc_t* transT;     // (K, K) transposed, in the accumulation type
  bool trans_in_shared;
};

// Whether trans, start or end holds a NaN or -inf (every non-empty sequence's result is then
// NaN, as on the CPU), read by the block from the parameters themselves: K^2 + 2K values cost
// less than the ATen reductions that would otherwise run before the launch. Every thread of the
// block must call it.
template <typename scalar_t, typename acc_t>
__device__ bool block_params_invalid(const ChainArgs<scalar_t, acc_t>& a) {
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  bool bad = false;
  for (int64_t n = threadIdx.x; n < a.K * a.K; n += blockDim.x) bad = bad || !(a.trans[n] > ninf);
  for (int64_t j = threadIdx.x; j < a.K; j += blockDim.x) {
    bad = bad || !(a.start_at(j) > ninf) || !(a.end_at(j) > ninf);
  }
  return __syncthreads_or(bad) != 0;
}

// Sequence b's length L, checked on the device (EBM_DEVICE_REQUIRE) by the kernels that read
// lengths without a host check: the message the op gives for a bad length.
__device__ __forceinline__ int64_t require_length(int64_t L, int64_t T, int64_t b,
                                                  const char* op) {
  EBM_DEVICE_REQUIRE(L >= 0 && L <= T, "%s: lengths must be in [0, T=%lld], got %lld at index %lld",
                     op, static_cast<long long>(T), static_cast<long long>(L),
                     static_cast<long long>(b));
  return L;
}

// chain_energy's tags of path (b, c) (c: the candidate, when candidates) at t < L, checked on
// the device: the message the op gives for a tag out of range.
__device__ __forceinline__ void require_path_tags(const int64_t* y, int64_t L, int64_t K,
                                                  int64_t b, int64_t c, bool candidates) {
  for (int64_t t = 0; t < L; ++t) {
    const bool in_range = y[t] >= 0 && y[t] < K;
    const auto got = static_cast<long long>(y[t]);
    if (candidates) {
      EBM_DEVICE_REQUIRE(in_range, "chain_energy: tags must hold tags in [0, K=%lld) at positions "
                         "t < length, got %lld at index [%lld, %lld, %lld]",
                         static_cast<long long>(K), got, static_cast<long long>(b),
                         static_cast<long long>(c), static_cast<long long>(t));
    } else {
      EBM_DEVICE_REQUIRE(in_range, "chain_energy: tags must hold tags in [0, K=%lld) at positions "
                         "t < length, got %lld at index [%lld, %lld]", static_cast<long long>(K),
                         got, static_cast<long long>(b), static_cast<long long>(t));
    }
  }
}

// Kernels that keep vectors of K values in dynamic shared memory: K is bounded by the device.
inline void check_shared_tags(const char* op, int64_t K, size_t bytes_per_tag) {
  const size_t most = max_dynamic_shared_bytes();
  TORCH_CHECK(size_t(K) * bytes_per_tag <= most, op, ": K must be at most ", most / bytes_per_tag,
              " on this CUDA device (", most, " bytes of shared memory per block), got K=", K);
}

// Copies a K x K matrix (trans or transT) to shared memory when it fits; returns where to
// read it from.
template <typename scalar_t, typename acc_t>
__device__ const acc_t* stage_matrix(const acc_t* src, const ChainArgs<scalar_t, acc_t>& a,
                                     acc_t* shared) {
  if (!a.trans_in_shared) return src;
  for (int n = threadIdx.x; n < a.K * a.K; n += blockDim.x) shared[n] = src[n];
  return shared;
}

template <typename scalar_t, typename acc_t>
__device__ const acc_t* stage_trans(const ChainArgs<scalar_t, acc_t>& a, acc_t* shared) {
  return stage_matrix(a.transT, a, shared);
}

// Inputs converted once to contiguous tensors in the accumulation type (trans, start, end are
// K or K*K values: negligible next to unary, which is read in its own dtype).
struct Staged {
  at::Tensor unary, trans, transT, start, end, lengths;
};

inline Staged stage(const at::Tensor& unary, const at::Tensor& trans,
             const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
             const c10::optional<at::Tensor>& end) {
  const auto acc = at::toOpMathType(unary.scalar_type());
  Staged s;
  s.unary = unary.contiguous();
  s.trans = trans.to(acc).contiguous();
  s.transT = s.trans.t().contiguous();
  if (start.has_value()) s.start = start->to(acc).contiguous();
  if (end.has_value()) s.end = end->to(acc).contiguous();
  if (lengths.has_value()) s.lengths = lengths->contiguous();
  return s;
}

template <typename scalar_t, typename acc_t>
ChainArgs<scalar_t, acc_t> chain_args(const Staged& s, size_t shared_before) {
  ChainArgs<scalar_t, acc_t> a;
  a.unary = s.unary.data_ptr<scalar_t>();
  a.trans = s.trans.data_ptr<acc_t>();
  a.start = s.start.defined() ? s.start.data_ptr<acc_t>() : nullptr;
  a.end = s.end.defined() ? s.end.data_ptr<acc_t>() : nullptr;
  a.lengths = s.lengths.defined() ? s.lengths.data_ptr<int64_t>() : nullptr;
  a.T = s.unary.size(1);
  a.K = s.unary.size(2);
  a.transT = s.transT.data_ptr<acc_t>();
  a.trans_in_shared = shared_before + a.K * a.K * sizeof(acc_t) <= kSharedTransBytes;
  return a;
}

template <typename scalar_t, typename acc_t>
size_t shared_bytes(const ChainArgs<scalar_t, acc_t>& a, size_t before) {
  return before + (a.trans_in_shared ? a.K * a.K * sizeof(acc_t) : 0);
}

}  // namespace cuda_chain
}  // namespace ebm_ext
