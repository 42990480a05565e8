"""The baseline registry, MS-SWD and CD-Net."""
import math

import colour as cs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats
from skimage import data

from cdflow_lib import baselines as bl


#: Measures that treat x as the reference (CIE94, CMC weight by the reference's chroma).
ASYMMETRIC = {"cie94", "cmc"}


@pytest.fixture(scope="module")
def photo():
    """The astronaut photograph (scikit-image), 256 x 256, as [1, 3, 256, 256] in [0, 1]."""
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255.0
    return F.interpolate(img, size=(256, 256), mode="area").clamp(0, 1)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(3, 3, 8, 8, generator=g), size=(24, 24), mode="bilinear", align_corners=False)
    y = (x + 0.1 * torch.rand(3, 3, 24, 24, generator=g) - 0.05).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("name", sorted(bl.MEASURES))
def test_measure_returns_one_value_per_pair_zero_for_identical_images(name, pair):
    x, y = pair
    measure = bl.get_measure(name)
    d = measure(x, y)
    assert d.shape == (3,) and bool((d > 0.1).all())
    assert measure(x, x).abs().max() < 1e-6
    if name not in ASYMMETRIC:
        torch.testing.assert_close(measure(y, x), d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, method, options", [
    ("cielab", "CIE 1976", {}), ("cie94", "CIE 1994", {}), ("ciede2000", "CIE 2000", {}),
    ("cmc", "CMC", {"l": 1, "c": 1})])
def test_pixel_mean_measures_match_colour_science(name, method, options, pair):
    x, y = (t.double() for t in pair)
    white = cs.XYZ_to_xy(np.array([0.4124 + 0.3576 + 0.1805, 1.0, 0.0193 + 0.1192 + 0.9505]))

    def lab(t):
        return cs.XYZ_to_Lab(cs.sRGB_to_XYZ(t.permute(0, 2, 3, 1).numpy()), white)

    expected = cs.delta_E(lab(x), lab(y), method=method, **options).mean((1, 2))
    np.testing.assert_allclose(bl.MEASURES[name](x, y).numpy(), expected, rtol=1e-6)


def test_get_measure_binds_options_and_rejects_unknown_names(pair):
    x, y = pair
    assert torch.equal(bl.get_measure("ms_swd", seed=3)(x, y), bl.ms_swd(x, y, seed=3))
    with pytest.raises(ValueError, match="unknown measure 'deltae'"):
        bl.get_measure("deltae")


def test_measures_reject_bad_images(pair):
    x, y = pair
    with pytest.raises(ValueError, match="0-255"):
        bl.cielab(x * 255, y)
    with pytest.raises(ValueError, match="same shape"):
        bl.ciede2000(x, y[..., :20])


def test_ms_swd_is_seed_reproducible(photo):
    x = photo[..., :64, :64]
    y = (x * torch.tensor([1.05, 1.0, 0.95]).view(1, 3, 1, 1)).clamp(0, 1)
    a, b, c = bl.ms_swd(x, y, seed=5), bl.ms_swd(x, y, seed=5), bl.ms_swd(x, y, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and float((a - c).abs() / a) < 0.1  # another Monte-Carlo draw, close


def test_ms_swd_single_direction_equals_scipy_wasserstein(pair):
    x, y = (t[:1].double() for t in pair)
    d = bl.ms_swd(x, y, n_scales=1, n_proj=1, seed=11)
    # the documented draw: one unit direction from a generator seeded with `seed`
    w = torch.randn(1, 3 * 11 * 11, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    w = (w / w.norm()).view(3, 11, 11).numpy()
    from cdflow_lib.colour import srgb_to_lab

    def projections(img):
        lab = srgb_to_lab(img)[0].numpy()                                  # [3, H, W]
        patches = np.lib.stride_tricks.sliding_window_view(lab, (11, 11), axis=(1, 2))  # [3, h, w, 11, 11]
        return np.einsum("chwij,cij->hw", patches, w).ravel()

    assert float(d) == pytest.approx(stats.wasserstein_distance(projections(x), projections(y)), rel=1e-10)


def test_ms_swd_of_uniform_images_matches_sphere_expectation():
    # Two uniform images differing by δ in CIELAB: every projected patch differs by w·(δ tiled over
    # 121 pixels), so the distance is the mean of |w·v| over unit directions w in R^363, whose
    # expectation is |v| Γ(d/2) / (sqrt(pi) Γ((d+1)/2)) with |v| = 11 |δ|.
    x = torch.full((1, 3, 32, 32), 0.4, dtype=torch.float64)
    y = x.clone()
    y[:, 0] = 0.5
    from cdflow_lib.colour import srgb_to_lab
    delta = (srgb_to_lab(x) - srgb_to_lab(y))[0, :, 0, 0].norm().item()
    d = 363
    expected = 11 * delta * math.exp(special.gammaln(d / 2) - special.gammaln((d + 1) / 2)) / math.sqrt(math.pi)
    assert float(bl.ms_swd(x, y, n_proj=4096)) == pytest.approx(expected, rel=0.03)


def test_ms_swd_is_far_less_moved_by_a_small_shift_than_pixel_delta_e(photo):
    shift = 3
    x = photo[..., 40:168, 40:168]
    shifted = photo[..., 40:168, 40 + shift:168 + shift]
    tinted = (x * torch.tensor([1.06, 1.0, 0.94]).view(1, 3, 1, 1)).clamp(0, 1)
    # How much each measure moves for the shift, in units of what it gives a visible tint.
    ratio = {name: float(bl.MEASURES[name](x, shifted) / bl.MEASURES[name](x, tinted)) for name in ("cielab", "ms_swd")}
    # measured: cielab 1.96 (the shift looks twice as different as the tint), ms_swd 0.29
    assert ratio["cielab"] > 1.5
    assert ratio["ms_swd"] < 0.5
    assert ratio["ms_swd"] < ratio["cielab"] / 4


def test_ms_swd_rejects_images_smaller_than_a_patch():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        bl.ms_swd(x, x)


def test_gaussian_pyramid_halves_and_keeps_uniform_images():
    x = torch.full((2, 3, 40, 30), 0.3)
    levels = bl.gaussian_pyramid(x, 5, min_size=5)
    assert [tuple(t.shape[-2:]) for t in levels] == [(40, 30), (20, 15), (10, 8)]
    for t in levels:
        torch.testing.assert_close(t, torch.full_like(t, 0.3))


@pytest.fixture
def cdnet():
    torch.manual_seed(0)
    net = bl.CDNet()
    with torch.no_grad():
        net.cholesky.add_(0.3 * torch.randn(net.cholesky.shape))
    return net


def test_cdnet_has_about_14k_parameters_and_a_78_parameter_cholesky_factor(cdnet):
    n = sum(p.numel() for p in cdnet.parameters())
    assert n == 13_874 and 13_000 < n < 15_000
    assert cdnet.cholesky.numel() == 78 == 12 * 13 // 2
    m = cdnet.metric_matrix().detach()
    torch.testing.assert_close(m, m.T)
    assert float(torch.linalg.eigvalsh(m).min()) > -1e-5
    assert torch.equal(torch.triu(cdnet.lower(), 1), torch.zeros(12, 12))


def test_cdnet_context_branch_sees_exactly_11x11_pixels(cdnet):
    x = torch.rand(1, 3, 31, 31)
    y = x.clone()
    y[:, :, 15, 15] = 1.0 - y[:, :, 15, 15]
    changed = (cdnet.embed(x) - cdnet.embed(y)).abs().amax(1)[0] > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert cdnet.receptive_field == 11
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (10, 20, 10, 20)


def test_cdnet_distance_is_mean_mahalanobis_zero_for_identical_and_symmetric(cdnet, pair):
    x, y = pair
    with torch.no_grad():
        d = cdnet(x, y)
        diff = (cdnet.embed(x) - cdnet.embed(y)).permute(0, 2, 3, 1)          # [B, H, W, 12]
        brute = torch.einsum("bhwi,ij,bhwj->bhw", diff, cdnet.metric_matrix(), diff).sqrt().mean((1, 2))
        torch.testing.assert_close(d, brute, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cdnet(y, x), d)
        assert torch.equal(cdnet(x, x), torch.zeros(3))
    x.requires_grad_(True)
    cdnet(x, x.detach()).sum().backward()
    assert torch.isfinite(x.grad).all()


def _synthetic_loader(n_batches=4, batch=8, size=12):
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n_batches):
        x = torch.rand(batch, 3, size, size, generator=g) * 0.6 + 0.2
        strength = torch.rand(batch, generator=g)
        tint = torch.tensor([0.2, 0.0, -0.2]).view(1, 3, 1, 1) * strength.view(-1, 1, 1, 1)
        batches.append({"x": x, "y": (x + tint).clamp(0, 1), "dv": 5.0 * strength})
    return batches


def test_fit_cdnet_reduces_the_loss():
    torch.manual_seed(0)
    net = bl.CDNet()
    loader = _synthetic_loader()
    losses = bl.fit_cdnet(net, loader, epochs=4, lr=3e-3, progress=False)
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.3 * np.mean(losses[:4])
    assert not net.training


def test_fit_cdnet_stops_on_non_finite_loss():
    loader = _synthetic_loader(1)
    loader[0]["dv"][0] = float("nan")
    with pytest.raises(ValueError, match="non-finite loss"):
        bl.fit_cdnet(bl.CDNet(), loader, progress=False)
