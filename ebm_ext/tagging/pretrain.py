"""Self-supervised pretraining of the feature network on the training tweets' own text: masked
words. A fraction of the real tokens is hidden (the word, its affixes and its characters read
as unknown; its coarse shape kept), and the network's BiLSTM states must name each hidden word
from its context through a linear head, which is thrown away before tagging.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import Batch

MASK_RATE = 0.15
_UNK = 1  # the index of <unk> in every vocabulary with specials (<pad> is 0)


def mask_words(batch: Batch, rate: float = MASK_RATE,
               generator: Optional[torch.Generator] = None) -> tuple[Batch, Tensor]:
    """(the batch with the chosen tokens hidden, the chosen (B, T) mask): each real token whose
    word is known is chosen with probability ``rate``."""
    B, T = batch.words.shape
    real = torch.arange(T, device=batch.words.device) < batch.lengths[:, None]
    draw = torch.rand(B, T, generator=generator).to(batch.words.device)
    chosen = (draw < rate) & real & (batch.words > _UNK)
    chars = batch.chars.masked_fill(chosen[..., None], 0)
    chars[..., 0] = torch.where(chosen, _UNK, chars[..., 0])  # one unknown character
    hidden = dataclasses.replace(
        batch, words=batch.words.masked_fill(chosen, _UNK), chars=chars,
        suffixes=batch.suffixes.masked_fill(chosen, _UNK),
        prefixes=batch.prefixes.masked_fill(chosen, _UNK))
    return hidden, chosen


class MaskedWords(nn.Module):
    """The masked-word loss of a FeatureNetwork (``features``): the mean cross-entropy of each
    hidden word given the BiLSTM state at its position, through ``head``."""

    def __init__(self, features: nn.Module, num_words: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(features.out.in_features, num_words)

    def forward(self, batch: Batch, generator: Optional[torch.Generator] = None) -> Tensor:
        hidden, chosen = mask_words(batch, generator=generator)
        h, (rows, steps) = self.features.encode(hidden)
        pick = chosen[rows, steps]
        logits = self.head(self.features.dropout(h[pick]))
        target = batch.words[rows[pick], steps[pick]]
        if target.numel() == 0:  # nothing hidden in this batch: a zero that keeps the graph
            return h.sum() * 0.0
        return F.cross_entropy(logits, target)
