"""The libraries users pick today, fed the same chain energies as ebm_ext.

Scores are minus energies: pytorch-crf and torch-struct maximise scores.
"""
import torch


def torch_struct_potentials(unary, trans, start=None, end=None, lengths=None):
    """torch-struct's LinearChainCRF log-potentials phi[b, n, z_{n+1}, z_n] (B, T-1, K, K); the
    end energy sits on each sequence's last edge (lengths >= 2)."""
    B, T, K = unary.shape
    score = -unary
    phi = (-trans.t())[None, None] + score[:, 1:, :, None]  # [b, n, next, prev]
    first = score[:, 0] - (start if start is not None else 0)
    phi[:, 0] += first[:, None, :]
    if end is not None:
        last = (lengths - 2) if lengths is not None else torch.full((B,), T - 2)
        phi[torch.arange(B), last] -= end[None, :, None]
    return phi


def torch_struct_crf(unary, trans, start=None, end=None, lengths=None):
    from torch_struct import LinearChainCRF
    return LinearChainCRF(torch_struct_potentials(unary, trans, start, end, lengths),
                          lengths=lengths)


def pytorch_crf_layer(trans, start=None, end=None):
    """A torchcrf.CRF layer whose parameters are the (negated) chain energies."""
    from torchcrf import CRF
    K = trans.shape[0]
    crf = CRF(K, batch_first=True).to(trans.device, trans.dtype)
    with torch.no_grad():
        crf.transitions.copy_(-trans)
        crf.start_transitions.copy_(-start if start is not None else torch.zeros(K))
        crf.end_transitions.copy_(-end if end is not None else torch.zeros(K))
    return crf
