"""cdflow_lib.colour against colour-science, published test data and brute force."""
from __future__ import annotations

import math

import colour
import numpy as np
import pytest
import scipy.signal
import torch
from colour.difference import delta_E_CIE1976, delta_E_CIE1994, delta_E_CIE2000, delta_E_CMC

from cdflow_lib import colour as C

D65_XY = colour.XYZ_to_xy(np.array(C.D65_XYZ))


def sharma_pairs():
    """(Lab_1, Lab_2, ΔE00) of Sharma, Wu & Dalal (2005), from colour-science's own test module."""
    try:
        return C.sharma_test_pairs()
    except FileNotFoundError as err:
        pytest.skip(f"Sharma test pairs unavailable: {err}")


def random_lab(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Lab values of random sRGB colours, plus exact greys and near-neutral colours."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, generator=g, dtype=dtype)
    rgb[: n // 8] = rgb[: n // 8, :1]                                    # greys (R = G = B)
    rgb[n // 8: n // 4] = rgb[n // 8: n // 4, :1] + 1e-3 * torch.rand(n // 8, 3, generator=g, dtype=dtype)
    return C.srgb_to_lab(rgb.clamp(0, 1))


# ----------------------------------------------------------------------------- conversions

def test_ciede2000_reproduces_sharma_wu_dalal_pairs():
    lab1, lab2, expected = sharma_pairs()
    assert len(expected) >= 33
    for a, b in ((lab1, lab2), (lab2, lab1)):  # CIEDE2000 is symmetric
        got = C.delta_e2000(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-4), (torch.float32, 2e-3)])
def test_srgb_to_lab_matches_colour_science(dtype, atol):
    rgb = torch.rand(2000, 3, dtype=torch.float64)
    expected = colour.XYZ_to_Lab(colour.sRGB_to_XYZ(rgb.numpy()), illuminant=D65_XY)
    got = C.srgb_to_lab(rgb.to(dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), expected, atol=atol, rtol=0)


def test_image_layout_gives_the_same_lab_as_colour_rows():
    img = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    rows = img.movedim(1, -1).reshape(-1, 3)
    np.testing.assert_allclose(C.srgb_to_lab(img).movedim(1, -1).reshape(-1, 3).numpy(),
                               C.srgb_to_lab(rows).numpy(), atol=1e-12)


def test_transfer_curve_matches_iec_61966_2_1():
    x = torch.linspace(0, 1, 1001, dtype=torch.float64).repeat(3, 1).T
    np.testing.assert_allclose(C.srgb_to_linear(x).numpy(), colour.models.eotf_sRGB(x.numpy()), atol=1e-12)
    np.testing.assert_allclose(C.linear_to_srgb(x).numpy(), colour.models.eotf_inverse_sRGB(x.numpy()), atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_round_trips_recover_srgb(dtype, atol):
    rgb = torch.rand(4, 3, 16, 16, dtype=dtype)
    assert torch.allclose(C.lab_to_srgb(C.srgb_to_lab(rgb)), rgb, atol=atol, rtol=0)
    assert torch.allclose(C.linear_to_srgb(C.srgb_to_linear(rgb)), rgb, atol=atol, rtol=0)
    lin = C.srgb_to_linear(rgb)
    assert torch.allclose(C.xyz_to_linear_srgb(C.linear_srgb_to_xyz(lin)), lin, atol=atol, rtol=0)
    xyz = C.linear_srgb_to_xyz(lin)
    assert torch.allclose(C.lab_to_xyz(C.xyz_to_lab(xyz)), xyz, atol=atol, rtol=0)


def test_greys_are_neutral_and_white_has_lightness_100():
    greys = torch.linspace(0, 1, 11, dtype=torch.float64).unsqueeze(1).repeat(1, 3)
    lab = C.srgb_to_lab(greys)
    assert lab[:, 1:].abs().max() < 1e-12
    assert abs(float(lab[-1, 0]) - 100.0) < 1e-12 and abs(float(lab[0, 0])) < 1e-12


# ----------------------------------------------------------------------------- ΔE formulas

FORMULAS = {
    "76": (C.delta_e76, delta_E_CIE1976, {}),
    "94": (C.delta_e94, delta_E_CIE1994, {}),
    "94-textiles": (C.delta_e94, delta_E_CIE1994, {"textiles": True}),
    "2000": (C.delta_e2000, delta_E_CIE2000, {}),
    "cmc-2:1": (C.delta_e_cmc, delta_E_CMC, {}),
    "cmc-1:1": (C.delta_e_cmc, delta_E_CMC, {"l": 1, "c": 1}),
}


@pytest.mark.parametrize("name", FORMULAS)
def test_delta_e_matches_colour_science(name):
    ours, reference, kwargs = FORMULAS[name]
    lab1, lab2 = random_lab(800, 1), random_lab(800, 2)
    lab2[:50] = lab1[:50]  # identical pairs too
    expected = reference(lab1.numpy(), lab2.numpy(), **kwargs)
    got = ours(lab1, lab2, **kwargs)
    assert got.shape == (800,)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9, rtol=1e-9)
    assert torch.all(got[:50] == 0)


def test_delta_e2000_parametric_factors_divide_their_terms():
    lab1 = torch.tensor([[50.0, 0.0, 0.0]], dtype=torch.float64)
    lab2 = torch.tensor([[60.0, 0.0, 0.0]], dtype=torch.float64)  # pure lightness difference
    assert torch.allclose(C.delta_e2000(lab1, lab2, kL=2.0), C.delta_e2000(lab1, lab2) / 2)


def test_delta_e_on_images_removes_the_channel_dim():
    x, y = torch.rand(2, 3, 6, 5), torch.rand(2, 3, 6, 5)
    for f in (C.delta_e76, C.delta_e94, C.delta_e2000, C.delta_e_cmc):
        d = f(C.srgb_to_lab(x), C.srgb_to_lab(y))
        assert d.shape == (2, 6, 5) and d.dtype == torch.float32 and bool(torch.isfinite(d).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("formula", [C.delta_e2000, C.delta_e76, C.delta_e94, C.delta_e_cmc])
def test_gradients_are_finite_at_identical_images_and_neutral_greys(formula, dtype):
    images = torch.rand(2, 3, 8, 8, dtype=dtype)
    grey = torch.linspace(0, 1, 8, dtype=dtype).view(1, 1, 1, 8).expand(2, 3, 8, 8)
    other_grey = grey.flip(-1)
    for x, y in ((images, images), (grey, grey), (grey, other_grey), (grey, images)):
        x = x.clone().requires_grad_(True)
        y = y.clone().requires_grad_(True)
        d = formula(C.srgb_to_lab(x), C.srgb_to_lab(y))
        d.sum().backward()
        assert bool(torch.isfinite(d).all())
        assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(y.grad).all())


def test_gradient_of_delta_e76_is_the_unit_direction_away_from_identity():
    lab1 = torch.tensor([[50.0, 10.0, -5.0]], dtype=torch.float64, requires_grad=True)
    lab2 = torch.tensor([[53.0, 14.0, -5.0]], dtype=torch.float64)
    C.delta_e76(lab1, lab2).sum().backward()
    assert torch.allclose(lab1.grad, torch.tensor([[-0.6, -0.8, 0.0]], dtype=torch.float64))


# ----------------------------------------------------------------------------- CAM16-UCS

def test_cam16ucs_delta_e_matches_colour_science_cam16():
    x, y = torch.rand(2, 3, 4, 5, dtype=torch.float64), torch.rand(2, 3, 4, 5, dtype=torch.float64)
    surround = colour.VIEWING_CONDITIONS_CAM16[C.CAM16_SURROUND]

    def jab(img):
        xyz = colour.sRGB_to_XYZ(img.movedim(1, -1).numpy())
        spec = colour.XYZ_to_CAM16(100 * xyz, 100 * np.array(C.D65_XYZ), C.CAM16_L_A, C.CAM16_Y_B, surround)
        return colour.JMh_CAM16_to_CAM16UCS(np.stack([spec.J, spec.M, spec.h], -1))

    expected = np.linalg.norm(jab(x) - jab(y), axis=-1)
    got = C.cam16ucs_delta_e(x, y)
    assert got.shape == (2, 4, 5)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert float(C.cam16ucs_delta_e(x, x).abs().max()) < 1e-9


# ----------------------------------------------------------------------------- S-CIELAB

def test_samples_per_degree_follows_the_viewing_geometry():
    one_degree = 2 * 0.5 * math.tan(math.radians(0.5))  # metres spanned by 1 degree at 0.5 m
    assert math.isclose(C.samples_per_degree(0.5, one_degree / 60), 60.0)
    assert math.isclose(C.samples_per_degree_for_display(1024, 0.30, 0.60), C.DEFAULT_SAMPLES_PER_DEGREE)
    assert 35 < C.DEFAULT_SAMPLES_PER_DEGREE < 36.5
    # Twice as far away: twice as many pixels per degree.
    assert math.isclose(C.samples_per_degree(1.2, 1e-3), 2 * C.samples_per_degree(0.6, 1e-3))


def test_scielab_filter_matches_brute_force_2d_convolution():
    """Dense 2-D kernel sum_i w_i k_i exp(-(x^2+y^2)/s_i^2) / sum_i w_i, numpy's reflect boundary."""
    spd = 4.0  # the broad luminance Gaussian (radius 37 px) then reaches far beyond the 12 x 10 image
    xyz = C.linear_srgb_to_xyz(torch.rand(1, 3, 12, 10, dtype=torch.float64))
    opp = np.einsum("ij,jhw->ihw", np.array(C.SCIELAB_XYZ_TO_OPP), xyz[0].numpy())
    filtered = []
    for channel, gaussians in zip(opp, C.SCIELAB_FILTERS):
        radii = [math.ceil(3 * spread * spd / math.sqrt(2)) for _, spread in gaussians]
        t = np.arange(-max(radii), max(radii) + 1)
        kernel = 0
        for (weight, spread), r in zip(gaussians, radii):
            inside = (np.abs(t) <= r)[:, None] & (np.abs(t) <= r)[None, :]  # square truncated support
            g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (spread * spd) ** 2) * inside
            kernel = kernel + weight * g / g.sum()
        kernel = kernel / sum(w for w, _ in gaussians)
        padded = np.pad(channel, max(radii), mode="reflect")
        filtered.append(scipy.signal.convolve2d(padded, kernel, mode="valid"))
    expected = np.einsum("ij,jhw->ihw", np.linalg.inv(np.array(C.SCIELAB_XYZ_TO_OPP)), np.stack(filtered))
    np.testing.assert_allclose(C.scielab_filter(xyz, spd)[0].numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("formula", ["2000", "76"])
@pytest.mark.parametrize("spd", [C.DEFAULT_SAMPLES_PER_DEGREE, 8.0])
def test_scielab_equals_plain_cielab_on_uniform_images(formula, spd):
    g = torch.Generator().manual_seed(3)
    colours_x, colours_y = torch.rand(3, 3, 1, 1, generator=g, dtype=torch.float64), torch.rand(3, 3, 1, 1, generator=g, dtype=torch.float64)
    x, y = colours_x.expand(3, 3, 20, 24), colours_y.expand(3, 3, 20, 24)
    plain = (C.delta_e2000 if formula == "2000" else C.delta_e76)(C.srgb_to_lab(x), C.srgb_to_lab(y))
    got = C.scielab_delta_e(x, y, spd=spd, formula=formula)
    assert got.shape == (3, 20, 24)
    assert float(plain.min()) > 1.0  # the colours really differ
    assert torch.allclose(got, plain, atol=1e-8, rtol=0)


def _grating(direction_xyz: torch.Tensor, period_px: int, size: int = 64) -> torch.Tensor:
    """A vertical cosine grating around sRGB mid-grey along an XYZ direction, as sRGB [1, 3, size, size]."""
    grey = C.linear_srgb_to_xyz(C.srgb_to_linear(torch.full((1, 3), 0.5, dtype=torch.float64)))[0]
    wave = torch.cos(2 * math.pi * torch.arange(size, dtype=torch.float64) / period_px)
    xyz = grey.view(1, 3, 1, 1) + direction_xyz.view(1, 3, 1, 1) * wave.view(1, 1, 1, size)
    rgb = C.linear_to_srgb(C.xyz_to_linear_srgb(xyz.expand(1, 3, size, size)))
    assert 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    return rgb


def test_scielab_strongly_attenuates_a_fine_isoluminant_red_green_grating():
    # Red-green direction: X varies, Y (luminance) and the blue-yellow channel O3 stay constant.
    o3 = torch.tensor(C.SCIELAB_XYZ_TO_OPP[2], dtype=torch.float64)
    direction = torch.linalg.solve(torch.stack([torch.eye(3, dtype=torch.float64)[0],
                                                torch.eye(3, dtype=torch.float64)[1], o3]),
                                   torch.tensor([0.06, 0.0, 0.0], dtype=torch.float64))
    spd = C.DEFAULT_SAMPLES_PER_DEGREE  # 35.7 px/deg: a 2 px period is 17.9 cycles/deg

    def ratio(rgb):
        ref = torch.full_like(rgb, 0.5)
        plain = C.delta_e2000(C.srgb_to_lab(rgb), C.srgb_to_lab(ref)).mean()
        return float(C.scielab_delta_e(rgb, ref, spd=spd).mean() / plain)

    fine_chromatic = ratio(_grating(direction, 2))
    coarse_chromatic = ratio(_grating(direction, 32))
    fine_luminance = ratio(_grating(torch.tensor(C.D65_XYZ, dtype=torch.float64) * 0.08, 2))
    assert fine_chromatic < 0.05          # measured 0.017
    assert coarse_chromatic > 0.5         # measured 0.73: coarse colour stays visible
    assert fine_luminance > 5 * fine_chromatic  # measured 0.23: the eye resolves luminance finer


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("call", [
    lambda: C.srgb_to_lab(torch.rand(2, 4, 8, 8)),
    lambda: C.srgb_to_lab(torch.rand(3)),
    lambda: C.srgb_to_linear(torch.randint(0, 255, (2, 3))),
    lambda: C.lab_to_srgb(torch.rand(5, 2)),
    lambda: C.xyz_to_lab(torch.rand(5, 3), white=(0.95, 1.0)),
    lambda: C.delta_e2000(torch.rand(5, 3), torch.rand(4, 3)),
    lambda: C.delta_e76(torch.rand(5, 4), torch.rand(5, 4)),
    lambda: C.delta_e94(torch.full((2, 3), float("nan")), torch.rand(2, 3)),
    lambda: C.scielab_delta_e(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), formula="94"),
    lambda: C.scielab_delta_e(torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8)),
    lambda: C.scielab_delta_e(torch.rand(1, 3, 8, 8) * 255, torch.rand(1, 3, 8, 8)),
    lambda: C.scielab_filter(torch.rand(8, 3), 10.0),
    lambda: C.scielab_filter(torch.rand(1, 3, 8, 8), 0.0),
    lambda: C.cam16ucs_delta_e(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9)),
    lambda: C.samples_per_degree(-0.5, 1e-3),
], ids=["4-channels", "1-d", "integer", "2-channels", "bad-white", "shape-mismatch", "delta76-4ch", "nan",
        "unknown-formula", "scielab-4ch", "0-255", "filter-not-image", "zero-spd", "cam16-mismatch", "negative-distance"])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
