"""TaggerConfig: every option of the tweet tagger's model and training, in one place.

A field is one option: its default, its help, and whether the feature network takes it
(``network=True``: passed to FeatureNetwork by name). python/tagger.py builds its command line
from the fields (``add_arguments``) and checkpoints store ``asdict`` of it, so adding an option
is one field here (and, for a network option, the FeatureNetwork parameter it feeds).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..losses import CRITERIA

CORPORA = ("ewt", "twpos")
# Which splits train, select the epoch and test (python/corpora.py's protocol_splits):
# "standard" train / dev / test; "train+dev" trains on both and selects on test (Tu and Gimpel
# 2018's protocol); "all" trains on every split of the corpus for the full schedule and selects
# nothing (Owoputi et al. 2013's final model, meant for tagging other data).
PROTOCOLS = ("standard", "train+dev", "all")
# The perceptron and the k=2 margin hinge are scale-free (the perceptron) or nearly so, and their
# gradient reaches only the positions where the rival path differs from gold, often one per
# sentence: by default they get standardised unary energies (flat energies, the perceptron's
# trivial zero, cannot be reached) and more epochs.
SPARSE = ("perceptron", "margin")
EPOCHS, SLOW_EPOCHS = 60, 200


def char_models(text: str) -> str:
    """cnn, lstm, both, or a comma-separated list of them (an ensemble's members cycle through
    it)."""
    models = text.split(",")
    if not all(m in ("cnn", "lstm", "both") for m in models):
        raise argparse.ArgumentTypeError(f"expected cnn, lstm, both or a comma-separated list "
                                         f"of them, got {text!r}")
    return text


def _option(default, help: str, network: bool = False, cli: bool = True, **argparse_kw):
    return field(default=default,
                 metadata={"help": help, "network": network, "cli": cli, **argparse_kw})


@dataclass
class TaggerConfig:
    """Every option of the tweet tagger's model and training, one field each.

    ``python python/tagger.py train --help`` lists the fields with their defaults and help (the
    command line is generated from them); checkpoints store ``as_dict()``.

    Attributes:
        corpus, protocol: the data and which splits train, select and test.
        criterion, margin, adversarial: the training criterion and its settings.
        word_dim, hidden, char_filters, dropout, word_dropout, unk_alpha, layers, tag_dict,
            char_model, unary_scale: the feature network (``network_kwargs()``).
        epochs, patience, batch_size, lr, schedule, ema, pretrain, teacher, distill, seed:
            training.
        categories: the tagset's category of each tag (the category cost), set by the program.

    Example:
        >>> from ebm_ext.tagging import TaggerConfig
        >>> TaggerConfig(hidden=64).resolved().epochs
        60
    """
    corpus: str = _option("twpos", "training corpus (its train/dev/test splits)",
                          choices=CORPORA)
    protocol: str = _option("standard", "which splits train, select the epoch and test: standard "
                            "(train, dev, test), train+dev (train on both, select on test, as "
                            "Tu and Gimpel 2018), all (train on every split for all epochs, "
                            "no selection, as Owoputi et al. 2013's final model)",
                            choices=PROTOCOLS)
    # CRF NLL: half a point above the margin-rescaled hinge on dev and test over three seeds
    # (docs/reports/accuracy.md), and the main job's criterion.
    criterion: str = _option("crf_nll", "training criterion (ebm_ext.losses.CRITERIA)",
                             choices=tuple(CRITERIA))
    epochs: Optional[int] = _option(None, f"epochs (default {EPOCHS}, {SLOW_EPOCHS} for "
                                    f"{' and '.join(SPARSE)})")
    patience: Optional[int] = _option(None, "stop after this many epochs without dev "
                                      "improvement (default: a third of the epochs)")
    batch_size: int = _option(8, "sentences per step")
    lr: float = _option(3e-3, "Adam's learning rate")
    schedule: str = _option("cosine", "learning rate over the steps of --epochs: constant, or "
                            "cosine decay to 0", choices=("constant", "cosine"))
    word_dim: int = _option(100, "word embedding width", network=True)
    hidden: int = _option(150, "BiLSTM width per direction", network=True)
    char_filters: int = _option(100, "width of a word's character representation",
                                network=True)
    dropout: float = _option(0.5, "dropout on the BiLSTM's input, between layers and before the "
                             "output", network=True)
    word_dropout: float = _option(0.05, "read a training word as <unk> with this probability",
                                  network=True)
    unk_alpha: float = _option(0.0, "read a training word seen c times as <unk> with "
                               "probability alpha / (alpha + c) (0: off)", network=True)
    layers: int = _option(1, "stacked BiLSTM layers", network=True)
    tag_dict: int = _option(0, "1: add the training split's tag counts of each word as "
                            "features (a tag dictionary; a training token's own tag left out)",
                            network=True)
    char_model: str = _option("cnn", "how a word's characters are read: cnn (a convolution), "
                              "lstm (a BiLSTM) or both side by side; a comma-separated list for "
                              "an ensemble, whose members cycle through it (cnn,lstm: half of "
                              "each)",
                              network=True, type=char_models)
    unary_scale: Optional[float] = _option(
        None, "standardise the unary energies over the tags at each position and scale them by "
        f"this (0: as the network gives them; default 1 for {' and '.join(SPARSE)}, 0 otherwise)",
        network=True)
    margin: float = _option(1.0, "the margin of the margin hinge; the margin-rescaled hinges "
                            "scale their cost by it")
    adversarial: float = _option(0.0, "adversarial training: also train on the BiLSTM's inputs "
                                 "moved along the loss gradient by this fraction of each "
                                 "sentence's input norm (Yasunaga et al. 2018; 0: off)")
    ema: float = _option(0.0, "decode with an exponential moving average of the weights, this "
                         "decay per step (0: the weights themselves)")
    pretrain: int = _option(0, "epochs of self-supervised pretraining of the feature network "
                            "on the training tweets' text before tagging: masked words "
                            "(ebm_ext.tagging.pretrain; 0: none)")
    teacher: Optional[str] = _option(None, "distil this best.pt (an ensemble, typically) into "
                                     "the tagger: the loss becomes (1 - w) criterion + w "
                                     "KL(teacher || tagger) over tag sequences, w = --distill; "
                                     "the tagger takes the teacher's vocabularies")
    distill: float = _option(0.5, "w, the weight of the KL term when a --teacher is given")
    seed: int = _option(1, "random seed (an ensemble's members take seed, seed+1, ...)")
    categories: Optional[List[str]] = _option(None, "the category of each tag (from the data)",
                                              cli=False)

    def resolved(self) -> "TaggerConfig":
        """The defaults that depend on the criterion filled in."""
        sparse = self.criterion in SPARSE
        epochs = self.epochs if self.epochs is not None else (SLOW_EPOCHS if sparse else EPOCHS)
        return dataclasses.replace(
            self, epochs=epochs,
            patience=self.patience if self.patience is not None else max(1, epochs // 3),
            unary_scale=(self.unary_scale if self.unary_scale is not None
                         else (1.0 if sparse else 0.0)))

    def network_kwargs(self) -> dict:
        """The FeatureNetwork arguments this configuration sets."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata["network"]}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TaggerConfig":
        """From a checkpoint's config: known keys taken, missing ones at their defaults (older
        checkpoints lack the newer options)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, network_only: bool = False) -> None:
        """One --option per command-line field (with ``network_only``, per feature-network
        field), with its default, help, choices and type."""
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta["cli"] or (network_only and not meta["network"]):
                continue
            kw: dict[str, Any] = {"default": f.default, "help": meta["help"]}
            if "choices" in meta:
                kw["choices"] = meta["choices"]
            kw["type"] = meta.get("type") or _type_of(f)
            parser.add_argument("--" + f.name.replace("_", "-"), **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TaggerConfig":
        """From parsed options; the fields a parser did not offer keep their defaults."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                      if f.metadata["cli"] and hasattr(args, f.name)})


def _type_of(f: dataclasses.Field):
    text = str(f.type)
    for name, kind in (("int", int), ("float", float), ("str", str)):
        if name in text:
            return kind
    raise TypeError(f"TaggerConfig.{f.name}: no command-line type for {f.type!r}")
