"""Cortical-like responses: opponent colour space, receptive and generative fields, the
luminance / single- / double-opponent classifier, gratings."""
import copy
import json

import colour as colour_science
import numpy as np
import pytest
import torch

from cdflow_lib.analysis import cortical
from cdflow_lib.analysis.cortical import Unit
from cdflow_lib.metric import CDFlow
from test_layers import perturb

SIZE = 16


def gaussian(size, sigma, cy=None, cx=None):
    cy = (size - 1) / 2 if cy is None else cy
    cx = (size - 1) / 2 if cx is None else cx
    y, x = np.mgrid[:size, :size]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))


def opponent_field(a=None, rg=None, by=None, size=32):
    maps = [np.zeros((size, size)) if m is None else m for m in (a, rg, by)]
    return torch.tensor(np.stack(maps))[None]


def class_of(opp):
    share, lowpass = cortical.field_statistics(opp)
    return cortical.classify(share, lowpass)[0]



@pytest.fixture(scope="module")
def tiny():
    """A `tiny` CD-Flow in float64 with every parameter moved off its initial value (so the
    couplings are nonlinear) and ActNorm initialised on random images."""
    torch.manual_seed(0)
    model = perturb(CDFlow.from_config("tiny")).double().eval()
    model.flow.initialize(torch.rand(4, 3, SIZE, SIZE, dtype=torch.float64))
    return model.flow


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(3)
    return 0.2 + 0.6 * torch.rand(1, 3, SIZE, SIZE, generator=g, dtype=torch.float64)


UNITS = [Unit(1, 0, 4, 3), Unit(1, 5, 2, 6), Unit(2, 7, 2, 1), Unit(3, 3, 1, 0), Unit(3, 11, 0, 1)]


# --- the classifier on constructed fields ----------------------------------------------------

def test_constructed_luminance_field_is_classified_luminance():
    rng = np.random.default_rng(0)
    blob = gaussian(32, 3.0)
    opp = opponent_field(a=blob, rg=0.3 * blob * rng.standard_normal((32, 32)), by=0.2 * blob)
    share, _ = cortical.field_statistics(opp)
    assert share[0] > 0.85
    assert class_of(opp) == "luminance"


@pytest.mark.parametrize("hue_deg", [0.0, 90.0, 35.0, 210.0])
def test_constructed_single_opponent_field_is_classified_single_opponent(hue_deg):
    """A one-signed chromatic blob along any hue axis (RG, BY or oblique), some luminance."""
    blob = gaussian(32, 2.5)
    t = np.radians(hue_deg)
    opp = opponent_field(a=0.4 * blob, rg=np.cos(t) * blob, by=np.sin(t) * blob)
    share, lowpass = cortical.field_statistics(opp)
    assert share[0] == pytest.approx(0.16 / 1.16)
    assert lowpass[0] == pytest.approx(1.0)          # one sign: the DFT peaks at zero frequency
    assert class_of(opp) == "single-opponent"


def test_constructed_double_opponent_centre_surround_is_classified_double_opponent():
    """Red-green centre with a balanced green-red surround (difference of Gaussians with equal integrals)."""
    dog = gaussian(32, 1.5) / 1.5 ** 2 - gaussian(32, 4.5) / 4.5 ** 2
    opp = opponent_field(a=0.1 * gaussian(32, 1.5) / 1.5 ** 2, rg=dog)
    _, lowpass = cortical.field_statistics(opp)
    assert lowpass[0] < 0.05
    assert class_of(opp) == "double-opponent"


def test_constructed_oriented_chromatic_edge_is_classified_double_opponent():
    """An odd-symmetric blue-yellow Gabor (a chromatic edge detector)."""
    y, x = np.mgrid[:32, :32] - 15.5
    gabor = np.exp(-(x ** 2 + y ** 2) / (2 * 4.0 ** 2)) * np.sin(2 * np.pi * x / 10)
    opp = opponent_field(by=gabor)
    assert class_of(opp) == "double-opponent"


def test_partly_balanced_surround_crosses_the_threshold():
    """Surround integral 30 % of the centre's: single-opponent; 90 %: double-opponent."""
    def field(frac):
        return opponent_field(rg=gaussian(32, 1.5) / 1.5 ** 2 - frac * gaussian(32, 4.5) / 4.5 ** 2)
    assert class_of(field(0.3)) == "single-opponent"
    assert class_of(field(0.9)) == "double-opponent"


def test_fields_built_in_srgb_are_classified_after_the_change_of_coordinates():
    """Patterns made in sRGB at a grey image: a grey blob is luminance, an isoluminant red-green
    blob single-opponent, a red-green blob with a balanced opposite surround double-opponent."""
    at = torch.full((1, 3, 32, 32), 0.5, dtype=torch.float64)
    grey_o = cortical.srgb_to_opponent(at)
    h = 1e-3
    blob = torch.tensor(gaussian(32, 2.0))
    dog = torch.tensor(gaussian(32, 1.5) / 1.5 ** 2 - gaussian(32, 4.5) / 4.5 ** 2)

    def pattern(channel, shape):
        o = grey_o.clone()
        o[:, channel] += h * shape
        return (cortical.opponent_to_srgb(o) - at) / h

    fields = torch.cat([pattern(0, blob), pattern(1, blob), pattern(1, dog)])
    opp = cortical.field_to_opponent(fields, at, "pattern")
    share, lowpass = cortical.field_statistics(opp)
    assert share[0] > 0.999 and share[1] < 1e-6
    assert cortical.classify(share, lowpass) == ["luminance", "single-opponent", "double-opponent"]


def test_class_shares_count_per_scale():
    classes = ["luminance", "single-opponent", "single-opponent", "double-opponent", "luminance"]
    shares = cortical.class_shares(classes, [1, 1, 1, 1, 3], n_scales=3)
    np.testing.assert_allclose(shares[0], [0.25, 0.5, 0.25])
    assert np.isnan(shares[1]).all()
    np.testing.assert_allclose(shares[2], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown class"):
        cortical.class_shares(["colour"], [1], 1)


def test_paper_claim_reads_the_single_opponent_fraction_of_chromatic_fields():
    claimed = np.array([[0.5, 0.1, 0.4], [0.2, 0.4, 0.4], [0.0, 0.9, 0.1]])   # finest DO, coarsest SO
    np.testing.assert_allclose(cortical.single_opponent_fraction(claimed), [0.2, 0.5, 0.9])
    assert cortical.paper_claim(claimed) == {"so_fraction_finest": pytest.approx(0.2),
                                             "so_fraction_coarsest": pytest.approx(0.9), "holds": True}
    assert not cortical.paper_claim(claimed[::-1])["holds"]
    no_colour = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert cortical.paper_claim(no_colour)["so_fraction_finest"] is None
    assert not cortical.paper_claim(no_colour)["holds"]


def test_window_holds_a_field_confined_to_the_unit_block():
    unit = Unit(2, 0, 5, 1)                       # block rows 20..23, cols 4..7 of a 48 px image
    field = torch.zeros(1, 3, 48, 48)
    field[0, :, 20:24, 4:8] = 1.0
    field[0, 1, 0, 47] = 0.5                      # a far-away speck: 0.25 / 48.25 of the energy
    fs = cortical.FieldSet([unit], "jacobian", field, field, np.ones(1), np.ones(1), ["luminance"])
    window = cortical.window(field[0], unit)      # 16 x 16 (WINDOW_MIN_PX), clamped at the left edge
    assert window.shape == (3, 16, 16) and float(window.sum()) == 48.0
    assert cortical.window(field[0], Unit(5, 0, 0, 0)).shape == (3, 48, 48)   # at most the image
    np.testing.assert_allclose(cortical.window_energy_share(fs), [48.0 / 48.25])


# --- the opponent colour space --------------------------------------------------------------

def test_achromatic_channel_is_the_srgb_luminance_of_colour_science():
    y_row = colour_science.RGB_COLOURSPACES["sRGB"].matrix_RGB_to_XYZ[1]
    np.testing.assert_allclose(cortical.LINEAR_RGB_TO_OPPONENT[0], y_row, atol=5e-5)
    greys = torch.rand(10, 1, dtype=torch.float64).expand(10, 3)
    opp = cortical.linear_rgb_to_opponent(greys)
    np.testing.assert_allclose(opp[:, 1:], 0.0, atol=1e-15)       # greys have no chromatic part
    corners = torch.tensor(list(np.ndindex(2, 2, 2)), dtype=torch.float64)
    opp = cortical.linear_rgb_to_opponent(corners)
    np.testing.assert_allclose(opp.max(0).values - opp.min(0).values, [1.0, 1.0, 1.0])  # gamut extents


def test_response_field_gives_the_response_to_opponent_stimuli():
    """w = field_to_opponent(g, at, 'response'): the linear response g . dx to a small opponent
    stimulus do (rendered in sRGB around `at`) equals w . do."""
    g = torch.Generator().manual_seed(1)
    at = 0.05 + 0.9 * torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64)
    grad = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    w = cortical.field_to_opponent(grad, at, "response")
    for channel, (py, px) in [(0, (1, 2)), (1, (5, 5)), (2, (7, 0))]:
        h = 1e-5
        step = torch.zeros_like(at)
        step[0, channel, py, px] = h
        o = cortical.srgb_to_opponent(at)
        dx = (cortical.opponent_to_srgb(o + step) - cortical.opponent_to_srgb(o - step)) / (2 * h)
        assert float((grad * dx).sum()) == pytest.approx(float(w[0, channel, py, px]), rel=1e-7)


def test_pattern_field_is_the_opponent_change_of_the_image_change():
    g = torch.Generator().manual_seed(2)
    at = 0.05 + 0.9 * torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64)
    delta = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    h = 1e-6
    expected = (cortical.srgb_to_opponent(at + h * delta) - cortical.srgb_to_opponent(at - h * delta)) / (2 * h)
    torch.testing.assert_close(cortical.field_to_opponent(delta, at, "pattern"), expected, rtol=1e-6, atol=1e-9)


# --- receptive and generative fields --------------------------------------------------------

def test_jacobian_field_of_tiny_matches_finite_differences(tiny, image):
    """Directional derivatives of each unit along random image directions, by central differences."""
    fields = cortical.jacobian_fields(tiny, image, UNITS, batch_size=2)
    g = torch.Generator().manual_seed(4)
    directions = torch.randn(16, *image.shape[1:], generator=g, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        plus, minus = tiny(image + h * directions)[0], tiny(image - h * directions)[0]
    for i, u in enumerate(UNITS):
        fd = (plus[u.scale - 1][:, u.channel, u.row, u.col] - minus[u.scale - 1][:, u.channel, u.row, u.col]) / (2 * h)
        got = (directions * fields[i]).flatten(1).sum(1)
        assert float((got - fd).abs().max() / fd.abs().max()) < 1e-6, u
        assert float(fd.abs().max()) > 1e-2


def test_inverse_field_agrees_with_the_jacobian_of_the_inverse(tiny, image):
    """Column u of the Jacobian of f^-1 (forward-mode autograd, one batch copy per unit)."""
    n = len(UNITS)
    with torch.no_grad():
        zs = [z.expand(n, -1, -1, -1).clone() for z in tiny(image)[0]]
    tangent = [torch.zeros_like(z) for z in zs]
    for i, u in enumerate(UNITS):
        tangent[u.scale - 1][i, u.channel, u.row, u.col] = 1.0
    _, columns = torch.autograd.functional.jvp(lambda *z: tiny.inverse(list(z)), tuple(zs), tuple(tangent))
    scale = columns.flatten(1).abs().max(1).values
    for eps, tol in [(1e-5, 1e-3), (1e-2, 0.3)]:
        fields = cortical.inverse_fields(tiny, image, UNITS, eps=eps)
        err = float(((fields - columns).flatten(1).abs().max(1).values / scale).max())
        assert err < tol, eps
    assert err > 1e-4          # a large step is visibly nonlinear: the check has teeth


def test_inverse_fields_of_a_float32_flow_run_in_float64(tiny, image):
    tiny32 = copy.deepcopy(tiny).float()
    got = cortical.inverse_fields(tiny32, image.float(), UNITS, eps=1e-6)
    assert got.dtype == torch.float32 and next(tiny32.parameters()).dtype == torch.float32
    expected = cortical.inverse_fields(tiny, image, UNITS, eps=1e-6)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)   # float32 steps of 1e-6 would be noise


def test_jacobian_rows_and_inverse_columns_are_dual(tiny, image):
    """J_f J_{f^-1} = I: row u of the Jacobian times column v of the inverse's Jacobian is delta_uv."""
    rows = cortical.jacobian_fields(tiny, image, UNITS).flatten(1)
    cols = cortical.inverse_fields(tiny, image, UNITS, eps=1e-6).flatten(1)
    np.testing.assert_allclose((rows @ cols.T).numpy(), np.eye(len(UNITS)), atol=1e-5)


def test_receptive_fields_classifies_every_unit(tiny, image):
    fs = cortical.receptive_fields(tiny, image, UNITS, method="inverse", eps=1e-4)
    assert fs.fields.shape == (len(UNITS), 3, SIZE, SIZE) and len(fs.classes) == len(UNITS)
    assert set(fs.classes) <= set(cortical.CLASSES)
    np.testing.assert_allclose(np.nansum(fs.shares(3), 1), 1.0)
    summary = cortical.receptive_fields(tiny, image, UNITS, method="jacobian").summary(3)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert [len(v) for v in summary.values()] == [3] * 5


def test_centre_units_sit_at_the_latent_centre(tiny):
    units = cortical.centre_units(tiny, SIZE, channels_per_scale=4, seed=0)
    shapes = tiny.latent_shapes(SIZE, SIZE)
    assert [sum(u.scale == k for u in units) for k in (1, 2, 3)] == [min(4, c) for c, _, _ in shapes]
    for u in units:
        _, h, w = shapes[u.scale - 1]
        assert (u.row, u.col) == (h // 2, w // 2)
    assert Unit(2, 0, 2, 1).centre_px() == (10.0, 6.0)


def test_bad_inputs_raise(tiny, image):
    with pytest.raises(ValueError, match="outside latent"):
        cortical.jacobian_fields(tiny, image, [Unit(1, 99, 0, 0)])
    with pytest.raises(ValueError, match="scale must be"):
        cortical.inverse_fields(tiny, image, [Unit(4, 0, 0, 0)])
    with pytest.raises(ValueError, match="one image"):
        cortical.jacobian_fields(tiny, image.expand(2, -1, -1, -1), UNITS)
    with pytest.raises(ValueError, match="method"):
        cortical.receptive_fields(tiny, image, UNITS, method="saliency")
    with pytest.raises(ValueError, match="kind"):
        cortical.field_to_opponent(image, image, "covector")


# --- gratings -------------------------------------------------------------------------------

def _xyz_colour_science(srgb: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] sRGB -> [N, H, W, 3] XYZ through colour-science's own decoding and matrix."""
    rgb = srgb.permute(0, 2, 3, 1).double().numpy()
    return colour_science.RGB_to_XYZ(rgb, "sRGB", apply_cctf_decoding=True)


@pytest.mark.parametrize("kind", ["red-green", "blue-yellow"])
def test_chromatic_gratings_are_isoluminant(kind):
    g = cortical.gratings(64, [1, 3, 8], kind, orientation_deg=30.0, dtype=torch.float64)
    xyz = _xyz_colour_science(g)
    lum = xyz[..., 1]
    assert lum.max() - lum.min() < 2e-4                     # constant Y (matrix digits differ by < 5e-5)
    chroma = cortical.srgb_to_opponent(g)[:, cortical.GRATING_KINDS[kind]]
    assert float(chroma.max() - chroma.min()) == pytest.approx(2 * cortical.GRATING_AMPLITUDE, rel=0.02)


def test_luminance_grating_keeps_the_grey_chromaticity():
    g = cortical.gratings(64, [2, 5], "luminance", amplitude=0.12, dtype=torch.float64)
    xyz = _xyz_colour_science(g)
    xy = xyz[..., :2] / xyz.sum(-1, keepdims=True)
    assert np.ptp(xy[..., 0]) < 1e-4 and np.ptp(xy[..., 1]) < 1e-4
    assert np.ptp(xyz[..., 1]) == pytest.approx(0.24, rel=1e-3)


def test_grating_has_the_requested_frequency_and_orientation():
    for cycles in (1, 4, 11):
        g = cortical.gratings(64, [cycles], "red-green", dtype=torch.float64)
        rg = cortical.srgb_to_opponent(g)[0, 1]
        spectrum = torch.fft.fft2(rg - rg.mean()).abs()
        fy, fx = np.unravel_index(int(spectrum.argmax()), spectrum.shape)
        assert (fy, min(fx, 64 - fx)) == (0, cycles)        # orientation 0: varies along x only


def test_grating_outside_the_gamut_raises():
    limit = cortical.max_grating_amplitude("blue-yellow")
    g = cortical.gratings(32, [2], "blue-yellow", amplitude=limit, dtype=torch.float64)
    lin = colour_science.cctf_decoding(g.numpy(), "sRGB")
    assert min(lin.min(), 1 - lin.max()) < 1e-6               # the limit touches the gamut boundary
    with pytest.raises(ValueError, match="gamut"):
        cortical.gratings(32, [2], "blue-yellow", amplitude=1.01 * limit)


def test_grating_response_of_a_linear_flow_is_proportional_to_amplitude():
    """An untrained flow (zero-initialised couplings) is linear, so its responses double with the amplitude."""
    torch.manual_seed(0)
    model = CDFlow.from_config("tiny").eval()
    model.flow.initialize(torch.rand(4, 3, SIZE, SIZE))
    kw = dict(orientations=(0.0,), phases=(0.0, 90.0), background=0.6)
    r1 = cortical.grating_responses(model.flow, SIZE, [1, 2, 4], amplitude=0.02, **kw)
    r2 = cortical.grating_responses(model.flow, SIZE, [1, 2, 4], amplitude=0.04, **kw)
    for kind in cortical.GRATING_KINDS:
        assert r1[kind].shape == (3, 3) and (r1[kind] > 0).all()
        # the sRGB encoding is not linear, so only close to proportional
        np.testing.assert_allclose(r2[kind] / r1[kind], 2.0, rtol=0.02)
    np.testing.assert_allclose(cortical.lowpass_tuning_index([[2.0, 4.0], [3.0, 1.0]]), [0.5, 1.0])
