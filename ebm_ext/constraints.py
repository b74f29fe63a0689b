"""Constrained transitions for span-tagging schemes: which tag may follow which, which may start
and which may end a sequence, as energies (0 allowed, +inf forbidden) to add to a chain energy's
trans/start/end, so that training (log Z, losses) and decoding alike never give mass to, or
return, an invalid sequence.

The rules are AllenNLP's ``allowed_transitions`` (allennlp.modules.conditional_random_field),
which we learnt from and rewrote; there they constrain decoding only.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

SCHEMES = {
    "BIO": ("B", "I", "O"),
    "IOB1": ("B", "I", "O"),
    "BIOUL": ("B", "I", "O", "U", "L"),
    "BMES": ("B", "M", "E", "S"),
}


def _split(scheme: str, label: str) -> Tuple[str, str]:
    if label == "O":
        prefix, entity = "O", ""
    else:
        prefix, _, entity = label.partition("-")
        if not entity:
            prefix = ""
    if prefix not in SCHEMES[scheme]:
        raise ValueError(f"allowed_transitions: label {label!r} is not a {scheme} label (expected "
                         f"'O' or one of the prefixes {', '.join(p for p in SCHEMES[scheme] if p != 'O')} "
                         f"followed by '-' and an entity type)")
    return prefix, entity


def _may_start(scheme: str, prefix: str) -> bool:
    return prefix in {"BIO": "OB", "IOB1": "OI", "BIOUL": "OBU", "BMES": "BS"}[scheme]


def _may_end(scheme: str, prefix: str) -> bool:
    return prefix in {"BIO": "OBI", "IOB1": "OBI", "BIOUL": "OLU", "BMES": "ES"}[scheme]


def _may_follow(scheme: str, a: str, ea: str, b: str, eb: str) -> bool:
    """Whether tag (b, eb) may come right after tag (a, ea)."""
    same = ea == eb
    if scheme == "BIO":
        return b in "OB" or (b == "I" and a in "BI" and same)
    if scheme == "IOB1":
        return b in "OI" or (b == "B" and a in "BI" and same)
    if scheme == "BIOUL":
        return (a in "OLU" and b in "OBU") or (a in "BI" and b in "IL" and same)
    # BMES
    return ((a in "ES" and b in "BS") or (b == "M" and a in "BM" and same)
            or (b == "E" and a in "BM" and same))


def allowed_transitions(scheme: str, labels: Sequence[str], dtype=torch.float32,
                        device=None) -> Tuple[Tensor, Tensor, Tensor]:
    """Constraint energies of a tagging scheme: 0 where a move is allowed, +inf where forbidden.

    ``trans[i, j]`` is the energy of tag i followed by tag j, as in the chain ops. Add the
    three tensors to a model's energies (or pass them to ``CRF(..., constraints=...)``); every
    op then treats the forbidden moves as impossible: viterbi and k-best never return them, log
    Z and the marginals give them no mass. They are AllenNLP's rules.

    Args:
        scheme (str): ``'BIO'``, ``'IOB1'``, ``'BIOUL'`` or ``'BMES'``.
        labels (sequence of str): the tag names, index = tag id (``'O'``, ``'B-PER'``, ...).
        dtype (torch.dtype): the energies' dtype.
        device (torch.device, optional): their device.

    Returns:
        tuple[Tensor[K, K], Tensor[K], Tensor[K]]: ``(trans, start, end)``.

    Raises:
        ValueError: an unknown scheme, or a label that the scheme cannot read.

    Example:
        >>> trans, start, end = ebm_ext.allowed_transitions("BIO", ["O", "B-PER", "I-PER"])
        >>> trans
        tensor([[0., 0., inf],
                [0., 0., 0.],
                [0., 0., 0.]])
        >>> start
        tensor([0., 0., inf])
    """
    if scheme not in SCHEMES:
        raise ValueError(f"allowed_transitions: scheme must be one of {', '.join(SCHEMES)}, "
                         f"got {scheme!r}")
    if len(labels) == 0:
        raise ValueError("allowed_transitions: labels must hold at least one label, got none")
    parts = [_split(scheme, label) for label in labels]
    K, inf = len(labels), math.inf
    trans = [[0.0 if _may_follow(scheme, a, ea, b, eb) else inf for b, eb in parts]
             for a, ea in parts]
    start = [0.0 if _may_start(scheme, p) else inf for p, _ in parts]
    end = [0.0 if _may_end(scheme, p) else inf for p, _ in parts]
    make = lambda x: torch.tensor(x, dtype=dtype, device=device)  # noqa: E731
    out = make(trans).view(K, K), make(start), make(end)
    return out
