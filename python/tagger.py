"""Energy-based POS tagging: train, evaluate and tag with the criteria of ebm_ext.

    python python/tagger.py train --corpus twpos --criterion margin_rescaled_category --out runs/x
    python python/tagger.py eval --checkpoint runs/x/best.pt --file ../shared/data/twpos/oct27.test
    echo "lol @bob gr8!!" | python python/tagger.py tag --checkpoint runs/x/best.pt
    python python/tagger.py export --checkpoint runs/x/best.pt --out runs/x/tagger.pt2
    echo "lol @bob gr8!!" | python python/tagger.py tag --model runs/x/tagger.pt2
    torchrun --nproc_per_node 2 python/tagger.py train ...      (multi-process, DDP)

The data are read from ../shared/data relative to the repository (or --data-dir, or the
EBM_DATA environment variable); nothing is copied into the repository.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing
import os
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ebm_ext.tagging import data as D  # noqa: E402
from ebm_ext.tagging.export import sidecar  # noqa: E402
from ebm_ext.tagging.pretrain import MaskedWords  # noqa: E402
from ebm_ext.tagging.stream import tag_stream  # noqa: E402
from ebm_ext.tagging import (EnergyTagger, ExportedTagger, TaggerConfig, TaggerEnsemble,  # noqa: E402
                             build_tagger, export_tagger, tagger_from_state)
from corpora import batches, data_dir, protocol_splits, read_splits, tagset  # noqa: E402
from loop import (CheckpointError, Distributed, eval_mode, load_checkpoint, progress, save_checkpoint,  # noqa: E402
                  write_json)

def accuracy(model: EnergyTagger, sentences, vocabs, device, batch_size=256, encoded=None):
    """(token accuracy, gold tags, predicted tags) over `sentences` (`encoded`: the same,
    already through D.encode_sentence)."""
    if encoded is None:
        encoded = [D.encode_sentence(s, vocabs) for s in sentences]
    gold, pred = [], []
    with eval_mode(model):
        for start in range(0, len(sentences), batch_size):
            chunk = sentences[start:start + batch_size]
            tags = model.predict(D.collate(encoded[start:start + batch_size]).to(device)).cpu()
            for b, (_, labels) in enumerate(chunk):
                gold.extend(labels)
                pred.extend(vocabs.tags.items[i] for i in tags[b, : len(labels)].tolist())
    correct = sum(g == p for g, p in zip(gold, pred))
    return correct / max(1, len(gold)), gold, pred


def read_data(args):
    """(train, select, test) sentences under --protocol, the tags and their categories, per the
    command line."""
    root = data_dir(args.data_dir)
    splits = protocol_splits(read_splits(args.corpus, root, args.limit,
                                         (args.train, args.dev, args.test)), args.protocol)
    tags, categories = tagset(args.corpus, root)
    return splits, tags, categories


class Teacher:
    """A trained tagger (an ensemble, typically) to distil (--teacher): its energies of every
    training sentence, computed once (in eval mode they do not change), and handed to the
    student's loss batch by batch."""

    def __init__(self, path, device, weight: float):
        self.model, self.vocabs = load_tagger(path, device)
        local = (self.model.local if isinstance(self.model, TaggerEnsemble)
                 else not self.model.spec.uses_chain)
        if local:
            raise ValueError(f"--teacher {path}: a feed-forward (token_nll) tagger has no chain "
                             f"distribution to distil")
        self.weight = weight

    def attach(self, encoded, device) -> list:
        """(sentence, its teacher unary energies (L, K)) for each encoded sentence."""
        pairs = []
        with torch.no_grad():
            for start in range(0, len(encoded), 256):
                chunk = encoded[start:start + 256]
                unary, *self.chain = self.model.energies(D.collate(chunk).to(device))
                pairs.extend((e, unary[b, :len(e.words)]) for b, e in enumerate(chunk))
        return pairs

    def loss(self, net, chunk, device):
        encoded, unaries = zip(*chunk)
        batch = D.collate(encoded).to(device)
        energies = (torch.nn.utils.rnn.pad_sequence(list(unaries), batch_first=True), *self.chain)
        return net(batch, energies, self.weight)


def train_one_epoch(net, model, batches_, optimizer, scheduler, average, device, show: bool,
                    desc: str, teacher: Teacher | None = None) -> float:
    """One pass over `batches_` (lists of encoded sentences, with their teacher energies when
    distilling); returns the summed loss."""
    model.train()
    total = 0.0
    bar = progress(batches_, show, desc=desc)
    for chunk in bar:
        # The loss; through DDP's wrapper its gradients are all-reduced.
        loss = (net(D.collate(chunk).to(device)) if teacher is None
                else teacher.loss(net, chunk, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        if average is not None:
            average.update_parameters(model)
        total += loss.item()
        if show:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return total


def pretrain(model: EnergyTagger, vocabs, encoded, config: TaggerConfig, device, show: bool,
             main: bool, label: str = "") -> None:
    """config.pretrain epochs of masked-word training of model.features on the training
    tweets' text (ebm_ext.tagging.pretrain), at a constant rate; the word head is dropped
    after."""
    task = MaskedWords(model.features, len(vocabs.words)).to(device)
    optimizer = torch.optim.Adam(task.parameters(), lr=config.lr, fused=True)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for epoch in range(config.pretrain):
        order = torch.Generator().manual_seed(10**6 + config.seed * 1000 + epoch)
        chunks = batches(encoded, config.batch_size, order)
        total = train_one_epoch(task, task, chunks, optimizer, constant, None, device, show,
                                f"pretrain {epoch + 1}")
        if main:
            print(f"{label}pretrain {epoch + 1}: masked-word loss {total / max(1, len(chunks)):.4f}",
                  flush=True)


def train_member(args, config: TaggerConfig, ddp: Distributed, splits, tags,
                 out: pathlib.Path, label: str = "") -> dict:
    """Trains one tagger of `config` (its seed included) into `out` (best.pt: the best dev
    epoch's weights, last.pt: everything to resume from); returns its history. Its progress
    lines begin with `label`."""
    device = torch.device(args.device)
    train_s, dev_s, _ = splits
    last = out / "last.pt"
    state = load_checkpoint(last) if args.resume and last.exists() else None
    if state is not None:
        # The model's options come from the checkpoint; how long to train, from this command.
        config = dataclasses.replace(TaggerConfig.from_dict(state["config"]),
                                     epochs=config.epochs, patience=config.patience).resolved()
    teacher = Teacher(config.teacher, device, config.distill) if config.teacher else None
    if state is not None:
        vocabs = D.Vocabularies.from_state(state["vocabs"])
    elif teacher is not None:  # the student reads its input the way its teacher does
        vocabs = teacher.vocabs
    else:
        vocabs = D.Vocabularies.build(train_s, tags)
    seed = config.seed
    train_e, dev_e = ([D.encode_sentence(s, vocabs) for s in split] for split in (train_s, dev_s))
    items = train_e if teacher is None else teacher.attach(train_e, device)
    torch.manual_seed(seed)
    model = build_tagger(config, vocabs).to(device)
    show = not args.no_progress and ddp.main and sys.stderr.isatty()
    pretrain_seconds = 0.0
    if config.pretrain and state is None:  # a resumed run's weights already hold it
        tick = time.perf_counter()
        pretrain(model, vocabs, train_e, config, device, show, ddp.main, label)
        pretrain_seconds = time.perf_counter() - tick
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    steps = config.epochs * max(1, math.ceil(len(train_e) / config.batch_size) // ddp.world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        if config.schedule == "cosine" else 1.0)
    # Decoding and checkpoints use the exponential moving average of the weights when --ema is set
    # (Polyak averaging: the averaged perceptron's trick, for every criterion).
    average = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema),
        use_buffers=True) if config.ema > 0 else None)
    decoder = average.module if average is not None else model
    history, best, bad, start_epoch = [], -1.0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if average is not None:
            average.load_state_dict(state["average"])
        history, best, bad, start_epoch = state["history"], state["best"], state["bad"], state["epoch"]
        torch.set_rng_state(state["rng"])
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp.active else model
    began = time.perf_counter() - sum(h["seconds"] for h in history)
    stop = bad >= config.patience
    for epoch in range(start_epoch, config.epochs):
        if stop:
            break
        tick = time.perf_counter()
        order = torch.Generator().manual_seed(seed * 1000 + epoch)
        mine = batches(items, config.batch_size, order)
        mine = mine[: len(mine) // ddp.world * ddp.world][ddp.rank::ddp.world]
        total = train_one_epoch(net, model, mine, optimizer, scheduler, average, device, show,
                                f"epoch {epoch + 1}", teacher)
        train_loss = ddp.mean(total / max(1, len(mine)))
        # With nothing to select on (--protocol all), every epoch is the best so far.
        dev_acc = accuracy(decoder, dev_s, vocabs, device, encoded=dev_e)[0] if dev_s else None
        improved = dev_acc is None or dev_acc > best
        if improved:
            best, bad = (best if dev_acc is None else dev_acc), 0
        else:
            bad += 1
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "dev_acc": dev_acc,
                        "seconds": time.perf_counter() - tick})
        stop = ddp.broadcast_flag(bad >= config.patience)
        if ddp.main:
            checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(),
                          "vocabs": vocabs.state(), "config": config.as_dict(),
                          "history": history,
                          "best": best, "bad": bad, "epoch": epoch + 1,
                          "rng": torch.get_rng_state()}
            if average is not None:
                checkpoint["average"] = average.state_dict()
            if improved:
                save_checkpoint({"model": decoder.state_dict(), "vocabs": vocabs.state(),
                                 "config": config.as_dict()}, out / "best.pt")
            save_checkpoint(checkpoint, last)
            dev_text = "" if dev_acc is None else f"  dev {100 * dev_acc:.2f}%"
            print(f"{label}epoch {epoch + 1}: loss {train_loss:.4f}{dev_text}"
                  f"  ({history[-1]['seconds']:.1f} s)", flush=True)
        ddp.barrier()
    scored = [h for h in history if h["dev_acc"] is not None]  # none without a selection split
    result = {"config": {k: v for k, v in config.as_dict().items() if k != "categories"},
              "history": history,
              "train_seconds": time.perf_counter() - began + pretrain_seconds,
              "best_epoch": (max(scored, key=lambda h: h["dev_acc"])["epoch"] if scored
                             else len(history))}
    if ddp.active:
        result["rank_param_max_diff"] = ddp.max_param_difference(model)
    return result


def member_config(config: TaggerConfig, k: int) -> TaggerConfig:
    """The configuration of ensemble member k: seed + k, and the members cycle through the
    char_model list."""
    models = config.char_model.split(",")
    return dataclasses.replace(config, seed=config.seed + k, char_model=models[k % len(models)])


def train_member_process(args, config: TaggerConfig, out: pathlib.Path, threads: int) -> dict:
    """train_member in a worker process of --jobs: its own threads, data and (single-process)
    Distributed; the same seed gives the same tagger as in the parent."""
    torch.set_num_threads(threads)
    splits, tags, _ = read_data(args)
    return train_member(args, config, Distributed(torch.device(args.device)), splits, tags, out,
                        label=f"{out.name}: ")


def threads_per_process(args, processes: int) -> int:
    """--threads, or the machine's cores shared out between `processes`."""
    return args.threads or max(1, (os.cpu_count() or 1) // processes)


def member_jobs(args, ddp: Distributed) -> int:
    """How many members train at once: --jobs, at most one per member; checked first."""
    if args.jobs < 1:
        raise ValueError(f"train: --jobs must be at least 1, got {args.jobs}")
    jobs = min(args.jobs, args.ensemble)
    if jobs > 1 and ddp.active:
        raise ValueError("train: --jobs trains members in parallel processes of one machine; "
                         f"under torchrun (WORLD_SIZE={ddp.world}) keep --jobs 1")
    return jobs


def train_members(args, configs: list, ddp: Distributed, splits, tags, folders: list,
                  jobs: int) -> list:
    """Each member's history, trained one after another, or in `jobs` worker processes at once
    (spawned: forking a process whose OpenMP threads have started can hang)."""
    if jobs == 1:
        return [train_member(args, c, ddp, splits, tags, f) for c, f in zip(configs, folders)]
    threads = threads_per_process(args, jobs)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        running = [pool.submit(train_member_process, args, c, f, threads)
                   for c, f in zip(configs, folders)]
        return [r.result() for r in running]


def train(args) -> dict:
    """Trains one tagger into OUT, or with --ensemble M, M taggers (seeds seed .. seed+M-1, in
    OUT/member-1 ..) whose mean energy decodes (TaggerEnsemble); OUT/best.pt then holds all of
    them. Scores the result on dev and test: metrics.json and pictures in OUT."""
    device = torch.device(args.device)
    ddp = Distributed(device)
    jobs = member_jobs(args, ddp)
    torch.set_num_threads(threads_per_process(args, ddp.world))
    splits, tags, categories = read_data(args)
    config = dataclasses.replace(TaggerConfig.from_args(args), categories=categories).resolved()
    out = pathlib.Path(args.out)
    folders = ([out] if args.ensemble == 1
               else [out / f"member-{k + 1}" for k in range(args.ensemble)])
    began = time.perf_counter()
    members = train_members(args, [member_config(config, k) for k in range(len(folders))], ddp,
                            splits, tags, folders, jobs)
    wall = time.perf_counter() - began
    config = dict(members[0]["config"])
    if args.ensemble > 1:  # the ensemble's own settings; each member's are in members[k]
        config.update(ensemble=args.ensemble,
                      char_model=",".join(m["config"]["char_model"] for m in members))
    result = {"config": config, "processes": ddp.world,
              "train_seconds": sum(m["train_seconds"] for m in members),
              "train_wall_seconds": wall, "jobs": jobs}
    if args.ensemble == 1:
        result.update(members[0])
    if ddp.main:
        states = [load_checkpoint(folder / "best.pt") for folder in folders]
        state = states[0]
        if args.ensemble > 1:
            state = {"members": [s["model"] for s in states], "vocabs": states[0]["vocabs"],
                     "member_configs": [s["config"] for s in states]}
            save_checkpoint(state, out / "best.pt")
        model, vocabs = tagger_from_state(state, device)
        dev, test = splits[1], splits[2]
        dev_e, test_e = ([D.encode_sentence(s, vocabs) for s in split] for split in (dev, test))
        dev_acc = accuracy(model, dev, vocabs, device, encoded=dev_e)[0] if dev else None
        test_acc, gold, pred = accuracy(model, test, vocabs, device, encoded=test_e)
        result.update(dev_acc=dev_acc, test_acc=test_acc)
        if args.ensemble > 1:
            for member, one in zip(members, model.members):
                member.update(dev_acc=(accuracy(one, dev, vocabs, device, encoded=dev_e)[0]
                                       if dev else None),
                              test_acc=accuracy(one, test, vocabs, device, encoded=test_e)[0])
            result["members"] = members
        write_json(result, out / "metrics.json")
        if not args.no_pictures:
            import plots
            title = f"{args.corpus} · {config['criterion']}"
            plots.learning_curves({f"seed {m['config']['seed']}": m["history"] for m in members},
                                  out / "curves.png", title)
            plots.confusion_by_category(gold, pred, dict(zip(tags, categories)),
                                        out / "confusion.png", f"{title} · test")
        what = f"ensemble of {args.ensemble}: " if args.ensemble > 1 else ""
        selected = {"standard": f"dev {100 * dev_acc:.2f}%" if dev_acc is not None else "",
                    "train+dev": "trained on train+dev, selected on test",
                    "all": "trained on every split: test was seen"}[config["protocol"]]
        seconds = f"{result['train_seconds']:.0f} s"
        if jobs > 1:
            seconds += f" in {jobs} processes, {wall:.0f} s of wall time"
        print(f"{what}test accuracy {100 * test_acc:.2f}% ({selected}, {seconds}) -> "
              f"{out / 'metrics.json'}", flush=True)
    ddp.barrier()  # no rank tears the process group down while rank 0 still writes
    ddp.close()
    return result


def load_tagger(path, device="cpu"):
    """(tagger, vocabularies) of a best.pt; CheckpointError (naming the file) when it is not one."""
    state = load_checkpoint(path)
    try:
        return tagger_from_state(state, device)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: not a tagger checkpoint written by tagger.py train "
                              f"({what[:200]})") from e


def evaluate(args) -> dict:
    model, vocabs = load_tagger(args.checkpoint, args.device)
    sentences = D.read_sentences(args.file, args.format)
    if not sentences:
        raise ValueError(f"{args.file}: holds no sentences to evaluate")
    acc, _, _ = accuracy(model, sentences, vocabs, torch.device(args.device))
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a tagger, evaluate on dev each epoch and on test at the end")
    TaggerConfig.add_arguments(t)  # the model's and training's options, one per field
    t.add_argument("--out", required=True, help="folder for checkpoints, metrics.json and pictures")
    t.add_argument("--data-dir", help="folder holding twpos/ and ud_ewt/ (default ../shared/data "
                   "beside the repository, or $EBM_DATA)")
    t.add_argument("--train", help="training file (either format), instead of the corpus's")
    t.add_argument("--dev")
    t.add_argument("--test")
    t.add_argument("--ensemble", type=int, default=1,
                   help="train this many taggers (seeds seed, seed+1, ...) and decode with their "
                   "mean energy")
    t.add_argument("--limit", type=int, default=0, help="use only the first N sentences of each split")
    t.add_argument("--threads", type=int, default=0,
                   help="threads per process (default: the machine's cores over the processes)")
    t.add_argument("--jobs", type=int, default=1,
                   help="train this many ensemble members at once, each in its own process "
                   "(the taggers are the same as one after another)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-pictures", action="store_true")
    t.add_argument("--device", default="cpu")
    e = sub.add_parser("eval", help="token accuracy of a checkpoint on a file of either format")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--file", required=True)
    e.add_argument("--format", choices=["auto", "tweets", "conllu"], default="auto")
    e.add_argument("--device", default="cpu")
    g = sub.add_parser("tag", help="tag raw tweets, one per line, tokenised as the corpus was "
                       "(ebm_ext.tagging.tokenize)",
                       description="Tags raw tweets, one per line, streaming: one block per input "
                       "line (a token<TAB>tag line per token, then a blank line; an empty or "
                       "whitespace-only line gets an empty block), printed batch by batch. "
                       "Security: a checkpoint is loaded with weights_only=True (no code runs), "
                       "but an exported AOTInductor package (--model) holds compiled native code "
                       "that runs when it is loaded: use only packages from a trusted source.")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a best.pt of tagger.py train (loaded with "
                        "weights_only=True)")
    source.add_argument("--model", help="an exported tagger (tagger.py export's .pt2); an "
                        "AOTInductor package runs native code: only from a trusted source")
    g.add_argument("--input", help="text file (default: standard input)")
    g.add_argument("--pretokenized", action="store_true",
                   help="the lines hold tokens separated by whitespace: split on it only")
    g.add_argument("--device", default="cpu")
    x = sub.add_parser("export", help="write a checkpoint's tagger as one exported program "
                       "(AOTInductor-compiled) with its vocabularies beside it")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--out", required=True, help="the program's file, ending in .pt2; the "
                   "vocabularies go beside it (.json)")
    x.add_argument("--no-aoti", action="store_true",
                   help="write torch.export's program instead of compiling it with AOTInductor")
    m = sub.add_parser("margin-picture", help="draw the margin loss against the energy gap")
    m.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as e:  # bad data, checkpoints or paths: one line, exit 2
        p.exit(2, f"{p.prog} {args.command}: error: {e}\n")


def run(args):
    if args.command == "train":
        return train(args)
    if args.command == "eval":
        return evaluate(args)
    if args.command == "tag":
        return tag(args)
    if args.command == "export":
        return export(args)
    import plots
    plots.margin_loss_picture(args.out)
    return None


if __name__ == "__main__":
    main()
