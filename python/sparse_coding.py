"""Learn a sparse-coding dictionary on 8x8 patches of the images that ship with scikit-learn
(ebm_ext.sparse.DictionaryLearning: minibatch gradient steps on D of the mean free energy
F(y) = min_z ||y - D z||^2 + lam ||z||_1, codes by FISTA, gradients by the envelope theorem),
and draw its atoms and reconstructions.

    python python/sparse_coding.py --out runs/dictionary        # atoms.png, reconstructions.png, metrics.json
"""
from __future__ import annotations

import argparse
import pathlib
import time

import torch
from torch import Tensor

from ebm_ext.checkpoint import atomic_write_bytes
from ebm_ext.nn import SparseCodingEnergy
from ebm_ext.sparse import DictionaryLearning, energy_and_codes
from images import image_patches, noise_like
from loop import write_json


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
