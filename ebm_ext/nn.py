"""Modules of energy-based models: for taggers, the feature network that gives unary energies,
the chain energy with its transition parameters, and the tagger that ties them to a training
criterion; for latent-variable energies, k-means and sparse coding.

Energies are lower-is-better: the feature network's output is an energy per (position, tag).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import losses
from .data import SHAPES, Batch
from .ops import (bilstm, chain_energy, kmeans_energy, nearest_centroid, packed_order, sparse_code,
                  sparse_coding_energy, viterbi)


class CharCNN(nn.Module):
    """Character embeddings, one convolution and max-pooling over the characters of a word:
    chars (..., C) character ids, 0 = padding -> (..., filters).

    The convolution is one GEMM over the unfolded character windows (nn.Conv1d's parameters,
    its arithmetic): on CPU, with 30 input channels and words of up to 20 characters, that is
    10x faster forward and backward than the convolution kernel nn.Conv1d calls."""

    def __init__(self, num_chars: int, dim: int = 30, filters: int = 50, width: int = 3):
        super().__init__()
        self.embed = nn.Embedding(num_chars, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, filters, width, padding=width // 2)
        self.out_dim = filters

    def forward(self, chars: Tensor) -> Tensor:
        C = chars.shape[-1]
        words = chars.reshape(-1, C)
        width = self.conv.kernel_size[0]
        x = F.pad(self.embed(words), (0, 0, width // 2, width // 2))  # (words, C + 2p, dim)
        windows = x.unfold(1, width, 1).flatten(2)                    # (words, C, dim * width)
        h = F.linear(windows, self.conv.weight.flatten(1), self.conv.bias)
        # In place: the GEMM's backward needs its inputs, not h.
        h = h.masked_fill_((words == 0)[:, :, None], float("-inf")).amax(dim=1)
        h = torch.where(torch.isfinite(h), h, torch.zeros_like(h))    # a word without characters
        return h.view(*chars.shape[:-1], -1)


class BiLSTM(nn.Module):
    """A bidirectional one-layer LSTM on the fused kernel ``ebm_ext.bilstm``, over packed rows:
    ``forward(input (N, I), batch_sizes)`` -> (N, 2 * hidden_size) (see ``ebm_ext.packed_order``
    for packing a padded batch). Same parameters as nn.LSTM(bidirectional=True) with the two
    directions stacked and b_ih + b_hh as one bias, initialised as nn.LSTM initialises them;
    ``from_lstm`` copies an nn.LSTM's."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        H = hidden_size
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(2, 4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(2, 4 * H, H))
        self.bias = nn.Parameter(torch.empty(2, 4 * H))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = self.hidden_size ** -0.5
        for w in (self.weight_ih, self.weight_hh, self.bias):
            w.uniform_(-bound, bound)
        self.bias.add_(torch.empty_like(self.bias).uniform_(-bound, bound))  # b_ih + b_hh

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "BiLSTM":
        if not (lstm.bidirectional and lstm.num_layers == 1 and lstm.bias
                and lstm.proj_size == 0):
            raise ValueError("BiLSTM.from_lstm: needs a one-layer bidirectional nn.LSTM with "
                             "biases and no projection")
        m = cls(lstm.input_size, lstm.hidden_size).to(lstm.weight_ih_l0)
        with torch.no_grad():
            m.weight_ih.copy_(torch.stack([lstm.weight_ih_l0, lstm.weight_ih_l0_reverse]))
            m.weight_hh.copy_(torch.stack([lstm.weight_hh_l0, lstm.weight_hh_l0_reverse]))
            m.bias.copy_(torch.stack([lstm.bias_ih_l0 + lstm.bias_hh_l0,
                                      lstm.bias_ih_l0_reverse + lstm.bias_hh_l0_reverse]))
        return m

    def forward(self, input: Tensor, batch_sizes: Tensor) -> Tensor:
        return bilstm(input, batch_sizes, self.weight_ih, self.weight_hh, self.bias)


class Dropout(nn.Dropout):
    """nn.Dropout whose mask comes from torch.rand: on CPU, 2.7x faster than the bernoulli_
    draw nn.Dropout makes (0.45 ms against 1.2 ms for 234 x 270 floats), the same in
    distribution."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * keep


def local_decode(unary: Tensor, lengths: Tensor) -> Tensor:
    """Per-position argmin of unary energies (B, T, K): tags (B, T), -1 past each length."""
    tags = unary.argmin(-1)
    T = unary.shape[1]
    return torch.where(torch.arange(T, device=tags.device) < lengths[:, None], tags, -1)


class CharBiLSTM(nn.Module):
    """Character embeddings read by a BiLSTM (the fused kernel, over the characters of all words
    at once): a word is its last left-to-right state and its first right-to-left one,
    concatenated: chars (..., C) character ids, left-aligned, 0 = padding -> (..., 2 * hidden)."""

    def __init__(self, num_chars: int, dim: int = 30, hidden: int = 50):
        super().__init__()
        self.embed = nn.Embedding(num_chars, dim, padding_idx=0)
        self.lstm = BiLSTM(dim, hidden)
        self.out_dim = 2 * hidden

    def forward(self, chars: Tensor) -> Tensor:
        C = chars.shape[-1]
        words = chars.reshape(-1, C)
        W, H = words.shape[0], self.lstm.hidden_size
        lengths = (words != 0).sum(1)
        index, batch_sizes = packed_order(lengths, C)
        index = index.to(words.device)
        h = self.lstm(self.embed(words.reshape(-1).index_select(0, index)), batch_sizes)
        row = torch.zeros(W * C, dtype=torch.long, device=words.device)
        row[index] = torch.arange(len(index), device=words.device)
        start = torch.arange(W, device=words.device) * C
        last, first = row[start + (lengths - 1).clamp(min=0)], row[start]
        out = torch.cat([h[last, :H], h[first, H:]], dim=-1)
        out = torch.where(lengths[:, None] > 0, out, torch.zeros_like(out))  # no characters
        return out.view(*chars.shape[:-1], -1)


class FeatureNetwork(nn.Module):
    """Word, suffix and word-shape embeddings + character CNN + BiLSTM -> unary energies
    (B, T, K). Everything is learnt from the training data (no pretrained vectors).

    Only the real tokens are computed: the batch is packed (``packed_order``) before the
    embeddings, so neither the character CNN, nor dropout, nor the BiLSTM sees the padding,
    and the energies are scattered back into (B, T, K) with zeros past each length."""

    def __init__(self, num_words: int, num_chars: int, num_tags: int, num_suffixes: int = 2,
                 num_prefixes: int = 2, word_dim: int = 100, char_dim: int = 30,
                 char_filters: int = 100, affix_dim: int = 30, shape_dim: int = 10,
                 hidden: int = 150, dropout: float = 0.5, word_dropout: float = 0.05,
                 unary_scale: float = 0.0, word_counts: Optional[Tensor] = None,
                 unk_alpha: float = 0.0, layers: int = 1, char_model: str = "cnn"):
        super().__init__()
        self.words = nn.Embedding(num_words, word_dim, padding_idx=0)
        self.suffixes = nn.Embedding(num_suffixes, affix_dim, padding_idx=0)
        self.prefixes = nn.Embedding(num_prefixes, affix_dim, padding_idx=0)
        self.shapes = nn.Embedding(len(SHAPES), shape_dim)
        if char_model not in ("cnn", "lstm"):
            raise ValueError(f"FeatureNetwork: char_model must be 'cnn' or 'lstm', got {char_model!r}")
        # char_filters: the width of a word's character representation either way
        self.chars = (CharCNN(num_chars, char_dim, char_filters) if char_model == "cnn"
                      else CharBiLSTM(num_chars, char_dim, char_filters // 2))
        self.dropout = Dropout(dropout)
        self.word_dropout = word_dropout
        self.unary_scale = unary_scale
        if unk_alpha > 0:
            if word_counts is None or len(word_counts) != num_words:
                raise ValueError(f"FeatureNetwork: unk_alpha needs the training count of each of "
                                 f"the {num_words} words")
            # A word seen c times is read as <unk> with probability alpha / (alpha + c): rare
            # words are trained the way unseen ones are met.
            counts = torch.as_tensor(word_counts, dtype=torch.float32)
            self.register_buffer("rare_word_dropout", unk_alpha / (unk_alpha + counts))
        else:
            self.rare_word_dropout = None
        width = word_dim + 2 * affix_dim + shape_dim + self.chars.out_dim
        self.lstm = BiLSTM(width, hidden)
        self.upper = nn.ModuleList(BiLSTM(2 * hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(2 * hidden, num_tags)

    def forward(self, batch: Batch) -> Tensor:
        B, T = batch.words.shape
        index, batch_sizes = packed_order(batch.lengths, T)
        index = index.to(batch.words.device)

        def pack(x: Tensor) -> Tensor:
            return x.reshape(B * T, *x.shape[2:]).index_select(0, index)

        words = pack(batch.words)
        if self.training and (self.word_dropout > 0 or self.rare_word_dropout is not None):
            # Replace words by <unk> at random so that the unknown embedding is learnt.
            p = torch.full(words.shape, self.word_dropout, device=words.device)
            if self.rare_word_dropout is not None:
                p = 1 - (1 - p) * (1 - self.rare_word_dropout[words])
            drop = torch.rand(words.shape, device=words.device) < p
            words = torch.where(drop & (words > 0), torch.ones_like(words), words)
        x = torch.cat([self.words(words), self.suffixes(pack(batch.suffixes)),
                       self.prefixes(pack(batch.prefixes)), self.shapes(pack(batch.shapes)),
                       self.chars(pack(batch.chars))], dim=-1)
        h = self.lstm(self.dropout(x), batch_sizes)
        for lstm in self.upper:
            h = lstm(self.dropout(h), batch_sizes)
        scores = self.out(self.dropout(h))
        if self.unary_scale > 0:
            # Standardised over the tags at every position, then scaled: the energies cannot
            # all shrink to a flat landscape, the zero of scale-free losses like the perceptron's.
            scores = self.unary_scale * F.layer_norm(scores, scores.shape[-1:])
        energies = -scores
        unary = energies.new_zeros(B * T, energies.shape[-1]).index_copy(0, index, energies)
        return unary.view(B, T, -1)


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
    decoding is the per-position argmin. ``margin`` is the margin hinge's m; the margin-rescaled
    criteria scale their cost by it (Delta = margin * cost)."""

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
        cost = self.margin * self.cost.to(unary.dtype)
        return losses.margin_rescaled_hinge(unary, c.trans, gold, cost, L,
                                            c.start, c.end)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """Tags (B, T), -1 past each length."""
        unary = self.features(batch)
        if self.criterion == "token_nll":
            return local_decode(unary, batch.lengths)
        return self.chain.decode(unary, batch.lengths)


class TaggerEnsemble(nn.Module):
    """Several EnergyTaggers as one energy, E(x, y) = (1/M) sum_m E_m(x, y). A mean of chain
    energies is the chain energy of the members' mean unary, transition, start and end
    energies, so decoding stays exact: Viterbi on the means (the per-position argmin when the
    members are feed-forward taggers)."""

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("TaggerEnsemble: needs at least one member")
        local = {m.criterion == "token_nll" for m in members}
        if len(local) > 1:
            raise ValueError("TaggerEnsemble: members must be all chain energies or all "
                             "feed-forward (token_nll) taggers")
        self.members = nn.ModuleList(members)
        self.local = local.pop()

    def energies(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ensemble's (unary (B, T, K), trans, start, end)."""
        def mean(values):
            return torch.stack(list(values)).mean(0)
        chains = [m.chain for m in self.members]
        return (mean(m.features(batch) for m in self.members), mean(c.trans for c in chains),
                mean(c.start for c in chains), mean(c.end for c in chains))

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """Tags (B, T), -1 past each length."""
        unary, trans, start, end = self.energies(batch)
        if self.local:
            return local_decode(unary, batch.lengths)
        return viterbi(unary, trans, batch.lengths, start, end)[1]


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
