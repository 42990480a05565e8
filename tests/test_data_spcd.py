"""The SPCD reader: both CSV formats on a tiny folder in the official naming scheme, a clear
error for every malformed case, and the facts of the real label files."""
import json
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image

from cdflow_lib.data import SPCDPairs, SyntheticPairs, pairs_from_env, spcd_datasets
from cdflow_lib.data.spcd import (find_duplicates, label_statistics, pair_is_aligned, parse_spcd_name, read_spcd_labels,
                                  scene_split)
from test_data_corpus import no_network  # noqa: F401  (autouse: sockets refuse)

SCENES = (1, 2, 3, 4, 5, 6)
IMAGES = [f"I{s:04d}_{g:02d}_{i:02d}.png" for s in SCENES for g, i in ((1, 1), (1, 2), (1, 3), (2, 1), (5, 2))]
ROWS = [  # ref, test, dv: phone vs phone (non-aligned), capture vs edit and edit vs edit (aligned)
    ("I0001_01_01.png", "I0001_01_02.png", "3.25"),
    ("I0001_01_01.png", "I0001_02_01.png", "5.5"),
    ("I0002_02_01.png", "I0002_05_02.png", "7.125"),
    ("I0003_01_02.png", "I0003_01_03.png", "2.0"),
    ("I0004_01_01.png", "I0004_05_02.png", "9.75"),
    ("I0005_01_01.png", "I0005_01_03.png", "4.0"),
    ("I0006_02_01.png", "I0006_05_02.png", "1.5"),
]


@pytest.fixture
def spcd_root(tmp_path):
    root = tmp_path / "SPCD"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in IMAGES:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name)
    return root


def write_csv(path, rows, header=None):
    lines = ([header] if header else []) + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def plain_csv(tmp_path):
    return write_csv(tmp_path / "train.csv", ROWS)


@pytest.fixture
def kaggle_csv(tmp_path):
    return write_csv(tmp_path / "kaggle.csv", ROWS, header="image1,image2,score")


def test_file_names_and_alignment_follow_the_official_scheme():
    assert parse_spcd_name("I0012_03_02.png") == (12, 3, 2)
    assert not pair_is_aligned("I0001_01_01.png", "I0001_01_05.png")
    assert pair_is_aligned("I0001_01_01.png", "I0001_03_01.png") and pair_is_aligned("I0001_02_01.png", "I0001_04_01.png")
    with pytest.raises(ValueError, match="not an SPCD file name"):
        parse_spcd_name("I12_3_2.png")


@pytest.mark.parametrize("fmt", ["plain", "kaggle"])
def test_both_csv_formats_give_the_same_pairs(spcd_root, plain_csv, kaggle_csv, fmt):
    csv_path = plain_csv if fmt == "plain" else kaggle_csv
    ds = SPCDPairs(spcd_root, csv_path, transform=None)
    assert len(ds) == len(ROWS)
    assert ds.labels.tolist() == [float(r[2]) for r in ROWS]
    assert ds.aligned.tolist() == [False, True, True, False, True, False, True]
    assert [r.line for r in ds.rows] == list(range(1, 8)) if fmt == "plain" else list(range(2, 9))
    item = ds[2]
    assert set(item) == {"x", "y", "dv", "aligned", "family", "strength", "source"}
    assert item["x"].shape == item["y"].shape == (3, 8, 8) and item["x"].dtype == torch.float32
    expected = np.asarray(Image.open(spcd_root / "I0002_02_01.png"), dtype=np.float32) / 255
    assert torch.equal(item["x"], torch.from_numpy(expected).permute(2, 0, 1))
    assert item["dv"].dtype == torch.float32 and float(item["dv"]) == 7.125
    assert (item["family"], item["source"], item["aligned"]) == ("spcd_02_05", "I0002", True)
    assert np.isnan(item["strength"])


def test_transforms_resize_and_augment(spcd_root, plain_csv):
    assert SPCDPairs(spcd_root, plain_csv, transform="test", size=4)[0]["x"].shape == (3, 4, 4)
    aug = SPCDPairs(spcd_root, plain_csv, transform="train", size=6, sync_augment=True)
    torch.manual_seed(0)
    item = aug[0]
    torch.manual_seed(0)
    params = aug.augment.draw()
    assert item["x"].shape == (3, 6, 6)
    assert torch.allclose(item["x"], aug.augment.apply(aug.load(ROWS[0][0]), params))
    with pytest.raises(ValueError, match="transform must be"):
        SPCDPairs(spcd_root, plain_csv, transform="val")


def test_duplicates_are_reported_and_kept_or_dropped(spcd_root, tmp_path):
    rows = ROWS[:3] + [ROWS[0], ROWS[2]]
    csv_path = write_csv(tmp_path / "dup.csv", rows)
    kept = SPCDPairs(spcd_root, csv_path)
    dropped = SPCDPairs(spcd_root, csv_path, keep_duplicates=False)
    assert kept.duplicates == dropped.duplicates == [(4, 1), (5, 3)]
    assert (len(kept), len(dropped)) == (5, 3)
    assert "2 repeated rows" in repr(kept)


def test_missing_file_is_named_with_its_csv_line_before_anything_starts(spcd_root, plain_csv):
    (spcd_root / "I0003_01_03.png").unlink()
    (spcd_root / "I0005_01_03.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"I0003_01_03\.png \(train\.csv line 4, test column\)"):
        SPCDPairs(spcd_root, plain_csv)
    assert len(SPCDPairs(spcd_root, plain_csv, check_files=False)) == len(ROWS)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        SPCDPairs(spcd_root / "nope", plain_csv)


@pytest.mark.parametrize("bad_row, message", [
    ("I0001_01_01.png,I0001_01_02.png", r"line 3: expected 3 comma-separated fields.*got 2"),
    ("I0001_01_01.png,I0001_01_02.png,3.0,extra", r"line 3: expected 3 comma-separated fields.*got 4"),
    ("I0001_01_01.png,I0001_01_02.png,high", r"line 3: the label 'high' is not a number"),
    ("I0001_01_01.png,I0001_01_02.png,nan", r"line 3: the label must be a finite non-negative number"),
    ("I0001_01_01.png,I0001_01_02.png,-1", r"line 3: the label must be a finite non-negative number"),
    ("I0001_01_01.png,photo.jpg,3.0", r"line 3: 'photo.jpg' is not an SPCD file name"),
    ("I0001_01_01.png,I0002_01_02.png,3.0", r"line 3: I0001_01_01.png and I0002_01_02.png belong to different scenes"),
    ("I0001_01_01.png,I0001_01_01.png,3.0", r"line 3: the pair compares I0001_01_01.png with itself"),
    ("I0001_01_01.png,I0001_01_02.png,4.0", r"line 3 repeats the pair of line 1 .* different label"),
])
def test_each_malformed_row_gets_its_own_error(tmp_path, bad_row, message):
    path = tmp_path / "bad.csv"
    path.write_text("I0001_01_01.png,I0001_01_02.png,3.25\nI0002_02_01.png,I0002_05_02.png,7.1\n" + bad_row + "\n")
    with pytest.raises(ValueError, match=message):
        read_spcd_labels(path)


def test_unknown_header_empty_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"line 1: 'a' is not an SPCD file name.*recognised headers"):
        read_spcd_labels(write_csv(tmp_path / "h.csv", ROWS, header="a,b,c"))
    with pytest.raises(ValueError, match="no labelled pairs"):
        read_spcd_labels(write_csv(tmp_path / "e.csv", [], header="ref,test,dv"))
    with pytest.raises(FileNotFoundError, match="label file not found"):
        read_spcd_labels(tmp_path / "absent.csv")


def test_blank_lines_and_spaces_are_tolerated(tmp_path):
    path = tmp_path / "loose.csv"
    path.write_text("ref, test, dv\n\nI0001_01_01.png , I0001_01_02.png, 3.25\n\n")
    rows = read_spcd_labels(path)
    assert [(r.line, r.ref, r.test, r.dv) for r in rows] == [(3, "I0001_01_01.png", "I0001_01_02.png", 3.25)]


def test_scene_split_is_content_independent_and_disjoint(spcd_root, kaggle_csv):
    parts = {s: SPCDPairs(spcd_root, kaggle_csv, split=s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(ROWS)
    scenes = {s: {r.scene for r in p.rows} for s, p in parts.items()}
    assert not (scenes["train"] & scenes["val"]) and not (scenes["train"] & scenes["test"])
    assert not (scenes["val"] & scenes["test"])
    assert all(scene_split(r.scene) == s for s, p in parts.items() for r in p.rows)
    shares = Counter(scene_split(s) for s in range(1, 5001))
    assert abs(shares["train"] / 5000 - 0.7) < 0.03 and abs(shares["test"] / 5000 - 0.2) < 0.03
    with pytest.raises(ValueError, match="split must be"):
        SPCDPairs(spcd_root, kaggle_csv, split="dev")


def test_pairs_from_env_switches_to_spcd(spcd_root, plain_csv, kaggle_csv):
    folder = plain_csv.parent
    for split in ("val", "test"):
        write_csv(folder / f"{split}.csv", ROWS[:2])
    env = {"SPCD_ROOT": str(spcd_root), "SPCD_LABELS": str(folder)}
    ds = pairs_from_env("train", size=4, environ=env)
    assert isinstance(ds, SPCDPairs) and len(ds) == len(ROWS) and ds[0]["x"].shape == (3, 4, 4)
    train, val, test = spcd_datasets(spcd_root, folder)
    assert (len(train), len(val), len(test)) == (7, 2, 2) and train[0]["x"].shape == (3, 8, 8)
    one_file = pairs_from_env("test", environ={"SPCD_ROOT": str(spcd_root), "SPCD_LABELS": str(kaggle_csv)})
    assert all(scene_split(r.scene) == "test" for r in one_file.rows)
    with pytest.raises(FileNotFoundError, match="has no val.csv"):
        pairs_from_env("val", environ={"SPCD_ROOT": str(spcd_root)})
    synthetic = pairs_from_env("val", size=16, environ={}, pairs_per_image=1, crops_per_image=1, corpus="package")
    assert isinstance(synthetic, SyntheticPairs) and len(synthetic) == 1


def test_greyscale_files_are_converted_to_rgb(spcd_root, plain_csv):
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(spcd_root / "I0001_01_01.png")
    x = SPCDPairs(spcd_root, plain_csv)[0]["x"]
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.full_like(x, 128 / 255))


# ----------------------------------------------------------------------------- the real label files

@lru_cache(maxsize=None)
def read_real_labels(labels_dir) -> dict:
    names = ("train", "val", "test", "test_aligned", "test_notaligned", "kaggle_train")
    return {n: read_spcd_labels(labels_dir / f"{n}.csv") for n in names}


@pytest.fixture
def real_labels(spcd_labels_dir):
    return spcd_labels_dir, read_real_labels(spcd_labels_dir)


def test_real_label_files_reproduce_the_readme_facts(real_labels):
    _, rows = real_labels
    assert [len(rows[s]) for s in ("train", "val", "test")] == [28_025, 3_005, 5_975]
    pairs = {s: {(r.ref, r.test) for r in rows[s]} for s in ("train", "val", "test")}
    every = set.union(*pairs.values())
    assert len(every) == 30_000
    assert len({name for p in every for name in p}) == 15_273
    repeats = find_duplicates(rows["train"])
    assert len(repeats) == 7_005
    by_line = {r.line: r for r in rows["train"]}
    assert all(not by_line[line].aligned for line, _ in repeats)
    assert len({(r.ref, r.test) for r in rows["train"] if not r.aligned}) == 7_005
    scenes = {s: {r.scene for r in rows[s]} for s in ("train", "val", "test")}
    assert not (scenes["train"] & scenes["val"]) and not (scenes["train"] & scenes["test"])
    assert not (scenes["val"] & scenes["test"])
    assert (len(scenes["train"]), len(scenes["val"]), len(scenes["test"])) == (701, 100, 199)
    dv = [r.dv for s in ("train", "val", "test") for r in rows[s]]
    assert round(min(dv), 2) == 0.93 and round(max(dv), 2) == 16.22


def test_real_test_split_divides_by_alignment(real_labels):
    _, rows = real_labels
    assert all(r.aligned for r in rows["test_aligned"]) and not any(r.aligned for r in rows["test_notaligned"])
    whole = Counter((r.ref, r.test, r.dv) for r in rows["test"])
    parts = Counter((r.ref, r.test, r.dv) for r in rows["test_aligned"] + rows["test_notaligned"])
    assert whole == parts


def test_kaggle_file_is_read_with_its_header_and_matches_the_authors_labels(real_labels):
    _, rows = real_labels
    kaggle = rows["kaggle_train"]
    assert len(kaggle) == 10_000 and kaggle[0].line == 2
    labels = {(r.ref, r.test): r.dv for s in ("train", "val", "test") for r in rows[s]}
    assert all(labels[(r.ref, r.test)] == pytest.approx(r.dv, abs=1e-6) for r in kaggle)


def test_real_labels_match_the_published_statistics(real_labels):
    labels_dir, rows = real_labels
    stats = json.loads((labels_dir.parent / "spcd_label_stats.json").read_text())
    unique = list({(r.ref, r.test): r for s in ("train", "val", "test") for r in rows[s]}.values())
    ours = label_statistics([r.dv for r in unique], [r.aligned for r in unique])
    assert ours["all"]["n"] == stats["n_pairs"]
    for key in ("all", "aligned", "non_aligned"):
        if key != "all":
            assert ours[key]["n"] == stats[key]["n"]
        assert ours[key]["mean"] == pytest.approx(stats[key]["mean"], rel=1e-12)
        assert ours[key]["std"] == pytest.approx(stats[key]["std"], rel=1e-12)
        assert ours[key]["quantiles"] == pytest.approx(stats[key]["quantiles"], rel=1e-12)
