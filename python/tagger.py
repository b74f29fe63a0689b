"""Energy-based POS tagging: train, evaluate, tag and export with the criteria of ebm_ext.

    python python/tagger.py train --corpus twpos --out runs/x                 (CRF NLL by default)
    python python/tagger.py eval --checkpoint runs/x/best.pt --file DATA/twpos/oct27.test
    echo "lol @bob gr8!!" | python python/tagger.py tag --checkpoint runs/x/best.pt
    python python/tagger.py export --checkpoint runs/x/best.pt --out runs/x/tagger.pt2
    echo "lol @bob gr8!!" | python python/tagger.py tag --model runs/x/tagger.pt2
    torchrun --nproc_per_node 2 python/tagger.py train ...      (multi-process, DDP)

The corpora are read from --data-dir, else $EBM_DATA, else ../shared/data beside the
repository; nothing is copied into the repository. The shape is torchvision's reference
scripts': get_args, load_data, main; training itself (train_one_epoch, evaluate, the member
loop) is python/training.py.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import pathlib
import sys
import time

import torch

from ebm_ext.checkpoint import load_checkpoint, save_checkpoint
from ebm_ext.tagging import ExportedTagger, TaggerConfig, export_tagger, load_tagger, tagger_from_state
from ebm_ext.tagging import data as D
from ebm_ext.tagging.data import data_dir
from ebm_ext.tagging.export import sidecar
from ebm_ext.tagging.stream import tag_stream
from corpora import protocol_splits, read_splits, tagset
from loop import Distributed, write_json
from training import evaluate, member_config, member_jobs, threads_per_process, train_members

TAG_DESCRIPTION = (
    "Tags raw tweets, one per line, tokenised as the corpus was (ebm_ext.tagging.tokenize), "
    "streaming: 256 lines are read, tagged and printed at a time. Output: one block per input "
    "line, in order: a token<TAB>tag line per token, then a blank line (an empty or "
    "whitespace-only line gets an empty block, the blank line alone), so the n-th block is the "
    "n-th line's. A line that is not UTF-8 stops it with FILE:LINE. Security: a checkpoint is "
    "loaded with weights_only=True (no code runs), but an exported AOTInductor package "
    "(--model) holds compiled native code that runs when it is loaded: use only packages from "
    "a trusted source.")


def load_data(args):
    """(train, select, test) sentences under --protocol, the tags and their categories."""
    root = data_dir(args.data_dir)
    splits = protocol_splits(read_splits(args.corpus, root, args.limit,
                                         (args.train, args.dev, args.test)), args.protocol)
    tags, categories = tagset(args.corpus, root)
    return splits, tags, categories


def train(args) -> dict:
    """Trains one tagger into OUT, or with --ensemble M, M taggers (seeds seed .. seed+M-1, in
    OUT/member-1 ..) whose mean energy decodes (TaggerEnsemble); OUT/best.pt then holds all of
    them. Scores the result on dev and test: metrics.json and pictures in OUT."""
    device = torch.device(args.device)
    ddp = Distributed(device)
    jobs = member_jobs(args, ddp)
    torch.set_num_threads(threads_per_process(args, ddp.world))
    splits, tags, categories = load_data(args)
    config = dataclasses.replace(TaggerConfig.from_args(args), categories=categories).resolved()
    out = pathlib.Path(args.out)
    folders = ([out] if args.ensemble == 1
               else [out / f"member-{k + 1}" for k in range(args.ensemble)])
    began = time.perf_counter()
    members = train_members(args, [member_config(config, k) for k in range(len(folders))], ddp,
                            splits, tags, folders, jobs, load_data)
    result = summary(args, members, ddp.world, jobs, time.perf_counter() - began)
    if ddp.main:
        gold, pred = score(args, result, members, splits, folders, device)
        report(args, result, members, dict(zip(tags, categories)), gold, pred)
    ddp.barrier()  # no rank tears the process group down while rank 0 still writes
    ddp.close()
    return result


def summary(args, members: list, processes: int, jobs: int, wall: float) -> dict:
    """metrics.json's head: the configuration (the ensemble's own settings; each member's are
    in members[k]) and the training time."""
    config = dict(members[0]["config"])
    if args.ensemble > 1:
        config.update(ensemble=args.ensemble,
                      char_model=",".join(m["config"]["char_model"] for m in members))
    result = {"config": config, "processes": processes, "jobs": jobs,
              "train_seconds": sum(m["train_seconds"] for m in members),
              "train_wall_seconds": wall}
    if args.ensemble == 1:
        result.update(members[0])
    return result


def score(args, result: dict, members: list, splits, folders: list, device):
    """Joins an ensemble's members into OUT/best.pt and scores the tagger (and each member) on
    dev and test, into `result`; returns the gold and predicted test tags."""
    states = [load_checkpoint(folder / "best.pt") for folder in folders]
    state = states[0]
    if args.ensemble > 1:
        state = {"members": [s["model"] for s in states], "vocabs": states[0]["vocabs"],
                 "member_configs": [s["config"] for s in states]}
        save_checkpoint(state, pathlib.Path(args.out) / "best.pt")
    model, vocabs = tagger_from_state(state, device)
    dev, test = splits[1], splits[2]
    dev_e, test_e = ([D.encode_sentence(s, vocabs) for s in split] for split in (dev, test))
    dev_acc = evaluate(model, dev, vocabs, device, encoded=dev_e)[0] if dev else None
    test_acc, gold, pred = evaluate(model, test, vocabs, device, encoded=test_e)
    result.update(dev_acc=dev_acc, test_acc=test_acc)
    if args.ensemble > 1:
        for member, one in zip(members, model.members):
            member.update(dev_acc=(evaluate(one, dev, vocabs, device, encoded=dev_e)[0]
                                   if dev else None),
                          test_acc=evaluate(one, test, vocabs, device, encoded=test_e)[0])
        result["members"] = members
    return gold, pred


def report(args, result: dict, members: list, categories: dict, gold, pred) -> None:
    """metrics.json, the pictures (learning curves, test confusion between the tags'
    `categories`) and the one-line verdict."""
    out = pathlib.Path(args.out)
    write_json(result, out / "metrics.json")
    config = result["config"]
    if not args.no_pictures:
        import plots
        title = f"{args.corpus} · {config['criterion']}"
        plots.learning_curves({f"seed {m['config']['seed']}": m["history"] for m in members},
                              out / "curves.png", title)
        plots.confusion_by_category(gold, pred, categories,
                                    out / "confusion.png", f"{title} · test")
    what = f"ensemble of {args.ensemble}: " if args.ensemble > 1 else ""
    dev_acc = result["dev_acc"]
    selected = {"standard": f"dev {100 * dev_acc:.2f}%" if dev_acc is not None else "",
                "train+dev": "trained on train+dev, selected on test",
                "all": "trained on every split: test was seen"}[config["protocol"]]
    seconds = f"{result['train_seconds']:.0f} s"
    if result["jobs"] > 1:
        seconds += f" in {result['jobs']} processes, {result['train_wall_seconds']:.0f} s of wall time"
    print(f"{what}test accuracy {100 * result['test_acc']:.2f}% ({selected}, {seconds}) -> "
          f"{out / 'metrics.json'}", flush=True)


def eval_command(args) -> dict:
    """Token accuracy of a checkpoint on a file of either format."""
    model, vocabs = load_tagger(args.checkpoint, args.device)
    sentences = D.read_sentences(args.file, args.format)
    if not sentences:
        raise ValueError(f"{args.file}: holds no sentences to evaluate")
    acc, _, _ = evaluate(model, sentences, vocabs, torch.device(args.device))
    result = {"file": str(args.file), "sentences": len(sentences),
              "tokens": sum(len(t) for t, _ in sentences), "accuracy": acc}
    print(f"{args.file}: token accuracy {100 * acc:.2f}% over {result['tokens']} tokens")
    return result


def tag(args) -> None:
    """Tags raw tweets, one per input line, with a checkpoint or an exported tagger (--model),
    streaming (ebm_ext.tagging.stream.tag_stream): one block per input line, batch by batch."""
    if args.model:
        if torch.device(args.device).type != "cpu":  # not silently on another device than asked
            raise ValueError(f"--model {args.model}: an exported tagger runs on the CPU (tagger.py "
                             f"export writes a CPU program), not on --device {args.device}; tag "
                             f"with --checkpoint to run there")
        tagger = ExportedTagger.load(args.model)
        vocabs, predict = tagger.vocabs, tagger.predict
    else:
        model, vocabs = load_tagger(args.checkpoint, args.device)
        predict = model.predict
    with open(args.input, "rb") if args.input else contextlib.nullcontext(sys.stdin.buffer) as f:
        tag_stream(predict, vocabs, f, sys.stdout, args.input or "<stdin>", args.pretokenized,
                   args.device)


def export(args) -> dict:
    """Writes the checkpoint's tagger (an ensemble included) as one program, with its
    vocabularies beside it (ebm_ext.tagging.export)."""
    model, vocabs = load_tagger(args.checkpoint)
    tick = time.perf_counter()
    meta = export_tagger(model, vocabs, args.out, aoti=not args.no_aoti)
    what = "AOTInductor package" if meta["program"] == "aoti" else "torch.export program"
    print(f"{args.out}: {what} ({time.perf_counter() - tick:.0f} s), vocabularies in "
          f"{sidecar(args.out)}", flush=True)
    return meta


def margin_picture(args) -> None:
    import plots
    plots.margin_loss_picture(args.out)


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    TaggerConfig.add_arguments(t)  # the model's and training's options, one per field
    t.add_argument("--out", required=True, help="folder for checkpoints, metrics.json and pictures")
    t.add_argument("--data-dir", help="folder holding twpos/ and ud_ewt/ (default: $EBM_DATA, "
                   "else ../shared/data beside the repository)")
    t.add_argument("--train", help="training file (either format), instead of the corpus's")
    t.add_argument("--dev", help="selection file (either format), instead of the corpus's")
    t.add_argument("--test", help="test file (either format), instead of the corpus's")
    t.add_argument("--ensemble", type=int, default=1, help="train this many taggers (seeds "
                   "seed, seed+1, ...) and decode with their mean energy")
    t.add_argument("--limit", type=int, default=0, help="use only the first N sentences of each split")
    t.add_argument("--threads", type=int, default=0,
                   help="threads per process (default: the machine's cores over the processes)")
    t.add_argument("--jobs", type=int, default=1, help="train this many ensemble members at "
                   "once, each in its own process (the taggers are the same as one after another)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--no-pictures", action="store_true", help="no curves.png or confusion.png")
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def add_tag_arguments(g: argparse.ArgumentParser) -> None:
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a best.pt of tagger.py train (loaded with "
                        "weights_only=True)")
    source.add_argument("--model", help="an exported tagger (tagger.py export's .pt2, its .json "
                        "beside it); an AOTInductor package runs native code: only from a "
                        "trusted source")
    g.add_argument("--input", help="text file of raw tweets, one per line (default: standard input)")
    g.add_argument("--pretokenized", action="store_true",
                   help="the lines hold tokens separated by whitespace: split on it only")
    g.add_argument("--device", default="cpu", help="where a --checkpoint tagger runs (an "
                   "exported one runs on the CPU)")


def get_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train a tagger, evaluate on dev each epoch "
                                       "and on test at the end"))
    e = sub.add_parser("eval", help="token accuracy of a checkpoint on a file of either format")
    e.add_argument("--checkpoint", required=True, help="a best.pt of tagger.py train")
    e.add_argument("--file", required=True, help="token<TAB>tag lines, or CoNLL-U (.conllu)")
    e.add_argument("--format", choices=["auto", "tweets", "conllu"], default="auto",
                   help="the file's format (auto: by its suffix)")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_tag_arguments(sub.add_parser("tag", help="tag raw tweets, one per line, tokenised as the "
                                     "corpus was", description=TAG_DESCRIPTION))
    x = sub.add_parser("export", help="write a checkpoint's tagger as one exported program "
                       "(AOTInductor-compiled) with its vocabularies beside it")
    x.add_argument("--checkpoint", required=True, help="a best.pt of tagger.py train")
    x.add_argument("--out", required=True, help="the program's file, ending in .pt2; the "
                   "vocabularies go beside it (.json)")
    x.add_argument("--no-aoti", action="store_true",
                   help="write torch.export's program instead of compiling it with AOTInductor")
    m = sub.add_parser("margin-picture", help="draw the margin loss against the energy gap")
    m.add_argument("--out", required=True, help="the PNG to write")
    return p, p.parse_args(argv)


COMMANDS = {"train": train, "eval": eval_command, "tag": tag, "export": export,
            "margin-picture": margin_picture}


def main(argv=None):
    parser, args = get_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as e:  # bad data, checkpoints or paths: one line, exit 2
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")


if __name__ == "__main__":
    main()
