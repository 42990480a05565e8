"""The shipped pretrained model: safe to load, the right size, and better than pixel-mean
CIEDE2000 where pixel-wise formulas fail (non-aligned synthetic test pairs)."""
import pytest
import torch
from scipy.stats import spearmanr

from cdflow_lib import baselines, checkpoints
from cdflow_lib.data import SyntheticPairs

NAME = "cdflow-small-synthetic"
MAX_MB = 20


def test_shipped_checkpoint_is_small_and_loads_with_weights_only():
    path = checkpoints.PRETRAINED_DIR / f"{NAME}.pt"
    assert path.stat().st_size < MAX_MB * 2 ** 20
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == checkpoints.FORMAT and raw["config"]["n_scales"] == 5
    model = checkpoints.load_pretrained(NAME)
    assert model.config == raw["config"] and not model.training
    assert all(m.initialized.item() == 1 for m in model.modules() if hasattr(m, "initialized"))
    assert (checkpoints.PRETRAINED_DIR / f"{NAME}.md").is_file()


def test_unknown_pretrained_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=NAME):
        checkpoints.load_pretrained("no-such-model")


@torch.no_grad()
def test_beats_pixel_mean_ciede2000_on_non_aligned_synthetic_test_pairs():
    model = checkpoints.load_pretrained(NAME)
    pairs = SyntheticPairs("test", size=128, seed=0)
    items = [pairs[i] for i in range(len(pairs)) if not pairs[i]["aligned"]]
    assert len(items) >= 20
    x = torch.stack([it["x"] for it in items])
    y = torch.stack([it["y"] for it in items])
    dv = torch.stack([it["dv"] for it in items]).numpy()
    ours = torch.cat([model(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]).numpy()
    de00 = baselines.get_measure("ciede2000")(x, y).numpy()
    srcc_ours, srcc_de = spearmanr(ours, dv)[0], spearmanr(de00, dv)[0]
    assert srcc_ours > srcc_de, (srcc_ours, srcc_de)
