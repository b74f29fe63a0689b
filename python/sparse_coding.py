"""Learn a sparse-coding dictionary on 8x8 patches of the images that ship with scikit-learn
(ebm_ext.sparse.DictionaryLearning: minibatch gradient steps on D of the mean free energy
F(y) = min_z ||y - D z||^2 + lam ||z||_1, codes by FISTA, gradients by the envelope theorem),
and draw its atoms and reconstructions.

    python python/sparse_coding.py --out runs/dictionary        # atoms.png, reconstructions.png, metrics.json
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from loop import atomic_write_bytes, write_json  # noqa: E402

from ebm_ext.nn import SparseCodingEnergy  # noqa: E402
from ebm_ext.sparse import DictionaryLearning, energy_and_codes  # noqa: E402


def image_patches(count: int, size: int = 8, seed: int = 0) -> Tensor:
    """`count` contrast-normalised size x size patches, (count, size*size) float32, drawn at
    random from scikit-learn's bundled sample images (grey levels in [0, 1]): each patch minus
    its mean, divided by its norm; nearly flat patches (norm < 0.01) are left out."""
    from sklearn.datasets import load_sample_images
    from sklearn.feature_extraction.image import extract_patches_2d
    rng = np.random.RandomState(seed)
    images = load_sample_images().images
    patches = []
    for image in images:
        grey = image.mean(2) / 255.0
        drawn = extract_patches_2d(grey, (size, size), max_patches=count, random_state=rng)
        patches.append(drawn.reshape(len(drawn), -1))
    patches = np.concatenate(patches)
    patches = patches - patches.mean(1, keepdims=True)
    norms = np.linalg.norm(patches, axis=1)
    patches = patches[norms > 0.01] / norms[norms > 0.01, None]
    if len(patches) < count:
        raise ValueError(f"image_patches: only {len(patches)} patches of contrast, asked for {count}")
    return torch.from_numpy(patches[rng.permutation(len(patches))[:count]]).float()


def noise_like(y: Tensor, seed: int = 0) -> Tensor:
    """Random patches with the statistics that contrast normalisation fixes: zero mean, and
    each the norm of the corresponding row of y."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(y.shape, generator=g, dtype=y.dtype)
    noise = noise - noise.mean(1, keepdim=True)
    return noise / noise.norm(dim=1, keepdim=True) * y.norm(dim=1, keepdim=True)


def save_pictures(model: SparseCodingEnergy, patches: Tensor, out: pathlib.Path, size: int = 8) -> None:
    import plots
    D = model.D.detach()
    plots.patch_grid(D.t(), out / "atoms.png", size, title=f"{D.shape[1]} learned atoms (columns of D)")
    _, z = energy_and_codes(model, patches)
    plots.reconstructions(patches, z @ D.t(), out / "reconstructions.png", size,
                          title=f"held-out patches (top) and D z* (bottom), lam = {model.lam}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for dictionary.pt, metrics.json and the pictures")
    p.add_argument("--patches", type=int, default=20000, help="training patches")
    p.add_argument("--held-out", type=int, default=2000)
    p.add_argument("--atoms", type=int, default=256)
    p.add_argument("--lam", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tol", type=float, default=1e-3, help="relative duality gap of the codes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    patches = image_patches(args.patches + args.held_out, seed=args.seed)
    train, held_out = patches[:args.patches], patches[args.patches:]
    start = time.perf_counter()
    learned = DictionaryLearning(args.atoms, lam=args.lam, epochs=args.epochs,
                                 batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 show_progress=not args.no_progress, tol=args.tol)
    learned.fit(train, held_out=held_out)
    model, history = learned.model_, learned.history_
    seconds = time.perf_counter() - start
    with torch.no_grad():
        data_energy = model(held_out).mean().item()
        noise_energy = model(noise_like(held_out, args.seed)).mean().item()
    metrics = {"history": history, "seconds": seconds, "held_out_energy": data_energy,
               "noise_energy": noise_energy, "config": vars(args)}
    write_json(metrics, out / "metrics.json")
    atomic_write_bytes(out / "dictionary.pt", lambda f: torch.save({"D": model.D.detach(), "lam": model.lam}, f))
    save_pictures(model, held_out[:32], out)
    print(f"dictionary of {args.atoms} atoms in {seconds:.1f} s: held-out free energy {data_energy:.4f}, "
          f"noise of the same norm {noise_energy:.4f}, {100 * history[-1]['nonzero']:.1f} % nonzero codes; "
          f"pictures in {out}")
    return metrics


if __name__ == "__main__":
    main()
