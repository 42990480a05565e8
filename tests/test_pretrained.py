"""The shipped default model: safe to load, the right size, installed with the package, and
better than pixel-mean CIEDE2000 where pixel-wise formulas fail (non-aligned synthetic test pairs)."""
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cdflow_lib import baselines, checkpoints
from cdflow_lib.data import SyntheticPairs

NAME = checkpoints.DEFAULT_MODEL
MAX_MB = 20


def test_default_model_is_the_photo_model_inside_the_package():
    assert NAME == "cdflow-small-photos"
    path = checkpoints.pretrained_path(NAME)
    assert path.parent == checkpoints.PRETRAINED_DIR and path.parent.parent.name == "cdflow_lib"
    for suffix in (".md", ".log.csv", ".json"):
        assert path.with_suffix(suffix).is_file(), f"{NAME}{suffix} must travel with the model"


def test_shipped_checkpoint_is_small_and_loads_with_weights_only():
    path = checkpoints.pretrained_path(NAME)
    assert path.stat().st_size < MAX_MB * 2 ** 20
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == checkpoints.FORMAT and raw["config"]["n_scales"] == 5
    assert raw["train_config"]["recipe"] == "photos" and raw["train_config"]["image_size"] >= 256
    model = checkpoints.load_pretrained()
    assert model.config == raw["config"] and not model.training
    assert all(m.initialized.item() == 1 for m in model.modules() if hasattr(m, "initialized"))


def test_model_card_numbers_belong_to_the_shipped_seed_chosen_on_validation():
    numbers = json.loads(checkpoints.pretrained_path(NAME).with_suffix(".json").read_text())
    runs = numbers["runs"]
    shipped = next(r for r in runs if r["run"] == numbers["shipped"])
    by_val = sorted(runs, key=lambda r: r["validation"]["val_srcc"])
    assert shipped is by_val[(len(by_val) - 1) // 2], "the shipped seed must be the median by validation SRCC"
    raw = torch.load(checkpoints.pretrained_path(NAME), map_location="cpu", weights_only=True)
    assert raw["val_srcc"] == pytest.approx(shipped["validation"]["val_srcc"], abs=1e-9)
    assert raw["train_config"]["seed"] == shipped["config"]["seed"]
    card = checkpoints.pretrained_path(NAME).with_suffix(".md").read_text()
    assert f"{shipped['resolution']['spearman']:.3f}" in card


def test_unknown_pretrained_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=NAME):
        checkpoints.load_pretrained("no-such-model")


@pytest.mark.xfail(strict=True, reason=(
    "an unmet target of issue 11, kept visible: the shipped cdflow-small-photos (one epoch of its recipe, CPU) "
    "ranks these non-aligned pairs worse than pixel-mean CIEDE2000 (SRCC 0.684 vs 0.801 at 128 px; 0.634 vs "
    "0.720 at its 256-px training size; at 512 px its model card has 0.723 vs 0.679 with a paired interval "
    "containing 0). strict: this test fails as soon as a shipped model beats CIEDE2000 here, so the mark "
    "must then be removed"))
@torch.no_grad()
def test_beats_pixel_mean_ciede2000_on_non_aligned_synthetic_test_pairs():
    """Computed here, at a small size: held-out photographs, non-aligned pairs only."""
    model = checkpoints.load_pretrained()
    pairs = SyntheticPairs("test", size=128, pairs_per_image=6, seed=0)
    items = [pairs[i] for i in range(len(pairs)) if not pairs.specs[i].aligned]
    assert len(items) >= 40
    x = torch.stack([it["x"] for it in items])
    y = torch.stack([it["y"] for it in items])
    dv = torch.stack([it["dv"] for it in items]).numpy()
    ours = torch.cat([model(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]).numpy()
    de00 = baselines.get_measure("ciede2000")(x, y).numpy()
    srcc_ours, srcc_de = spearmanr(ours, dv)[0], spearmanr(de00, dv)[0]
    assert np.isfinite(ours).all()
    assert srcc_ours > srcc_de, (srcc_ours, srcc_de)
