"""Fit k-means as an energy-based model: F(y) = min_j ||y - W_j||^2 is lowered on the data.

Two trainers over ebm_ext.nn.KMeansEnergy / ebm_ext.nearest_centroid:
  lloyd      exact block-coordinate descent on sum_i F(y_i): assign (the argmin over z), then
             move each centroid to the mean of its points (the argmin over W); k-means++ seeding,
             empty clusters re-seeded with the points farthest from their centroids, stops when
             the centroids move less than tol (relative to the data's variance, as scikit-learn).
  minibatch  stochastic gradient descent on the mean free energy of minibatches (the gradient
             reaches each point's nearest centroid only: dF/dW_j = -2 (y - W_j)).

    python python/kmeans.py blobs  --out runs/kmeans      # 100 points in 5 groups, PNG picture
    python python/kmeans.py digits --out runs/kmeans      # scikit-learn's digits, adjusted Rand index
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import torch
from torch import Tensor

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from loop import progress, write_json  # noqa: E402

import ebm_ext  # noqa: E402
from ebm_ext.nn import KMeansEnergy  # noqa: E402


def kmeans_plus_plus(y: Tensor, k: int, generator: torch.Generator | None = None,
                     local_trials: int | None = None) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with scikit-learn's 2 + log k
    candidates per step, keeping the one that lowers the total energy most): (k, d) rows of y."""
    N = y.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"kmeans_plus_plus: k must be in [1, N={N}], got {k}")
    trials = local_trials or 2 + int(math.log(k))
    first = torch.randint(N, (1,), generator=generator, device="cpu").item()
    centers = [y[first]]
    closest = ((y - y[first]) ** 2).sum(1)
    for _ in range(1, k):
        weights = closest.double().clamp_min(0)
        if weights.sum() <= 0:  # every point sits on a centroid: any point will do
            weights = torch.ones_like(weights)
        picks = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator)
        candidates = y[picks.to(y.device)]
        dist = torch.minimum(closest.unsqueeze(0), torch.cdist(candidates, y) ** 2)
        best = dist.sum(1).argmin()
        centers.append(candidates[best])
        closest = dist[best]
    return torch.stack(centers)


def lloyd(y: Tensor, W: Tensor, max_iter: int = 300, tol: float = 1e-4,
          show_progress: bool = False) -> dict:
    """Lloyd's algorithm from centroids W (k, d). Returns {'W', 'index', 'inertia', 'n_iter',
    'reseeded'}: the final assignment and inertia (sum of free energies) are those of the
    returned centroids. tol = 0 runs exactly max_iter iterations."""
    if W.dim() != 2 or y.dim() != 2 or W.shape[1] != y.shape[1]:
        raise ValueError(f"lloyd: expected y (N, d) and W (k, d), got {tuple(y.shape)} and {tuple(W.shape)}")
    k = W.shape[0]
    W = W.clone()
    threshold = tol * y.var(0).mean().item()
    reseeded = n_iter = 0
    for n_iter in progress(range(1, max_iter + 1), show_progress, desc="lloyd"):
        dist2, index = ebm_ext.nearest_centroid(y, W)
        counts = torch.bincount(index, minlength=k)
        sums = torch.zeros_like(W).index_add_(0, index, y)
        new = sums / counts.clamp_min(1).unsqueeze(1).to(W.dtype)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed with the points worst served by their centroid
            reseeded += empty.numel()
            new[empty] = y[dist2.topk(empty.numel()).indices]
        shift = ((new - W) ** 2).sum().item()
        W = new
        if shift <= threshold:
            break
    dist2, index = ebm_ext.nearest_centroid(y, W)
    return {"W": W, "index": index, "inertia": dist2.double().sum().item(), "n_iter": n_iter,
            "reseeded": reseeded}


def fit_minibatch(y: Tensor, W: Tensor, epochs: int = 20, batch_size: int = 256, lr: float = 0.05,
                  generator: torch.Generator | None = None, show_progress: bool = False) -> dict:
    """Stochastic gradient descent on the mean free energy of minibatches, through autograd on
    ebm_ext.nn.KMeansEnergy. Returns {'W', 'index', 'inertia', 'history'} (inertia per epoch)."""
    model = KMeansEnergy(*W.shape, centroids=W)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for _ in progress(range(epochs), show_progress, desc="minibatch"):
        for batch in torch.randperm(y.shape[0], generator=generator).split(batch_size):
            loss = model(y[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            history.append(model(y).double().sum().item())
    W = model.W.detach()
    dist2, index = ebm_ext.nearest_centroid(y, W)
    return {"W": W, "index": index, "inertia": dist2.double().sum().item(), "history": history}


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
