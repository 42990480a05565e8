"""SPCD (Chen et al., CVPR 2023): reading its label files and images.

The images are not redistributable: users download SPCD and point `SPCDPairs` at its flat
folder of ``I{scene:04d}_{group:02d}_{idx:02d}.png`` files (15,335 PNGs, 1024 x 1024, of
1,000 scenes). Group 01 holds six phones' captures of a scene (_01_01 .. _01_06); groups
02 .. 07 hold pixel-aligned edits of the capture _01_01. A pair is **non-aligned** when both
images are phone captures (group 01 vs group 01; residual misalignment between phones),
and aligned otherwise.

Label files: the authors' headerless ``ref,test,dv`` CSVs (train / val / test, split by
scene) or the Kaggle release with the header ``image1,image2,score``. The authors'
train.csv lists each of its non-aligned pairs twice on purpose (a 2x weight for them);
`SPCDPairs(keep_duplicates=...)` keeps or drops such repeats and reports them either way.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..metric import prepare_images
from .transforms import PAPER_TRAIN_SIZE, PairAugment, resize

#: SPCD file names: I{scene:04d}_{group:02d}_{idx:02d}.png.
SPCD_NAME = re.compile(r"^I(\d{4})_(\d{2})_(\d{2})\.png$")
#: Group of the phone captures; a pair of two captures is non-aligned.
PHONE_GROUP = 1
#: Range of SPCD's mean opinion scores over its 30,000 pairs (the authors' label files).
SPCD_DV_RANGE = (0.93, 16.22)
#: Recognised header rows (lower case); files without one are read as ref,test,dv.
HEADERS = (("ref", "test", "dv"), ("image1", "image2", "score"))
#: The authors' split proportions by scene (about 70 / 10 / 20), used by `scene_split`.
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
#: SPCD images are shown and tested at this size (the authors' test transform keeps 1024 x 1024).
SPCD_IMAGE_SIZE = 1024


def parse_spcd_name(name: str) -> tuple[int, int, int]:
    """'I0012_03_02.png' -> (scene 12, group 3, index 2); ValueError for any other name."""
    m = SPCD_NAME.match(name)
    if not m:
        raise ValueError(f"{name!r} is not an SPCD file name (expected I<scene:4 digits>_<group:2>_<idx:2>.png)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def pair_is_aligned(ref: str, test: str) -> bool:
    """False for two phone captures (group 01 vs group 01), True otherwise."""
    return not (parse_spcd_name(ref)[1] == PHONE_GROUP and parse_spcd_name(test)[1] == PHONE_GROUP)


@dataclass(frozen=True)
class SPCDRow:
    """One labelled pair: file names, the mean opinion score dv, and its 1-based line in the CSV."""
    line: int
    ref: str
    test: str
    dv: float

    @property
    def scene(self) -> int:
        return parse_spcd_name(self.ref)[0]

    @property
    def aligned(self) -> bool:
        return pair_is_aligned(self.ref, self.test)

    @property
    def groups(self) -> tuple[int, int]:
        return parse_spcd_name(self.ref)[1], parse_spcd_name(self.test)[1]


def read_spcd_labels(csv_path) -> list[SPCDRow]:
    """Read an SPCD label file (headerless ref,test,dv or the Kaggle image1,image2,score).

    Returns one `SPCDRow` per data row, duplicates included, in file order. Blank lines are
    skipped. Raises ValueError naming the file and line for: a row without exactly three
    fields, a name that is not an SPCD file name, a pair across two scenes or of one image
    with itself, a label that is not a finite non-negative number, and a pair repeated with
    a different label; and for a file with no data rows.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"SPCD label file not found: {path}")
    rows: list[SPCDRow] = []
    first_seen: dict[tuple[str, str], SPCDRow] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, fields in enumerate(csv.reader(f), start=1):
            fields = [s.strip() for s in fields]
            if not any(fields):
                continue
            where = f"{path.name} line {line}"
            if not rows and line == 1 and tuple(s.lower() for s in fields) in HEADERS:
                continue
            if len(fields) != 3:
                raise ValueError(f"{where}: expected 3 comma-separated fields (ref,test,dv), "
                                 f"got {len(fields)}: {','.join(fields)!r}")
            ref, test, label = fields
            for name in (ref, test):
                if not SPCD_NAME.match(name):
                    hint = (" (a header row? the recognised headers are 'ref,test,dv' and 'image1,image2,score')"
                            if line == 1 else "")
                    raise ValueError(f"{where}: {name!r} is not an SPCD file name "
                                     f"(expected I<scene>_<group>_<idx>.png, e.g. I0001_02_01.png){hint}")
            if ref == test:
                raise ValueError(f"{where}: the pair compares {ref} with itself")
            if parse_spcd_name(ref)[0] != parse_spcd_name(test)[0]:
                raise ValueError(f"{where}: {ref} and {test} belong to different scenes")
            try:
                dv = float(label)
            except ValueError:
                raise ValueError(f"{where}: the label {label!r} is not a number") from None
            if not math.isfinite(dv) or dv < 0:
                raise ValueError(f"{where}: the label must be a finite non-negative number, got {label!r}")
            row = SPCDRow(line, ref, test, dv)
            earlier = first_seen.setdefault((ref, test), row)
            if earlier is not row and earlier.dv != dv:
                raise ValueError(f"{where} repeats the pair of line {earlier.line} ({ref}, {test}) "
                                 f"with a different label ({dv} vs {earlier.dv})")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no labelled pairs found")
    return rows


def find_duplicates(rows: list[SPCDRow]) -> list[tuple[int, int]]:
    """(line, line of its first occurrence) for every row that repeats an earlier pair."""
    first: dict[tuple[str, str], int] = {}
    return [(r.line, first[(r.ref, r.test)]) for r in rows
            if first.setdefault((r.ref, r.test), r.line) != r.line]


def scene_split(scene: int, seed: int = 0) -> str:
    """The split ('train', 'val' or 'test') of an SPCD scene, for label files not yet split.

    Content-independent and stable: a scene's split depends only on its id and `seed`
    (a uniform number drawn from a generator seeded with both), never on which other rows a
    file holds, with probabilities SPLIT_FRACTIONS (70 / 10 / 20).
    """
    u = np.random.default_rng([seed, scene]).random()
    edge = 0.0
    for name, frac in SPLIT_FRACTIONS.items():
        edge += frac
        if u < edge:
            return name
    return name


#: Quantile levels of SPCD's published label statistics.
STAT_LEVELS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def label_statistics(dv, aligned) -> dict:
    """Statistics of a set of labels in the layout of SPCD's label statistics file.

    dv: [N] labels; aligned: [N] bools. Returns {"all", "aligned", "non_aligned"}, each
    {"n", "mean", "std" (population), "quantiles": {level: value}} with the STAT_LEVELS as
    strings ('0.05'), linear interpolation between order statistics (numpy's default).
    """
    dv = np.asarray(dv, dtype=np.float64)
    aligned = np.asarray(aligned, dtype=bool)
    if dv.ndim != 1 or dv.shape != aligned.shape or dv.size == 0:
        raise ValueError(f"dv and aligned must be non-empty 1-d arrays of one length, got {dv.shape} and {aligned.shape}")

    def stats(values):
        if values.size == 0:
            return {"n": 0}
        return {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
                "quantiles": {f"{q:g}": float(np.quantile(values, q)) for q in STAT_LEVELS}}
    return {"all": stats(dv), "aligned": stats(dv[aligned]), "non_aligned": stats(dv[~aligned])}


def check_spcd_files(rows: list[SPCDRow], root, csv_name: str = "the label file") -> None:
    """Raise FileNotFoundError naming the first missing image (in file order) and its CSV line."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SPCD image folder not found: {root}")
    present = {p.name for p in root.iterdir()}
    for row in rows:
        for column, name in (("ref", row.ref), ("test", row.test)):
            if name not in present:
                raise FileNotFoundError(f"SPCD image {name} ({csv_name} line {row.line}, {column} column) "
                                        f"not found in {root}")


class SPCDPairs(Dataset):
    """SPCD pairs as a Dataset; item = dict(x, y, dv, aligned, family, strength, source).

    x, y: [3, H, W] float32 sRGB in [0, 1]; dv: float32 scalar tensor (mean opinion score);
    aligned: bool (see the module docstring); family: 'spcd_GG_GG' (the two group ids);
    strength: NaN (SPCD has none); source: the scene, 'I0012'.

    root: the image folder; csv_path: a label file (either format). split: None uses every
    row (the authors' train / val / test files are already split); 'train' / 'val' / 'test'
    keeps the scenes `scene_split(scene, seed)` assigns to it (for one file holding every
    pair, such as the Kaggle CSV). transform: None (images as stored), 'test' (the authors'
    test transform: as stored, 1024 x 1024; resized to `size` if given) or 'train' (the
    authors' augmentation, `PairAugment(size or 768, sync=sync_augment)`, drawn from
    torch's global generator). check_files: verify every referenced image exists before
    anything else (FileNotFoundError naming the first missing file and its CSV line).
    keep_duplicates: keep repeated pairs (the authors' train.csv doubles its non-aligned
    pairs on purpose) or keep only their first occurrence; `self.duplicates` lists
    (line, first line) of every repeat either way.
    """

    def __init__(self, root, csv_path, split: str | None = None, transform: str | None = "test",
                 size: int | None = None, check_files: bool = True, keep_duplicates: bool = True,
                 seed: int = 0, sync_augment: bool = False):
        if split not in (None, *SPLIT_FRACTIONS):
            raise ValueError(f"split must be None or one of {list(SPLIT_FRACTIONS)}, got {split!r}")
        if transform not in (None, "train", "test"):
            raise ValueError(f"transform must be None, 'train' or 'test', got {transform!r}")
        self.root = Path(root)
        self.csv_path = Path(csv_path)
        rows = read_spcd_labels(self.csv_path)
        if split is not None:
            rows = [r for r in rows if scene_split(r.scene, seed) == split]
        self.duplicates = find_duplicates(rows)
        if not keep_duplicates:
            repeated = {line for line, _ in self.duplicates}
            rows = [r for r in rows if r.line not in repeated]
        if check_files:
            check_spcd_files(rows, self.root, self.csv_path.name)
        self.rows = rows
        self.split, self.transform, self.size = split, transform, size
        self.augment = PairAugment(size or PAPER_TRAIN_SIZE, sync=sync_augment) if transform == "train" else None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> torch.Tensor:
        """[N] float32: dv of every pair, in order."""
        return torch.tensor([r.dv for r in self.rows], dtype=torch.float32)

    @property
    def aligned(self) -> torch.Tensor:
        """[N] bool: the aligned flag of every pair, in order."""
        return torch.tensor([r.aligned for r in self.rows], dtype=torch.bool)

    def load(self, name: str) -> torch.Tensor:
        """Image `name` of the folder as [3, H, W] float32 in [0, 1] (greyscale / RGBA / 16-bit converted)."""
        return prepare_images(self.root / name, multiple=1)[0]

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        x, y = self.load(row.ref), self.load(row.test)
        if x.shape != y.shape:
            raise ValueError(f"{self.csv_path.name} line {row.line}: {row.ref} is {tuple(x.shape[1:])} "
                             f"but {row.test} is {tuple(y.shape[1:])}")
        if self.augment is not None:
            x, y = self.augment(x, y)
        elif self.transform == "test" and self.size is not None:
            x, y = resize(x, self.size), resize(y, self.size)
        g1, g2 = row.groups
        return dict(x=x, y=y, dv=torch.tensor(row.dv, dtype=torch.float32), aligned=row.aligned,
                    family=f"spcd_{g1:02d}_{g2:02d}", strength=float("nan"), source=f"I{row.scene:04d}")

    def __repr__(self) -> str:
        return (f"SPCDPairs({len(self)} pairs from {self.csv_path.name}, split={self.split}, "
                f"transform={self.transform}, {len(self.duplicates)} repeated rows)")
