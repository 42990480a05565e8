"""Figure helpers shared by the notebooks. Functions return Figures; they never show them.

Figures are saved as PNG with fixed metadata (no software version or date), so re-running
a notebook changes a reference figure only when its pixels change.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

#: Where the committed reference figures live (figures/<notebook>/<name>.png).
REPO_FIGURES = Path(__file__).resolve().parent.parent / "figures"
DPI = 110


def figure_dir(notebook: str, root: str | os.PathLike | None = None, smoke: bool = False) -> Path:
    """The folder a notebook writes its figures to, created if needed.

    `root` (a notebook parameter, or $CDFLOW_FIG_DIR) wins; otherwise smoke runs write to a
    temporary folder, so tests never overwrite the committed reference figures, and full
    runs write to the repository's figures/.
    """
    root = root or os.environ.get("CDFLOW_FIG_DIR")
    if not root:
        root = Path(tempfile.gettempdir()) / "cdflow_smoke_figures" if smoke else REPO_FIGURES
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
