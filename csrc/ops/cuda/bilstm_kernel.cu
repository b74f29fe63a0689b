// CUDA kernels of bilstm and _bilstm_backward (csrc/ops/bilstm.h has the recurrence, on cuBLAS
// through ATen): per step, one GEMM and one launch of the pointwise cell, a thread per
// (row, hidden unit), arithmetic in the accumulation type (float for half/bfloat16 inputs).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include "../bilstm.h"
#include "device.cuh"

namespace ebm_ext {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + std::exp(-x));
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void cell_forward_kernel(acc_t* __restrict__ gates, const scalar_t* __restrict__ rec,
                                    acc_t* __restrict__ cells, scalar_t* __restrict__ output,
                                    StepRows st, int64_t H) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= st.rows * H) return;
  const int64_t r = n / H, j = n % H, row = st.offset + r;
  const bool prev = r < st.prev.rows;
  acc_t* a = gates + row * 8 * H + st.dir * 4 * H;
  acc_t ai = a[j], af = a[H + j], ag = a[2 * H + j], ao = a[3 * H + j];
  if (prev) {
    const scalar_t* rc = rec + r * 4 * H;
    ai += acc_t(rc[j]);
    af += acc_t(rc[H + j]);
    ag += acc_t(rc[2 * H + j]);
    ao += acc_t(rc[3 * H + j]);
  }
  const acc_t i = sigmoid(ai), f = sigmoid(af), g = std::tanh(ag), o = sigmoid(ao);
  acc_t c = i * g;
  if (prev) c += f * cells[(st.prev.offset + r) * 2 * H + st.dir * H + j];
  a[j] = i;
  a[H + j] = f;
  a[2 * H + j] = g;
  a[3 * H + j] = o;
  cells[row * 2 * H + st.dir * H + j] = c;
  output[row * 2 * H + st.dir * H + j] = static_cast<scalar_t>(o * std::tanh(c));
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void cell_backward_kernel(const scalar_t* __restrict__ grad_output,
                                     const acc_t* __restrict__ gates,
                                     const acc_t* __restrict__ cells,
                                     const scalar_t* __restrict__ dh_rec,
                                     acc_t* __restrict__ dc_rec, scalar_t* __restrict__ d_gates,
                                     StepRows st, int64_t H) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= st.rows * H) return;
  const int64_t r = n / H, j = n % H, row = st.offset + r;
  const bool prev = r < st.prev.rows, next = r < st.next_rows;
  const acc_t* a = gates + row * 8 * H + st.dir * 4 * H;
  const acc_t i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
  acc_t dh = grad_output[row * 2 * H + st.dir * H + j];
  if (next) dh += acc_t(dh_rec[r * H + j]);
  const acc_t tc = std::tanh(cells[row * 2 * H + st.dir * H + j]);
  acc_t dc = dh * o * (acc_t(1) - tc * tc);
  if (next) dc += dc_rec[r * H + j];
  scalar_t* da = d_gates + row * 8 * H + st.dir * 4 * H;
  da[j] = static_cast<scalar_t>(dc * g * i * (acc_t(1) - i));
  da[H + j] = static_cast<scalar_t>(
      prev ? dc * cells[(st.prev.offset + r) * 2 * H + st.dir * H + j] * f * (acc_t(1) - f)
           : acc_t(0));
  da[2 * H + j] = static_cast<scalar_t>(dc * i * (acc_t(1) - g * g));
  da[3 * H + j] = static_cast<scalar_t>(dh * tc * o * (acc_t(1) - o));
  if (prev) dc_rec[r * H + j] = dc * f;
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
  EBM_DISPATCH_CUDA_FLOATS(input.scalar_type(), "bilstm_cuda", [&] {
    for (int dir = 0; dir < 2; ++dir) {
      auto rec = at::empty({s.size[0], 4 * d.H}, input.options());
      bilstm_direction_forward(dir, s, weight_hh, f.output, rec,
                               [&](const StepRows& st, const at::Tensor& r) {
        launch_kernel<cell_forward_kernel<scalar_t>>(blocks_for(st.rows * d.H), kThreads, 0,
            f.gates.data_ptr<at::opmath_type<scalar_t>>(), r.data_ptr<scalar_t>(),
            f.cells.data_ptr<at::opmath_type<scalar_t>>(),
            f.output.data_ptr<scalar_t>(), st, d.H);
      });
    }
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
    EBM_DISPATCH_CUDA_FLOATS(input.scalar_type(), "bilstm_backward_cuda", [&] {
      for (int dir = 0; dir < 2; ++dir) {
        auto dh_rec = at::empty({s.size[0], d.H}, input.options());
        auto dc_rec = at::empty({s.size[0], d.H}, a.options());  // the cell's gradient: acc_t
        bilstm_direction_backward(
            dir, s, weight_hh, d_gates, dh_rec, dc_rec,
            [&](const StepRows& st, const at::Tensor& dh, const at::Tensor& dc) {
              launch_kernel<cell_backward_kernel<scalar_t>>(blocks_for(st.rows * d.H), kThreads, 0,
                  g.data_ptr<scalar_t>(), a.data_ptr<at::opmath_type<scalar_t>>(),
                  c.data_ptr<at::opmath_type<scalar_t>>(), dh.data_ptr<scalar_t>(),
                  dc.data_ptr<at::opmath_type<scalar_t>>(), d_gates.data_ptr<scalar_t>(),
                  st, d.H);
            });
      }
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
