// Schema of the k-means family. Kernels live in cpu/ and cuda/; autograd and fake
// implementations (and kmeans_energy, which is nearest_centroid's distance) in
// ebm_ext/ops/kmeans.py.
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def("nearest_centroid(Tensor y, Tensor W) -> (Tensor dist2, Tensor index)");
}
