// Schema of project_simplex: Euclidean projection of the last dimension onto the simplex.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ebm_ext, m) {
  m.def("project_simplex(Tensor v) -> Tensor");
}
