// Every kernel of csrc/ops/cuda, through its emulated op (ebm_ext_emu::<op> on CPU tensors), on
// shapes that reach each of its paths: lengths 0 and 1, K of one tag, of a partial warp, of
// several passes per thread (K > 256, 16-bit backpointers), shared-memory layouts with and
// without transitions staged, opted-in dynamic shared memory above 48 KiB, float64, half and
// bfloat16. Built under AddressSanitizer + UBSan (compute-sanitizer's memcheck) and under
// ThreadSanitizer (its racecheck); a report fails the ctest. Values are compared with the CPU
// kernels by the Python tests; here every op must run and give finite results where the inputs
// are finite.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

int failures = 0;
int calls = 0;

std::vector<c10::IValue> call(const std::string& name, std::vector<c10::IValue> args) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(("ebm_ext_emu::" + name).c_str(), "");
  std::vector<c10::IValue> stack(std::move(args));
  op.callBoxed(&stack);
  ++calls;
  return stack;
}

void expect_finite(const std::string& what, const std::vector<c10::IValue>& outputs) {
  for (const auto& v : outputs) {
    if (v.isTensor() && v.toTensor().is_floating_point() &&
        !v.toTensor().to(at::kDouble).isfinite().all().item<bool>()) {
      std::printf("FAIL: %s gave a non-finite output\n", what.c_str());
      ++failures;
    }
  }
}

void run(const std::string& what, const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string message = e.what();
    std::printf("FAIL: %s threw: %s\n", what.c_str(), message.substr(0, message.find('\n')).c_str());
    ++failures;
  }
}

struct Chain {
  at::Tensor unary, trans, lengths, start, end, gold, cost;
};

// The parameters: one (K, K) matrix with (K,) start and end, or (the general chains' kernels) a
// matrix per sequence or per move with start and end per sequence.
enum class Form { Shared, PerSequence, PerMove };

Chain chain(int64_t B, int64_t T, int64_t K, at::ScalarType dtype, Form form = Form::Shared) {
  const auto f = at::TensorOptions().dtype(at::kFloat);
  Chain c;
  c.unary = at::randn({B, T, K}, f).to(dtype);
  c.trans = (form == Form::Shared        ? at::randn({K, K}, f)
             : form == Form::PerSequence ? at::randn({B, K, K}, f)
                                         : at::randn({B, std::max<int64_t>(T - 1, 0), K, K}, f))
                .to(dtype);
  const std::vector<int64_t> ends = form == Form::Shared ? std::vector<int64_t>{K}
                                                         : std::vector<int64_t>{B, K};
  c.start = at::randn(ends, f).to(dtype);
  c.end = at::randn(ends, f).to(dtype);
  std::vector<int64_t> L(B);
  for (int64_t b = 0; b < B; ++b) L[b] = b == 1 ? 0 : b == 2 ? 1 : T - b % 2;
  for (auto& l : L) l = std::max<int64_t>(0, std::min(l, T));
  c.lengths = at::tensor(L, at::kLong);
  c.gold = at::randint(K, {B, T}, at::kLong);
  c.cost = (1 - at::eye(K, f)).to(dtype);
  return c;
}

void chain_ops(int64_t B, int64_t T, int64_t K, at::ScalarType dtype, bool params,
               Form form = Form::Shared) {
  const Chain c = chain(B, T, K, dtype, form);
  const c10::IValue L(c.lengths), s = params ? c10::IValue(c.start) : c10::IValue(),
                     e = params ? c10::IValue(c.end) : c10::IValue();
  const std::string at = " B=" + std::to_string(B) + " T=" + std::to_string(T) + " K=" +
                         std::to_string(K) + " " + c10::toString(dtype) +
                         (form == Form::PerSequence ? " per sequence"
                          : form == Form::PerMove   ? " per move"
                                                    : "");
  run("viterbi" + at, [&] { expect_finite("viterbi" + at, call("viterbi", {c.unary, c.trans, L, s, e})); });
  run("viterbi_kbest" + at, [&] {
    call("viterbi_kbest", {c.unary, c.trans, int64_t(3), L, s, e});  // missing paths are +inf
  });
  run("loss_augmented_viterbi" + at, [&] {
    expect_finite("loss_augmented_viterbi" + at,
                  call("loss_augmented_viterbi", {c.unary, c.trans, c.gold, c.cost, L, s, e}));
  });
  run("chain_energy" + at, [&] {
    expect_finite("chain_energy" + at, call("chain_energy", {c.unary, c.trans, c.gold, L, s, e}));
  });
  if (dtype == at::kFloat || dtype == at::kDouble) {
    run("chain_energy relaxed" + at, [&] {
      const auto tags = at::softmax(at::randn({B, T, K}, c.unary.options()), -1);
      expect_finite("chain_energy relaxed" + at, call("chain_energy", {c.unary, c.trans, tags, L, s, e}));
    });
  }
  run("chain_log_partition" + at, [&] {
    expect_finite("chain_log_partition" + at, call("chain_log_partition", {c.unary, c.trans, L, s, e}));
  });
  run("chain_marginals" + at, [&] {
    expect_finite("chain_marginals" + at, call("chain_marginals", {c.unary, c.trans, L, s, e}));
  });
  run("_chain_log_partition_backward" + at, [&] {
    const auto g = at::ones({B}, c.unary.options());
    expect_finite("_chain_log_partition_backward" + at,
                  call("_chain_log_partition_backward", {g, c.unary, c.trans, L, s, e}));
  });
  run("chain_expectation" + at, [&] {
    expect_finite("chain_expectation" + at,
                  call("chain_expectation", {c.unary, c.trans, c.unary, c.trans, L, s, e, s, e}));
  });
  run("_chain_covariance" + at, [&] {
    const auto g = at::ones({B}, c.unary.options());
    expect_finite("_chain_covariance" + at,
                  call("_chain_covariance", {g, c.unary, c.trans, c.unary, c.trans, L, s, e, s, e}));
  });
  run("chain_sample" + at, [&] {
    call("chain_sample", {c.unary, c.trans, at::rand({3, B, T}, at::kDouble), L, s, e});
  });
  for (const char* method : {"entropic", "projected"}) {
    run(std::string("chain_relaxed_inference ") + method + at, [&] {
      expect_finite("chain_relaxed_inference" + at,
                    call("chain_relaxed_inference",
                         {c.unary, c.trans, L, s, e, int64_t(4), 0.5, std::string(method), c10::IValue()}));
    });
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  at::set_num_threads(1);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    chain_ops(4, 5, 4, dtype, true);
    chain_ops(3, 4, 1, dtype, false);   // one tag
    chain_ops(4, 3, 40, dtype, true);   // a partial second warp
  }
  chain_ops(2, 3, 300, at::kFloat, true);  // several tags per thread, 16-bit backpointers
  chain_ops(3, 4, 8, at::kHalf, true);
  chain_ops(3, 4, 8, at::kBFloat16, true);
  // The general chains' kernels: a warp per sequence, K above one warp too.
  for (Form form : {Form::PerSequence, Form::PerMove}) {
    chain_ops(4, 5, 4, at::kDouble, true, form);
    chain_ops(3, 4, 40, at::kFloat, true, form);
    chain_ops(3, 4, 8, at::kHalf, true, form);
  }
  // Transitions too large to stage: read from global memory.
  chain_ops(1, 2, 100, at::kDouble, true);
  // Dynamic shared memory above 48 KiB (opted in): Viterbi's 2 K values, k-best's 2 k K.
  run("viterbi K=7000", [] {
    const Chain c = chain(1, 2, 7000, at::kFloat);
    expect_finite("viterbi K=7000", call("viterbi", {c.unary, c.trans, c10::IValue(), c10::IValue(), c10::IValue()}));
  });
  run("viterbi_kbest k=8 K=1000", [] {
    const Chain c = chain(1, 3, 1000, at::kFloat);
    expect_finite("viterbi_kbest k=8 K=1000",
                  call("viterbi_kbest", {c.unary, c.trans, int64_t(8), c10::IValue(), c10::IValue(), c10::IValue()}));
  });
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf}) {
    run("project_simplex", [&] {
      expect_finite("project_simplex", call("project_simplex", {at::randn({5, 7}).to(dtype)}));
    });
    run("nearest_centroid", [&] {  // partial tiles of points, centroids and depth
      expect_finite("nearest_centroid",
                    call("nearest_centroid", {at::randn({70, 20}).to(dtype), at::randn({67, 20}).to(dtype)}));
    });
  }
  for (auto dtype : {at::kFloat, at::kDouble}) {
    run("sparse_code", [&] {
      const auto D = at::randn({8, 20}).to(dtype);
      for (const char* method : {"fista", "ista"}) {
        expect_finite("sparse_code", call("sparse_code", {at::randn({3, 8}).to(dtype), D, 0.1,
                                                          int64_t(50), 1e-6, std::string(method),
                                                          false, c10::IValue(), c10::IValue(), int64_t(5)}));
      }
      expect_finite("sparse_code nonneg", call("sparse_code", {at::randn({3, 8}).to(dtype), D, 0.1,
                                                               int64_t(50), 1e-6, std::string("fista"),
                                                               true, c10::IValue(), c10::IValue(), int64_t(5)}));
    });
  }
  run("sparse_code, a warp per sample", [] {  // 17 >= 8 samples per emulated SM (2 SMs)
    const auto D = at::randn({8, 20}, at::kFloat);
    expect_finite("sparse_code warps", call("sparse_code", {at::randn({17, 8}), D, 0.1,
                                                            int64_t(30), 1e-6, std::string("fista"),
                                                            false, c10::IValue(), c10::IValue(), int64_t(5)}));
  });
  run("sparse_code, codes in global memory", [] {  // m * 8 bytes > the 32 KiB staged in shared
    const auto D = at::randn({4, 4200}, at::kDouble);
    expect_finite("sparse_code global", call("sparse_code", {at::randn({1, 4}, at::kDouble), D, 0.5,
                                                             int64_t(1), 1e-6, std::string("fista"),
                                                             false, c10::IValue(), c10::IValue(), int64_t(1)}));
  });
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf}) {
    run("bilstm", [&] {
      const int64_t H = 5, I = 3;
      const auto batch_sizes = at::tensor(std::vector<int64_t>{3, 3, 2, 1}, at::kLong);
      const auto x = at::randn({9, I}).to(dtype);
      const auto w_ih = at::randn({2, 4 * H, I}).to(dtype), w_hh = at::randn({2, 4 * H, H}).to(dtype);
      const auto bias = at::randn({2, 4 * H}).to(dtype);
      const auto out = call("bilstm", {x, batch_sizes, w_ih, w_hh, bias});
      expect_finite("bilstm", out);
      const auto g = at::randn_like(out[0].toTensor());
      expect_finite("_bilstm_backward",
                    call("_bilstm_backward", {g, x, batch_sizes, w_ih, w_hh, out[0], out[1], out[2]}));
    });
  }
  run("bilstm, several blocks per direction", [] {  // 6 sequences: 2 blocks of 4 rows
    const int64_t H = 5, I = 3;
    const auto batch_sizes = at::tensor(std::vector<int64_t>{6, 5, 3, 1}, at::kLong);
    const auto x = at::randn({15, I});
    const auto w_ih = at::randn({2, 4 * H, I}), w_hh = at::randn({2, 4 * H, H});
    const auto bias = at::randn({2, 4 * H});
    const auto out = call("bilstm", {x, batch_sizes, w_ih, w_hh, bias});
    expect_finite("bilstm blocks", out);
    const auto g = at::randn_like(out[0].toTensor());
    expect_finite("_bilstm_backward blocks",
                  call("_bilstm_backward", {g, x, batch_sizes, w_ih, w_hh, out[0], out[1], out[2]}));
  });
  std::printf("%d emulated op calls, %d failures\n", calls, failures);
  return failures == 0 ? 0 : 1;
}
