"""How one tagger trains: the epoch loop, dev evaluation, checkpoints to resume from, masked-word
pretraining, distillation from a teacher, and ensemble members one after another or in worker
processes. tagger.py (the program) calls it; it imports no program.

A member's run is deterministic: the data order of epoch e is a function of (seed, e), and a
resumed run restores the model, optimiser, schedule, moving average and RNG state, so it ends
with exactly the parameters of an uninterrupted run.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import pathlib
import sys
import time

import torch

from ebm_ext.checkpoint import load_checkpoint, save_checkpoint
from ebm_ext.tagging import EnergyTagger, TaggerConfig, TaggerEnsemble, build_tagger, load_tagger
from ebm_ext.tagging import data as D
from ebm_ext.tagging.pretrain import MaskedWords
from corpora import batches
from loop import Distributed, eval_mode, progress


def evaluate(model: EnergyTagger, sentences, vocabs, device, batch_size=256, encoded=None):
    """(token accuracy, gold tags, predicted tags) of `model` over `sentences` (`encoded`: the
    same, already through D.encode_sentence)."""
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


@dataclasses.dataclass
class Progress:
    """Where a member's training stands: its per-epoch history, the best dev accuracy so far, the
    epochs since it last improved and the next epoch to run."""
    history: list = dataclasses.field(default_factory=list)
    best: float = -1.0
    bad: int = 0
    epoch: int = 0


class MemberRun:
    """One tagger's training into `out`: best.pt holds the best dev epoch's weights, last.pt
    everything to resume from. Its progress lines begin with `label`."""

    def __init__(self, args, config: TaggerConfig, ddp: Distributed, splits, tags,
                 out: pathlib.Path, label: str = ""):
        self.args, self.ddp, self.out, self.label = args, ddp, out, label
        self.device = torch.device(args.device)
        self.train_s, self.dev_s, _ = splits
        last = out / "last.pt"
        self.state = load_checkpoint(last) if args.resume and last.exists() else None
        if self.state is not None:
            # The model's options come from the checkpoint; how long to train, from this command.
            config = dataclasses.replace(TaggerConfig.from_dict(self.state["config"]),
                                         epochs=config.epochs, patience=config.patience).resolved()
        self.config = config
        self.teacher = Teacher(config.teacher, self.device, config.distill) if config.teacher else None
        self.vocabs = self._vocabularies(tags)
        self.train_e, self.dev_e = ([D.encode_sentence(s, self.vocabs) for s in split]
                                    for split in (self.train_s, self.dev_s))
        self.items = (self.train_e if self.teacher is None
                      else self.teacher.attach(self.train_e, self.device))
        self.show = not args.no_progress and ddp.main and sys.stderr.isatty()

    def _vocabularies(self, tags):
        if self.state is not None:
            return D.Vocabularies.from_state(self.state["vocabs"])
        if self.teacher is not None:  # the student reads its input the way its teacher does
            return self.teacher.vocabs
        return D.Vocabularies.build(self.train_s, tags)

    def build(self) -> float:
        """The model, optimiser, cosine schedule and moving average (--ema), restored from
        last.pt when resuming; returns the seconds spent pretraining."""
        config = self.config
        torch.manual_seed(config.seed)
        self.model = build_tagger(config, self.vocabs).to(self.device)
        seconds = 0.0
        if config.pretrain and self.state is None:  # a resumed run's weights already hold it
            tick = time.perf_counter()
            pretrain(self.model, self.vocabs, self.train_e, config, self.device, self.show,
                     self.ddp.main, self.label)
            seconds = time.perf_counter() - tick
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=True)
        steps = config.epochs * max(1, math.ceil(len(self.train_e) / config.batch_size) // self.ddp.world)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
            if config.schedule == "cosine" else 1.0)
        # Decoding and checkpoints use the exponential moving average of the weights when --ema
        # is set (Polyak averaging: the averaged perceptron's trick, for every criterion).
        self.average = (torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema),
            use_buffers=True) if config.ema > 0 else None)
        self.decoder = self.average.module if self.average is not None else self.model
        return seconds

    def restore(self) -> Progress:
        """The progress of the run being resumed (with its weights and RNG state), else a new one."""
        state = self.state
        if state is None:
            return Progress()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        torch.set_rng_state(state["rng"])
        return Progress(state["history"], state["best"], state["bad"], state["epoch"])

    def epoch(self, net, epoch: int, done: Progress) -> bool:
        """Trains and evaluates one epoch; returns whether it improved on dev."""
        config, ddp, tick = self.config, self.ddp, time.perf_counter()
        order = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        mine = batches(self.items, config.batch_size, order)
        mine = mine[: len(mine) // ddp.world * ddp.world][ddp.rank::ddp.world]
        total = train_one_epoch(net, self.model, mine, self.optimizer, self.scheduler,
                                self.average, self.device, self.show, f"epoch {epoch + 1}",
                                self.teacher)
        train_loss = ddp.mean(total / max(1, len(mine)))
        # With nothing to select on (--protocol all), every epoch is the best so far.
        dev_acc = (evaluate(self.decoder, self.dev_s, self.vocabs, self.device,
                            encoded=self.dev_e)[0] if self.dev_s else None)
        improved = dev_acc is None or dev_acc > done.best
        if improved:
            done.best, done.bad = (done.best if dev_acc is None else dev_acc), 0
        else:
            done.bad += 1
        done.epoch = epoch + 1
        done.history.append({"epoch": epoch + 1, "train_loss": train_loss, "dev_acc": dev_acc,
                             "seconds": time.perf_counter() - tick})
        return improved

    def save(self, done: Progress, improved: bool) -> None:
        """last.pt (everything to resume from) and, when the epoch improved, best.pt; one line."""
        config, vocabs = self.config.as_dict(), self.vocabs.state()
        checkpoint = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "scheduler": self.scheduler.state_dict(), "vocabs": vocabs,
                      "config": config, "history": done.history, "best": done.best,
                      "bad": done.bad, "epoch": done.epoch, "rng": torch.get_rng_state()}
        if self.average is not None:
            checkpoint["average"] = self.average.state_dict()
        if improved:
            save_checkpoint({"model": self.decoder.state_dict(), "vocabs": vocabs,
                             "config": config}, self.out / "best.pt")
        save_checkpoint(checkpoint, self.out / "last.pt")
        last = done.history[-1]
        dev_text = "" if last["dev_acc"] is None else f"  dev {100 * last['dev_acc']:.2f}%"
        print(f"{self.label}epoch {done.epoch}: loss {last['train_loss']:.4f}{dev_text}"
              f"  ({last['seconds']:.1f} s)", flush=True)

    def run(self) -> dict:
        """Trains to the last epoch or to early stopping; returns the member's history."""
        pretrain_seconds = self.build()
        done = self.restore()
        ddp, config = self.ddp, self.config
        net = torch.nn.parallel.DistributedDataParallel(self.model) if ddp.active else self.model
        began = time.perf_counter() - sum(h["seconds"] for h in done.history)
        stop = done.bad >= config.patience
        for epoch in range(done.epoch, config.epochs):
            if stop:
                break
            improved = self.epoch(net, epoch, done)
            stop = ddp.broadcast_flag(done.bad >= config.patience)
            if ddp.main:
                self.save(done, improved)
            ddp.barrier()
        return self.result(done, time.perf_counter() - began + pretrain_seconds)

    def result(self, done: Progress, seconds: float) -> dict:
        scored = [h for h in done.history if h["dev_acc"] is not None]  # none without a dev split
        result = {"config": {k: v for k, v in self.config.as_dict().items() if k != "categories"},
                  "history": done.history, "train_seconds": seconds,
                  "best_epoch": (max(scored, key=lambda h: h["dev_acc"])["epoch"] if scored
                                 else len(done.history))}
        if self.ddp.active:
            result["rank_param_max_diff"] = self.ddp.max_param_difference(self.model)
        return result


def train_member(args, config: TaggerConfig, ddp: Distributed, splits, tags,
                 out: pathlib.Path, label: str = "") -> dict:
    """Trains one tagger of `config` (its seed included) into `out`; returns its history."""
    return MemberRun(args, config, ddp, splits, tags, out, label).run()


def member_config(config: TaggerConfig, k: int) -> TaggerConfig:
    """The configuration of ensemble member k: seed + k, and the members cycle through the
    char_model list."""
    models = config.char_model.split(",")
    return dataclasses.replace(config, seed=config.seed + k, char_model=models[k % len(models)])


def train_member_process(args, config: TaggerConfig, out: pathlib.Path, threads: int,
                         load_data) -> dict:
    """train_member in a worker process of --jobs: its own threads, data and (single-process)
    Distributed; the same seed gives the same tagger as in the parent."""
    torch.set_num_threads(threads)
    splits, tags, _ = load_data(args)
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
                  jobs: int, load_data) -> list:
    """Each member's history, trained one after another, or in `jobs` worker processes at once
    (spawned: forking a process whose OpenMP threads have started can hang). A worker reads
    the data itself with `load_data(args)`."""
    if jobs == 1:
        return [train_member(args, c, ddp, splits, tags, f) for c, f in zip(configs, folders)]
    threads = threads_per_process(args, jobs)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        running = [pool.submit(train_member_process, args, c, f, threads, load_data)
                   for c, f in zip(configs, folders)]
        return [r.result() for r in running]
