// Schemas of the log-partition family: log Z of the chain energy and its marginals. The backward
// of log Z is its own op (a forward-backward kernel), not autograd through a time loop.
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def(
      "chain_log_partition(Tensor unary, Tensor trans, Tensor? lengths=None, "
      "Tensor? start=None, Tensor? end=None) -> Tensor");
  m.def(
      "chain_marginals(Tensor unary, Tensor trans, Tensor? lengths=None, Tensor? start=None, "
      "Tensor? end=None) -> Tensor");
  m.def(
      "_chain_log_partition_backward(Tensor grad, Tensor unary, Tensor trans, "
      "Tensor? lengths=None, Tensor? start=None, Tensor? end=None) "
      "-> (Tensor d_unary, Tensor d_trans, Tensor d_start, Tensor d_end)");
}
