"""Inference beyond Viterbi on a trained tagger's energy (python/tagger.py checkpoint):

  1. relaxed   gradient descent on relaxed tags with the fused ebm_ext.chain_relaxed_inference:
               accuracy after rounding, and on how many sentences rounding gives Viterbi's path;
  2. tag LM    a global energy: chain energy + w * tag language model (an LSTM over the relaxed
               tags, trained on the gold tag sequences), minimised by ebm_ext.inference.
               gradient_inference from the relaxed solution: the accuracy change;
  3. infnet    an inference network A(x) (the same feature network, started from the energy's own,
               softmax outputs) trained to minimise E(x, A(x)) with the energy frozen, plus
               `--local-weight` times the cross-entropy to the energy's local classifier
               argmin_k unary and `--gold-weight` times that to the gold tags (Tu & Gimpel's
               local term); test accuracy and decoding speed against Viterbi on the same energy.

  joint        (Tu & Gimpel 2018) trains, after a few epochs of local-classifier pretraining of the
               feature network, the energy with the margin-rescaled hinge
               [Delta(F(x), y) - E(x, F(x)) + E(x, y)]_+ whose competitor comes from a
               cost-augmented inference network F (trained to maximise the hinge; Delta is the
               relaxed L1 cost sum_t ||F_t(x) - onehot(y_t)||_1), and alongside a test-time
               inference network A that minimises E(x, A(x)); reports Viterbi and A on test.

    python python/inference_network.py analyse --checkpoint runs/main/best.pt --out runs/infnet
    python python/inference_network.py joint --out runs/infnet-joint
"""
from __future__ import annotations

import argparse
import copy
import pathlib
import time

import torch

import ebm_ext
from ebm_ext.tagging import data as D
from ebm_ext.inference import InferenceNetwork, TagLanguageModel, chain_plus_tag_lm, gradient_inference
from ebm_ext.nn import ChainEnergy
from ebm_ext.tagging import EnergyTagger, TaggerConfig, load_tagger
from ebm_ext.tagging.model import build_features
from ebm_ext.tagging.data import data_dir
from corpora import CORPORA, batches, read_splits as read_corpus, tagset
from loop import EpochCheckpoint, eval_mode, progress, write_json

# Sentences per batch: training steps, and evaluation (which only decodes).
TRAIN_BATCH, EVAL_BATCH = 16, 256


def encoded(sentences, vocabs, size):
    return [D.encode(chunk, vocabs) for chunk in batches(sentences, size)]


def positions(lengths, T):
    """(B, T) mask of the positions t < L."""
    return torch.arange(T)[None, :] < lengths[:, None]


def cross_entropy(y, targets, mask):
    """Mean -log y[target] over the masked positions of relaxed tags y (B, T, K)."""
    return torch.nn.functional.nll_loss(torch.log(y.clamp_min(1e-12))[mask], targets[mask])


def read_splits(args):
    """train, dev, test sentences of the corpus (first --limit of each)."""
    return read_corpus(args.corpus, data_dir(args.data_dir), args.limit)




def token_accuracy(pred_batches, data) -> float:
    correct = total = 0
    for tags, batch in zip(pred_batches, data):
        mask = positions(batch.lengths, batch.tags.shape[1])
        correct += ((tags == batch.tags) & mask).sum().item()
        total += mask.sum().item()
    return correct / max(1, total)


def chain_args(model, batch):
    with torch.no_grad():
        unary = model.features(batch)
    c = model.chain
    return unary, c.trans.detach(), batch.lengths, c.start.detach(), c.end.detach()


def timed(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def relaxed(model, test, steps, lr, method):
    viterbi_tags, relaxed_tags = [], []
    same = sentences = 0
    for batch in test:
        unary, trans, L, start, end = chain_args(model, batch)
        _, tags = ebm_ext.viterbi(unary, trans, L, start, end)
        probs, _ = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=steps, lr=lr, method=method)
        rounded = probs.argmax(-1).masked_fill(tags < 0, -1)
        viterbi_tags.append(tags)
        relaxed_tags.append(rounded)
        same += (rounded == tags).all(-1).sum().item()
        sentences += len(L)
    return {"viterbi_acc": token_accuracy(viterbi_tags, test), "relaxed_acc": token_accuracy(relaxed_tags, test),
            "rounding_is_viterbi": same / sentences, "steps": steps, "lr": lr, "method": method}


def train_tag_lm(train, K, epochs, seed, show, lr, out, resume):
    torch.manual_seed(seed)
    lm = TagLanguageModel(K)
    optimizer = torch.optim.Adam(lm.parameters(), lr=lr)
    checkpoint = EpochCheckpoint(out / "tag_lm.pt", {"lm": lm}, {"adam": optimizer}, resume)
    first, _ = checkpoint.start(1, {})
    for epoch in progress(range(first, epochs + 1), show, desc="tag LM"):
        for batch in train:
            loss = lm.nll(batch.tags, batch.lengths)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        checkpoint.save(epoch, {})
    return lm.eval()


def tag_lm_inference(model, lm, test, weight, steps, lr, relaxed_steps, relaxed_lr):
    for p in lm.parameters():  # inference only: the tag LM is fixed
        p.requires_grad_(False)
    predicted = []
    for batch in test:
        unary, trans, L, start, end = chain_args(model, batch)
        start_point, _ = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end,
                                                         steps=relaxed_steps, lr=relaxed_lr)
        mask = positions(L, unary.shape[1])[..., None].to(unary.dtype)
        start_point = torch.where(mask > 0, start_point, 1.0 / unary.shape[2])
        energy = chain_plus_tag_lm(unary, trans, L, start, end, lm, weight)
        y, _, _ = gradient_inference(energy, start_point.clamp_min(1e-6), steps=steps, lr=lr, mask=mask)
        predicted.append(y.argmax(-1).masked_fill(mask[..., 0] == 0, -1))
    return token_accuracy(predicted, test)


def train_inference_network(model, train, dev, epochs, lr, local_weight, gold_weight, show, out,
                            resume):
    net = InferenceNetwork(copy.deepcopy(model.features))
    for q in net.parameters():  # the copy of the frozen energy's network learns
        q.requires_grad_(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    checkpoint = EpochCheckpoint(out / "inference_network.pt", {"net": net}, {"adam": optimizer},
                                 resume)
    first, values = checkpoint.start(1, {"best": -1.0, "best_state": None, "history": []})
    best, best_state, history = values["best"], values["best_state"], values["history"]
    for epoch in progress(range(first, epochs + 1), show, desc="inference network"):
        net.train()
        total = 0.0
        for batch in train:
            unary, trans, L, start, end = chain_args(model, batch)
            y = net(batch)
            loss = ebm_ext.chain_energy(unary, trans, y, L, start, end).mean()
            mask = positions(L, y.shape[1])
            if local_weight > 0:
                loss = loss + local_weight * cross_entropy(y, unary.argmin(-1), mask)
            if gold_weight > 0:  # Tu & Gimpel's local cross-entropy on the gold tags
                loss = loss + gold_weight * cross_entropy(y, batch.tags, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        with eval_mode(net), torch.no_grad():
            acc = token_accuracy([net.decode(b) for b in dev], dev)
        history.append({"epoch": epoch, "loss": total / len(train), "dev_acc": acc})
        if acc > best:
            best, best_state = acc, copy.deepcopy(net.state_dict())
        checkpoint.save(epoch, {"best": best, "best_state": best_state, "history": history})
    net.load_state_dict(best_state)
    return net.eval(), history


def pretrain_local(features, train, args, out, show) -> None:
    """--pretrain-epochs of the feature network as a local classifier (token NLL), as Tu &
    Gimpel do; resumable from OUT/pretrain.pt."""
    opt = torch.optim.Adam(features.parameters(), lr=args.lr)
    pretrained = EpochCheckpoint(out / "pretrain.pt", {"features": features}, {"adam": opt},
                                 args.resume)
    first, _ = pretrained.start(1, {})
    features.train()
    for epoch in progress(range(first, args.pretrain_epochs + 1), show, desc="pretrain"):
        for batch in train:
            loss = ebm_ext.losses.token_nll(features(batch), batch.tags, batch.lengths)
            opt.zero_grad()
            loss.backward()
            opt.step()
        pretrained.save(epoch, {})


class Joint:
    """The three players of joint training: the energy (feature network + chain), the
    cost-augmented inference network F and the test-time inference network A, each with its
    Adam; both networks start as copies of the energy's network (A(x) = softmax(-unary))."""

    def __init__(self, features, chain, lr: float, local_weight: float):
        self.features, self.chain, self.local_weight = features, chain, local_weight
        self.cost_net = InferenceNetwork(copy.deepcopy(features))
        self.test_net = InferenceNetwork(copy.deepcopy(features))
        self.energy_params = list(features.parameters()) + list(chain.parameters())
        self.opt_energy = torch.optim.Adam(self.energy_params, lr=lr)
        self.opt_cost = torch.optim.Adam(self.cost_net.parameters(), lr=lr)
        self.opt_test = torch.optim.Adam(self.test_net.parameters(), lr=lr)

    def checkpoint(self, path, resume: bool) -> EpochCheckpoint:
        return EpochCheckpoint(
            path, {"features": self.features, "chain": self.chain, "cost_net": self.cost_net,
                   "test_net": self.test_net},
            {"energy": self.opt_energy, "cost": self.opt_cost, "test": self.opt_test}, resume)

    def train(self, mode: bool = True) -> None:
        for module in (self.features, self.cost_net, self.test_net):
            module.train(mode)

    def step(self, batch) -> float:
        """One batch for all three players; returns the hinge."""
        chain, L, K = self.chain, batch.lengths, self.chain.trans.shape[0]
        mask = positions(L, batch.tags.shape[1])[..., None].float()
        gold = torch.nn.functional.one_hot(batch.tags.clamp_min(0), K).float() * mask
        unary = self.features(batch)
        y = self.cost_net(batch) * mask
        delta = ((y - gold).abs() * mask).sum((1, 2))
        e_cost = ebm_ext.chain_energy(unary, chain.trans, y, L, chain.start, chain.end)
        e_gold = ebm_ext.chain_energy(unary, chain.trans, batch.tags, L, chain.start, chain.end)
        hinge = torch.relu(delta - e_cost + e_gold).mean()
        energy_loss = hinge
        if self.local_weight > 0:  # keep the unary energies a local classifier too
            energy_loss = energy_loss + self.local_weight * ebm_ext.losses.token_nll(unary, batch.tags, L)
        # F is the cost-augmented inference network: it maximises Delta(F(x), y) - E(x, F(x)),
        # the hinge's inner max (not the hinge itself, whose gradient vanishes once it is 0).
        cost_params = list(self.cost_net.parameters())
        grads_cost = torch.autograd.grad(-(delta - e_cost).mean(), cost_params, retain_graph=True)
        grads_energy = torch.autograd.grad(energy_loss, self.energy_params, allow_unused=True)
        for params, grads, opt in ((cost_params, grads_cost, self.opt_cost),
                                   (self.energy_params, grads_energy, self.opt_energy)):
            opt.zero_grad()
            for q, g in zip(params, grads):
                q.grad = g
            opt.step()
        e_test = ebm_ext.chain_energy(unary.detach(), chain.trans.detach(), self.test_net(batch), L,
                                      chain.start.detach(), chain.end.detach()).mean()
        self.opt_test.zero_grad()
        e_test.backward()
        self.opt_test.step()
        return hinge.item()

    def accuracies(self, data) -> tuple[float, float]:
        """(Viterbi on the energy, the test-time inference network) token accuracy on `data`."""
        self.train(False)
        with torch.no_grad():
            viterbi = token_accuracy([self.chain.decode(self.features(b), b.lengths) for b in data], data)
            net = token_accuracy([self.test_net.decode(b) for b in data], data)
        return viterbi, net

    def state(self):
        return copy.deepcopy([self.features.state_dict(), self.chain.state_dict(),
                              self.test_net.state_dict()])

    def load(self, state) -> None:
        for module, weights in zip((self.features, self.chain, self.test_net), state):
            module.load_state_dict(weights)


def joint(args) -> dict:
    """Energy + cost-augmented inference network + test-time inference network, trained together."""
    torch.manual_seed(args.seed)
    splits = read_splits(args)
    tags, _ = tagset(args.corpus, data_dir(args.data_dir))
    vocabs = D.Vocabularies.build(splits[0], tags)
    train, dev, test = (encoded(s, vocabs, size)
                        for s, size in zip(splits, (TRAIN_BATCH, EVAL_BATCH, EVAL_BATCH)))
    # The energy's network, from the TaggerConfig network options on the command line.
    features, chain = build_features(TaggerConfig.from_args(args), vocabs), ChainEnergy(len(vocabs.tags))
    show, out = not args.no_progress, pathlib.Path(args.out)
    if args.pretrain_epochs:
        pretrain_local(features, train, args, out, show)
    players = Joint(features, chain, args.lr, args.local_weight)
    checkpoint = players.checkpoint(out / "joint.pt", args.resume)
    first, values = checkpoint.start(1, {"history": [], "best": -1.0, "best_state": None,
                                         "seconds": 0.0})
    history, best, best_state = values["history"], values["best"], values["best_state"]
    start_time = time.perf_counter() - values["seconds"]
    for epoch in progress(range(first, args.epochs + 1), show, desc="joint"):
        players.train()
        hinge = sum(players.step(batch) for batch in train) / len(train)
        viterbi_dev, net_dev = players.accuracies(dev)
        history.append({"epoch": epoch, "hinge": hinge, "viterbi_dev": viterbi_dev,
                        "inference_network_dev": net_dev})
        if net_dev > best:
            best, best_state = net_dev, players.state()
        checkpoint.save(epoch, {"history": history, "best": best, "best_state": best_state,
                                "seconds": time.perf_counter() - start_time})
        print(f"joint epoch {epoch}: hinge {hinge:.4f}  inference network dev "
              f"{100 * net_dev:.2f}%", flush=True)
    players.load(best_state)
    viterbi_test, net_test = players.accuracies(test)
    metrics = {"history": history, "viterbi_test_acc": viterbi_test, "inference_network_test_acc": net_test,
               "seconds": time.perf_counter() - start_time, "config": vars(args)}
    write_json(metrics, out / "metrics.json")
    print(f"joint training ({args.epochs} epochs, {metrics['seconds']:.0f} s): Viterbi on the energy "
          f"{100 * viterbi_test:.2f} %, test-time inference network {100 * net_test:.2f} % (test)")
    return metrics


def analyse(args) -> dict:
    torch.manual_seed(args.seed)
    model, vocabs = load_tagger(args.checkpoint)
    if not isinstance(model, EnergyTagger):
        raise SystemExit(f"analyse: {args.checkpoint} holds an ensemble; give one tagger's "
                         "best.pt (an ensemble's members are in its member-k folders)")
    for q in model.parameters():
        q.requires_grad_(False)
    splits = read_splits(args)
    train, dev, test = (encoded(s, vocabs, size)
                        for s, size in zip(splits, (TRAIN_BATCH, EVAL_BATCH, EVAL_BATCH)))
    show = not args.no_progress
    metrics = {"checkpoint": str(args.checkpoint), "relaxed": {}}
    for method in ("entropic", "projected"):
        metrics["relaxed"][method] = relaxed(model, test, args.relaxed_steps, args.relaxed_lr, method)
    out = pathlib.Path(args.out)
    lm = train_tag_lm(train, len(vocabs.tags), args.tag_lm_epochs, args.seed, show, args.tag_lm_lr,
                      out, args.resume)
    metrics["tag_lm"] = {"weight": args.tag_lm_weight,
                         "acc": tag_lm_inference(model, lm, test, args.tag_lm_weight,
                                                 args.tag_lm_steps, args.tag_lm_step_size,
                                                 args.relaxed_steps, args.relaxed_lr)}
    net, history = train_inference_network(model, train, dev, args.epochs, args.lr, args.local_weight,
                                           args.gold_weight, show, out, args.resume)
    with torch.no_grad():
        infnet_acc = token_accuracy([net.decode(b) for b in test], test)
        one = D.encode(splits[2][:EVAL_BATCH], vocabs)
        n = len(one.lengths)
        _, t_viterbi = timed(lambda: model.chain.decode(model.features(one), one.lengths))
        _, t_net = timed(lambda: net.decode(one))
    metrics["inference_network"] = {"history": history, "test_acc": infnet_acc,
                                    "sentences_per_s_viterbi": n / t_viterbi,
                                    "sentences_per_s_net": n / t_net}
    metrics["viterbi_test_acc"] = metrics["relaxed"]["entropic"]["viterbi_acc"]
    write_json(metrics, pathlib.Path(args.out) / "metrics.json")
    r = metrics["relaxed"]
    print(f"Viterbi {100 * metrics['viterbi_test_acc']:.2f} %; relaxed+rounding: entropic "
          f"{100 * r['entropic']['relaxed_acc']:.2f} % ({100 * r['entropic']['rounding_is_viterbi']:.1f} % of "
          f"sentences = Viterbi's path), projected {100 * r['projected']['relaxed_acc']:.2f} % "
          f"({100 * r['projected']['rounding_is_viterbi']:.1f} %); chain + tag LM {100 * metrics['tag_lm']['acc']:.2f} %; "
          f"inference network {100 * infnet_acc:.2f} % at {n / t_net:.0f} sentences/s "
          f"(Viterbi {n / t_viterbi:.0f}/s, batch {n})")
    return metrics



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    j = sub.add_parser("joint", help="train energy, cost-augmented and test-time inference networks together")
    a = sub.add_parser("analyse", help="relaxed inference, tag LM and an inference network on a trained energy")
    a.add_argument("--checkpoint", required=True, help="a python/tagger.py checkpoint (the energy)")
    for q in (a, j):
        q.add_argument("--out", required=True)
        q.add_argument("--corpus", choices=sorted(CORPORA), default="twpos")
        q.add_argument("--data-dir")
        q.add_argument("--limit", type=int, default=0, help="use only the first N sentences of each split")
        q.add_argument("--seed", type=int, default=1)
        q.add_argument("--no-progress", action="store_true")
        q.add_argument("--threads", type=int, default=0)
        q.add_argument("--resume", action="store_true",
                       help="continue each training loop from its checkpoint in OUT")
    a.add_argument("--relaxed-steps", type=int, default=50)
    a.add_argument("--relaxed-lr", type=float, default=0.5)
    a.add_argument("--tag-lm-epochs", type=int, default=10)
    a.add_argument("--tag-lm-weight", type=float, default=0.2)
    a.add_argument("--tag-lm-lr", type=float, default=5e-3, help="Adam's rate for the tag LM")
    a.add_argument("--tag-lm-steps", type=int, default=30,
                   help="gradient-inference steps on chain + tag LM")
    a.add_argument("--tag-lm-step-size", type=float, default=0.2,
                   help="their step size (exponentiated gradient)")
    a.add_argument("--epochs", type=int, default=20, help="inference network epochs")
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--local-weight", type=float, default=0.0,
                   help="cross-entropy to the energy's local classifier argmin_k unary")
    a.add_argument("--gold-weight", type=float, default=0.0, help="cross-entropy to the gold tags")
    j.add_argument("--epochs", type=int, default=20)
    j.add_argument("--lr", type=float, default=1e-3)
    TaggerConfig.add_arguments(j, network_only=True)  # the energy's network, as tagger.py's
    j.add_argument("--pretrain-epochs", type=int, default=5, help="epochs of local-classifier pretraining")
    j.add_argument("--local-weight", type=float, default=1.0,
                   help="token NLL of the unary energies added to the energy's hinge (0: the hinge alone)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "joint":
        return joint(args)
    return analyse(args)

if __name__ == "__main__":
    main()
