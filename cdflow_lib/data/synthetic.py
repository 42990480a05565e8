"""Synthetic colour-difference pairs on the embedded photo corpus, labelled by the simulated observer.

A stand-in for SPCD that runs anywhere: every number measured on these pairs is measured
on **synthetic labels** (see `observer`), and should be reported as such.

Each pair is a `PairSpec`: a reference image (a crop of a corpus photograph), a distortion
family, a strength, the distortion's parameters, an optional mild misalignment of the test
image and the seed of the observer noise. Specs are drawn from a generator seeded with
(seed, photograph, pair index), so they depend on nothing else: a pair keeps its content
when pairs_per_image grows, and the same seed gives bit-identical pairs and labels.

Splits are made by source photograph, never by pair (`split_sources`). Labels are computed
once, when the dataset is built, on the aligned pairs; images are rendered on access.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .corpus import CORPORA, MAX_CROPS_PER_IMAGE, corpus_names, crop_name, photo_group, photo_tensor
from .distortions import FAMILIES, render_distortion, sample_distortion
from .observer import dv_from_pooled, observer_noise, pooled_delta_e
from .spcd import SPLIT_FRACTIONS
from .transforms import PairAugment, misalign, sample_misalignment

#: Strengths are drawn log-uniformly from this range (SPCD's labels are roughly log-normal:
#: their log-quantiles are symmetric about the median); below about 0.25 many pairs would
#: be near-invisible, which SPCD (smallest ΔV 0.93) does not contain.
STRENGTH_RANGE = (0.25, 1.0)
#: SPCD's share of non-aligned pairs (10,005 of 30,000).
DEFAULT_MISALIGNED_FRACTION = 1.0 / 3.0
DEFAULT_PAIRS_PER_IMAGE = 48
DEFAULT_CROPS_PER_IMAGE = 5
#: Pairs labelled per batch when a dataset is built (fixed, so labels never depend on batching).
LABEL_CHUNK = 16
#: Bump when generation changes, so stale label caches are never reused.
#: 2: milder misalignment (SPCD-like phone captures) and the photo corpus.
GENERATOR_VERSION = 2
#: Debian photos held out for validation and (beside the 11 package photos) for test, corpus 'photos'.
PHOTOS_N_VAL, PHOTOS_N_TEST_EXTRA = 20, 15
#: Sub-streams of the seed (split assignment vs pair drawing).
_SPLIT_STREAM, _PAIR_STREAM = 1, 2


def split_sources(seed: int = 0, corpus: str = "photos") -> dict[str, list[str]]:
    """The corpus photographs of each split: {'train': [...], 'val': [...], 'test': [...]}.

    corpus 'photos': test = the 11 package photos (the tour and the analyses use them) and
    PHOTOS_N_TEST_EXTRA Debian photos, val = PHOTOS_N_VAL Debian photos, train = the rest,
    stratified by source group (`corpus.photo_group`): each group's photos are shuffled
    with `seed` and spread evenly over one ordering, and the split labels are spread evenly
    over the same ordering, so every source contributes to each split in proportion.

    corpus 'package' (the 11 alone): a permutation seeded with `seed`; val and test get
    round(fraction x 11) photographs with SPCD's fractions (1 and 2), train the rest.
    """
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    names = corpus_names("package")
    if corpus == "package":
        order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(len(names))
        shuffled = [names[i] for i in order]
        n_val = max(1, round(SPLIT_FRACTIONS["val"] * len(names)))
        n_test = max(1, round(SPLIT_FRACTIONS["test"] * len(names)))
        return {"train": sorted(shuffled[n_val + n_test:]), "val": sorted(shuffled[:n_val]),
                "test": sorted(shuffled[n_val:n_val + n_test])}
    debian = [n for n in corpus_names("photos") if n not in names]
    groups: dict[str, list[str]] = {}
    for n in debian:
        groups.setdefault(photo_group(n), []).append(n)
    order = sorted(groups)
    held = {"test": _apportion([len(groups[g]) for g in order], PHOTOS_N_TEST_EXTRA),
            "val": _apportion([len(groups[g]) for g in order], PHOTOS_N_VAL)}
    out = {"train": [], "val": [], "test": list(names)}
    for g, group in enumerate(order):
        members = list(np.random.default_rng([seed, _SPLIT_STREAM, g]).permutation(groups[group]))
        n_test, n_val = held["test"][g], held["val"][g]
        out["test"] += members[:n_test]
        out["val"] += members[n_test:n_test + n_val]
        out["train"] += members[n_test + n_val:]
    return {k: sorted(str(n) for n in v) for k, v in out.items()}


def _apportion(sizes: list[int], total: int) -> list[int]:
    """Split `total` over groups in proportion to their sizes (largest remainder; ties to the larger group)."""
    n = sum(sizes)
    quotas = [total * s / n for s in sizes]
    shares = [int(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - shares[i]), -sizes[i], i))
    for i in by_remainder[:total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True)
class PairSpec:
    """Everything that defines one synthetic pair (plain values, JSON-serialisable)."""
    source: str
    crop: int
    family: str
    strength: float
    params: dict = field(hash=False)
    misalignment: dict | None = field(hash=False)
    noise_seed: int

    @property
    def image(self) -> str:
        """The corpus name of the reference crop ('coffee', 'coffee#2')."""
        return crop_name(self.source, self.crop)

    @property
    def aligned(self) -> bool:
        return self.misalignment is None


def draw_pair_spec(seed: int, source: str, index: int, size: int, crops_per_image: int,
                   misaligned_fraction: float) -> PairSpec:
    """Pair `index` of photograph `source`: drawn from a generator seeded with (seed, photo, index)."""
    photo = corpus_names("photos").index(source)
    rng = np.random.default_rng([seed, _PAIR_STREAM, photo, index])
    crop = int(rng.integers(crops_per_image))
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    strength = float(np.exp(rng.uniform(*np.log(STRENGTH_RANGE))))
    params = sample_distortion(family, rng)
    shift = sample_misalignment(rng, size)
    misaligned = bool(rng.random() < misaligned_fraction)
    return PairSpec(source, crop, family, strength, params, shift if misaligned else None,
                    int(rng.integers(2 ** 31)))


def render_pair(spec: PairSpec, reference: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """The test image of `spec` for its reference image [3, H, W]; aligned=True skips the misalignment."""
    y = render_distortion(reference, spec.family, spec.params, spec.strength)
    if spec.misalignment is not None and not aligned:
        y = misalign(y, **spec.misalignment)
    return y


class SyntheticPairs(Dataset):
    """Synthetic pairs of one split; item = dict(x, y, dv, aligned, family, strength, source).

    x, y: [3, size, size] float32 sRGB in [0, 1] (y misaligned for non-aligned pairs);
    dv: float32 scalar tensor, the simulated observer's label of the aligned pair (synthetic);
    aligned: bool; family: one of distortions.FAMILIES; strength: float in STRENGTH_RANGE;
    source: the corpus photograph.

    split: 'train', 'val' or 'test' (photographs by `split_sources(seed, corpus)`); corpus:
    'photos' (package + Debian photos, the default) or 'package' (the 11 alone); size: pixels;
    pairs_per_image: pairs per source photograph; seed: everything random (split, pairs,
    noise) follows from it; misaligned_fraction: probability of a non-aligned pair;
    augment: the authors' training augmentation (`PairAugment`, drawn from torch's global
    generator, so not reproducible unless torch is seeded); sync_augment: one draw for both
    images instead of two independent ones; cache_dir: a folder to keep the computed labels
    in: the pooled ΔE00 of every pair, the expensive part,
    keyed by every parameter above and GENERATOR_VERSION (the mapping to ΔV is reapplied); crops_per_image: square
    crops per photograph the references are drawn from (see corpus).
    """

    def __init__(self, split: str, size: int = 128, pairs_per_image: int = DEFAULT_PAIRS_PER_IMAGE, seed: int = 0,
                 misaligned_fraction: float = DEFAULT_MISALIGNED_FRACTION, augment: bool = False,
                 sync_augment: bool = False, cache_dir=None, crops_per_image: int = DEFAULT_CROPS_PER_IMAGE,
                 corpus: str = "photos"):
        if split not in SPLIT_FRACTIONS:
            raise ValueError(f"split must be one of {list(SPLIT_FRACTIONS)}, got {split!r}")
        if not isinstance(pairs_per_image, int) or pairs_per_image < 1:
            raise ValueError(f"pairs_per_image must be a positive integer, got {pairs_per_image!r}")
        if not 0.0 <= misaligned_fraction <= 1.0:
            raise ValueError(f"misaligned_fraction must lie in [0, 1], got {misaligned_fraction}")
        if not isinstance(crops_per_image, int) or not 1 <= crops_per_image <= MAX_CROPS_PER_IMAGE:
            raise ValueError(f"crops_per_image must be an integer in [1, {MAX_CROPS_PER_IMAGE}], got {crops_per_image!r}")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.config = dict(version=GENERATOR_VERSION, split=split, size=self.size, pairs_per_image=pairs_per_image,
                           seed=self.seed, misaligned_fraction=float(misaligned_fraction),
                           crops_per_image=crops_per_image, corpus=corpus)
        self.corpus = corpus
        self.sources = split_sources(seed, corpus)[split]
        self.config["sources"] = self.sources   # the label cache is keyed by the photographs too
        self.specs = [draw_pair_spec(seed, s, k, self.size, crops_per_image, misaligned_fraction)
                      for s in self.sources for k in range(pairs_per_image)]
        crops = sorted({(spec.source, spec.crop) for spec in self.specs})
        self.references = {crop_name(s, c): photo_tensor(s, self.size, c) for s, c in crops}
        self.augment = PairAugment(self.size, sync=sync_augment) if augment else None
        #: [N] pooled S-CIELAB ΔE00 of each aligned pair, [N] its observer-noise draw, [N] its label.
        self.pooled = self._cached_pooled(cache_dir)
        self.noise = torch.cat([observer_noise(s.noise_seed) for s in self.specs])
        self.labels = dv_from_pooled(self.pooled, self.noise)

    def _pooled(self) -> torch.Tensor:
        """[N] pooled S-CIELAB ΔE00 of the aligned pairs, in fixed chunks of LABEL_CHUNK."""
        from tqdm.auto import tqdm

        raw = []
        starts = range(0, len(self.specs), LABEL_CHUNK)
        for start in tqdm(starts, desc=f"labelling {self.split} pairs", unit="chunk", disable=len(starts) < 8,
                          leave=False):
            chunk = self.specs[start:start + LABEL_CHUNK]
            x = torch.stack([self.references[s.image] for s in chunk])
            y = torch.stack([render_pair(s, self.references[s.image], aligned=True) for s in chunk])
            raw.append(pooled_delta_e(x, y))
        return torch.cat(raw)

    def _cached_pooled(self, cache_dir) -> torch.Tensor:
        if cache_dir is None:
            return self._pooled()
        from ..checkpoints import atomic_save, safe_load

        key = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"synthetic_{self.split}_{key}.pt"
        if path.is_file():
            cached = safe_load(path, "synthetic label cache")
            if cached.get("config") == self.config and cached["pooled"].shape == (len(self.specs),):
                return cached["pooled"]
        pooled = self._pooled()
        atomic_save({"config": self.config, "pooled": pooled}, path)
        return pooled

    def __len__(self) -> int:
        return len(self.specs)

    def item(self, i: int, aligned: bool = False) -> dict:
        """Item i without augmentation; aligned=True gives its aligned twin (same label, y not misaligned)."""
        spec = self.specs[i]
        x = self.references[spec.image]
        return dict(x=x.clone(), y=render_pair(spec, x, aligned=aligned), dv=self.labels[i].clone(),
                    aligned=spec.aligned or aligned, family=spec.family, strength=spec.strength, source=spec.source)

    def aligned_twin(self, i: int) -> dict:
        """Item i with its misalignment undone: the pair its label was computed on."""
        return self.item(i, aligned=True)

    def __getitem__(self, i: int) -> dict:
        item = self.item(i)
        if self.augment is not None:
            item["x"], item["y"] = self.augment(item["x"], item["y"])
        return item

    def __repr__(self) -> str:
        return (f"SyntheticPairs({self.split!r}, {len(self)} pairs of {len(self.sources)} photographs "
                f"(corpus {self.corpus!r}), "
                f"size={self.size}, seed={self.seed}; synthetic labels)")
