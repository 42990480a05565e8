"""Data: the embedded photo corpus, synthetic pairs with a simulated observer, and SPCD.

Modules: `corpus` (the photo corpus: photographs shipped in our dependencies and the Debian photos of data/photos), `distortions` (SPCD-like
colour distortion families), `transforms` (misalignment, the authors' augmentation),
`observer` (the simulated observer: synthetic labels), `synthetic` (`SyntheticPairs`),
`spcd` (the SPCD reader). `pairs_from_env` picks SPCD when $SPCD_ROOT is set and the
synthetic pairs otherwise; `spcd_datasets` builds SPCD's three splits; data/README.md says
how to point everything at SPCD.
"""
from __future__ import annotations

import os
from pathlib import Path

from .corpus import corpus_names, load_corpus, load_photo, source_of
from .distortions import FAMILIES, apply_distortion, render_distortion, sample_distortion
from .observer import pooled_delta_e, simulated_observer
from .spcd import (SPCDPairs, SPCDRow, find_duplicates, label_statistics, pair_is_aligned, read_spcd_labels,
                   scene_split)
from .synthetic import PairSpec, SyntheticPairs, split_sources
from .transforms import PairAugment, affine_warp, misalign

#: Environment variables read by `pairs_from_env`.
ENV_ROOT = "SPCD_ROOT"
ENV_LABELS = "SPCD_LABELS"


def spcd_pairs(split: str, root, labels=None, size: int | None = None, augment: bool = False,
               sync_augment: bool = False, seed: int = 0) -> SPCDPairs:
    """SPCD's pairs of `split` ('train', 'val' or 'test'), every referenced image checked.

    root: the folder of SPCD's images. labels (default: root): a folder holding the
    authors' train.csv / val.csv / test.csv (used as split), or one label file in either
    format (split by scene with `scene_split(scene, seed)`). augment=True uses the authors'
    training augmentation (`transform='train'`, output `size` or 768); otherwise the
    authors' test transform (images as stored, 1024 x 1024, or resized to `size`).
    """
    labels = Path(labels if labels is not None else root)
    transform = "train" if augment else "test"
    if labels.is_dir():
        csv_path = labels / f"{split}.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"{labels} has no {split}.csv: give the folder of the authors' "
                                    "train.csv / val.csv / test.csv or one label file")
        return SPCDPairs(root, csv_path, split=None, transform=transform, size=size, sync_augment=sync_augment)
    return SPCDPairs(root, labels, split=split, transform=transform, size=size, seed=seed, sync_augment=sync_augment)


def spcd_datasets(root, labels=None, **options) -> tuple[SPCDPairs, SPCDPairs, SPCDPairs]:
    """(train, val, test) `spcd_pairs` with the same options (the training set is not augmented
    unless options say augment=True; the validation and test sets never are)."""
    augment = options.pop("augment", False)
    return (spcd_pairs("train", root, labels, augment=augment, **options),
            spcd_pairs("val", root, labels, **options), spcd_pairs("test", root, labels, **options))


def pairs_from_env(split: str, size: int = 128, seed: int = 0, augment: bool = False, sync_augment: bool = False,
                   environ=None, **synthetic_options):
    """The pair set of `split` ('train', 'val' or 'test'): SPCD if $SPCD_ROOT is set, else synthetic.

    SPCD: `spcd_pairs(split, $SPCD_ROOT, $SPCD_LABELS, size, augment, sync_augment, seed)`
    ($SPCD_LABELS defaults to $SPCD_ROOT). Otherwise `SyntheticPairs(split, size, seed=seed,
    augment=augment, sync_augment=sync_augment, **synthetic_options)`, whose labels are
    synthetic. `environ` (default os.environ) is where the variables are read.
    """
    env = os.environ if environ is None else environ
    root = env.get(ENV_ROOT)
    if not root:
        return SyntheticPairs(split, size=size, seed=seed, augment=augment, sync_augment=sync_augment,
                              **synthetic_options)
    if synthetic_options:
        raise ValueError(f"options {sorted(synthetic_options)} apply to synthetic pairs only, but ${ENV_ROOT} is set")
    return spcd_pairs(split, root, env.get(ENV_LABELS) or None, size=size, augment=augment,
                      sync_augment=sync_augment, seed=seed)


__all__ = [
    "FAMILIES", "PairAugment", "PairSpec", "SPCDPairs", "SPCDRow", "SyntheticPairs", "affine_warp",
    "apply_distortion", "corpus_names", "find_duplicates", "label_statistics", "load_corpus", "load_photo", "misalign",
    "pair_is_aligned", "pairs_from_env", "pooled_delta_e", "read_spcd_labels", "render_distortion",
    "sample_distortion", "scene_split", "spcd_datasets", "spcd_pairs", "simulated_observer", "source_of", "split_sources",
]
