"""Modules of energy-based models: for taggers, the feature network that gives unary energies,
the chain energy with its transition parameters, and the tagger that ties them to a training
criterion; for latent-variable energies, k-means and sparse coding.

Energies are lower-is-better: the feature network's output is an energy per (position, tag).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import losses
from .data import SHAPES, Batch
from .ops import (chain_energy, kmeans_energy, nearest_centroid, sparse_code, sparse_coding_energy,
                  viterbi)


class CharCNN(nn.Module):
    """Character embeddings, one convolution and max-pooling over the characters of a word."""

    def __init__(self, num_chars: int, dim: int = 30, filters: int = 50, width: int = 3):
        super().__init__()
        self.embed = nn.Embedding(num_chars, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, filters, width, padding=width // 2)
        self.out_dim = filters

    def forward(self, chars: Tensor) -> Tensor:
        B, T, C = chars.shape
        x = self.embed(chars.view(B * T, C)).transpose(1, 2)      # (BT, dim, C)
        h = self.conv(x).masked_fill((chars.view(B * T, 1, C) == 0), float("-inf"))
        h = h.amax(dim=2)
        return torch.where(torch.isfinite(h), h, torch.zeros_like(h)).view(B, T, -1)


def local_decode(unary: Tensor, lengths: Tensor) -> Tensor:
    """Per-position argmin of unary energies (B, T, K): tags (B, T), -1 past each length."""
    tags = unary.argmin(-1)
    T = unary.shape[1]
    return torch.where(torch.arange(T, device=tags.device) < lengths[:, None], tags, -1)


class FeatureNetwork(nn.Module):
    """Word, suffix and word-shape embeddings + character CNN + BiLSTM -> unary energies
    (B, T, K). Everything is learnt from the training data (no pretrained vectors)."""

    def __init__(self, num_words: int, num_chars: int, num_tags: int, num_suffixes: int = 2,
                 num_prefixes: int = 2, word_dim: int = 100, char_dim: int = 30, char_filters: int = 50,
                 affix_dim: int = 30, shape_dim: int = 10, hidden: int = 150,
                 dropout: float = 0.5, word_dropout: float = 0.0):
        super().__init__()
        self.words = nn.Embedding(num_words, word_dim, padding_idx=0)
        self.suffixes = nn.Embedding(num_suffixes, affix_dim, padding_idx=0)
        self.prefixes = nn.Embedding(num_prefixes, affix_dim, padding_idx=0)
        self.shapes = nn.Embedding(len(SHAPES), shape_dim)
        self.chars = CharCNN(num_chars, char_dim, char_filters)
        self.dropout = nn.Dropout(dropout)
        self.word_dropout = word_dropout
        width = word_dim + 2 * affix_dim + shape_dim + self.chars.out_dim
        self.lstm = nn.LSTM(width, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, num_tags)

    def forward(self, batch: Batch) -> Tensor:
        words = batch.words
        if self.training and self.word_dropout > 0:
            # Replace words by <unk> at random so that the unknown embedding is learnt.
            drop = torch.rand(words.shape, device=words.device) < self.word_dropout
            words = torch.where(drop & (words > 0), torch.ones_like(words), words)
        x = torch.cat([self.words(words), self.suffixes(batch.suffixes),
                       self.prefixes(batch.prefixes), self.shapes(batch.shapes),
                       self.chars(batch.chars)], dim=-1)
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(x), batch.lengths.cpu(),
                                                   batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=words.shape[1])
        return -self.out(self.dropout(h))  # energies: minus the scores


class ChainEnergy(nn.Module):
    """Transition, start and end energies of a linear chain over ``num_tags`` tags."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.trans = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

    def forward(self, unary: Tensor, tags: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return chain_energy(unary, self.trans, tags, lengths, self.start, self.end)

    def decode(self, unary: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return viterbi(unary, self.trans, lengths, self.start, self.end)[1]


CRITERIA = ("token_nll", "crf_nll", "perceptron", "margin", "margin_rescaled",
            "margin_rescaled_category")


class EnergyTagger(nn.Module):
    """A tagger E(x, y) = chain energy over the feature network's unary energies, trained by one
    of ``CRITERIA``. With ``token_nll`` (the feed-forward tagger) there are no transitions and
    decoding is the per-position argmin."""

    def __init__(self, features: FeatureNetwork, num_tags: int, criterion: str = "crf_nll",
                 cost: Optional[Tensor] = None, margin: float = 1.0):
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        if criterion.startswith("margin_rescaled") and cost is None:
            raise ValueError(f"criterion {criterion!r} needs a cost matrix")
        self.features = features
        self.chain = ChainEnergy(num_tags)
        self.criterion = criterion
        self.margin = margin
        self.register_buffer("cost", cost if cost is not None else torch.zeros(0))

    def forward(self, batch: Batch) -> Tensor:
        return self.loss(batch)

    def loss(self, batch: Batch) -> Tensor:
        """Mean loss over the batch's sequences."""
        unary = self.features(batch)
        gold, L = batch.tags, batch.lengths
        c = self.chain
        if self.criterion == "token_nll":
            return losses.token_nll(unary, gold, L)
        if self.criterion == "crf_nll":
            return losses.crf_nll(unary, c.trans, gold, L, c.start, c.end)
        if self.criterion == "perceptron":
            return losses.perceptron(unary, c.trans, gold, L, c.start, c.end)
        if self.criterion == "margin":
            return losses.margin_hinge(unary, c.trans, gold, self.margin, L, c.start, c.end)
        return losses.margin_rescaled_hinge(unary, c.trans, gold, self.cost.to(unary.dtype), L,
                                            c.start, c.end)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """Tags (B, T), -1 past each length."""
        unary = self.features(batch)
        if self.criterion == "token_nll":
            return local_decode(unary, batch.lengths)
        return self.chain.decode(unary, batch.lengths)


class KMeansEnergy(nn.Module):
    """K-means as an energy-based model: F(y) = min_j ||y - W_j||^2 with centroids W (k, d) as
    rows. ``forward`` gives the free energy (N,) (differentiable in y and W), ``assign`` the
    argmin (the nearest centroid's index)."""

    def __init__(self, num_centroids: int, dim: int, centroids: Optional[Tensor] = None):
        super().__init__()
        if centroids is None:
            centroids = torch.randn(num_centroids, dim)
        if tuple(centroids.shape) != (num_centroids, dim):
            raise ValueError(f"KMeansEnergy: centroids must have shape ({num_centroids}, {dim}), "
                             f"got {tuple(centroids.shape)}")
        self.W = nn.Parameter(centroids.detach().clone())

    def forward(self, y: Tensor) -> Tensor:
        return kmeans_energy(y, self.W)

    def assign(self, y: Tensor) -> Tensor:
        with torch.no_grad():
            return nearest_centroid(y, self.W)[1]


class SparseCodingEnergy(nn.Module):
    """Sparse coding as an energy-based model: E(y, z) = ||y - D z||^2 + lam ||z||_1 with a
    dictionary D (n, m) of atoms as columns. ``forward`` gives the free energy
    F(y) = min_z E(y, z), shape (B,), differentiable in y and D (envelope theorem); ``codes``
    the minimising z (B, m). ``solver`` holds sparse_code's options (max_iter, tol, method,
    nonneg, check_every)."""

    def __init__(self, n: int, m: int, lam: float, dictionary: Optional[Tensor] = None, **solver):
        super().__init__()
        if dictionary is None:
            dictionary = torch.randn(n, m)
            dictionary = dictionary / dictionary.norm(dim=0, keepdim=True)
        if tuple(dictionary.shape) != (n, m):
            raise ValueError(f"SparseCodingEnergy: dictionary must have shape ({n}, {m}), "
                             f"got {tuple(dictionary.shape)}")
        if not lam >= 0:
            raise ValueError(f"SparseCodingEnergy: lam must be >= 0, got {lam}")
        self.D = nn.Parameter(dictionary.detach().clone())
        self.lam = float(lam)
        self.solver = solver

    def forward(self, y: Tensor) -> Tensor:
        return sparse_coding_energy(y, self.D, self.lam, **self.solver)

    def codes(self, y: Tensor) -> Tensor:
        with torch.no_grad():
            return sparse_code(y, self.D, self.lam, **self.solver)

    @torch.no_grad()
    def normalise_atoms(self) -> None:
        """Rescale every atom (column of D) to unit norm: without it the L1 term is cheated by
        growing D and shrinking z."""
        self.D.div_(self.D.norm(dim=0, keepdim=True).clamp_min(1e-12))
