"""Figure helpers shared by the notebooks. Functions return Figures; they never show them.

Figures are saved as PNG with fixed metadata (no software version or date), so re-running
a notebook changes a reference figure only when its pixels change.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .paths import CHECKOUT, require_checkout

#: Where the committed reference figures live in a checkout (figures/<notebook>/<name>.png).
REPO_FIGURES = CHECKOUT / "figures"
DPI = 110


def figure_dir(notebook: str, root: str | os.PathLike | None = None, smoke: bool = False) -> Path:
    """The folder a notebook writes its figures to, created if needed.

    `root` (a notebook parameter, or $CDFLOW_FIG_DIR) wins; otherwise smoke runs write to a
    temporary folder, so tests never overwrite the committed reference figures, and full
    runs write to the repository's figures/ (outside a checkout: pass `root`).
    """
    root = root or os.environ.get("CDFLOW_FIG_DIR")
    if not root:
        root = (Path(tempfile.gettempdir()) / "cdflow_smoke_figures" if smoke
                else require_checkout("figures", "writing reference figures (figure_dir without a root)"))
    out = Path(root) / notebook
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_figure(fig, folder: str | os.PathLike, name: str) -> Path:
    """Save `fig` as folder/name.png with fixed metadata and return the path."""
    path = Path(folder) / f"{name}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def to_numpy_image(x) -> np.ndarray:
    """[3, H, W] or [H, W, 3] tensor/array in [0, 1] -> H x W x 3 float array clipped to [0, 1]."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    return np.clip(a, 0.0, 1.0)


def image_grid(images, titles=None, ncols: int | None = None, size: float = 2.6, suptitle: str | None = None):
    """A Figure showing images ([3, H, W] tensors or H x W x 3 arrays, or 2-d maps) in a grid."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
        if a.ndim == 2:
            im = ax.imshow(a, cmap="magma")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        else:
            ax.imshow(to_numpy_image(a))
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def training_curves(rows: list[dict], title: str | None = None):
    """Figure of a training log (rows of train.read_log): loss terms per epoch and validation SRCC."""
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(epochs, [r["loss"] for r in rows], "o-")
    axes[0].set(title="total loss", xlabel="epoch", yscale="log")
    for key, label in (("mse_all", "MSE all scales"), ("mse_partial", "sum of partial MSEs")):
        axes[1].plot(epochs, [r[key] for r in rows], "o-", label=label)
    for key, label in (("bpd_x", "bits/dim x (training)"), ("bpd_y", "bits/dim y (training)"),
                       ("val_bpd", "bits/dim, validation photos")):
        vals = [r.get(key) for r in rows]
        if any(v is not None for v in vals):
            axes[1].plot(epochs, vals, "s--", label=label)
    axes[1].set(title="loss terms", xlabel="epoch", yscale="log")
    axes[1].legend(fontsize=8)
    for key, label in (("val_srcc", "all"), ("val_srcc_aligned", "aligned"), ("val_srcc_nonaligned", "non-aligned")):
        vals = [r.get(key) for r in rows]
        if any(v is not None for v in vals):
            axes[2].plot(epochs, vals, "o-", label=label)
    axes[2].set(title="validation SRCC (EMA weights)", xlabel="epoch")
    axes[2].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def memory_modes_diagram():
    """Figure: what each training memory mode keeps for the backward pass, and what it recomputes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    colours = {"stored": "#d95f02", "recomputed": "#7570b3", "inverted": "#1b9e77", "input": "#666666",
               "latent": "#e6ab02"}
    modes = [
        ("ordinary autograd", "stored", False, "all activations of all steps kept (coupling nets: 512-ch maps)"),
        ("checkpoint per block", "recomputed", True, "each block's input kept; the block re-runs forward in backward"),
        ("inverse per block", "inverted", False, "nothing but outputs kept; inputs rebuilt by the exact inverse"),
    ]
    fig, ax = plt.subplots(figsize=(10.5, 3.6))
    for row, (name, kind, keeps_input, what) in enumerate(modes):
        y = 2 - row
        ax.text(-0.35, y + 0.25, name, ha="right", va="center", fontsize=10, weight="bold")
        ax.text(5.0, y + 0.25, what, ha="left", va="center", fontsize=8.5)
        for b in range(4):
            x0 = b * 1.1
            if keeps_input:
                ax.add_patch(FancyBboxPatch((x0 - 0.22, y + 0.15), 0.14, 0.2, boxstyle="round,pad=0.01",
                                            fc=colours["input"], ec="k"))
            ax.add_patch(FancyBboxPatch((x0, y), 0.8, 0.5, boxstyle="round,pad=0.02", fc=colours[kind], ec="k"))
            ax.text(x0 + 0.4, y + 0.25, f"block {b + 1}", ha="center", va="center", fontsize=8, color="white")
            ax.add_patch(FancyBboxPatch((x0 + 0.3, y - 0.32), 0.2, 0.2, boxstyle="round,pad=0.01",
                                        fc=colours["latent"], ec="k"))
            ax.annotate("", xy=(x0 + 0.4, y - 0.1), xytext=(x0 + 0.4, y), arrowprops=dict(arrowstyle="->", lw=0.8))
    labels = {"stored": "activations kept from the forward pass", "recomputed": "re-run forward from a kept input",
              "inverted": "input rebuilt through the inverse, then re-run", "input": "kept block input",
              "latent": "latent z_k (kept: the loss needs it)"}
    ax.legend([plt.Rectangle((0, 0), 1, 1, fc=colours[k]) for k in labels], list(labels.values()),
              loc="upper center", bbox_to_anchor=(0.5, -0.0), ncol=3, fontsize=8, frameon=False)
    ax.set_xlim(-3.2, 11.5)
    ax.set_ylim(-0.9, 2.7)
    ax.axis("off")
    fig.tight_layout()
    return fig


def markdown_table(header, rows) -> str:
    """A markdown table from a header and rows of cells (cells are shown with str())."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])
