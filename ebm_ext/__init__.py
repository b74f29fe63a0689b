"""ebm_ext: energy-based models for PyTorch, with C++/CUDA kernels registered as custom ops.

Energies are LOWER IS BETTER throughout; predictions are argmins. Ops live in
``torch.ops.ebm_ext`` and are wrapped, with docstrings, in ``ebm_ext.ops``.
"""
import torch

from ._version import __version__

try:
    from . import _C  # registers the ops with the dispatcher
except ImportError as error:  # never fall back silently to slow Python
    raise ImportError(
        f"ebm_ext could not load its compiled kernels (ebm_ext._C): {error}. The running torch "
        f"is {torch.__version__} (CUDA {torch.version.cuda}); the extension must be built "
        "against this same torch. Rebuild it with: pip install --no-build-isolation .") from error

from . import losses, ops  # noqa: E402  (ops registers fake and autograd implementations)
# The public submodules are attributes, as torch's are (ebm_ext.nn.ChainEnergy without an import);
# the tagger application, ebm_ext.tagging, is imported on its own.
from . import checkpoint, cluster, inference, nn, sparse, struct  # noqa: E402
from .constraints import allowed_transitions  # noqa: E402
from .crf import CRF  # noqa: E402
from .distributions import LinearChainCRF  # noqa: E402
from .ops import (  # noqa: E402
    bilstm,
    chain_cross_entropy,
    chain_energy,
    chain_entropy,
    chain_expectation,
    chain_kl,
    chain_log_partition,
    chain_marginals,
    chain_relaxed_inference,
    chain_sample,
    kmeans_energy,
    loss_augmented_viterbi,
    nearest_centroid,
    packed_order,
    project_simplex,
    sparse_code,
    sparse_coding_energy,
    sparse_coding_lipschitz,
    viterbi,
    viterbi_kbest,
)


def build_info() -> dict:
    """What this build of the extension contains.

    Returns:
        dict: ``cuda`` (bool), whether the CUDA kernels were compiled in; ``torch_version``
        (str), the torch the extension was compiled against; ``cpu_ops`` and ``cuda_ops``
        (lists of str), the ops (and backward ops) with a CPU and a CUDA kernel.

    Example:
        >>> info = ebm_ext.build_info()
        >>> sorted(info)
        ['cpu_ops', 'cuda', 'cuda_ops', 'torch_version']
        >>> "viterbi" in info["cpu_ops"]
        True
    """
    return dict(_C.build_info())


__all__ = [
    "__version__",
    "build_info",
    "checkpoint",
    "cluster",
    "inference",
    "losses",
    "nn",
    "sparse",
    "bilstm",
    "packed_order",
    "CRF",
    "LinearChainCRF",
    "allowed_transitions",
    "chain_cross_entropy",
    "chain_energy",
    "chain_entropy",
    "chain_expectation",
    "chain_kl",
    "chain_log_partition",
    "chain_marginals",
    "chain_relaxed_inference",
    "chain_sample",
    "kmeans_energy",
    "loss_augmented_viterbi",
    "nearest_centroid",
    "project_simplex",
    "sparse_code",
    "sparse_coding_energy",
    "sparse_coding_lipschitz",
    "viterbi",
    "viterbi_kbest",
]
