// CUDA kernels of bilstm and _bilstm_backward (csrc/ops/bilstm.h has the recurrence and its
// packed layout). The sequences of a batch are independent, so the whole recurrence of both
// directions is one launch: a block owns kRows sequences of one direction and walks every
// step itself, the recurrent product and the pointwise cell fused, with the block's barrier as
// the only synchronisation between steps (no grid-wide sync, no launch per step). The products
// with the inputs and the weight gradients stay one ATen GEMM each (bilstm.h).
//
// Forward, step t of direction d, sequence s (row = offset[t] + s, active while s < size[t]):
//   a = gates[row] (x W_ih^T + bias on entry) + h_prev W_hh[d]^T, then the cell;
// h_prev is the output row of the previous step (the input's dtype, as the CPU's GEMM reads it),
// staged in shared memory in the accumulation type; thread j forms the 4 gates of unit j for
// the block's kRows sequences (4 kRows accumulators), reading W_hh[d]^T (H, 4H) coalesced.
// Backward, steps in the reverse order: dh = grad_output[row] + d_gates[next row] W_hh[d] (the
// step that consumed this one's state), dc = ... + the carried dc * f (shared memory).
// Arithmetic in the accumulation type (float for half/bfloat16 inputs).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../bilstm.h"
#include "device.cuh"

namespace ebm_ext {
namespace {

constexpr int kRows = 4;          // sequences per block (fewer where shared memory is short)
constexpr int kMaxThreads = 256;  // threads per block: one per hidden unit, up to this

__device__ __forceinline__ int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + std::exp(-x));
}

// The packed steps on the device: size[t] then offset[t], (2T) int64.
struct Steps {
  const int64_t* size;
  const int64_t* offset;
  int64_t T;

  // Whether sequence s at step t has a state before it (direction d), and that step.
  __device__ bool has_prev(int dir, int64_t t, int64_t s) const {
    return dir == 0 ? t > 0 : t + 1 < T && s < size[t + 1];
  }
  __device__ int64_t prev_step(int dir, int64_t t) const { return dir == 0 ? t - 1 : t + 1; }
  // Whether the step after t in direction d consumed sequence s's state at t, and that step.
  __device__ bool has_next(int dir, int64_t t, int64_t s) const {
    return dir == 0 ? t + 1 < T && s < size[t + 1] : t > 0;
  }
  __device__ int64_t next_step(int dir, int64_t t) const { return dir == 0 ? t + 1 : t - 1; }
};

Steps steps_on(const at::Tensor& packed, int64_t T) {
  return {packed.data_ptr<int64_t>(), packed.data_ptr<int64_t>() + T, T};
}

// size then offset of every step, on the input's device (one small copy per call).
at::Tensor device_steps(const PackedSteps& s, const at::Tensor& like) {
  std::vector<int64_t> v(s.size);
  v.insert(v.end(), s.offset.begin(), s.offset.end());
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(like.device());
}

// grid (ceil(size[0] / rows), 2 directions), H threads up to kMaxThreads (a thread takes units
// j, j + blockDim.x, ...); dynamic shared memory: rows * H acc_t (h_prev).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void recurrence_forward_kernel(acc_t* __restrict__ gates,
                                          const acc_t* __restrict__ whhT,  // (2, H, 4H)
                                          acc_t* __restrict__ cells, scalar_t* __restrict__ output,
                                          Steps st, int64_t H, int rows) {
  EBM_DYNAMIC_SHARED(unsigned char, shared_bytes);
  acc_t* h_prev = reinterpret_cast<acc_t*>(shared_bytes);  // (rows, H)
  const int dir = blockIdx.y;
  const int64_t s0 = int64_t(blockIdx.x) * rows;
  const acc_t* w = whhT + dir * H * 4 * H;
  for (int64_t k = 0; k < st.T; ++k) {
    const int64_t t = dir == 0 ? k : st.T - 1 - k;
    const int64_t active = smaller(rows, st.size[t] - s0);  // uniform in the block
    if (active <= 0) continue;
    const bool prev = st.has_prev(dir, t, s0);  // the block's first sequence has the most steps
    int prev_rows = 0;
    if (prev) {
      const int64_t p = st.prev_step(dir, t);
      // Sequences s < size[p] continue (dir 1: those still running at t + 1).
      prev_rows = static_cast<int>(smaller(active, st.size[p] - s0));
      for (int64_t n = threadIdx.x; n < prev_rows * H; n += blockDim.x) {
        const int64_t r = n / H, j = n % H;
        h_prev[n] = static_cast<acc_t>(output[(st.offset[p] + s0 + r) * 2 * H + dir * H + j]);
      }
    }
    __syncthreads();  // h_prev staged (and the previous step's reads of it done)
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      acc_t a[kRows][4] = {};
      for (int64_t i = 0; i < (prev_rows > 0 ? H : 0); ++i) {
        const acc_t* wi = w + i * 4 * H + j;
        const acc_t w0 = wi[0], w1 = wi[H], w2 = wi[2 * H], w3 = wi[3 * H];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const acc_t h = r < prev_rows ? h_prev[r * H + i] : acc_t(0);
          a[r][0] += h * w0;
          a[r][1] += h * w1;
          a[r][2] += h * w2;
          a[r][3] += h * w3;
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {  // unrolled: a[r] stays in registers
        if (r >= active) break;
        const int64_t row = st.offset[t] + s0 + r;
        acc_t* g = gates + row * 8 * H + dir * 4 * H;
        const acc_t i = sigmoid(g[j] + a[r][0]), f = sigmoid(g[H + j] + a[r][1]),
                    gg = std::tanh(g[2 * H + j] + a[r][2]), o = sigmoid(g[3 * H + j] + a[r][3]);
        acc_t c = i * gg;
        if (r < prev_rows) {
          const int64_t prow = st.offset[st.prev_step(dir, t)] + s0 + r;
          c += f * cells[prow * 2 * H + dir * H + j];
        }
        g[j] = i;
        g[H + j] = f;
        g[2 * H + j] = gg;
        g[3 * H + j] = o;
        cells[row * 2 * H + dir * H + j] = c;
        output[row * 2 * H + dir * H + j] = static_cast<scalar_t>(o * std::tanh(c));
      }
    }
    __syncthreads();  // this step's h and c written before the next step reads them
  }
}

// grid and threads as the forward's; dynamic shared memory: rows * H acc_t (the carried dc)
// and rows * 4H acc_t (the gate gradients of the step before, in the backward's order).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void recurrence_backward_kernel(const scalar_t* __restrict__ grad_output,
                                           const acc_t* __restrict__ gates,
                                           const acc_t* __restrict__ cells,
                                           const acc_t* __restrict__ whh,  // (2, 4H, H)
                                           scalar_t* __restrict__ d_gates, Steps st, int64_t H,
                                           int rows) {
  EBM_DYNAMIC_SHARED(unsigned char, shared_bytes);
  acc_t* dc_carry = reinterpret_cast<acc_t*>(shared_bytes);  // (rows, H)
  acc_t* da_next = dc_carry + rows * H;                       // (rows, 4H)
  const int dir = blockIdx.y;
  const int64_t s0 = int64_t(blockIdx.x) * rows;
  const acc_t* w = whh + dir * 4 * H * H;
  for (int64_t k = 0; k < st.T; ++k) {
    const int64_t t = dir == 0 ? st.T - 1 - k : k;
    const int64_t active = smaller(rows, st.size[t] - s0);
    if (active <= 0) continue;
    int next_rows = 0;
    if (st.has_next(dir, t, s0)) {
      const int64_t n = st.next_step(dir, t);
      next_rows = static_cast<int>(smaller(active, st.size[n] - s0));
      for (int64_t m = threadIdx.x; m < next_rows * 4 * H; m += blockDim.x) {
        const int64_t r = m / (4 * H), c = m % (4 * H);
        da_next[m] = static_cast<acc_t>(d_gates[(st.offset[n] + s0 + r) * 8 * H + dir * 4 * H + c]);
      }
    }
    const bool prev = st.has_prev(dir, t, s0);
    const int prev_rows =
        prev ? static_cast<int>(smaller(active, st.size[st.prev_step(dir, t)] - s0)) : 0;
    __syncthreads();  // da_next staged (and the previous step's reads of it done)
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      acc_t dh_rec[kRows] = {};
      for (int64_t m = 0; m < (next_rows > 0 ? 4 * H : 0); ++m) {
        const acc_t wm = w[m * H + j];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (r < next_rows) dh_rec[r] += da_next[r * 4 * H + m] * wm;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {  // unrolled: dh_rec[r] stays in registers
        if (r >= active) break;
        const int64_t row = st.offset[t] + s0 + r;
        const acc_t* a = gates + row * 8 * H + dir * 4 * H;
        const acc_t i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
        const bool next = r < next_rows;
        acc_t dh = grad_output[row * 2 * H + dir * H + j];
        if (next) dh += dh_rec[r];
        const acc_t tc = std::tanh(cells[row * 2 * H + dir * H + j]);
        acc_t dc = dh * o * (acc_t(1) - tc * tc);
        if (next) dc += dc_carry[r * H + j];
        scalar_t* da = d_gates + row * 8 * H + dir * 4 * H;
        const bool has_prev = r < prev_rows;
        da[j] = static_cast<scalar_t>(dc * g * i * (acc_t(1) - i));
        acc_t d_forget = 0;
        if (has_prev) {
          const int64_t prow = st.offset[st.prev_step(dir, t)] + s0 + r;
          d_forget = dc * cells[prow * 2 * H + dir * H + j] * f * (acc_t(1) - f);
        }
        da[H + j] = static_cast<scalar_t>(d_forget);
        da[2 * H + j] = static_cast<scalar_t>(dc * i * (acc_t(1) - g * g));
        da[3 * H + j] = static_cast<scalar_t>(dh * tc * o * (acc_t(1) - o));
        if (has_prev) dc_carry[r * H + j] = dc * f;  // this thread's own unit: no race
      }
    }
    __syncthreads();  // this step's gate gradients written before the next step stages them
  }
}

// The launch shape shared by both kernels: kRows sequences per block, or fewer where their
// shared memory (shared_per_row bytes each) would pass the device's limit.
struct RecurrenceLaunch {
  dim3 grid, block;
  size_t shared;
  int rows;
};

RecurrenceLaunch recurrence_launch(const PackedSteps& s, int64_t H, size_t shared_per_row) {
  const int64_t threads = std::min<int64_t>(kMaxThreads, (H + 31) / 32 * 32);
  const int rows = static_cast<int>(std::clamp<size_t>(
      max_dynamic_shared_bytes() / std::max<size_t>(1, shared_per_row), 1, kRows));
  return {dim3(static_cast<unsigned>((s.size[0] + rows - 1) / rows), 2),
          dim3(static_cast<unsigned>(threads)), rows * shared_per_row, rows};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bilstm_cuda(const at::Tensor& input,
                                                           const at::Tensor& batch_sizes,
                                                           const at::Tensor& weight_ih,
                                                           const at::Tensor& weight_hh,
                                                           const at::Tensor& bias) {
  const auto checked = check_bilstm_inputs(input, batch_sizes, weight_ih, weight_hh, bias);
  const BiLSTMDims& d = checked.first;
  const PackedSteps& s = checked.second;
  const DeviceGuard guard(input.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto f = bilstm_forward_buffers(input, weight_ih, bias, d);
  if (d.N == 0) return {f.output, f.gates, f.cells};
  const auto steps = device_steps(s, input);
  // W_hh^T per direction, (2, H, 4H) in the accumulation type: thread j reads columns g H + j.
  const auto whhT = weight_hh.transpose(1, 2).to(f.gates.scalar_type()).contiguous();
  EBM_DISPATCH_CUDA_FLOATS(input.scalar_type(), "bilstm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto l = recurrence_launch(s, d.H, d.H * sizeof(acc_t));
    launch_kernel<recurrence_forward_kernel<scalar_t>>(
        l.grid, l.block, l.shared, f.gates.data_ptr<acc_t>(), whhT.data_ptr<acc_t>(),
        f.cells.data_ptr<acc_t>(), f.output.data_ptr<scalar_t>(), steps_on(steps, s.T()), d.H,
        l.rows);
  });
  return {f.output, f.gates, f.cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilstm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& output,
    const at::Tensor& gates, const at::Tensor& cells) {
  const auto checked = check_bilstm_backward_inputs(grad_output, input, batch_sizes, weight_ih,
                                                    weight_hh, output, gates, cells);
  const BiLSTMDims& d = checked.first;
  const PackedSteps& s = checked.second;
  const DeviceGuard guard(input.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto d_gates = at::empty({d.N, 8 * d.H}, input.options());
  if (d.N > 0) {
    const auto g = grad_output.contiguous(), a = gates.contiguous(), c = cells.contiguous();
    const auto steps = device_steps(s, input);
    const auto whh = weight_hh.to(a.scalar_type()).contiguous();  // (2, 4H, H)
    EBM_DISPATCH_CUDA_FLOATS(input.scalar_type(), "bilstm_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto l = recurrence_launch(s, d.H, 5 * d.H * sizeof(acc_t));
      launch_kernel<recurrence_backward_kernel<scalar_t>>(
          l.grid, l.block, l.shared, g.data_ptr<scalar_t>(), a.data_ptr<acc_t>(),
          c.data_ptr<acc_t>(), whh.data_ptr<acc_t>(), d_gates.data_ptr<scalar_t>(),
          steps_on(steps, s.T()), d.H, l.rows);
    });
  }
  return bilstm_backward_gemms(s, d_gates, input, weight_ih, output, d);
}

}  // namespace

EBM_CUDA_LIBRARY_IMPL(m) {
  m.impl("bilstm", &bilstm_cuda);
  m.impl("_bilstm_backward", &bilstm_backward_cuda);
}

}  // namespace ebm_ext
