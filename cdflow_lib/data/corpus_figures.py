"""Figures of the photo corpus: a contact sheet that carries each photograph's attribution.

Kept apart from `corpus` (which only reads photographs) so the reader needs no matplotlib.
"""
from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image

from .corpus import load_photo

#: Characters per line of a thumbnail's caption (author and licence), at CAPTION_FONTSIZE.
CAPTION_WIDTH = 38
CAPTION_FONTSIZE = 6.5


def thumbnail(name: str, longest: int = 256) -> np.ndarray:
    """The whole photograph `name` (aspect kept), `longest` px on its long side: H x W x 3 uint8."""
    img = Image.fromarray(load_photo(name))
    img.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return np.asarray(img)


def contact_sheet(names, titles, captions, ncols: int = 6, size: float = 2.4, suptitle: str | None = None):
    """A Figure of whole photographs as thumbnails: `titles` above and `captions` below each.

    names: corpus photograph names; titles, captions: one string each (a caption is wrapped
    to CAPTION_WIDTH characters: use it for the author and licence, which a figure showing
    share-alike or attribution-licensed photographs must carry). size: inches per cell.
    """
    import matplotlib.pyplot as plt

    if not len(names) == len(titles) == len(captions):
        raise ValueError(f"need one title and one caption per photograph, got {len(names)}, {len(titles)}, "
                         f"{len(captions)}")
    nrows = (len(names) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, 1.2 * size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name, title, caption in zip(axes.flat, names, titles, captions):
        ax.imshow(thumbnail(name))
        ax.set_title(title, fontsize=8)
        ax.text(0.5, -0.03, textwrap.fill(caption, CAPTION_WIDTH), transform=ax.transAxes, ha="center", va="top",
                fontsize=CAPTION_FONTSIZE)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
