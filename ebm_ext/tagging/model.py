"""The tweet tagger's model: the feature network that gives unary energies from the encoded
tokens of ebm_ext.tagging.data, the tagger that ties them to a chain energy and a training
criterion, the ensemble that decodes with the members' mean energy, and build_tagger, which
makes one from a TaggerConfig.

Energies are lower-is-better: the feature network's output is an energy per (position, tag).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import losses
from ..checkpoint import CheckpointError, load_checkpoint
from ..nn import BiLSTM, ChainEnergy, CharBiLSTM, CharCNN, Dropout, local_decode
from ..ops import chain_kl, packed_order, viterbi
from .config import TaggerConfig
from .data import SHAPES, Batch, Vocabularies


Energies = Tuple[Tensor, Tensor, Tensor, Tensor]  # a chain energy: unary, trans, start, end

__all__ = ["FeatureNetwork", "EnergyTagger", "TaggerEnsemble", "build_features", "build_tagger",
           "load_tagger", "tagger_from_state"]


class Packing(NamedTuple):
    """Where the packed rows of a (B, T) batch sit: sentence and position of each row, and the
    batch size of each time step (the BiLSTM's packed layout)."""
    rows: Tensor
    steps: Tensor
    batch_sizes: Tensor
    B: int
    T: int


class CharEncoders(nn.Module):
    """Several character encoders side by side: their word representations concatenated."""

    def __init__(self, encoders):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.out_dim = sum(e.out_dim for e in encoders)

    def forward(self, chars: Tensor) -> Tensor:
        return torch.cat([e(chars) for e in self.encoders], dim=-1)


class FeatureNetwork(nn.Module):
    """The tagger's feature network: embeddings, character encoders and a BiLSTM, giving unary energies.

    Word, prefix, suffix and word-shape embeddings, a character encoder (CNN, BiLSTM or both)
    and a BiLSTM, then a linear layer: the unary energies (B, T, K) are minus its scores.
    Everything is learnt from the training data. Only the real tokens are computed: the batch
    is packed (``packed_order``) before the embeddings, so nothing sees the padding, and the
    energies are scattered back with zeros past each length.

    Args:
        num_words, num_chars, num_tags (int): the vocabularies' sizes and K.
        num_suffixes, num_prefixes (int): the affix vocabularies' sizes.
        word_dim, char_dim, char_filters, affix_dim, shape_dim (int): embedding widths and the
            character CNN's filters.
        hidden (int): each BiLSTM direction's state size.
        dropout (float): dropout after the embeddings and after the BiLSTM.
        word_dropout (float): the rate at which training words are read as ``<unk>``.
        unary_scale (float): > 0 standardises each sentence's unary energies to this scale.
        word_counts (Tensor, optional): training counts per word, for ``unk_alpha``.
        unk_alpha (float): a word seen c times is read as ``<unk>`` with probability
            alpha / (alpha + c).
        layers (int): stacked BiLSTMs.
        char_model (str): ``'cnn'``, ``'lstm'`` or ``'both'``.
        tag_dict (int): 1 adds a tag dictionary (``tag_counts``) as features.
        tag_counts (Tensor, optional): training counts of each tag per word.

    Shape:
        forward: a Batch -> unary energies (B, T, K).
    """

    def __init__(self, num_words: int, num_chars: int, num_tags: int, num_suffixes: int = 2,
                 num_prefixes: int = 2, word_dim: int = 100, char_dim: int = 30,
                 char_filters: int = 100, affix_dim: int = 30, shape_dim: int = 10,
                 hidden: int = 150, dropout: float = 0.5, word_dropout: float = 0.05,
                 unary_scale: float = 0.0, word_counts: Optional[Tensor] = None,
                 unk_alpha: float = 0.0, layers: int = 1, char_model: str = "cnn",
                 tag_dict: int = 0, tag_counts: Optional[Tensor] = None):
        super().__init__()
        self.words = nn.Embedding(num_words, word_dim, padding_idx=0)
        self.suffixes = nn.Embedding(num_suffixes, affix_dim, padding_idx=0)
        self.prefixes = nn.Embedding(num_prefixes, affix_dim, padding_idx=0)
        self.shapes = nn.Embedding(len(SHAPES), shape_dim)
        if char_model not in ("cnn", "lstm", "both"):
            raise ValueError(f"FeatureNetwork: char_model must be 'cnn', 'lstm' or 'both', got "
                             f"{char_model!r}")
        # char_filters: the width of a word's character representation by each encoder
        encoders = []
        if char_model in ("cnn", "both"):
            encoders.append(CharCNN(num_chars, char_dim, char_filters))
        if char_model in ("lstm", "both"):
            encoders.append(CharBiLSTM(num_chars, char_dim, char_filters // 2))
        self.chars = encoders[0] if len(encoders) == 1 else CharEncoders(encoders)
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
        if tag_dict:
            # A tag dictionary from the training split: log(1 + count) of each tag seen with the
            # word. In training each token's own tag is left out (its count minus one), so the
            # feature says what the rest of the corpus says, as it will for a test token.
            counts = (None if tag_counts is None
                      else torch.as_tensor(tag_counts, dtype=torch.float32))
            if counts is None or tuple(counts.shape) != (num_words, num_tags):
                raise ValueError(f"FeatureNetwork: tag_dict needs the training count of each of "
                                 f"the {num_tags} tags for each of the {num_words} words")
            self.register_buffer("tag_counts", counts)
        else:
            self.tag_counts = None
        width = (word_dim + 2 * affix_dim + shape_dim + self.chars.out_dim
                 + (num_tags if tag_dict else 0))
        self.lstm = BiLSTM(width, hidden)
        self.upper = nn.ModuleList(BiLSTM(2 * hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(2 * hidden, num_tags)

    def forward(self, batch: Batch) -> Tensor:
        return self.energies_of(*self.inputs(batch))

    def inputs(self, batch: Batch) -> tuple[Tensor, Packing]:
        """The BiLSTM's inputs, packed (N, width): each real token's word, affix, shape and
        character features (the word dropped to <unk> at random in training), and where each
        row sits. Adversarial training perturbs them (EnergyTagger)."""
        B, T = batch.words.shape
        index, batch_sizes = packed_order(batch.lengths, T)
        index = index.to(batch.words.device)
        # Gathered by (sentence, position) pairs rather than from a (B * T, ...) reshape: a
        # traced reshape of a symbolic B * T specialises on B == 1 or T == 1 (torch.export).
        rows, steps = index // T, index % T

        def pack(x: Tensor) -> Tensor:
            return x[rows, steps]

        words = pack(batch.words)
        if self.training and (self.word_dropout > 0 or self.rare_word_dropout is not None):
            # Replace words by <unk> at random so that the unknown embedding is learnt.
            p = torch.full(words.shape, self.word_dropout, device=words.device)
            if self.rare_word_dropout is not None:
                p = 1 - (1 - p) * (1 - self.rare_word_dropout[words])
            drop = torch.rand(words.shape, device=words.device) < p
            words = torch.where(drop & (words > 0), torch.ones_like(words), words)
        features = [self.words(words), self.suffixes(pack(batch.suffixes)),
                    self.prefixes(pack(batch.prefixes)), self.shapes(pack(batch.shapes)),
                    self.chars(pack(batch.chars))]
        if self.tag_counts is not None:
            counts = self.tag_counts[words]  # a word read as <unk> has none
            if self.training and batch.tags is not None:
                counts = (counts - F.one_hot(pack(batch.tags), counts.shape[-1])).clamp(min=0)
            features.append(torch.log1p(counts))
        return torch.cat(features, dim=-1), Packing(rows, steps, batch_sizes, B, T)

    def contextual(self, x: Tensor, packing: Packing) -> Tensor:
        """The BiLSTM's states (N, 2 * hidden) of the packed inputs."""
        h = self.lstm(self.dropout(x), packing.batch_sizes)
        for lstm in self.upper:
            h = lstm(self.dropout(h), packing.batch_sizes)
        return h

    def energies_of(self, x: Tensor, packing: Packing) -> Tensor:
        """Unary energies (B, T, K), zeros past each length, of the packed inputs."""
        scores = self.out(self.dropout(self.contextual(x, packing)))
        if self.unary_scale > 0:
            # Standardised over the tags at every position, then scaled: the energies cannot
            # all shrink to a flat landscape, the zero of scale-free losses like the perceptron's.
            scores = self.unary_scale * F.layer_norm(scores, scores.shape[-1:])
        energies = -scores
        return energies.new_zeros(packing.B, packing.T, energies.shape[-1]).index_put(
            (packing.rows, packing.steps), energies)

    def encode(self, batch: Batch) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The BiLSTM's states of the real tokens, packed (N, 2 * hidden), and the (sentence,
        position) of each: what the output layer reads (and masked-word pretraining)."""
        x, packing = self.inputs(batch)
        return self.contextual(x, packing), (packing.rows, packing.steps)


class EnergyTagger(nn.Module):
    """A tagger E(x, y): the chain energy over a feature network's unary energies.

    Trained by the criterion ``criterion`` names in ``ebm_ext.losses.CRITERIA``; a criterion
    that does not read the transitions (``token_nll``) decodes by the per-position argmin,
    the others by Viterbi.

    Args:
        features (nn.Module): maps a Batch to unary energies (B, T, K).
        num_tags (int): K.
        criterion (str): a key of ``ebm_ext.losses.CRITERIA``.
        cost (Tensor[K, K], optional): the margin-rescaled criteria's cost.
        margin (float): the margin hinge's m; the margin-rescaled criteria scale their cost by
            it.
        adversarial (float): > 0 adds the criterion at inputs moved along its gradient by
            this fraction of each sentence's input norm.
    """

    def __init__(self, features: nn.Module, num_tags: int, criterion: str = "crf_nll",
                 cost: Optional[Tensor] = None, margin: float = 1.0, adversarial: float = 0.0):
        super().__init__()
        spec = losses.criterion(criterion)
        if spec.cost is not None and cost is None:
            raise ValueError(f"criterion {criterion!r} needs a cost matrix")
        if not 0 <= adversarial < math.inf:
            raise ValueError(f"EnergyTagger: adversarial must be a finite number >= 0, got "
                             f"{adversarial}")
        if adversarial > 0 and not hasattr(features, "inputs"):
            raise ValueError("EnergyTagger: adversarial training needs a feature network with "
                             "inputs() and energies_of() (FeatureNetwork)")
        self.adversarial = adversarial
        self.features = features
        self.chain = ChainEnergy(num_tags)
        self.criterion = criterion
        self.spec = spec
        self.margin = margin
        self.register_buffer("cost", cost if cost is not None else torch.zeros(0))

    def forward(self, batch: Batch, teacher: Optional[Energies] = None,
                weight: float = 0.0) -> Tensor:
        return self.loss(batch, teacher, weight)

    def loss(self, batch: Batch, teacher: Optional[Energies] = None,
             weight: float = 0.0) -> Tensor:
        """Mean loss over the batch's sequences. With ``teacher``, the energies (unary (B, T, K),
        trans, start, end) of a chain distribution to distil (a trained ensemble's, for
        instance): (1 - weight) * the criterion + weight * the mean KL(teacher || this tagger)
        over tag sequences, exact (``ebm_ext.ops.chain_kl``)."""
        c = self.chain

        def criterion(unary: Tensor) -> Tensor:
            return self.spec.loss(unary, (c.trans, c.start, c.end), batch.tags, batch.lengths,
                                  self.margin, self.cost)

        if self.adversarial > 0 and self.training:
            x, packing = self.features.inputs(batch)
            unary = self.features.energies_of(x, packing)
            loss = criterion(unary)
            (g,) = torch.autograd.grad(loss, x, retain_graph=True)

            def sentence_norm(v: Tensor) -> Tensor:  # (N, 1): the L2 norm of each row's sentence
                squares = v.new_zeros(packing.B).index_add_(0, packing.rows, v.square().sum(-1))
                return squares.sqrt()[packing.rows, None]

            r = self.adversarial * sentence_norm(x.detach()) * g / sentence_norm(g).clamp_min(1e-12)
            loss = loss + criterion(self.features.energies_of(x + r.detach(), packing))
        else:
            unary = self.features(batch)
            loss = criterion(unary)
        if teacher is None:
            return loss
        if not self.spec.uses_chain:
            raise ValueError(f"EnergyTagger: distillation needs a chain criterion, got "
                             f"{self.criterion!r}, which does not read the transitions")
        t_unary, t_trans, t_start, t_end = teacher
        kl = chain_kl(t_unary, t_trans, unary, c.trans, batch.lengths, t_start, t_end, c.start,
                      c.end)
        return (1 - weight) * loss + weight * kl.mean()

    def energies(self, batch: Batch) -> Energies:
        """The tagger's (unary (B, T, K), trans, start, end)."""
        c = self.chain
        return self.features(batch), c.trans, c.start, c.end

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """Tags (B, T), -1 past each length."""
        unary = self.features(batch)
        if not self.spec.uses_chain:
            return local_decode(unary, batch.lengths)
        return self.chain.decode(unary, batch.lengths)


class TaggerEnsemble(nn.Module):
    """Several EnergyTaggers as one energy, E(x, y) = (1/M) sum_m E_m(x, y).

    A mean of chain energies is the chain energy of the members' mean energies, so decoding
    stays exact: Viterbi on the means (the per-position argmin for feed-forward members).

    Args:
        members (sequence of EnergyTagger): the members, over the same vocabularies.
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("TaggerEnsemble: needs at least one member")
        local = {not m.spec.uses_chain for m in members}
        if len(local) > 1:
            raise ValueError("TaggerEnsemble: members must be all chain energies or all "
                             "feed-forward (token_nll) taggers")
        self.members = nn.ModuleList(members)
        self.local = local.pop()

    def energies(self, batch: Batch) -> Energies:
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


def build_features(config: TaggerConfig, vocabs: Vocabularies) -> FeatureNetwork:
    """The feature network a configuration describes, for these vocabularies (untrained).

    The one place a network is built from options, for the taggers and the inference networks.

    Args:
        config (TaggerConfig): the options.
        vocabs (Vocabularies): the vocabularies.

    Returns:
        FeatureNetwork: the network.
    """
    config = config.resolved()
    return FeatureNetwork(len(vocabs.words), len(vocabs.chars), len(vocabs.tags),
                          num_suffixes=len(vocabs.suffixes), num_prefixes=len(vocabs.prefixes),
                          word_counts=vocabs.word_counts,
                          tag_counts=vocabs.tag_counts if config.tag_dict else None,
                          **config.network_kwargs())


def build_tagger(config: TaggerConfig, vocabs: Vocabularies) -> EnergyTagger:
    """The EnergyTagger a configuration describes, for these vocabularies (untrained).

    Args:
        config (TaggerConfig): the options (its criterion, margin and categories included).
        vocabs (Vocabularies): the vocabularies.

    Returns:
        EnergyTagger: the tagger.
    """
    config = config.resolved()
    K = len(vocabs.tags)
    features = build_features(config, vocabs)
    spec = losses.criterion(config.criterion)
    cost = losses.make_cost(spec.cost, K, config.categories)
    return EnergyTagger(features, K, config.criterion, cost=cost, margin=config.margin,
                        adversarial=config.adversarial)


def tagger_from_state(state: dict, device="cpu"):
    """The tagger a checkpoint's contents describe, with its weights.

    Args:
        state (dict): a loaded ``best.pt`` of ``tagger.py train``.
        device (str or torch.device): where to put it.

    Returns:
        tuple[EnergyTagger or TaggerEnsemble, Vocabularies]: in eval mode.
    """
    vocabs = Vocabularies.from_state(state["vocabs"])
    if "members" not in state:
        model = build_tagger(TaggerConfig.from_dict(state["config"]), vocabs)
        model.load_state_dict(state["model"])
        return model.to(device).eval(), vocabs
    members = []
    for weights, config in zip(state["members"], state["member_configs"]):
        member = build_tagger(TaggerConfig.from_dict(config), vocabs)
        member.load_state_dict(weights)
        members.append(member)
    return TaggerEnsemble(members).to(device).eval(), vocabs


def load_tagger(path, device="cpu"):
    """Loads a tagger checkpoint (``best.pt`` of ``tagger.py train``) with ``weights_only=True``.

    Args:
        path (str or os.PathLike): the checkpoint.
        device (str or torch.device): where to put the tagger.

    Returns:
        tuple[EnergyTagger or TaggerEnsemble, Vocabularies]: the tagger, in eval mode, and its
        vocabularies.

    Raises:
        ebm_ext.checkpoint.CheckpointError: the file is not a readable checkpoint, or not a
            tagger's; the message names the file.
    """
    state = load_checkpoint(path)
    try:
        return tagger_from_state(state, device)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: not a tagger checkpoint written by tagger.py train "
                              f"({what[:200]})") from e
