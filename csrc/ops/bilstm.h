// bilstm: a bidirectional one-layer LSTM over packed sequences (PyTorch's PackedSequence layout:
// `input` (N, I) time-major, step t holding the batch_sizes[t] sequences still running, longest
// first). The feature network of the taggers runs on it: nn.LSTM's CPU training path is a
// dozen autograd nodes per time step, and its backward graph costs more than the arithmetic.
//
// Per direction d (0: left to right, 1: right to left), with gates in PyTorch's order i, f, g, o:
//   a_t = x_t W_ih[d]^T + bias[d] + h_prev W_hh[d]^T
//   i, f, o = sigmoid(a_i, a_f, a_o),  g = tanh(a_g),  c_t = f c_prev + i g,  h_t = o tanh(c_t)
// h_prev, c_prev are the state of the previous step (t-1 for d = 0, t+1 for d = 1), zero where
// the sequence has none. output (N, 2H) = [h_t of d = 0 | h_t of d = 1], as nn.LSTM's.
//
// The forward keeps the gate activations (N, 8H) and the cells (N, 2H) for the backward
// (_bilstm_backward), which runs the recurrence in reverse, then forms the weight gradients and
// d input with one GEMM each. This header holds the checks, the GEMMs both backends share, and
// the recurrence on ATen GEMMs step by step that the CPU kernels run with their pointwise cell;
// the CUDA kernels run the whole recurrence in one launch instead (cuda/bilstm_kernel.cu).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <string>
#include <vector>

#include "checks.h"

namespace ebm_ext {

struct BiLSTMDims {
  int64_t N, I, H;
};

// The packed layout: rows of step t are offset[t] .. offset[t] + size[t].
struct PackedSteps {
  std::vector<int64_t> size, offset;
  int64_t T() const { return static_cast<int64_t>(size.size()); }
};

inline PackedSteps check_batch_sizes(const char* op, const at::Tensor& batch_sizes, int64_t N) {
  check_defined(op, "batch_sizes", batch_sizes);
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.is_cpu(),
              op, ": batch_sizes must be a 1-D int64 CPU tensor (as in a PackedSequence), got ",
              batch_sizes.scalar_type(), " ", shape_str(batch_sizes), " on ",
              batch_sizes.device());
  const auto bs = batch_sizes.contiguous();
  const int64_t* p = bs.data_ptr<int64_t>();
  PackedSteps s;
  int64_t total = 0;
  for (int64_t t = 0; t < bs.numel(); ++t) {
    TORCH_CHECK(p[t] >= 1, op, ": batch_sizes must be >= 1, got ", p[t], " at step ", t);
    TORCH_CHECK(t == 0 || p[t] <= p[t - 1], op,
                ": batch_sizes must be non-increasing (sequences sorted by length, longest "
                "first), got ", p[t - (t > 0)], " then ", p[t], " at step ", t);
    // Checked before the sum, which could overflow int64 (and then match N by accident).
    TORCH_CHECK(p[t] <= N - total, op, ": batch_sizes must sum to input.size(0)=", N,
                ", got more: ", total, " rows before step ", t, " and ", p[t], " at it");
    s.size.push_back(p[t]);
    s.offset.push_back(total);
    total += p[t];
  }
  TORCH_CHECK(total == N, op, ": batch_sizes must sum to input.size(0)=", N, ", got ", total);
  return s;
}

inline void check_bilstm_weight(const char* op, const char* name, const at::Tensor& w,
                                const at::Tensor& input, std::vector<int64_t> shape) {
  TORCH_CHECK(w.sizes() == c10::IntArrayRef(shape), op, ": ", name, " must have shape ",
              c10::IntArrayRef(shape), ", got ", shape_str(w));
  check_like(op, name, w, "input", input);
}

// input (N, I) floating, weight_ih (2, 4H, I), weight_hh (2, 4H, H).
inline BiLSTMDims check_bilstm_weights(const char* op, const at::Tensor& input,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh) {
  check_defined(op, "input", input);
  check_defined(op, "weight_ih", weight_ih);
  check_defined(op, "weight_hh", weight_hh);
  TORCH_CHECK(input.dim() == 2, op, ": input must be a 2-D tensor (N, I) of packed rows, got shape ",
              shape_str(input));
  check_floating(op, "input", input);
  check_cpu_dtype(op, "input", input);
  TORCH_CHECK(weight_hh.dim() == 3 && weight_hh.size(0) == 2 && weight_hh.size(2) >= 1 &&
                  weight_hh.size(1) == 4 * weight_hh.size(2),
              op, ": weight_hh must have shape (2, 4H, H) with H >= 1, got ",
              shape_str(weight_hh));
  const BiLSTMDims d{input.size(0), input.size(1), weight_hh.size(2)};
  check_bilstm_weight(op, "weight_hh", weight_hh, input, {2, 4 * d.H, d.H});
  check_bilstm_weight(op, "weight_ih", weight_ih, input, {2, 4 * d.H, d.I});
  return d;
}

// bilstm's inputs: the weights as above, bias (2, 4H) (b_ih + b_hh of nn.LSTM), batch_sizes.
inline std::pair<BiLSTMDims, PackedSteps> check_bilstm_inputs(const at::Tensor& input,
                                                              const at::Tensor& batch_sizes,
                                                              const at::Tensor& weight_ih,
                                                              const at::Tensor& weight_hh,
                                                              const at::Tensor& bias) {
  constexpr const char* op = "bilstm";
  const auto d = check_bilstm_weights(op, input, weight_ih, weight_hh);
  check_bilstm_weight(op, "bias", bias, input, {2, 4 * d.H});
  return {d, check_batch_sizes(op, batch_sizes, d.N)};
}

// The state before step t in direction d comes from step t-1 (d = 0) or t+1 (d = 1); with the
// sequences sorted longest first, it exists for the first `rows` rows of step t.
struct Predecessor {
  int64_t offset, rows;
};

inline Predecessor predecessor(const PackedSteps& s, int dir, int64_t t) {
  if (dir == 0) return t > 0 ? Predecessor{s.offset[t - 1], s.size[t]} : Predecessor{0, 0};
  return t + 1 < s.T() ? Predecessor{s.offset[t + 1], s.size[t + 1]} : Predecessor{0, 0};
}

// One step of one direction for the cell kernels: rows [offset, offset + rows) of the packed
// buffers; the first prev.rows of them continue from rows [prev.offset, ...) and the rest start
// from a zero state. `next_rows`: in the backward, how many rows receive a gradient from the
// step that consumed this one's state.
struct StepRows {
  int dir;
  int64_t offset, rows;
  Predecessor prev;
  int64_t next_rows;
};

// The forward recurrence of one direction. `gates` (N, 8H) holds x W_ih^T + bias on entry and
// the activations i, f, g, o on exit; `cells`, `output` (N, 2H). `rec` is scratch of at least
// (size[0], 4H). cell(StepRows, rec) applies the pointwise cell to one step, with rec holding
// h_prev W_hh^T for its first prev.rows rows.
template <typename Cell>
void bilstm_direction_forward(int dir, const PackedSteps& s, const at::Tensor& weight_hh,
                              const at::Tensor& output, at::Tensor& rec, const Cell& cell) {
  const int64_t H = weight_hh.size(2), T = s.T();
  // W_hh^T laid out (H, 4H): BLAS multiplies the few rows of a step twice as fast by it as by
  // the transposed view of W_hh (measured, MKL, one thread).
  const auto whhT = weight_hh.select(0, dir).t().contiguous();
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = dir == 0 ? k : T - 1 - k;
    const auto prev = predecessor(s, dir, t);
    if (prev.rows > 0) {
      auto r = rec.narrow(0, 0, prev.rows);
      at::mm_out(r, output.narrow(0, prev.offset, prev.rows).narrow(1, dir * H, H), whhT);
    }
    cell(StepRows{dir, s.offset[t], s.size[t], prev, 0}, rec);
  }
}

// The backward recurrence of one direction, steps in the reverse order of the forward.
// cell(StepRows, dh_rec, dc_rec) writes the step's gate gradients into d_gates (N, 8H) and
// replaces dc_rec's first prev.rows rows with the gradient of c_prev; dh_rec's first
// next_rows rows hold the recurrent gradient of h_t on entry, and the gradient of h_prev
// (d_gates W_hh) is formed here after it.
template <typename Cell>
void bilstm_direction_backward(int dir, const PackedSteps& s, const at::Tensor& weight_hh,
                               const at::Tensor& d_gates, at::Tensor& dh_rec, at::Tensor& dc_rec,
                               const Cell& cell) {
  const int64_t H = weight_hh.size(2), T = s.T();
  const auto whh = weight_hh.select(0, dir).contiguous();
  int64_t next_rows = 0;  // rows of this step whose state the step processed before it consumed
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = dir == 0 ? T - 1 - k : k;
    const auto prev = predecessor(s, dir, t);
    cell(StepRows{dir, s.offset[t], s.size[t], prev, next_rows}, dh_rec, dc_rec);
    if (prev.rows > 0) {
      auto r = dh_rec.narrow(0, 0, prev.rows);
      at::mm_out(r, d_gates.narrow(0, s.offset[t], prev.rows).narrow(1, dir * 4 * H, 4 * H), whh);
    }
    next_rows = prev.rows;
  }
}

// The inputs of the state of each row for the weight gradient of W_hh: row p of direction d
// holds h_prev of p (zero where there is none), gathered from output (N, 2H).
inline at::Tensor bilstm_previous_states(const PackedSteps& s, const at::Tensor& output, int dir) {
  const int64_t N = output.size(0), H = output.size(1) / 2;
  std::vector<int64_t> index(N, N);  // N: the zero row appended below
  for (int64_t t = 0; t < s.T(); ++t) {
    const auto prev = predecessor(s, dir, t);
    for (int64_t r = 0; r < prev.rows; ++r) index[s.offset[t] + r] = prev.offset + r;
  }
  const auto h = at::cat({output.narrow(1, dir * H, H), output.new_zeros({1, H})});
  const auto idx = at::tensor(index, at::TensorOptions().dtype(at::kLong)).to(output.device());
  return h.index_select(0, idx);
}

// Allocates the outputs and forms x W_ih^T + bias for both directions in one GEMM; the caller
// runs the two directions' recurrences (in parallel where it can).
struct BiLSTMForward {
  at::Tensor output, gates, cells;
};

inline BiLSTMForward bilstm_forward_buffers(const at::Tensor& input, const at::Tensor& weight_ih,
                                            const at::Tensor& bias, const BiLSTMDims& d) {
  BiLSTMForward f;
  // Gates and cells in the accumulation type (float32 for half inputs, which the CUDA kernels
  // take): the recurrence's state never passes through half precision; the outputs h are the
  // input's dtype, as they feed the next step's GEMM and the caller.
  const auto acc = input.options().dtype(at::toOpMathType(input.scalar_type()));
  f.gates = at::addmm(bias.reshape({8 * d.H}).to(acc.dtype()), input.to(acc.dtype()),
                      weight_ih.reshape({8 * d.H, d.I}).to(acc.dtype()).t());
  f.output = at::empty({d.N, 2 * d.H}, input.options());
  f.cells = at::empty({d.N, 2 * d.H}, acc);
  return f;
}

// The weight and input gradients from the gate gradients d_gates (N, 8H), after the recurrences.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilstm_backward_gemms(
    const PackedSteps& s, const at::Tensor& d_gates, const at::Tensor& input,
    const at::Tensor& weight_ih, const at::Tensor& output, const BiLSTMDims& d) {
  const auto d_input = at::mm(d_gates, weight_ih.reshape({8 * d.H, d.I}));
  const auto d_weight_ih = at::mm(d_gates.t(), input).view({2, 4 * d.H, d.I});
  auto d_weight_hh = at::empty({2, 4 * d.H, d.H}, input.options());
  for (int dir = 0; dir < 2; ++dir) {
    auto out = d_weight_hh.select(0, dir);
    at::mm_out(out, d_gates.narrow(1, dir * 4 * d.H, 4 * d.H).t(),
               bilstm_previous_states(s, output, dir));
  }
  const auto d_bias = d_gates.sum(0).view({2, 4 * d.H});
  return {d_input, d_weight_ih, d_weight_hh, d_bias};
}

inline std::pair<BiLSTMDims, PackedSteps> check_bilstm_backward_inputs(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& output,
    const at::Tensor& gates, const at::Tensor& cells) {
  constexpr const char* op = "_bilstm_backward";
  const auto d = check_bilstm_weights(op, input, weight_ih, weight_hh);
  const std::vector<std::pair<const char*, const at::Tensor*>> state{
      {"grad_output", &grad_output}, {"output", &output}, {"cells", &cells}};
  for (const auto& [name, t] : state) {
    TORCH_CHECK(t->sizes() == c10::IntArrayRef({d.N, 2 * d.H}), op, ": ", name,
                " must have shape (N, 2H) = (", d.N, ", ", 2 * d.H, "), got ", shape_str(*t));
  }
  TORCH_CHECK(gates.sizes() == c10::IntArrayRef({d.N, 8 * d.H}), op,
              ": gates must have shape (N, 8H) = (", d.N, ", ", 8 * d.H, "), got ",
              shape_str(gates));
  for (const auto* t : {&grad_output, &output}) {
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(), op,
                ": output and grad_output must have input's dtype and device");
  }
  const auto acc = at::toOpMathType(input.scalar_type());
  for (const auto* t : {&cells, &gates}) {
    TORCH_CHECK(t->scalar_type() == acc && t->device() == input.device(), op,
                ": gates and cells must be in input's accumulation type (", acc,
                ") on its device, as bilstm returns them");
  }
  return {d, check_batch_sizes(op, batch_sizes, d.N)};
}

}  // namespace ebm_ext
