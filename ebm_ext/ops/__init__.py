"""Public wrappers of the ebm_ext custom ops, with their fake and autograd implementations."""
from .chain import chain_energy, loss_augmented_viterbi, viterbi, viterbi_kbest

__all__ = ["chain_energy", "loss_augmented_viterbi", "viterbi", "viterbi_kbest"]
