// Schemas of the distribution family (csrc/ops/distribution.h says what each computes). Kernels
// live in cpu/ and cuda/distribution_kernel; fake implementations and autograd in
// ebm_ext/ops/distribution.py.
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def(
      "chain_expectation(Tensor unary, Tensor trans, Tensor v_unary, Tensor? v_trans=None, "
      "Tensor? lengths=None, Tensor? start=None, Tensor? end=None, Tensor? v_start=None, "
      "Tensor? v_end=None) -> (Tensor log_z, Tensor expectation)");
  m.def(
      "_chain_covariance(Tensor weight, Tensor unary, Tensor trans, Tensor v_unary, "
      "Tensor? v_trans=None, Tensor? lengths=None, Tensor? start=None, Tensor? end=None, "
      "Tensor? v_start=None, Tensor? v_end=None) "
      "-> (Tensor c_unary, Tensor c_trans, Tensor c_start, Tensor c_end)");
  m.def(
      "chain_sample(Tensor unary, Tensor trans, Tensor noise, Tensor? lengths=None, "
      "Tensor? start=None, Tensor? end=None) -> Tensor");
}
