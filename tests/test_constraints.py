"""allowed_transitions: the finite-energy paths are exactly the valid ones of each scheme (by
enumeration, against sequence-level checkers written independently of the pairwise rules), and
decoding, k-best and log Z under the constraints never touch an invalid path."""
import itertools
import math

import pytest
import torch

import ebm_ext
from ebm_ext.constraints import allowed_transitions

LABELS = {
    "BIO": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "IOB1": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "BIOUL": ["O", "B-PER", "I-PER", "L-PER", "U-PER", "B-LOC", "L-LOC", "U-LOC"],
    "BMES": ["B-W", "M-W", "E-W", "S-W", "B-N", "E-N", "S-N"],
}


def _parts(label):
    return ("O", "") if label == "O" else tuple(label.split("-", 1))


def valid(scheme, labels):
    """Whether a whole label sequence is well formed, read as spans."""
    seq = [_parts(x) for x in labels]
    if scheme == "BIO":
        return all(p != "I" or (t > 0 and seq[t - 1][0] in "BI" and seq[t - 1][1] == e)
                   for t, (p, e) in enumerate(seq))
    if scheme == "IOB1":
        return all(p != "B" or (t > 0 and seq[t - 1][0] in "BI" and seq[t - 1][1] == e)
                   for t, (p, e) in enumerate(seq))
    inside, close, single = ("I", "L", "U") if scheme == "BIOUL" else ("M", "E", "S")
    open_entity = None
    for p, e in seq:
        if open_entity is None:
            if p == "B":
                open_entity = e
            elif p not in ("O", single):
                return False
        else:
            if e != open_entity or p not in (inside, close):
                return False
            if p == close:
                open_entity = None
    return open_entity is None


@pytest.mark.parametrize("scheme", sorted(LABELS))
def test_finite_paths_are_exactly_the_valid_ones(scheme):
    labels = LABELS[scheme]
    K = len(labels)
    trans, start, end = allowed_transitions(scheme, labels, dtype=torch.float64)
    for T in range(1, 5):
        paths = torch.tensor(list(itertools.product(range(K), repeat=T)))
        unary = torch.zeros(1, T, K, dtype=torch.float64)
        energy = ebm_ext.chain_energy(unary, trans, paths[None], None, start, end)[0]
        for path, e in zip(paths.tolist(), energy.tolist()):
            assert math.isfinite(e) == valid(scheme, [labels[y] for y in path]), (T, path)


@pytest.mark.parametrize("scheme", sorted(LABELS))
def test_decoding_and_partition_respect_the_constraints(scheme, device):
    labels = LABELS[scheme]
    K, T = len(labels), 4
    c_trans, c_start, c_end = allowed_transitions(scheme, labels, dtype=torch.float64, device=device)
    g = torch.Generator().manual_seed(1)
    unary = (3 * torch.randn(16, T, K, generator=g, dtype=torch.float64)).to(device)
    trans = torch.randn(K, K, generator=g, dtype=torch.float64).to(device) + c_trans
    start, end = c_start.clone(), c_end.clone()
    _, best = ebm_ext.viterbi(unary, trans, None, start, end)
    energies, kbest = ebm_ext.viterbi_kbest(unary, trans, 12, None, start, end)
    for b in range(16):
        assert valid(scheme, [labels[y] for y in best[b].tolist()])
        for r in range(12):
            if math.isfinite(energies[b, r].item()):
                assert valid(scheme, [labels[y] for y in kbest[b, r].tolist()])
    # log Z sums exactly the valid paths.
    paths = torch.tensor([p for p in itertools.product(range(K), repeat=T)
                          if valid(scheme, [labels[y] for y in p])], device=device)
    e = ebm_ext.chain_energy(unary, trans, paths[None].expand(16, -1, -1).contiguous(), None, start, end)
    torch.testing.assert_close(ebm_ext.chain_log_partition(unary, trans, None, start, end),
                               torch.logsumexp(-e, 1))


def test_bad_schemes_and_labels():
    with pytest.raises(ValueError, match="allowed_transitions: scheme must be one of BIO, IOB1, BIOUL, BMES, got 'BILOU'"):
        allowed_transitions("BILOU", ["O"])
    with pytest.raises(ValueError, match=r"allowed_transitions: label 'L-PER' is not a BIO label"):
        allowed_transitions("BIO", ["O", "L-PER"])
    with pytest.raises(ValueError, match=r"label 'O' is not a BMES label"):
        allowed_transitions("BMES", ["O", "B-W"])
    with pytest.raises(ValueError, match="labels must hold at least one label"):
        allowed_transitions("BIO", [])
