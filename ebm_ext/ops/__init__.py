"""Public wrappers of the ebm_ext custom ops, with their fake and autograd implementations."""
from .chain import chain_energy, loss_augmented_viterbi, viterbi, viterbi_kbest
from .partition import chain_log_partition, chain_marginals
from .simplex import project_simplex

__all__ = ["chain_energy", "chain_log_partition", "chain_marginals", "loss_augmented_viterbi",
           "project_simplex", "viterbi", "viterbi_kbest"]
