// CUDA kernels of the linear-chain ops.
//
// Decoding (viterbi, loss_augmented_viterbi, viterbi_kbest) is one kernel launch per call, with
// nothing else on the stream and no host synchronisation: the kernels read every input where
// it lies, through its strides and in its own dtype (no staging copy, no transpose, no NaN scan
// by ATen), and check the values a host check would have to synchronise for (lengths in
// [0, T]; loss-augmented decoding's gold tags and cost matrix) on the device, with
// EBM_DEVICE_REQUIRE (device.cuh).
//
// viterbi and loss_augmented_viterbi: a warp decodes one sequence, kDecodeWarps sequences per
// block. The block stages the transitions once, transposed and in the accumulation type, into
// shared memory (and scans trans/start/end for NaN on the way); each warp stages its sequence's
// unary a chunk of positions at a time (coalesced loads, all of a chunk's in flight at once) and
// keeps beta, the step's messages and, when they fit, its backpointers in shared memory; the
// walk-back reads them from there. Lane i owns tags i, i + 32, ...
// viterbi_kbest keeps one block per sequence (k lists of K entries each), staged the same way,
// with its back-pointer lists in shared memory when they fit.
// The recursion, its order and its tie rule are the CPU kernel's (right-to-left min-plus,
// smallest minimising index; k-best's list order), so both return the same tags.
//
// The predicted time of each kernel, and the model behind it, is in bench/roofline.py.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../chain.h"
#include "../edge_chain_ops.h"
#include "device.cuh"
#include "chain_common.cuh"
#include "reduce.cuh"

namespace ebm_ext {
using namespace cuda_chain;
namespace {

// ---- decoding -----------------------------------------------------------------------------------

constexpr int kDecodeWarps = 4;                 // sequences per block (viterbi, loss-augmented)
constexpr size_t kStagedMatrixBytes = 32 * 1024;  // trans (and cost) in shared memory up to this
constexpr size_t kChunkBytes = 4 * 1024;        // a warp's staged unary positions
constexpr size_t kWarpPtrBytes = 16 * 1024;     // a warp's backpointers in shared memory up to this
constexpr size_t kKBestPtrBytes = 96 * 1024;    // k-best's back-pointer lists, likewise

enum DecodeOp : int { kViterbi = 0, kLossAugmented = 1, kKBest = 2, kChainEnergy = 3 };

// The decoders' inputs as they lie: every tensor through its strides, in the input's dtype.
template <typename scalar_t>
struct DecodeArgs {
  const scalar_t* unary;   // unary(b, t, j) = unary[b * ub + t * ut + j * uk]
  const scalar_t* trans;   // trans(i, j) = trans[i * tsi + j * tsj]
  const scalar_t* start;   // start[j * ss], or nullptr: zeros
  const scalar_t* end;     // end[j * es], or nullptr: zeros
  const int64_t* lengths;  // lengths[b * ls], or nullptr: every sequence has length T
  int64_t ub, ut, uk, tsi, tsj, ss, es, ls;
  int64_t B, T, K;
  int op;  // DecodeOp: the op that device-side messages name
};

__device__ __forceinline__ const char* decode_op_name(int op) {
  return op == kViterbi ? "viterbi"
         : op == kLossAugmented ? "loss_augmented_viterbi"
         : op == kKBest ? "viterbi_kbest"
                        : "chain_energy";
}

// A sequence of the batch as path_energy (../chain_view.h) and the k-best final list read it;
// the transitions from the block's staged copy (transT[j * K + i] = trans(i, j)) when there is
// one, else from global memory through their strides.
template <typename scalar_t, typename acc_t>
struct DecodeChain {
  DecodeArgs<scalar_t> a;
  const acc_t* transT;
  int64_t K;
  __host__ __device__ acc_t trans_at(int64_t i, int64_t j) const {
    return transT ? transT[j * K + i] : static_cast<acc_t>(a.trans[i * a.tsi + j * a.tsj]);
  }
  __host__ __device__ acc_t start_at(int64_t j) const {
    return a.start ? static_cast<acc_t>(a.start[j * a.ss]) : acc_t(0);
  }
  __host__ __device__ acc_t end_at(int64_t j) const {
    return a.end ? static_cast<acc_t>(a.end[j * a.es]) : acc_t(0);
  }
  __host__ __device__ scalar_t unary_value(int64_t b, int64_t t, int64_t j) const {
    return a.unary[b * a.ub + t * a.ut + j * a.uk];
  }
};

// Sequence b's length, checked on the device.
template <typename scalar_t>
__device__ int64_t checked_length(const DecodeArgs<scalar_t>& a, int64_t b) {
  if (a.lengths == nullptr) return a.T;
  return cuda_chain::require_length(a.lengths[b * a.ls], a.T, b, decode_op_name(a.op));
}

// Block-wide, ending in a barrier: the transitions into transT (when not null), transposed and
// in acc_t; returns whether trans, start or end hold NaN or -inf (the non-finite rules: every
// non-empty sequence's energy is then NaN).
template <typename scalar_t, typename acc_t>
__device__ bool stage_parameters(const DecodeArgs<scalar_t>& a, acc_t* transT) {
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int64_t K = a.K;
  bool invalid = false;
  for (int64_t n = threadIdx.x; n < K * K; n += blockDim.x) {
    const int64_t i = n / K, j = n % K;
    const acc_t v = static_cast<acc_t>(a.trans[i * a.tsi + j * a.tsj]);
    invalid |= !(v > -inf);
    if (transT) transT[j * K + i] = v;
  }
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
    if (a.start) invalid |= !(static_cast<acc_t>(a.start[j * a.ss]) > -inf);
    if (a.end) invalid |= !(static_cast<acc_t>(a.end[j * a.es]) > -inf);
  }
  return __syncthreads_or(invalid);
}

// Loss-augmented decoding's cost matrix: cost(g, j) = cost[g * si + j * sj], staged (natural
// layout) into `shared` when not null. Every block checks it while reading it (no barrier: the
// caller's stage_parameters ends in one).
template <typename scalar_t, typename acc_t>
struct Cost {
  const scalar_t* global;
  int64_t si, sj;
  acc_t* shared;
  __device__ acc_t at(int64_t g, int64_t j, int64_t K) const {
    return shared ? shared[g * K + j] : static_cast<acc_t>(global[g * si + j * sj]);
  }
  __device__ void stage(int64_t K) const {
    for (int64_t n = threadIdx.x; n < K * K; n += blockDim.x) {
      const int64_t i = n / K, j = n % K;
      const acc_t v = static_cast<acc_t>(global[i * si + j * sj]);
      EBM_DEVICE_REQUIRE(v >= acc_t(0) && isfinite(v),
                         "loss_augmented_viterbi: cost must be finite and non-negative, got %g at "
                         "index [%lld, %lld]", static_cast<double>(v), static_cast<long long>(i),
                         static_cast<long long>(j));
      EBM_DEVICE_REQUIRE(i != j || v == acc_t(0),
                         "loss_augmented_viterbi: cost must have a zero diagonal (cost[y, y] = 0), "
                         "got %g at index [%lld, %lld]", static_cast<double>(v),
                         static_cast<long long>(i), static_cast<long long>(j));
      if (shared) shared[n] = v;
    }
  }
};

// Where a block's shared memory goes (viterbi and loss-augmented decoding): the staged matrices
// first, then one region per warp: beta (K), the step's messages w (K), `chunk` positions of
// unary (chunk * K) and, when ptr_shared, the backpointers ((T - 1) * K).
struct DecodeLayout {
  int warps;
  int64_t chunk;
  bool trans_shared, cost_shared, ptr_shared;
  size_t matrices_bytes, warp_bytes;
  size_t bytes() const { return matrices_bytes + size_t(warps) * warp_bytes; }
};

inline size_t round16(size_t n) { return (n + 15) / 16 * 16; }

// Lane i's part of a min-plus step for its tag i: min_j trans(i, j) + w[j], the smallest
// minimising j on ties (the CPU kernel's rule).
template <typename acc_t, typename Trans>
__device__ __forceinline__ void minplus_argmin(const Trans& trans_at, const acc_t* w, int64_t K,
                                               int64_t i, acc_t& best, int& arg) {
  best = std::numeric_limits<acc_t>::infinity();
  arg = 0;
  for (int64_t j = 0; j < K; ++j) {
    const acc_t c = trans_at(i, j) + w[j];
    if (c < best) {
      best = c;
      arg = static_cast<int>(j);
    }
  }
}

// viterbi / loss_augmented_viterbi: gold and cost.global are nullptr for plain decoding.
template <typename scalar_t, typename acc_t, typename ptr_t>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    viterbi_kernel(DecodeArgs<scalar_t> a, DecodeLayout lay, const int64_t* __restrict__ gold,
                   int64_t gold_sb, int64_t gold_st, Cost<scalar_t, acc_t> cost,
                   ptr_t* __restrict__ ptr_global, scalar_t* __restrict__ energy_out,
                   scalar_t* __restrict__ delta_out, int64_t* __restrict__ tags_out) {
  EBM_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t K = a.K, T = a.T;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  acc_t* transT = lay.trans_shared ? reinterpret_cast<acc_t*>(smem) : nullptr;
  if (lay.cost_shared) cost.shared = reinterpret_cast<acc_t*>(smem) + (transT ? K * K : 0);
  if (cost.global) cost.stage(K);
  bool nan = stage_parameters(a, transT);
  const DecodeChain<scalar_t, acc_t> c{a, transT, K};

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = int64_t(blockIdx.x) * lay.warps + warp;
  if (b >= a.B) return;  // no block barrier follows
  const int64_t L = checked_length(a, b);
  int64_t* tags = tags_out + b * T;
  for (int64_t t = L + lane; t < T; t += 32) tags[t] = -1;
  if (L == 0) {
    if (lane == 0) {
      energy_out[b] = scalar_t(0);
      if (delta_out) delta_out[b] = scalar_t(0);
    }
    return;
  }
  const int64_t* g = gold ? gold + b * gold_sb : nullptr;
  for (int64_t t = lane; g && t < L; t += 32) {
    EBM_DEVICE_REQUIRE(g[t * gold_st] >= 0 && g[t * gold_st] < K,
                       "loss_augmented_viterbi: gold must hold tags in [0, K=%lld) at positions "
                       "t < length, got %lld at index [%lld, %lld]", static_cast<long long>(K),
                       static_cast<long long>(g[t * gold_st]), static_cast<long long>(b),
                       static_cast<long long>(t));
  }
  unsigned char* mine = smem + lay.matrices_bytes + warp * lay.warp_bytes;
  acc_t* beta = reinterpret_cast<acc_t*>(mine);
  acc_t* w = beta + K;
  acc_t* chunk = w + K;
  ptr_t* p = lay.ptr_shared ? reinterpret_cast<ptr_t*>(chunk + lay.chunk * K)
                            : ptr_global + b * (T > 1 ? T - 1 : 1) * K;
  // Lane i reads and writes only its own tags' beta, w and unary entries between the two
  // __syncwarp()s of a step; the min-plus step reads every w[j].
  for (int64_t i = lane; i < K; i += 32) beta[i] = c.end_at(i);
  int64_t lo = L;  // the chunk holds positions [lo, lo + lay.chunk)
  for (int64_t t = L - 1; t >= 0; --t) {
    if (t < lo) {
      lo = t + 1 > lay.chunk ? t + 1 - lay.chunk : 0;
      for (int64_t s = lo; s <= t; ++s)
        for (int64_t j = lane; j < K; j += 32)
          chunk[(s - lo) * K + j] = static_cast<acc_t>(c.unary_value(b, s, j));
    }
    const acc_t* u = chunk + (t - lo) * K;
    for (int64_t j = lane; j < K; j += 32) {
      const acc_t v = u[j] + beta[j] - (g ? cost.at(g[t * gold_st], j, K) : acc_t(0));
      nan |= !(v > -inf);  // NaN or -inf (-inf follows NaN's rule)
      w[j] = v;
    }
    __syncwarp();
    if (t == 0) break;
    for (int64_t i = lane; i < K; i += 32) {
      acc_t best;
      int arg;
      if (transT) {
        minplus_argmin(
            [&](int64_t i_, int64_t j_) { return transT[j_ * K + i_]; }, w, K, i, best, arg);
      } else {
        minplus_argmin([&](int64_t i_, int64_t j_) { return c.trans_at(i_, j_); }, w, K, i, best,
                       arg);
      }
      beta[i] = best;
      p[(t - 1) * K + i] = static_cast<ptr_t>(arg);
    }
    __syncwarp();
  }
  nan = __any_sync(0xffffffffu, nan);
  // The first tag: the smallest j minimising w[j] + start[j], over the lanes' own minima.
  acc_t best = inf;
  int arg = std::numeric_limits<int>::max();
  for (int64_t j = lane; j < K; j += 32) {
    const acc_t v = w[j] + c.start_at(j);
    if (v < best) {
      best = v;
      arg = static_cast<int>(j);
    }
  }
  cuda_reduce::warp_argmin(best, arg);
  if (lane != 0) return;
  walk_back(arg == std::numeric_limits<int>::max() ? 0 : arg, p, K, L, tags);
  if (delta_out == nullptr) {
    energy_out[b] = nan ? scalar_t(NAN) : static_cast<scalar_t>(best);
    return;
  }
  // loss-augmented: report E(y*) summed along the path, and Delta(y*, gold).
  const acc_t e = path_energy<acc_t>(c, b, tags, L);
  acc_t dl = 0;
  for (int64_t t = 0; t < L; ++t) dl += cost.at(g[t * gold_st], tags[t], K);
  energy_out[b] = nan ? scalar_t(NAN) : static_cast<scalar_t>(e);
  delta_out[b] = static_cast<scalar_t>(dl);
}

// k-best list Viterbi, the CPU kernel's recursion: entries code = j * k + r, ascending, ties kept
// in (j, r) order, +inf suffixes missing. One block per sequence, thread i owns tag i's list.
// Shared layout: transT (K, K) if staged | beta (k, K) | w (k, K) | final values (k) |
// final codes (k int32) | back-pointer lists ((T - 1) k K int32) if ptr_shared.
template <typename scalar_t, typename acc_t>
__global__ void kbest_kernel(DecodeArgs<scalar_t> a, int k, bool trans_shared, bool ptr_shared,
                             int32_t* __restrict__ ptr_global, scalar_t* __restrict__ energy_out,
                             int64_t* __restrict__ tags_out) {
  EBM_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t K = a.K, T = a.T;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  acc_t* transT = trans_shared ? reinterpret_cast<acc_t*>(smem) : nullptr;
  acc_t* beta = reinterpret_cast<acc_t*>(smem) + (trans_shared ? K * K : 0);
  acc_t* w = beta + k * K;
  acc_t* top = w + k * K;
  int32_t* code = reinterpret_cast<int32_t*>(top + k);
  const int64_t b = blockIdx.x;
  int32_t* p = ptr_shared ? code + k : ptr_global + b * (T > 1 ? T - 1 : 1) * k * K;
  bool nan = stage_parameters(a, transT);
  const DecodeChain<scalar_t, acc_t> c{a, transT, K};
  const int64_t L = checked_length(a, b);
  int64_t* tags = tags_out + b * k * T;
  for (int64_t n = threadIdx.x; n < k * T; n += blockDim.x) tags[n] = -1;
  for (int s = threadIdx.x; s < k; s += blockDim.x) energy_out[b * k + s] = static_cast<scalar_t>(inf);
  __syncthreads();
  if (L == 0) {
    if (threadIdx.x == 0) energy_out[b * k] = scalar_t(0);
    return;
  }
  for (int64_t i = threadIdx.x; i < k * K; i += blockDim.x) beta[i] = i < K ? c.end_at(i) : inf;
  __syncthreads();
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int64_t n = threadIdx.x; n < k * K; n += blockDim.x) {
      const acc_t v = static_cast<acc_t>(c.unary_value(b, t, n % K)) + beta[n];
      nan |= !(v > -inf);  // NaN or -inf (-inf follows NaN's rule)
      w[n] = v;
    }
    __syncthreads();
    if (t == 0) break;
    int32_t* pt = p + (t - 1) * k * K;
    for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
      // This thread's list lives in beta[s*K + i] (column i), rewritten in place: w already
      // holds everything the step reads from the old beta.
      for (int s = 0; s < k; ++s) {
        beta[s * K + i] = inf;
        pt[s * K + i] = -1;
      }
      for (int64_t j = 0; j < K; ++j)
        for (int r = 0; r < k; ++r)
          if (!kbest_insert(beta + i, pt + i, k, c.trans_at(i, j) + w[r * K + j],
                            static_cast<int32_t>(j * k + r), K))
            break;  // later ranks of j are larger still (and +inf or NaN never enter)
    }
    __syncthreads();
  }
  nan = __syncthreads_or(nan);
  if (threadIdx.x != 0) return;
  kbest_final_list(c, w, k, top, code);
  for (int s = 0; s < k; ++s) {
    if (code[s] < 0) break;
    energy_out[b * k + s] = nan ? scalar_t(NAN) : static_cast<scalar_t>(top[s]);
    kbest_walk_back(code[s], k, p, K, L, tags + s * T);
  }
}

// ---- chain_energy ------------------------------------------------------------------------------

// A thread per path, reading the parameters where they lie (one launch, no staging); the
// lengths and the tags at t < L are checked on the device, as the decoders' are.
template <typename scalar_t, typename acc_t>
__global__ void chain_energy_kernel(DecodeArgs<scalar_t> a, const int64_t* __restrict__ tags,
                                    int64_t n_paths, int64_t C, bool candidates,
                                    scalar_t* __restrict__ energy_out) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= n_paths) return;
  const int64_t b = n / C;
  const int64_t L = checked_length(a, b);
  const int64_t* y = tags + n * a.T;
  cuda_chain::require_path_tags(y, L, a.K, b, n % C, candidates);
  const DecodeChain<scalar_t, acc_t> c{a, nullptr, a.K};
  energy_out[n] = static_cast<scalar_t>(path_energy<acc_t>(c, b, y, L));
}

template <typename scalar_t>
DecodeArgs<scalar_t> decode_args(DecodeOp op, const at::Tensor& unary, const at::Tensor& trans,
                                 const c10::optional<at::Tensor>& lengths,
                                 const c10::optional<at::Tensor>& start,
                                 const c10::optional<at::Tensor>& end) {
  DecodeArgs<scalar_t> a{};
  a.unary = unary.data_ptr<scalar_t>();
  a.ub = unary.stride(0);
  a.ut = unary.stride(1);
  a.uk = unary.stride(2);
  a.trans = trans.data_ptr<scalar_t>();
  a.tsi = trans.stride(0);
  a.tsj = trans.stride(1);
  if (start.has_value()) {
    a.start = start->data_ptr<scalar_t>();
    a.ss = start->stride(0);
  }
  if (end.has_value()) {
    a.end = end->data_ptr<scalar_t>();
    a.es = end->stride(0);
  }
  if (lengths.has_value()) {
    a.lengths = lengths->data_ptr<int64_t>();
    a.ls = lengths->stride(0);
  }
  a.B = unary.size(0);
  a.T = unary.size(1);
  a.K = unary.size(2);
  a.op = op;
  return a;
}

// The shared memory of a viterbi / loss-augmented launch: kDecodeWarps sequences per block
// unless fewer fit (large K); the transitions and the cost in shared memory up to
// kStagedMatrixBytes each, a warp's backpointers up to kWarpPtrBytes, all within `most`.
inline DecodeLayout decode_layout(int64_t T, int64_t K, size_t value, size_t ptr, bool has_cost,
                                  size_t most) {
  DecodeLayout l{};
  const size_t matrix = size_t(K) * size_t(K) * value;
  l.trans_shared = matrix <= kStagedMatrixBytes;
  l.cost_shared = has_cost && matrix <= kStagedMatrixBytes;
  l.matrices_bytes = round16((l.trans_shared ? matrix : 0) + (l.cost_shared ? matrix : 0));
  l.chunk = std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(T, 1),
                                                   kChunkBytes / (size_t(K) * value)));
  const size_t ptr_bytes = size_t(std::max<int64_t>(T - 1, 1)) * size_t(K) * ptr;
  const size_t vectors = (2 + size_t(l.chunk)) * size_t(K) * value;
  l.ptr_shared = ptr_bytes <= kWarpPtrBytes && l.matrices_bytes + vectors + ptr_bytes <= most;
  l.warp_bytes = round16(vectors + (l.ptr_shared ? ptr_bytes : 0));
  l.warps = kDecodeWarps;
  while (l.warps > 1 && l.bytes() > most) --l.warps;
  return l;
}

template <typename scalar_t, typename ptr_t>
void launch_viterbi(DecodeOp op, const at::Tensor& unary, const at::Tensor& trans,
                    const c10::optional<at::Tensor>& lengths,
                    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end,
                    const at::Tensor& gold, const at::Tensor& cost, at::Tensor& energy,
                    at::Tensor* delta, at::Tensor& tags) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto a = decode_args<scalar_t>(op, unary, trans, lengths, start, end);
  const auto lay = decode_layout(a.T, a.K, sizeof(acc_t), sizeof(ptr_t), cost.defined(),
                                 max_dynamic_shared_bytes());
  at::Tensor backptr;  // only where a warp's backpointers do not fit in shared memory
  if (!lay.ptr_shared) {
    backptr = at::empty({a.B, std::max<int64_t>(a.T - 1, 1), a.K},
                        unary.options().dtype(c10::CppTypeToScalarType<ptr_t>::value));
  }
  Cost<scalar_t, acc_t> c{};
  if (cost.defined()) {
    c.global = cost.data_ptr<scalar_t>();
    c.si = cost.stride(0);
    c.sj = cost.stride(1);
  }
  const auto blocks = static_cast<unsigned>((a.B + lay.warps - 1) / lay.warps);
  launch_kernel<viterbi_kernel<scalar_t, acc_t, ptr_t>>(
      blocks, lay.warps * 32, lay.bytes(), a, lay,
      gold.defined() ? gold.data_ptr<int64_t>() : nullptr, gold.defined() ? gold.stride(0) : 0,
      gold.defined() ? gold.stride(1) : 0, c,
      backptr.defined() ? static_cast<ptr_t*>(backptr.data_ptr()) : nullptr,
      energy.data_ptr<scalar_t>(), delta ? delta->data_ptr<scalar_t>() : nullptr,
      tags.data_ptr<int64_t>());
}

template <typename scalar_t>
void decode_cuda(DecodeOp op, const at::Tensor& unary, const at::Tensor& trans,
                 const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& start,
                 const c10::optional<at::Tensor>& end, const at::Tensor& gold,
                 const at::Tensor& cost, at::Tensor& energy, at::Tensor* delta, at::Tensor& tags) {
  const int64_t K = unary.size(2);
  if (K <= 256) {
    launch_viterbi<scalar_t, uint8_t>(op, unary, trans, lengths, start, end, gold, cost, energy, delta, tags);
  } else if (K <= 32767) {
    launch_viterbi<scalar_t, int16_t>(op, unary, trans, lengths, start, end, gold, cost, energy, delta, tags);
  } else {
    launch_viterbi<scalar_t, int32_t>(op, unary, trans, lengths, start, end, gold, cost, energy, delta, tags);
  }
}

// A warp's beta, w and at least one position of unary: K is bounded by the device.
void check_decode_tags(const char* op, const at::Tensor& unary) {
  check_shared_tags(op, unary.size(2), 3 * c10::elementSize(at::toOpMathType(unary.scalar_type())));
}

std::tuple<at::Tensor, at::Tensor> viterbi_cuda(const at::Tensor& unary, const at::Tensor& trans,
                                                const c10::optional<at::Tensor>& lengths,
                                                const c10::optional<at::Tensor>& start,
                                                const c10::optional<at::Tensor>& end) {
  const auto d = check_chain_inputs("viterbi", unary, trans, lengths, start, end,
                                    ValueChecks::Device);
  if (general_chain(trans, start, end)) return cuda_edge::viterbi(unary, trans, lengths, start, end);
  const DeviceGuard guard(unary.device());
  auto energy = at::empty({d.B}, unary.options());
  auto tags = at::empty({d.B, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, tags};
  check_decode_tags("viterbi", unary);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "viterbi_cuda", [&] {
    decode_cuda<scalar_t>(kViterbi, unary, trans, lengths, start, end, at::Tensor(),
                          at::Tensor(), energy, nullptr, tags);
  });
  return {energy, tags};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_augmented_viterbi_cuda(
    const at::Tensor& unary, const at::Tensor& trans, const at::Tensor& gold,
    const at::Tensor& cost, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& start, const c10::optional<at::Tensor>& end) {
  const auto d = check_loss_augmented_inputs(unary, trans, gold, cost, lengths, start, end,
                                             ValueChecks::Device);
  if (general_chain(trans, start, end))
    return cuda_edge::loss_augmented_viterbi(unary, trans, gold, cost, lengths, start, end);
  const DeviceGuard guard(unary.device());
  auto energy = at::empty({d.B}, unary.options());
  auto delta = at::empty({d.B}, unary.options());
  auto tags = at::empty({d.B, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, delta, tags};
  check_decode_tags("loss_augmented_viterbi", unary);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "loss_augmented_viterbi_cuda", [&] {
    decode_cuda<scalar_t>(kLossAugmented, unary, trans, lengths, start, end, gold, cost, energy,
                          &delta, tags);
  });
  return {energy, delta, tags};
}

std::tuple<at::Tensor, at::Tensor> viterbi_kbest_cuda(const at::Tensor& unary,
                                                      const at::Tensor& trans, int64_t k,
                                                      const c10::optional<at::Tensor>& lengths,
                                                      const c10::optional<at::Tensor>& start,
                                                      const c10::optional<at::Tensor>& end) {
  const char* op = "viterbi_kbest";
  check_kbest_k(op, k);
  const auto d = check_chain_inputs(op, unary, trans, lengths, start, end,
                                    ValueChecks::Device);
  check_kbest_size(op, k, d, /*cuda=*/true);
  if (general_chain(trans, start, end))
    return cuda_edge::viterbi_kbest(unary, trans, k, lengths, start, end);
  const DeviceGuard guard(unary.device());
  auto energy = at::empty({d.B, k}, unary.options());
  auto tags = at::empty({d.B, k, d.T}, unary.options().dtype(at::kLong));
  if (d.B == 0) return {energy, tags};
  // Shared memory holds beta and w (k K values each) and the final list (k values, k codes).
  const size_t value = c10::elementSize(at::toOpMathType(unary.scalar_type()));
  const size_t most = max_dynamic_shared_bytes(), per_rank = value + sizeof(int32_t);
  TORCH_CHECK(2 * k * d.K * value + k * per_rank <= most, op, ": k * K must be at most ",
              most > k * per_rank ? (most - k * per_rank) / (2 * value) : 0,
              " on this CUDA device (", most, " bytes of shared memory per block), got k * K = ",
              k * d.K);
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "viterbi_kbest_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t lists = round16(2 * k * d.K * sizeof(acc_t) + k * per_rank);
    const size_t matrix = size_t(d.K) * d.K * sizeof(acc_t);
    const bool trans_shared = matrix <= kStagedMatrixBytes && matrix + lists <= most;
    const size_t base = lists + (trans_shared ? matrix : 0);
    const size_t ptr_bytes = size_t(std::max<int64_t>(d.T - 1, 1)) * k * d.K * sizeof(int32_t);
    const bool ptr_shared = ptr_bytes <= kKBestPtrBytes && base + ptr_bytes <= most;
    at::Tensor backptr;  // only where the lists' back-pointers do not fit in shared memory
    if (!ptr_shared) {
      backptr = at::empty({d.B, std::max<int64_t>(d.T - 1, 1), k, d.K},
                          unary.options().dtype(at::kInt));
    }
    launch_kernel<kbest_kernel<scalar_t, acc_t>>(
        d.B, threads_for(d.K), base + (ptr_shared ? ptr_bytes : 0),
        decode_args<scalar_t>(kKBest, unary, trans, lengths, start, end), static_cast<int>(k),
        trans_shared, ptr_shared, backptr.defined() ? backptr.data_ptr<int32_t>() : nullptr,
        energy.data_ptr<scalar_t>(), tags.data_ptr<int64_t>());
  });
  return {energy, tags};
}

at::Tensor chain_energy_cuda(const at::Tensor& unary, const at::Tensor& trans,
                             const at::Tensor& tags, const c10::optional<at::Tensor>& lengths,
                             const c10::optional<at::Tensor>& start,
                             const c10::optional<at::Tensor>& end) {
  if (check_chain_energy_inputs(unary, trans, tags, lengths, start, end, ValueChecks::Device)) {
    return relaxed_chain_energy(unary, trans, tags, lengths, start, end);
  }
  if (general_chain(trans, start, end)) return cuda_edge::energy(unary, trans, tags, lengths, start, end);
  const DeviceGuard guard(unary.device());
  auto out_shape = tags.sizes().vec();
  out_shape.pop_back();
  auto energy = at::empty(out_shape, unary.options());
  if (energy.numel() == 0) return energy;
  const auto tags_c = tags.contiguous();  // no copy for contiguous tags
  const int64_t n_paths = energy.numel();
  const int64_t C = tags.dim() == 3 ? tags.size(1) : 1;
  EBM_DISPATCH_CUDA_FLOATS(unary.scalar_type(), "chain_energy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int threads = 128;
    const auto blocks = static_cast<unsigned>((n_paths + threads - 1) / threads);
    launch_kernel<chain_energy_kernel<scalar_t, acc_t>>(
        blocks, threads, 0, decode_args<scalar_t>(kChainEnergy, unary, trans, lengths, start, end),
        tags_c.data_ptr<int64_t>(), n_paths, C, tags.dim() == 3, energy.data_ptr<scalar_t>());
  });
  return energy;
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("chain_energy", &chain_energy_cuda);
  m.impl("viterbi", &viterbi_cuda);
  m.impl("viterbi_kbest", &viterbi_kbest_cuda);
  m.impl("loss_augmented_viterbi", &loss_augmented_viterbi_cuda);
}

}  // namespace ebm_ext
