"""The pictures of the documentation that are computed, drawn anew at every build (conf.py), so
they cannot drift from the library: the energy of one chain and its Viterbi path."""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import ebm_ext  # noqa: E402


def chain_energy(path: pathlib.Path) -> None:
    """A chain of 6 positions and 4 tags: every tag's unary energy as a dot, every move as a
    line (darker = lower energy), and the minimum-energy path from `ebm_ext.viterbi` in red."""
    generator = torch.Generator().manual_seed(3)
    T, K = 6, 4
    unary = torch.rand(1, T, K, generator=generator, dtype=torch.float64) * 4
    trans = torch.rand(K, K, generator=generator, dtype=torch.float64) * 2
    energy, tags = ebm_ext.viterbi(unary, trans)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    lo, hi = float(trans.min()), float(trans.max())
    for t in range(1, T):
        for i in range(K):
            for j in range(K):
                shade = 0.85 - 0.6 * (hi - float(trans[i, j])) / (hi - lo)
                ax.plot([t - 1, t], [i, j], color=str(shade), lw=0.8, zorder=1)
    path_tags = tags[0].tolist()
    ax.plot(range(T), path_tags, color="tab:red", lw=2.5, zorder=2,
            label=f"argmin path, E = {float(energy):.2f}")
    for t in range(T):
        for k in range(K):
            ax.scatter(t, k, s=60 + 90 * float(unary[0, t, k]), color="tab:blue", zorder=3)
            ax.annotate(f"{float(unary[0, t, k]):.1f}", (t, k), xytext=(6, 4),
                        textcoords="offset points", fontsize=7)
    ax.set_xticks(range(T), [f"t={t}" for t in range(T)])
    ax.set_yticks(range(K), [f"tag {k}" for k in range(K)])
    ax.set_ylim(-0.6, K - 0.4)
    ax.set_xlim(-0.3, T - 0.5)
    ax.set_title("E(x, y) = Σ unary[t, y_t] + Σ trans[y_{t−1}, y_t]: dots are unary energies "
                 "(size), lines transitions (darker = lower)", fontsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(static: pathlib.Path) -> None:
    chain_energy(static / "chain_energy.png")
