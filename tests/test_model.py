"""The multi-scale flow, the CD-Flow metric and checkpoints, including conformance with the
authors' code (the official fixture in ../shared)."""
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdflow_lib import checkpoints, flow, metric
from cdflow_lib.metric import CDFlow
from test_layers import perturb

LATENT_NAMES = [f"z{k}" for k in range(1, 7)]
DIST_NAMES = ["d6", "d65", "d654", "d6543", "d65432", "d654321"]


# --- conformance with the official fixture -------------------------------------------------

@pytest.fixture(scope="module")
def official(request):
    from conftest import OFFICIAL, require_path

    require_path(OFFICIAL)
    model = checkpoints.load_official(OFFICIAL / "official_small_checkpoint.pt")
    expected = dict(np.load(OFFICIAL / "official_small_expected.npz"))
    return model, expected


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def test_paper_config_state_dict_matches_official_names_and_shapes(official_dir):
    spec = json.loads((official_dir / "official_paper_state_dict_shapes.json").read_text())
    model = CDFlow.from_config("paper")
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(name, shape) for name, shape, _ in spec["state_dict"]]
    buffers = {n for n, _ in model.named_buffers()}
    assert {n for n, _, kind in spec["state_dict"] if kind == "buffer"} == buffers
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_params == spec["n_params"] == flow.PAPER_N_PARAMS == 60_488_496


def test_load_official_infers_the_small_config(official):
    model, _ = official
    assert model.config == dict(in_channels=3, n_scales=6, n_steps=2, hidden=32, affine=True, conv_lu=True)
    assert all(m.initialized.item() == 1 for m in model.modules() if hasattr(m, "initialized"))
    assert not model.training


@pytest.mark.parametrize("side", ["x", "y"])
def test_matches_official_latents_logdet_and_log_p(official, side):
    model, e = official
    with torch.no_grad():
        zs, logdet, log_p = model.flow(torch.from_numpy(e[side]))
    for name, z in zip(LATENT_NAMES, zs):
        assert rel_err(z, e[f"{name}_{side}"]) < 1e-4, name
    assert rel_err(logdet, e[f"logdet_{side}"]) < 1e-3
    assert rel_err(log_p, e[f"log_p_{side}"]) < 1e-3


def test_matches_official_distances(official):
    model, e = official
    with torch.no_grad():
        d = model.distances(torch.from_numpy(e["x"]), torch.from_numpy(e["y"]))
        cd = model(torch.from_numpy(e["x"]), torch.from_numpy(e["y"]))
    for k, name in enumerate(DIST_NAMES):
        assert rel_err(d[k], e[name].ravel()) < 1e-4, name
    assert rel_err(cd, e["d654321"].ravel()) < 1e-4


def test_matches_official_reconstruction(official):
    model, e = official
    with torch.no_grad():
        rec = model.flow.inverse(model.flow(torch.from_numpy(e["x"]))[0])
    assert np.abs(rec.numpy() - e["reconstruction_x"]).max() < 1e-4


def test_last_block_prior_uses_ones_not_zeros(official):
    """The fixture distinguishes the authors' prior input (ones) from rosinality's (zeros)."""
    model, e = official
    x = torch.from_numpy(e["x"])
    block = model.flow.blocks[-1]
    with torch.no_grad():
        zs, _, log_p = model.flow(x)
        mean0, log_sd0 = block.prior(torch.zeros_like(zs[-1])).chunk(2, 1)
        mean1, log_sd1 = block.prior_params(None, zs[-1])
        lp_zero = flow.gaussian_log_p(zs[-1], mean0, log_sd0).flatten(1).sum(1)
        lp_one = flow.gaussian_log_p(zs[-1], mean1, log_sd1).flatten(1).sum(1)
    assert rel_err(log_p - lp_one + lp_zero, e["log_p_x"]) > 1e-3  # zeros would not match
    assert rel_err(log_p, e["log_p_x"]) < 1e-3


# --- the flow -----------------------------------------------------------------------------

#: Parameter perturbation per config: wide coupling nets need smaller moves to stay trained-like.
PERTURB = {"tiny": 0.02, "small": 0.005, "paper": 0.001}


def trained_like(name: str, dtype=torch.float32) -> CDFlow:
    """A model with ActNorm initialised and every parameter moved off its initial value."""
    torch.manual_seed(0)
    model = CDFlow.from_config(name)
    size = 2 ** model.n_scales * 2
    model.flow.initialize(torch.rand(4, 3, size, size))
    return perturb(model, PERTURB[name]).to(dtype).eval()


@pytest.mark.parametrize("name,size", [("tiny", 16), ("small", 64), ("paper", 128)])
def test_flow_inverse_recovers_input(name, size):
    model = trained_like(name)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        rec = model.flow.inverse(model.flow(x)[0])
    assert (rec - x).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_flow_inverse_recovers_input_float64(name):
    model = trained_like(name, torch.float64)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        rec = model.flow.inverse(model.flow(x)[0])
    assert (rec - x).abs().max().item() < 1e-9


def test_flow_logdet_matches_bruteforce_jacobian():
    torch.manual_seed(0)
    f = flow.MultiScaleFlow(in_channels=3, n_scales=2, n_steps=2, hidden=8).double()
    f.initialize(torch.rand(3, 3, 4, 4, dtype=torch.float64))
    perturb(f, 0.05)
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    _, logdet, _ = f(x)
    jac = torch.autograd.functional.jacobian(lambda v: torch.cat([z.flatten() for z in f(v)[0]]), x)
    assert torch.linalg.slogdet(jac.reshape(48, 48))[1].item() == pytest.approx(logdet.item(), abs=1e-8)


def test_latent_shapes_of_the_paper_model_at_768():
    f = flow.MultiScaleFlow.__new__(flow.MultiScaleFlow)
    torch.nn.Module.__init__(f)
    f.config = dict(in_channels=3)
    f.blocks = [type("B", (), {"split": k < 5})() for k in range(6)]
    shapes = f.latent_shapes(768, 768)
    assert shapes == [(6, 384, 384), (12, 192, 192), (24, 96, 96), (48, 48, 48), (96, 24, 24), (384, 12, 12)]
    assert sum(c * h * w for c, h, w in shapes) == 3 * 768 ** 2


def test_latent_shapes_agree_with_forward():
    model = trained_like("tiny")
    zs = model.flow(torch.rand(1, 3, 32, 48))[0]
    assert [tuple(z.shape[1:]) for z in zs] == model.flow.latent_shapes(32, 48)


def test_log_p_is_the_sum_of_block_priors():
    model = trained_like("tiny")
    x = torch.rand(2, 3, 16, 16)
    zs, _, log_p = model.flow(x)
    total, out = torch.zeros(2), x
    for block in model.flow.blocks:
        out, _, lp, _ = block(out)
        total += lp
    assert torch.allclose(log_p, total)


# --- the metric ---------------------------------------------------------------------------

def test_distances_are_cumulative_rms_coarse_to_fine():
    model = trained_like("tiny")
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    d = model.distances(x, y)
    zx, zy = model.flow(x)[0], model.flow(y)[0]
    for k in range(1, 4):
        a = torch.cat([z.flatten(1) for z in zx[-k:]], 1)
        b = torch.cat([z.flatten(1) for z in zy[-k:]], 1)
        ref = torch.sqrt(((a - b) ** 2).mean(1) + 1e-8)
        assert torch.allclose(d[k - 1], ref, rtol=1e-5)
    assert torch.equal(model(x, y), d[-1])


natural = st.sampled_from(["astronaut", "coffee", "chelsea", "rocket"])


def _photo(name: str, size: int = 32) -> torch.Tensor:
    from skimage import data
    from PIL import Image

    img = Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def metric_model():
    return trained_like("tiny", torch.float64)


def _images(draw_seed: int, use_photo: str | None, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(draw_seed)
    if use_photo is None:
        return torch.rand(1, 3, size, size, generator=g, dtype=torch.float64)
    base = _photo(use_photo, size).double()
    return (base + 0.1 * torch.rand(1, 3, 1, 1, generator=g, dtype=torch.float64) - 0.05).clamp(0, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seeds=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
       photo=st.one_of(st.none(), natural))
def test_metric_properties(metric_model, seeds, photo):
    x, y, z = (_images(s, photo) for s in seeds)
    dxy, dyx = metric_model(x, y, eps=0.0), metric_model(y, x, eps=0.0)
    dxz, dzy = metric_model(x, z, eps=0.0), metric_model(z, y, eps=0.0)
    assert dxy.item() >= 0
    assert dxy.item() == pytest.approx(dyx.item(), rel=1e-12, abs=1e-15)
    assert dxy.item() <= dxz.item() + dzy.item() + 1e-12
    assert metric_model(x, x, eps=0.0).item() == 0.0
    assert metric_model(x, x).item() == pytest.approx(1e-4, rel=1e-9)  # the authors' floor sqrt(1e-8)
    if seeds[0] != seeds[1]:
        assert dxy.item() > 0


def test_cd_map_rms_equals_reported_cd_and_scales_partition_it():
    model = trained_like("tiny")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    m = model.cd_map(x, y)
    assert m.shape == (2, 32, 32) and (m >= 0).all()
    assert torch.allclose(torch.sqrt(m.pow(2).mean((1, 2)) + 1e-8), model(x, y), rtol=1e-5)
    per_scale = torch.stack([model.cd_map(x, y, scale=k) for k in (1, 2, 3)])
    assert torch.allclose(per_scale.pow(2).sum(0), m.pow(2), rtol=1e-5, atol=1e-7)


def test_cd_map_is_local():
    """A change confined to one quadrant lights up the map only there at the finest scale."""
    model = trained_like("tiny")
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[..., :8, :8] = (y[..., :8, :8] + 0.2).clamp(0, 1)
    m = model.cd_map(x, y, scale=1)
    assert m[0, :8, :8].mean() > 0 and m[0, 16:, 16:].abs().max() == 0


@pytest.mark.parametrize("x,y,match", [
    (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32), "same shape"),
    (torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12), "divisible by 8"),
    (torch.rand(1, 3, 16, 16) * 255, torch.rand(1, 3, 16, 16), "0-255"),
    (torch.rand(1, 3, 16, 16) - 0.5, torch.rand(1, 3, 16, 16), r"\[0, 1\]"),
    (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), torch.rand(1, 3, 16, 16), "8-bit"),
    (torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), "3 channels"),
    (torch.full((1, 3, 16, 16), float("nan")), torch.rand(1, 3, 16, 16), "NaN"),
])
def test_bad_input_gets_clear_error(x, y, match):
    model = trained_like("tiny")
    with pytest.raises(ValueError, match=match):
        model(x, y)


def test_prepare_images_policies(tmp_path):
    from PIL import Image

    rgba = Image.fromarray((np.random.rand(20, 30, 4) * 255).astype(np.uint8), "RGBA")
    grey = Image.fromarray((np.random.rand(20, 30) * 255).astype(np.uint8), "L")
    grey.save(tmp_path / "g.png")
    x = metric.prepare_images(rgba, tmp_path / "g.png", multiple=8, policy="crop")
    assert x.shape == (2, 3, 16, 24) and 0 <= x.min() and x.max() <= 1
    assert metric.prepare_images(rgba, grey, multiple=8, policy="pad").shape == (2, 3, 24, 32)
    with pytest.raises(ValueError, match="not divisible"):
        metric.prepare_images(rgba, grey, multiple=8, policy="error")
    with pytest.raises(ValueError, match="same size"):
        metric.prepare_images(rgba, grey.resize((10, 10)), multiple=8)
    model = trained_like("tiny")
    assert metric.color_difference(model, rgba, rgba) == pytest.approx(1e-4, rel=1e-3)


def test_unknown_config_is_named():
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        CDFlow.from_config("huge")


# --- checkpoints --------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    model = trained_like("tiny")
    path = checkpoints.save(model, tmp_path / "m.pt", note="test")
    loaded = checkpoints.load(path)
    assert loaded.config == model.config
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded(x, y), model(x, y))
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_or_foreign_checkpoint_gets_clear_error(tmp_path):
    model = trained_like("tiny")
    path = checkpoints.save(model, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable"):
        checkpoints.load(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a cdflow_lib checkpoint"):
        checkpoints.load(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="no 'glow.blocks"):
        checkpoints.load_official(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        checkpoints.load(tmp_path / "missing.pt")


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    model = trained_like("tiny")
    path = checkpoints.save(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(model, path)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_load_official_round_trips_a_module_prefixed_state_dict(tmp_path):
    model = trained_like("tiny")
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "o.pt")
    loaded = checkpoints.load_official(tmp_path / "o.pt")
    assert loaded.config == model.config
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.flow(x)[0][0], model.flow(x)[0][0])
