// Schemas of the sparse-coding family. Kernels live in cpu/ and cuda/; autograd and fake
// implementations in ebm_ext/ops/sparse_coding.py.
#include <torch/library.h>

#include "backend.h"

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
