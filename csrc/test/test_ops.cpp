// C++ tests of the ops through the dispatcher, as a C++ user calls them: no Python involved.
// Each check compares against a brute-force enumeration of all paths.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

double path_energy(const at::Tensor& u, const at::Tensor& tr, const std::vector<int64_t>& y) {
  double e = 0;
  for (size_t t = 0; t < y.size(); ++t) {
    e += u[t][y[t]].item<double>();
    if (t > 0) e += tr[y[t - 1]][y[t]].item<double>();
  }
  return e;
}

// All paths of length T over K tags with their energies, ascending.
std::vector<std::pair<double, std::vector<int64_t>>> all_paths(const at::Tensor& u,
                                                               const at::Tensor& tr) {
  const int64_t T = u.size(0), K = u.size(1);
  std::vector<std::pair<double, std::vector<int64_t>>> out;
  std::vector<int64_t> y(T, 0);
  std::function<void(int64_t)> rec = [&](int64_t t) {
    if (t == T) {
      out.emplace_back(path_energy(u, tr, y), y);
      return;
    }
    for (int64_t k = 0; k < K; ++k) {
      y[t] = k;
      rec(t + 1);
    }
  };
  rec(0);
  std::sort(out.begin(), out.end());
  return out;
}

void test_viterbi_and_kbest() {
  torch::manual_seed(0);
  const auto unary = torch::randn({4, 5, 3}, torch::kDouble);
  const auto trans = torch::randn({3, 3}, torch::kDouble);
  const c10::optional<at::Tensor> none;
  auto [energy, tags] = op("ebm_ext::viterbi")
                            .typed<std::tuple<at::Tensor, at::Tensor>(
                                const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&)>()
                            .call(unary, trans, none, none, none);
  auto [kenergy, ktags] =
      op("ebm_ext::viterbi_kbest")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, int64_t, const c10::optional<at::Tensor>&,
              const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&)>()
          .call(unary, trans, 3, none, none, none);
  for (int64_t b = 0; b < 4; ++b) {
    const auto paths = all_paths(unary[b], trans);
    check(std::abs(energy[b].item<double>() - paths[0].first) < 1e-9, "viterbi energy");
    for (int64_t t = 0; t < 5; ++t) check(tags[b][t].item<int64_t>() == paths[0].second[t], "viterbi tags");
    for (int64_t s = 0; s < 3; ++s) {
      check(std::abs(kenergy[b][s].item<double>() - paths[s].first) < 1e-9, "k-best energies");
    }
  }
}

void test_log_partition() {
  torch::manual_seed(1);
  const auto unary = torch::randn({3, 4, 3}, torch::kDouble);
  const auto trans = torch::randn({3, 3}, torch::kDouble);
  const c10::optional<at::Tensor> none;
  const auto logz = op("ebm_ext::chain_log_partition")
                        .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                          const c10::optional<at::Tensor>&,
                                          const c10::optional<at::Tensor>&,
                                          const c10::optional<at::Tensor>&)>()
                        .call(unary, trans, none, none, none);
  for (int64_t b = 0; b < 3; ++b) {
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    const auto paths = all_paths(unary[b], trans);
    for (const auto& p : paths) m = std::max(m, -p.first);
    for (const auto& p : paths) s += std::exp(-p.first - m);
    check(std::abs(logz[b].item<double>() - (m + std::log(s))) < 1e-9, "log partition");
  }
}

void test_bad_input_message() {
  bool thrown = false;
  try {
    const c10::optional<at::Tensor> none;
    op("ebm_ext::viterbi")
        .typed<std::tuple<at::Tensor, at::Tensor>(
            const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
            const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&)>()
        .call(torch::randn({2, 3}), torch::randn({3, 3}), none, none, none);
  } catch (const c10::Error& e) {
    thrown = std::string(e.what()).find("viterbi: unary must be a 3-D tensor") != std::string::npos;
  }
  check(thrown, "bad input raises the op's message");
}

}  // namespace

int main() {
  test_viterbi_and_kbest();
  test_log_partition();
  test_bad_input_message();
  if (failures == 0) std::cout << "all C++ op tests passed\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
