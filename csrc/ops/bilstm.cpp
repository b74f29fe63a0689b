// Schemas of the bilstm family (csrc/ops/bilstm.h says what they compute). Kernels live in
// cpu/ and cuda/; the fake implementations and autograd in ebm_ext/ops/bilstm.py. `gates` and
// `cells` are the forward's saved activations, inputs of the backward only.
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def(
      "bilstm(Tensor input, Tensor batch_sizes, Tensor weight_ih, Tensor weight_hh, "
      "Tensor bias) -> (Tensor output, Tensor gates, Tensor cells)");
  m.def(
      "_bilstm_backward(Tensor grad_output, Tensor input, Tensor batch_sizes, "
      "Tensor weight_ih, Tensor weight_hh, Tensor output, Tensor gates, Tensor cells) "
      "-> (Tensor d_input, Tensor d_weight_ih, Tensor d_weight_hh, Tensor d_bias)");
}
