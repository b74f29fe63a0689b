// Schema of chain_relaxed_inference (csrc/ops/relaxed_inference.h says what it computes).
// Kernels live in cpu/ and cuda/; the fake implementation in ebm_ext/ops/relaxed_inference.py.
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def(
      "chain_relaxed_inference(Tensor unary, Tensor trans, Tensor? lengths=None, "
      "Tensor? start=None, Tensor? end=None, int steps=20, float lr=1.0, "
      "str method=\"entropic\", Tensor? init=None) -> (Tensor probs, Tensor energy)");
}
