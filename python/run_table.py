"""Trains every criterion on the chosen corpora and writes the accuracy/time table of the
accuracy report (docs/reports/accuracy.md) to runs/table.md, one tagger.py run per row;
finished runs are reused.

    python python/run_table.py --corpora twpos ewt
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

from ebm_ext.checkpoint import atomic_write_bytes
from ebm_ext.losses import CRITERIA

HERE = pathlib.Path(__file__).resolve().parent

NAMES = {"token_nll": "feed-forward (token NLL)", "crf_nll": "CRF NLL", "perceptron": "perceptron",
         "margin": "margin hinge (k=2)", "margin_rescaled": "margin-rescaled, Hamming cost",
         "margin_rescaled_category": "margin-rescaled, category cost"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpora", nargs="+", default=["twpos", "ewt"], choices=["twpos", "ewt"])
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=tuple(CRITERIA))
    p.add_argument("--runs", default="runs", help="folder of the runs and of table.md")
    p.add_argument("--suffix", default="", help="appended to each run's folder name "
                   "(runs/<corpus>-<criterion><suffix>), to keep runs of other settings apart")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="arguments passed on to tagger.py train (e.g. --epochs 10)")
    args = p.parse_args(argv)
    runs = pathlib.Path(args.runs)
    rows = []
    for corpus in args.corpora:
        for criterion in args.criteria:
            out = runs / f"{corpus}-{criterion}{args.suffix}"
            metrics = out / "metrics.json"
            if not metrics.exists():
                cmd = [sys.executable, str(HERE / "tagger.py"), "train", "--corpus", corpus,
                       "--criterion", criterion, "--out", str(out), "--no-progress", *args.extra]
                print(" ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            m = json.loads(metrics.read_text())
            rows.append((corpus, criterion, m))
    lines = ["| corpus | criterion | dev acc | test acc | epochs (best) | training time |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for corpus, criterion, m in rows:
        members = m.get("members", [m])
        name = NAMES[criterion] + (f", ensemble of {len(members)}" if "members" in m else "")
        epochs = "; ".join(f"{len(x['history'])} ({x['best_epoch']})" for x in members)
        lines.append(f"| {corpus} | {name} | {100 * m['dev_acc']:.2f} | "
                     f"{100 * m['test_acc']:.2f} | {epochs} | {m['train_seconds'] / 60:.1f} min |")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(runs / "table.md", lambda f: f.write(text.encode("utf-8")))
    print(text)


if __name__ == "__main__":
    main()
