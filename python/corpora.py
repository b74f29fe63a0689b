"""Where the programs find their data, shared by tagger.py and inference_network.py: the
corpora's files under ebm_ext.tagging.data.data_dir (--data-dir, else $EBM_DATA, else
../shared/data), their tag sets, and batching of sentence lists."""
from __future__ import annotations

import pathlib

import torch

from ebm_ext.tagging import data as D
from ebm_ext.tagging.data import corpus_file
from ebm_ext.tagging.config import PROTOCOLS

CORPORA = {
    "twpos": ("twpos/oct27.train", "twpos/oct27.dev", "twpos/oct27.test"),
    "ewt": ("ud_ewt/en_ewt-ud-train.conllu", "ud_ewt/en_ewt-ud-dev.conllu",
            "ud_ewt/en_ewt-ud-test.conllu"),
}


def tagset(corpus: str, root: pathlib.Path) -> tuple[list[str], list[str]]:
    """Tags and their categories: the tweet tagset's five groups; UPOS tags stand alone."""
    if corpus == "twpos":
        return D.read_tagset(corpus_file(root, "twpos/tagset.tsv"))
    return list(D.UPOS), list(D.UPOS)


def read_splits(corpus: str, root: pathlib.Path, limit: int = 0, paths=(None, None, None)):
    """(train, dev, test) sentences of `corpus` (or of the files in `paths`), the first `limit`
    of each when limit > 0."""
    files = [pathlib.Path(p) if p else corpus_file(root, d) for p, d in zip(paths, CORPORA[corpus])]
    splits = [D.read_sentences(p) for p in files]
    return [split[:limit] for split in splits] if limit else splits


def protocol_splits(splits, protocol: str):
    """(train, select, test) sentences of a corpus's (train, dev, test) under `protocol`
    (TaggerConfig.protocol): select is the split the best epoch is chosen on, empty when none
    is (every epoch then counts as the best, so the last one is kept)."""
    train, dev, test = splits
    if protocol == "standard":
        return list(train), list(dev), list(test)
    if protocol == "train+dev":
        return list(train) + list(dev), list(test), list(test)
    if protocol == "all":
        return list(train) + list(dev) + list(test), [], list(test)
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def batches(sentences, size: int, generator=None):
    """Lists of `size` sentences, in order or shuffled by `generator`."""
    order = (torch.randperm(len(sentences), generator=generator) if generator is not None
             else torch.arange(len(sentences)))
    return [[sentences[i] for i in order[s:s + size].tolist()]
            for s in range(0, len(sentences), size)]
