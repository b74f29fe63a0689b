// Schema of project_simplex: Euclidean projection of the last dimension onto the simplex.
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def("project_simplex(Tensor v) -> Tensor");
}
