"""Fit k-means as an energy-based model (ebm_ext.cluster: F(y) = min_j ||y - W_j||^2 lowered on
the data by Lloyd's algorithm or by minibatch gradient steps) on two data sets, with a picture
and the adjusted Rand index.

    python python/kmeans.py blobs  --out runs/kmeans      # 100 points in 5 groups, PNG picture
    python python/kmeans.py digits --out runs/kmeans      # scikit-learn's digits, adjusted Rand index
"""
from __future__ import annotations

import argparse
import math
import pathlib
import time

import torch
from torch import Tensor

from loop import write_json

from ebm_ext.cluster import fit_minibatch, kmeans_plus_plus, lloyd


def blobs(n: int = 100, groups: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n points in `groups` Gaussian groups in the plane (std 0.6, centres on a circle of radius
    4), and the group of each."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(groups) * (2 * math.pi / groups)
    centres = 4 * torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.arange(n) % groups
    return centres[labels] + 0.6 * torch.randn(n, 2, generator=g), labels


def run_blobs(args) -> dict:
    import plots
    from sklearn.metrics import adjusted_rand_score
    y, labels = blobs(seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    fit = lloyd(y, kmeans_plus_plus(y, 5, g), tol=args.tol)
    sgd = fit_minibatch(y, kmeans_plus_plus(y, 5, g), epochs=50, batch_size=10, lr=0.05, generator=g)
    out = pathlib.Path(args.out)
    plots.kmeans_landscape(y, fit["W"], fit["index"], out / "kmeans_blobs.png")
    metrics = {"lloyd": {"inertia": fit["inertia"], "n_iter": fit["n_iter"],
                         "ari": adjusted_rand_score(labels.numpy(), fit["index"].numpy())},
               "minibatch": {"inertia": sgd["inertia"],
                             "ari": adjusted_rand_score(labels.numpy(), sgd["index"].numpy())}}
    write_json(metrics, out / "kmeans_blobs.json")
    print(f"blobs: Lloyd inertia {fit['inertia']:.2f} in {fit['n_iter']} iterations, "
          f"ARI {metrics['lloyd']['ari']:.3f}; minibatch inertia {sgd['inertia']:.2f}, "
          f"ARI {metrics['minibatch']['ari']:.3f}; picture {out / 'kmeans_blobs.png'}")
    return metrics


def run_digits(args) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.metrics import adjusted_rand_score
    digits = load_digits()
    y = torch.tensor(digits.data, dtype=torch.float32)
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    fit = lloyd(y, kmeans_plus_plus(y, 10, g), tol=args.tol, show_progress=not args.no_progress)
    seconds = time.perf_counter() - start
    ari = adjusted_rand_score(digits.target, fit["index"].numpy())
    metrics = {"ari": ari, "inertia": fit["inertia"], "n_iter": fit["n_iter"], "seconds": seconds}
    write_json(metrics, pathlib.Path(args.out) / "kmeans_digits.json")
    print(f"digits (1797 x 64, k=10): adjusted Rand index {ari:.3f}, inertia {fit['inertia']:.4g}, "
          f"{fit['n_iter']} Lloyd iterations, {seconds * 1000:.0f} ms")
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["blobs", "digits"])
    p.add_argument("--out", required=True, help="folder for the picture and metrics JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    return run_blobs(args) if args.command == "blobs" else run_digits(args)


if __name__ == "__main__":
    main()
