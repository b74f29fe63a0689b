"""Pictures saved as PNG: of the tagger runs (learning curves, the per-category confusion matrix,
the margin loss against the energy gap) and of the latent-variable energies (the k-means energy
landscape, dictionary atoms and reconstructions)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ebm_ext.checkpoint import atomic_write_bytes  # noqa: E402

import ebm_ext  # noqa: E402


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def learning_curves(histories: dict[str, list[dict]], path, title: str = "") -> None:
    """Training loss and dev accuracy per epoch, one line per run (label -> history)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax1.plot(epochs, [h["train_loss"] for h in history], marker=".", label=label)
        ax2.plot(epochs, [float("nan") if h["dev_acc"] is None else 100 * h["dev_acc"]
                          for h in history], marker=".", label=label)
    ax1.set(xlabel="epoch", ylabel="training loss (mean per sentence)", title="loss")
    ax2.set(xlabel="epoch", ylabel="dev token accuracy (%)", title="dev accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if len(histories) > 1:
        ax2.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def confusion_by_category(gold: list[str], pred: list[str], categories: dict[str, str], path,
                          title: str = "") -> None:
    """Row-normalised confusion between the categories of gold and predicted tags."""
    names = list(dict.fromkeys(categories[t] for t in categories))
    index = {c: i for i, c in enumerate(names)}
    counts = torch.zeros(len(names), len(names))
    for g, p in zip(gold, pred):
        counts[index[categories[g]], index[categories[p]]] += 1
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 1.0 * len(names) + 2))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{100 * rates[i, j]:.1f}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xlabel="predicted category", ylabel="gold category", title=title or "confusion (%)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def margin_loss_picture(path, margins=(0.5, 1.0, 2.0)) -> None:
    """The margin hinge as computed by ebm_ext.losses.margin_hinge on a two-path chain, against
    the gap E(y_hat) - E(gold)."""
    gap = torch.linspace(-3, 4, 281, dtype=torch.float64)
    unary = torch.stack([torch.zeros_like(gap), gap], -1)[:, None, :]
    trans = torch.zeros(2, 2, dtype=torch.float64)
    gold = torch.zeros(len(gap), 1, dtype=torch.long)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in margins:
        loss = ebm_ext.losses.margin_hinge(unary, trans, gold, m, reduction="none")
        ax.plot(gap, loss, label=f"m = {m}")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel="E(ŷ) − E(gold)  (ŷ: best path other than gold)",
           ylabel="[m + E(gold) − E(ŷ)]₊", title="margin hinge loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def kmeans_landscape(y, W, index, path, title: str = "") -> None:
    """2-D points coloured by their centroid, the centroids, and the free energy
    F(y) = min_j ||y - W_j||^2 over the plane (contours)."""
    y, W, index = y.cpu().double(), W.cpu().double(), index.cpu()
    lo, hi = y.min(0).values - 1.5, y.max(0).values + 1.5
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 300, dtype=torch.float64),
                            torch.linspace(lo[1], hi[1], 300, dtype=torch.float64), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)
    energy = ebm_ext.kmeans_energy(grid, W).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    filled = ax.contourf(gx, gy, energy, levels=20, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="free energy F(y) = min_j ||y − W_j||²")
    ax.scatter(y[:, 0], y[:, 1], c=index, cmap="tab10", s=18, edgecolors="white", linewidths=0.5)
    ax.scatter(W[:, 0], W[:, 1], marker="X", s=160, c="red", edgecolors="white", label="centroids W_j")
    ax.set(xlabel="y₁", ylabel="y₂", title=title or "k-means energy landscape", aspect="equal")
    ax.legend(loc="upper right")
    _save(fig, path)


def patch_grid(patches, path, size: int = 8, title: str = "") -> None:
    """Rows of `patches` (count, size*size) as a grid of small grey images, each scaled to its
    own range (atoms have no common scale)."""
    patches = patches.detach().cpu().double()
    count = patches.shape[0]
    cols = int(count ** 0.5 + 0.999)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.45, rows * 0.45 + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < count:
            ax.imshow(patches[k].reshape(size, size), cmap="gray", interpolation="nearest")
    fig.suptitle(title)
    _save(fig, path)


def reconstructions(patches, reconstructed, path, size: int = 8, title: str = "") -> None:
    """Patches (top row) above their reconstructions (bottom row), on a common grey scale."""
    patches, reconstructed = patches.detach().cpu().double(), reconstructed.detach().cpu().double()
    count = patches.shape[0]
    lo, hi = min(patches.min(), reconstructed.min()), max(patches.max(), reconstructed.max())
    fig, axes = plt.subplots(2, count, figsize=(count * 0.5, 1.4), squeeze=False)
    for k in range(count):
        for row, images in enumerate((patches, reconstructed)):
            axes[row, k].imshow(images[k].reshape(size, size), cmap="gray", vmin=lo, vmax=hi,
                                interpolation="nearest")
            axes[row, k].axis("off")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
