// CPU kernels of bilstm and _bilstm_backward (csrc/ops/bilstm.h has the recurrence): the two
// directions run in parallel, one core each, their per-step GEMMs single-threaded inside the
// parallel region; the pointwise cell is written once over a value type that is either one
// scalar or a 64-byte register of floats (sigmoid and tanh from the kernels' vector exp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

#include "../bilstm.h"
#include "simd.h"

namespace ebm_ext {
namespace {

using FloatV = simd::Lanes<float>::V;

template <typename X, typename S>
inline X ld(const S* p) {
  if constexpr (std::is_same_v<X, S>) return *p;
  else return simd::load<X>(p);
}
template <typename X, typename S>
inline void st(S* p, const X& v) {
  if constexpr (std::is_same_v<X, S>) *p = v;
  else simd::store(p, v);
}

template <typename S>
inline S sigmoid(S x) { return S(1) / (S(1) + std::exp(-x)); }
template <typename S>
inline S tanh_(S x) { return std::tanh(x); }

// exp(-|x|) keeps the exponential's argument non-positive, where the vector exp is defined.
__attribute__((always_inline)) inline FloatV sigmoid(FloatV x) {
  const FloatV e = simd::exp_nonpositive(x < 0 ? x : -x);
  const FloatV r = 1.0f / (1.0f + e);
  return x >= 0 ? r : e * r;
}
__attribute__((always_inline)) inline FloatV tanh_(FloatV x) {
  const FloatV e = simd::exp_nonpositive(x < 0 ? 2.0f * x : -2.0f * x);
  const FloatV t = (1.0f - e) / (1.0f + e);
  return x < 0 ? -t : t;
}

// Pointers of one row of one step (one direction's columns); rec, c_prev, dh_rec, dc_in may
// be null (no predecessor, no successor).
template <typename S>
struct Row {
  S* a;            // gates: pre-activations in, activations i f g o out (forward); read (backward)
  const S* rec;    // h_prev W_hh^T (4H)
  const S* c_prev; // (H)
  S* c;            // (H)
  S* h;            // (H) forward output
  const S* dh;     // (H) gradient of the output
  const S* dh_rec; // (H) recurrent gradient of h
  S* dc;           // (H) recurrent gradient of c in (if has_next), of c_prev out (if has_prev)
  S* da;           // (4H) gate gradients out
};

template <typename X, typename S>
__attribute__((always_inline)) inline void forward_lanes(const Row<S>& w, int64_t j, int64_t H) {
  X ai = ld<X>(w.a + j), af = ld<X>(w.a + H + j), ag = ld<X>(w.a + 2 * H + j),
    ao = ld<X>(w.a + 3 * H + j);
  X c{};
  if (w.rec) {
    ai += ld<X>(w.rec + j);
    af += ld<X>(w.rec + H + j);
    ag += ld<X>(w.rec + 2 * H + j);
    ao += ld<X>(w.rec + 3 * H + j);
  }
  const X i = sigmoid(ai), f = sigmoid(af), g = tanh_(ag), o = sigmoid(ao);
  if (w.c_prev) c = f * ld<X>(w.c_prev + j);
  c += i * g;
  st(w.a + j, i);
  st(w.a + H + j, f);
  st(w.a + 2 * H + j, g);
  st(w.a + 3 * H + j, o);
  st(w.c + j, c);
  st(w.h + j, o * tanh_(c));
}

template <typename X, typename S>
__attribute__((always_inline)) inline void backward_lanes(const Row<S>& w, int64_t j, int64_t H,
                                                          bool has_next) {
  const X i = ld<X>(w.a + j), f = ld<X>(w.a + H + j), g = ld<X>(w.a + 2 * H + j),
          o = ld<X>(w.a + 3 * H + j);
  X dh = ld<X>(w.dh + j);
  if (w.dh_rec) dh += ld<X>(w.dh_rec + j);
  const X tc = tanh_(ld<X>(w.c + j));
  X dc = dh * o * (S(1) - tc * tc);
  if (has_next) dc += ld<X>(w.dc + j);
  st(w.da + j, dc * g * i * (S(1) - i));
  st(w.da + H + j, w.c_prev ? dc * ld<X>(w.c_prev + j) * f * (S(1) - f) : X{});
  st(w.da + 2 * H + j, dc * i * (S(1) - g * g));
  st(w.da + 3 * H + j, dh * tc * o * (S(1) - o));
  if (w.c_prev) st(w.dc + j, dc * f);
}

template <typename S>
void forward_row_scalar(const Row<S>& w, int64_t j0, int64_t H) {
  for (int64_t j = j0; j < H; ++j) forward_lanes<S>(w, j, H);
}
template <typename S>
void backward_row_scalar(const Row<S>& w, int64_t j0, int64_t H, bool has_next) {
  for (int64_t j = j0; j < H; ++j) backward_lanes<S>(w, j, H, has_next);
}

EBM_CLONES void forward_row(const Row<float>& w, int64_t H) {
  int64_t j = 0;
  for (; j + simd::Lanes<float>::N <= H; j += simd::Lanes<float>::N) forward_lanes<FloatV>(w, j, H);
  forward_row_scalar(w, j, H);
}
EBM_CLONES void backward_row(const Row<float>& w, int64_t H, bool has_next) {
  int64_t j = 0;
  for (; j + simd::Lanes<float>::N <= H; j += simd::Lanes<float>::N) {
    backward_lanes<FloatV>(w, j, H, has_next);
  }
  backward_row_scalar(w, j, H, has_next);
}
void forward_row(const Row<double>& w, int64_t H) { forward_row_scalar(w, 0, H); }
void backward_row(const Row<double>& w, int64_t H, bool has_next) {
  backward_row_scalar(w, 0, H, has_next);
}

// Runs f(dir) for both directions, one thread each when there are two. The ATen calls of the
// kernels run below autograd (the op's autograd is its own backward), on every worker thread.
template <typename F>
void both_directions(const F& f) {
  at::parallel_for(0, 2, 1, [&](int64_t lo, int64_t hi) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t dir = lo; dir < hi; ++dir) f(static_cast<int>(dir));
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bilstm_cpu(const at::Tensor& input,
                                                          const at::Tensor& batch_sizes,
                                                          const at::Tensor& weight_ih,
                                                          const at::Tensor& weight_hh,
                                                          const at::Tensor& bias) {
  // (plain references, not structured bindings: the lambdas below capture them)
  const auto checked = check_bilstm_inputs(input, batch_sizes, weight_ih, weight_hh, bias);
  const BiLSTMDims& d = checked.first;
  const PackedSteps& s = checked.second;
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto f = bilstm_forward_buffers(input, weight_ih, bias, d);
  if (d.N == 0) return {f.output, f.gates, f.cells};
  const int64_t H = d.H;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "bilstm_cpu", [&] {
    using S = scalar_t;
    S* gates = f.gates.data_ptr<S>();
    S* cells = f.cells.data_ptr<S>();
    S* out = f.output.data_ptr<S>();
    both_directions([&](int dir) {
      auto rec = at::empty({s.size[0], 4 * H}, input.options());
      const S* rp = rec.data_ptr<S>();
      bilstm_direction_forward(dir, s, weight_hh, f.output, rec, [&](const StepRows& st, const at::Tensor&) {
        for (int64_t r = 0; r < st.rows; ++r) {
          const int64_t row = st.offset + r;
          const bool prev = r < st.prev.rows;
          Row<S> w{};
          w.a = gates + row * 8 * H + dir * 4 * H;
          w.rec = prev ? rp + r * 4 * H : nullptr;
          w.c_prev = prev ? cells + (st.prev.offset + r) * 2 * H + dir * H : nullptr;
          w.c = cells + row * 2 * H + dir * H;
          w.h = out + row * 2 * H + dir * H;
          forward_row(w, H);
        }
      });
    });
  });
  return {f.output, f.gates, f.cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilstm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& output,
    const at::Tensor& gates, const at::Tensor& cells) {
  const auto checked = check_bilstm_backward_inputs(grad_output, input, batch_sizes, weight_ih,
                                                    weight_hh, output, gates, cells);
  const BiLSTMDims& d = checked.first;
  const PackedSteps& s = checked.second;
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto d_gates = at::empty({d.N, 8 * d.H}, input.options());
  if (d.N > 0) {
    const int64_t H = d.H;
    const auto g = grad_output.contiguous(), a = gates.contiguous(), c = cells.contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "bilstm_backward_cpu", [&] {
      using S = scalar_t;
      const S* gp = g.data_ptr<S>();
      S* ap = a.data_ptr<S>();  // read only (Row's pointers are shared with the forward)
      S* cp = c.data_ptr<S>();
      S* dap = d_gates.data_ptr<S>();
      both_directions([&](int dir) {
        auto dh_rec = at::empty({s.size[0], H}, input.options());
        auto dc_rec = at::empty({s.size[0], H}, input.options());
        const S* dhp = dh_rec.data_ptr<S>();
        S* dcp = dc_rec.data_ptr<S>();
        bilstm_direction_backward(
            dir, s, weight_hh, d_gates, dh_rec, dc_rec,
            [&](const StepRows& st, const at::Tensor&, const at::Tensor&) {
              for (int64_t r = 0; r < st.rows; ++r) {
                const int64_t row = st.offset + r;
                const bool next = r < st.next_rows;
                Row<S> w{};
                w.a = ap + row * 8 * H + dir * 4 * H;
                w.c_prev = r < st.prev.rows ? cp + (st.prev.offset + r) * 2 * H + dir * H : nullptr;
                w.c = cp + row * 2 * H + dir * H;
                w.dh = gp + row * 2 * H + dir * H;
                w.dh_rec = next ? dhp + r * H : nullptr;
                w.dc = dcp + r * H;
                w.da = dap + row * 8 * H + dir * 4 * H;
                backward_row(w, H, next);
              }
            });
      });
    });
  }
  return bilstm_backward_gemms(s, d_gates, input, weight_ih, output, d);
}

}  // namespace

TORCH_LIBRARY_IMPL(ebm_ext, CPU, m) {
  m.impl("bilstm", &bilstm_cpu);
  m.impl("_bilstm_backward", &bilstm_backward_cpu);
}

}  // namespace ebm_ext
