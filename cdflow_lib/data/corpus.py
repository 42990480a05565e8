"""The photo corpus: the colour photographs shipped inside our dependencies, and about 160 more.

Two sets, nothing downloaded:

- the **package photos** (corpus ``"package"``): the 11 colour photographs that scikit-image,
  scikit-learn and matplotlib install with themselves. The tour and the analyses use them.
- the **Debian photos**: free photographs curated from Debian's archive by
  ``tools/build_photo_corpus.py`` and committed under ``data/photos/`` (512 px on the short
  side, JPEG 4:4:4) with ``manifest.csv`` (source package, author, licence). They live in
  the repository, not in the installed package: outside a checkout, set ``CDFLOW_DATA`` to
  a folder holding ``photos/``.

Corpus ``"photos"`` is both together (the default for training data). Licences and
attributions: data/README.md. Each photograph is cropped to a square and resized with
PIL's antialiased Lanczos filter, deterministically.

Crops: crop 0 is the largest centred square. With ``crops_per_image = n > 1`` crops 1 .. n-1
are squares of side ``SUB_CROP_FRACTION`` x the short side, placed at fixed positions
(``SUB_CROP_POSITIONS``, in order: the four corners, then the middle of each edge), so a
photograph gives up to 9 distinct, overlapping views. All crops of one photograph share its
name as their *source*: splits are made by source, never by crop.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..paths import ENV_DATA, MissingDataError, require_data  # noqa: F401  (re-exported for users)

#: Side of the sub-crops (crops 1 ..) as a fraction of the photograph's short side.
SUB_CROP_FRACTION = 0.75
#: Where sub-crop i (i >= 1) sits: (fy, fx) = fraction of the free room above / left of it.
SUB_CROP_POSITIONS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0),
                      (0.0, 0.5), (1.0, 0.5), (0.5, 0.0), (0.5, 1.0))
MAX_CROPS_PER_IMAGE = 1 + len(SUB_CROP_POSITIONS)


def _skimage(name: str):
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img   # stereo_motorcycle: (left, right, disparity)
    return load


def _sklearn(filename: str):
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)
    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


#: name -> loader returning an H x W x 3 uint8 array. Sorted by name; the order is part of
#: the deterministic split (see synthetic.split_sources).
PHOTOS = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "china": _sklearn("china.jpg"),
    "coffee": _skimage("coffee"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "rocket": _skimage("rocket"),
    "stereo_motorcycle": _skimage("stereo_motorcycle"),
}


#: The corpora: the package photos alone, or the package photos and the Debian photos.
CORPORA = ("package", "photos")
def photos_dir() -> Path:
    """The folder of the Debian photos and their manifest; a MissingDataError naming where it looked."""
    return require_data("photos/manifest.csv", "the Debian photo corpus").parent


@lru_cache(maxsize=None)
def _manifest(folder: Path) -> tuple[dict, ...]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
        return tuple(csv.DictReader(f))


def photo_manifest() -> list[dict]:
    """The rows of data/photos/manifest.csv (file, package, version, original_path, author, licence, licence_url)."""
    return [dict(r) for r in _manifest(photos_dir())]


def debian_photo_names() -> list[str]:
    """Names of the Debian photos (file stems, sorted)."""
    return sorted(Path(r["file"]).stem for r in _manifest(photos_dir()))


def photo_group(name: str) -> str:
    """The source group a photograph is stratified by: 'package' for the 11, else its Debian package
    (gcompris-qt-data: per resource bundle, e.g. 'gcompris-qt-data:erase')."""
    if name in PHOTOS:
        return "package"
    row = next((r for r in _manifest(photos_dir()) if Path(r["file"]).stem == name), None)
    if row is None:
        raise ValueError(f"unknown photograph {name!r}")
    if row["package"] == "gcompris-qt-data":
        return f"{row['package']}:{Path(row['original_path'].split(':', 1)[0]).stem}"
    return row["package"]


def corpus_names(corpus: str = "package") -> list[str]:
    """Names of the photographs of `corpus` (sorted): 'package' (the 11) or 'photos' (package + Debian)."""
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    return sorted(PHOTOS) if corpus == "package" else sorted([*PHOTOS, *debian_photo_names()])


def _load_debian(name: str) -> np.ndarray:
    folder = photos_dir()
    with Image.open(folder / f"{name}.jpg") as img:
        return np.asarray(img.convert("RGB"))


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The full photograph `name` as an H x W x 3 uint8 array (read-only), from its package or data/photos/."""
    if name in PHOTOS:
        img = PHOTOS[name]()
    elif name in debian_photo_names():
        img = _load_debian(name)
    else:
        raise ValueError(f"unknown photograph {name!r}; the package photos are {sorted(PHOTOS)}, "
                         f"the Debian photos are listed in {photos_dir() / 'manifest.csv'}")
    img = np.ascontiguousarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"photograph {name!r}: expected H x W x 3 uint8, got {img.shape} {img.dtype}")
    img.setflags(write=False)
    return img


def crop_box(height: int, width: int, crop: int = 0) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of square crop number `crop` of an image of height x width pixels."""
    if not 0 <= crop < MAX_CROPS_PER_IMAGE:
        raise ValueError(f"crop must lie in [0, {MAX_CROPS_PER_IMAGE - 1}], got {crop}")
    short = min(height, width)
    side = short if crop == 0 else int(round(SUB_CROP_FRACTION * short))
    fy, fx = (0.5, 0.5) if crop == 0 else SUB_CROP_POSITIONS[crop - 1]
    top = int(round(fy * (height - side)))
    left = int(round(fx * (width - side)))
    return left, top, left + side, top + side


def photo_tensor(name: str, size: int, crop: int = 0) -> torch.Tensor:
    """Square crop `crop` of photograph `name`, resized to size x size: [3, size, size] float32 sRGB in [0, 1]."""
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8 pixels, got {size!r}")
    img = load_photo(name)
    pil = Image.fromarray(img).crop(crop_box(img.shape[0], img.shape[1], crop))
    pil = pil.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def crop_name(source: str, crop: int) -> str:
    """The corpus name of crop `crop` of photograph `source`: the source itself for crop 0, else 'source#crop'."""
    return source if crop == 0 else f"{source}#{crop}"


def source_of(name: str) -> str:
    """The photograph a corpus name comes from ('coffee#3' -> 'coffee')."""
    return name.split("#", 1)[0]


def load_corpus(size: int, crops_per_image: int = 1, corpus: str = "package") -> list[tuple[str, torch.Tensor]]:
    """Every photograph of `corpus` ('package' or 'photos') as (name, [3, size, size] float32 sRGB in [0, 1]).

    With crops_per_image = n, each photograph gives n crops (see the module docstring),
    named 'photo', 'photo#1', ..., 'photo#{n-1}'; use `source_of` to group them.
    """
    if not isinstance(crops_per_image, int) or not 1 <= crops_per_image <= MAX_CROPS_PER_IMAGE:
        raise ValueError(f"crops_per_image must be an integer in [1, {MAX_CROPS_PER_IMAGE}], got {crops_per_image!r}")
    return [(crop_name(name, c), photo_tensor(name, size, c))
            for name in corpus_names(corpus) for c in range(crops_per_image)]
