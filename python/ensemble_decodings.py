"""Decodes the members of trained taggers four ways and prints dev and test accuracy
(docs/reports/accuracy.md: how an ensemble is decoded). The members of every checkpoint given are pooled, so
two ensembles' best.pt make one ensemble of ten.

    python python/ensemble_decodings.py runs/main/best.pt [runs/s6/best.pt ...] [--corpus twpos] [--limit N]

- viterbi: the mode of the mean energy (what TaggerEnsemble decodes);
- posterior: at each position the tag of highest marginal under the mean energy, the decoding
  that maximises the expected token accuracy of that distribution;
- mixture: the highest mean of the members' marginals (the members' distributions averaged,
  not their energies);
- log pool: the highest mean of the members' log marginals.
The checkpoints must share their vocabularies (taggers trained on the same split do).
"""
from __future__ import annotations

import argparse
import pathlib

import torch

from ebm_ext.ops import chain_marginals, viterbi
from ebm_ext.tagging import TaggerEnsemble, load_tagger
from ebm_ext.tagging import data as D
from ebm_ext.tagging.data import data_dir
from corpora import read_splits


def member_energies(members, sentences, vocabs):
    """Each member's (unary, trans, start, end) of the sentences as one batch, the lengths and
    the gold tags (B, T), -1 past each length."""
    batch = D.collate([D.encode_sentence(s, vocabs) for s in sentences])
    with torch.no_grad():
        energies = [m.energies(batch) for m in members]
    return energies, batch.lengths, batch.tags  # the encoding's gold tags are -1 past each length


def decodings(energies, lengths) -> dict:
    mean = [torch.stack(parts).mean(0) for parts in zip(*energies)]
    unary, trans, start, end = mean
    marginals = [chain_marginals(u, t, lengths, s, e) for u, t, s, e in energies]
    return {
        "viterbi": viterbi(unary, trans, lengths, start, end)[1],
        "posterior": chain_marginals(unary, trans, lengths, start, end).argmax(-1),
        "mixture": torch.stack(marginals).mean(0).argmax(-1),
        "log pool": torch.stack([m.clamp_min(1e-30).log() for m in marginals]).mean(0).argmax(-1),
    }


def accuracy(pred, gold) -> float:
    real = gold >= 0
    return 100 * (pred[real] == gold[real]).double().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=pathlib.Path)
    parser.add_argument("--corpus", default="twpos")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=0,
                        help="the first N sentences of dev and of test (0: all)")
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    torch.set_num_threads(1)
    members, vocabs = [], None
    for path in args.checkpoints:
        model, these = load_tagger(path)
        if vocabs is not None and these.state() != vocabs.state():
            raise SystemExit(f"{path}: its vocabularies differ from {args.checkpoints[0]}'s")
        vocabs = these
        members += list(model.members) if isinstance(model, TaggerEnsemble) else [model]
    _, dev, test = read_splits(args.corpus, data_dir(args.data_dir), args.limit, (None, None, None))
    splits = {"dev": member_energies(members, dev, vocabs),
              "test": member_energies(members, test, vocabs)}
    for k in range(len(members)):
        line = "  ".join(f"{name} {accuracy(viterbi(*e[k][:2], L, *e[k][2:])[1], g):.2f}"
                         for name, (e, L, g) in splits.items())
        print(f"member {k + 1:<8}{line}")
    results = {name: decodings(e, L) for name, (e, L, _) in splits.items()}
    for how in results["dev"]:
        line = "  ".join(f"{name} {accuracy(results[name][how], splits[name][2]):.2f}"
                         for name in splits)
        print(f"{how:<15}{line}")


if __name__ == "__main__":
    main()
