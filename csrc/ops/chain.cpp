// Schemas of the linear-chain ops. Kernels live in cpu/ and cuda/; autograd and fake
// implementations in ebm_ext/ops/chain.py.
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY_FRAGMENT(EBM_OP_NAMESPACE, m) {
  m.def(
      "chain_energy(Tensor unary, Tensor trans, Tensor tags, Tensor? lengths=None, "
      "Tensor? start=None, Tensor? end=None) -> Tensor");
  m.def(
      "viterbi(Tensor unary, Tensor trans, Tensor? lengths=None, Tensor? start=None, "
      "Tensor? end=None) -> (Tensor energy, Tensor tags)");
  m.def(
      "viterbi_kbest(Tensor unary, Tensor trans, int k, Tensor? lengths=None, "
      "Tensor? start=None, Tensor? end=None) -> (Tensor energy, Tensor tags)");
  m.def(
      "loss_augmented_viterbi(Tensor unary, Tensor trans, Tensor gold, Tensor cost, "
      "Tensor? lengths=None, Tensor? start=None, Tensor? end=None) "
      "-> (Tensor energy, Tensor delta, Tensor tags)");
}
