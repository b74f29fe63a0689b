"""Public wrappers of the ebm_ext custom ops, with their fake and autograd implementations."""
from .bilstm import bilstm, packed_order
from .chain import chain_energy, loss_augmented_viterbi, viterbi, viterbi_kbest
from .kmeans import kmeans_energy, nearest_centroid
from .relaxed_inference import chain_relaxed_inference
from .distribution import (chain_cross_entropy, chain_entropy, chain_expectation, chain_kl,
                           chain_sample)
from .partition import chain_log_partition, chain_marginals
from .simplex import project_simplex
from .sparse_coding import sparse_code, sparse_coding_energy, sparse_coding_lipschitz

__all__ = ["bilstm", "packed_order", "chain_energy", "chain_relaxed_inference", "chain_log_partition", "chain_marginals",
           "chain_cross_entropy", "chain_entropy", "chain_expectation", "chain_kl", "chain_sample", "kmeans_energy",
           "loss_augmented_viterbi", "nearest_centroid", "project_simplex", "sparse_code",
           "sparse_coding_energy", "sparse_coding_lipschitz", "viterbi", "viterbi_kbest"]
