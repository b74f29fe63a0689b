// Schemas of the sparse-coding family, and its two composites. sparse_code has CPU and CUDA
// kernels (cpu/, cuda/); its fake implementation and the autograd rules are in
// ebm_ext/ops/sparse_coding.py.
//
// The composites need no kernel of their own, so each is registered once, for every backend:
// - sparse_coding_lipschitz (ATen power iteration): CompositeExplicitAutograd, with its
//   "not differentiable" rule registered in Python;
// - sparse_coding_energy: CompositeImplicitAutograd. The codes come from sparse_code on detached
//   inputs (an argmin: a constant), and autograd differentiates the energy at them, which is
//   the envelope theorem's gradient, dF/dy = 2 (y - D z*), dF/dD = -2 (y - D z*) z*^T.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include "sparse_coding.h"

namespace ebm_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> sparse_coding_energy_composite(
    const at::Tensor& y, const at::Tensor& D, double lam, int64_t max_iter, double tol,
    c10::string_view method, bool nonneg, const c10::optional<at::Tensor>& z0,
    const c10::optional<at::Tensor>& lipschitz, int64_t check_every) {
  static const auto sparse_code =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow(C10_STRINGIZE(EBM_OP_NAMESPACE) "::sparse_code", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, double, int64_t, double, c10::string_view,
              bool, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, int64_t)>();
  check_defined("sparse_coding_energy", "y", y);
  check_defined("sparse_coding_energy", "D", D);
  const auto z = std::get<0>(sparse_code.call(y.detach(), D.detach(), lam, max_iter, tol, method,
                                              nonneg, z0, lipschitz, check_every));
  const auto residual = y - at::mm(z, D.t());
  return {residual.square().sum(1) + lam * z.abs().sum(1), z};
}

}  // namespace
}  // namespace ebm_ext

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def(
      "sparse_code(Tensor y, Tensor D, float lam, int max_iter=1000, float tol=1e-4, "
      "str method=\"fista\", bool nonneg=False, Tensor? z0=None, Tensor? lipschitz=None, "
      "int check_every=10) -> (Tensor z, Tensor gap, Tensor iterations)");
  m.def(
      "sparse_coding_energy(Tensor y, Tensor D, float lam, int max_iter=1000, float tol=1e-4, "
      "str method=\"fista\", bool nonneg=False, Tensor? z0=None, Tensor? lipschitz=None, "
      "int check_every=10) -> (Tensor energy, Tensor z)");
  m.def("sparse_coding_lipschitz(Tensor D) -> Tensor");
}

TORCH_LIBRARY_IMPL(EBM_OP_NAMESPACE, CompositeImplicitAutograd, m) {
  m.impl("sparse_coding_energy", &ebm_ext::sparse_coding_energy_composite);
}

TORCH_LIBRARY_IMPL(EBM_OP_NAMESPACE, CompositeExplicitAutograd, m) {
  m.impl("sparse_coding_lipschitz", &ebm_ext::sparse_coding_lipschitz_aten);
}
