"""Perceptual uniformity: threshold search, ellipse fits and agreement, MacAdam, Munsell, COMBVD."""
import colour as colour_science
import matplotlib
import numpy as np
import pytest
import torch

from cdflow_lib import colour, metric
from cdflow_lib.analysis import uniformity as un
from cdflow_lib.baselines import get_measure
from cdflow_lib.evaluate import stress
from cdflow_lib.patches import load_combvd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: MacAdam ellipses (1-based table rows) whose neighbourhood renders in sRGB at Y = 0.2.
IN_GAMUT_AT_Y02 = [9, 10, 12, 13, 14, 15, 16, 17, 20, 21, 23, 24]


@pytest.fixture(scope="module")
def macadam():
    return un.macadam_ellipses()


@pytest.fixture(scope="module")
def used(macadam):
    return macadam.select(macadam.in_gamut)


@pytest.fixture(scope="module")
def chips():
    return un.munsell_chips()


def nearest_centre_metric(ellipses: un.MacAdamEllipses, scale: float = 1.0):
    """A toy measure whose threshold ellipses are exactly MacAdam's: sqrt(Δᵀ M Δ) with M the
    ellipse matrix of the centre nearest to the first colour, times `scale`."""
    def distance(a, b):
        near = np.argmin(np.linalg.norm(a[:, None, :2] - ellipses.centre[None], axis=2), axis=1)
        delta = b[:, :2] - a[:, :2]
        return scale * np.sqrt(np.einsum("ni,nij,nj->n", delta, ellipses.matrix[near], delta))
    return distance


# ----------------------------------------------------------------------------- threshold search

def test_threshold_search_finds_the_radius_of_euclidean_distance_in_xy():
    centres = np.array([[0.3, 0.3, 0.2], [0.4, 0.35, 0.2], [0.25, 0.2, 0.1]])
    directions = un.unit_directions(12)
    steps = un.threshold_steps(un.xy_distance, centres, directions, threshold=0.004, initial_step=1e-4)
    np.testing.assert_allclose(steps, 0.004, rtol=1e-9)
    matrix, residual = un.fit_ellipse(directions, steps)
    a, b, _ = un.ellipse_axes(matrix)
    np.testing.assert_allclose(a, 0.004, rtol=1e-9)
    np.testing.assert_allclose(b, 0.004, rtol=1e-9)
    assert residual.max() < 1e-9


@pytest.mark.parametrize("initial_step", [1e-5, 0.05])
def test_threshold_search_solves_a_nonlinear_anisotropic_distance(initial_step):
    """d = (|Δx| / 0.01)^2 + (|Δy| / 0.02)^2 ... along u: d(t) = t^2 (ux^2/1e-4 + uy^2/4e-4); root known."""
    def distance(a, b):
        dx, dy = (b - a)[:, 0], (b - a)[:, 1]
        return dx ** 2 / 1e-4 + dy ** 2 / 4e-4
    u = un.unit_directions(8)
    steps = un.threshold_steps(distance, np.array([[0.3, 0.3, 0.2]]), u, threshold=0.5, initial_step=initial_step,
                               rtol=1e-8)
    exact = np.sqrt(0.5 / (u[:, 0] ** 2 / 1e-4 + u[:, 1] ** 2 / 4e-4))
    np.testing.assert_allclose(steps[0], exact, rtol=1e-7)


def test_threshold_search_reports_a_distance_that_never_reaches_the_threshold():
    with pytest.raises(ValueError, match="did not converge"):
        un.threshold_steps(lambda a, b: np.zeros(len(a)), np.array([[0.3, 0.3, 0.2]]), un.unit_directions(4), 1.0)
    with pytest.raises(ValueError, match="threshold"):
        un.threshold_steps(un.xy_distance, np.array([[0.3, 0.3, 0.2]]), un.unit_directions(4), 0.0)


# ----------------------------------------------------------------------------- ellipses

def test_ellipse_matrix_agrees_with_colour_science_ellipse_points():
    a, b, theta = 3e-3, 1e-3, 62.3
    matrix = un.ellipse_matrix(a, b, theta)
    points = colour_science.geometry.point_at_angle_on_ellipse(np.linspace(0, 350, 36), [0, 0, a, b, theta])
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", points, matrix, points), 1.0, rtol=1e-10)
    np.testing.assert_allclose(un.ellipse_axes(matrix), (a, b, theta), rtol=1e-10)


def test_fit_ellipse_recovers_a_known_ellipse_and_flags_a_square():
    truth = un.ellipse_matrix(4e-3, 1.5e-3, 130.0)
    u = un.unit_directions(16)
    steps = np.einsum("mi,ij,mj->m", u, truth, u) ** -0.5
    matrix, residual = un.fit_ellipse(u, steps[None])
    np.testing.assert_allclose(matrix[0], truth, rtol=1e-9)
    assert residual[0] < 1e-12
    square = 1.0 / np.max(np.abs(u), axis=1)              # the unit square's boundary along each direction
    assert un.fit_ellipse(u, square[None])[1][0] > 0.05


def test_mapped_axes_scale_with_the_size_ratio():
    predicted = un.ellipse_matrix(np.array([3e-3, 1e-3]), np.array([1e-3, 0.5e-3]), np.array([20.0, 100.0]))
    major, minor = un.mapped_axes(predicted, predicted)
    np.testing.assert_allclose([major, minor], 1.0, rtol=1e-10)
    major, minor = un.mapped_axes(predicted / 4.0, predicted)   # reference twice as large in every direction
    np.testing.assert_allclose([major, minor], 2.0, rtol=1e-10)
    circle = un.ellipse_matrix(2e-3, 2e-3, 0.0)[None]          # a circle seen by a 3:1 elliptic measure
    major, minor = un.mapped_axes(circle, un.ellipse_matrix(3e-3, 1e-3, 45.0)[None])
    np.testing.assert_allclose(major / minor, 3.0, rtol=1e-10)


def test_an_exactly_uniform_space_yields_equal_circles():
    """Measured ellipses built as images of one circle under a linear map T (random centres and
    T); the measure is Euclidean distance after T: every ellipse maps to the same circle."""
    rng = np.random.default_rng(0)
    transform = np.array([[310.0, -120.0], [45.0, 520.0]])
    reference = np.repeat((transform.T @ transform / 0.7 ** 2)[None], 6, axis=0)   # {Δ: |TΔ| = 0.7}
    centres = rng.uniform(0.25, 0.4, (6, 2))
    ellipses = un.MacAdamEllipses(np.arange(1, 7), centres, reference, np.ones(6, bool), 0.2, 0.01)
    measure = lambda a, b: np.linalg.norm((b[:, :2] - a[:, :2]) @ transform.T, axis=1)  # noqa: E731
    result = un.threshold_ellipses(measure, ellipses, n_directions=12)
    assert result.threshold == pytest.approx(0.7, rel=1e-9)
    row = un.macadam_table({"uniform": result}, ellipses)[0]
    assert row["axis_ratio_median"] == pytest.approx(1.0, abs=1e-6)
    assert row["axis_ratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert row["size_cv"] == pytest.approx(0.0, abs=1e-6)
    assert row["major_ratio_cv"] == pytest.approx(0.0, abs=1e-6)
    assert row["orientation_error_mean"] == pytest.approx(0.0, abs=1e-3)


def test_a_measure_predicting_macadam_maps_his_ellipses_to_equal_circles(used):
    result = un.threshold_ellipses(nearest_centre_metric(used, scale=2.5), used)
    assert result.threshold == pytest.approx(2.5, rel=1e-9)                # MacAdam's ellipse is at distance 2.5
    np.testing.assert_allclose(result.matrix, used.matrix, rtol=1e-5)
    row = un.macadam_table({"macadam": result}, used)[0]
    assert row["n"] == len(IN_GAMUT_AT_Y02)
    assert row["axis_ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert row["size_cv"] == pytest.approx(0.0, abs=1e-5)
    assert row["orientation_error_mean"] == pytest.approx(0.0, abs=1e-2)


def test_the_xy_diagram_is_not_uniform_for_macadam(used):
    """MacAdam's classic finding: in xy his ellipses are elongated and of unequal size."""
    row = un.macadam_table({"xy": un.threshold_ellipses(un.xy_distance, used)}, used)[0]
    assert row["axis_ratio_median"] > 2.0
    assert row["size_cv"] > 0.15
    assert row["contour_residual_max"] < 1e-9                               # xy contours are exact circles


# ----------------------------------------------------------------------------- MacAdam data and rendering

def test_macadam_ellipses_come_from_the_calculated_columns(macadam):
    assert len(macadam) == 25
    np.testing.assert_allclose(macadam.centre[0], [0.160, 0.057])
    np.testing.assert_allclose(un.ellipse_axes(macadam.matrix[0]), (0.94e-3, 0.30e-3, 62.3), rtol=1e-10)
    assert macadam.number[macadam.in_gamut].tolist() == IN_GAMUT_AT_Y02


def test_in_gamut_centres_lie_inside_the_srgb_triangle(macadam):
    tri = un.srgb_gamut_xy()
    def inside(p):
        edges, offsets = [tri[(k + 1) % 3] - tri[k] for k in range(3)], [p - tri[k] for k in range(3)]
        signs = [e[0] * o[1] - e[1] * o[0] for e, o in zip(edges, offsets)]
        return all(s > 0 for s in signs) or all(s < 0 for s in signs)
    assert all(inside(c) for c in macadam.centre[macadam.in_gamut])
    assert not inside(macadam.centre[3])                                    # the saturated green (0.150, 0.680)


def test_xyY_rendering_matches_colour_science():
    xyY = np.array([[0.31006, 0.31616, 1.0], [0.305, 0.323, 0.2], [0.472, 0.399, 0.2], [0.228, 0.25, 0.3]])
    srgb, ok = un.xyY_to_srgb(xyY)
    assert ok.all()
    np.testing.assert_allclose(srgb[0], 1.0, atol=1e-6)                     # the white of illuminant C -> sRGB white
    expected = colour_science.XYZ_to_sRGB(colour_science.xyY_to_XYZ(xyY), illuminant=np.array(un.ILLUMINANT_C_XY),
                                          chromatic_adaptation_transform="CAT16")
    np.testing.assert_allclose(srgb, expected, atol=2e-3)                   # colour-science derives its matrix
    _, ok = un.xyY_to_srgb(np.array([[0.150, 0.680, 0.2]]))
    assert not ok[0]
    with pytest.raises(ValueError, match="gamut"):
        un.on_chromaticity(un.image_distance(get_measure("cielab"), size=1))(
            np.array([[0.3, 0.3, 0.2]]), np.array([[0.150, 0.680, 0.2]]))


def test_uv_matches_colour_science():
    xy = np.array([[0.3, 0.4], [0.16, 0.057], [0.6, 0.3]])
    np.testing.assert_allclose(un.xy_to_uv(xy), colour_science.xy_to_Luv_uv(xy), rtol=1e-12)


def test_cielab_threshold_agrees_with_a_colour_science_brute_force():
    """The rendering path end to end: the ΔE76 threshold step along +x from one centre, against
    a dense scan computed with colour-science alone (CAT16 to the sRGB white, CIELAB there)."""
    centre = np.array([[0.305, 0.323, 0.2]])
    measure = un.on_chromaticity(un.image_distance(get_measure("cielab"), size=1))
    step = un.threshold_steps(measure, centre, np.array([[1.0, 0.0]]), threshold=1.0, rtol=1e-8)[0, 0]
    t = np.linspace(0, 0.02, 20001)
    xyY = centre + np.c_[t, np.zeros_like(t), np.zeros_like(t)]
    white_c = colour_science.xy_to_XYZ(un.ILLUMINANT_C_XY)
    xyz = colour_science.adaptation.chromatic_adaptation_VonKries(
        colour_science.xyY_to_XYZ(xyY), white_c, np.array(colour.D65_XYZ), transform="CAT16")
    lab = colour_science.XYZ_to_Lab(xyz, illuminant=colour_science.XYZ_to_xy(np.array(colour.D65_XYZ)))
    de = colour_science.delta_E(lab[:1], lab, method="CIE 1976")
    assert step == pytest.approx(np.interp(1.0, de, t), rel=1e-4)


# ----------------------------------------------------------------------------- distances on patches

def test_cdflow_distance_equals_the_metric_on_patch_images():
    torch.manual_seed(0)
    model = metric.CDFlow.from_config("tiny").eval()
    rng = np.random.default_rng(1)
    s1 = rng.uniform(0.05, 0.95, (5, 3))
    s2 = np.concatenate([s1[:2], rng.uniform(0.05, 0.95, (3, 3))])           # two identical pairs
    s2[1] = s1[0]                                                             # and a colour used twice
    d = un.cdflow_distance(model, size=16, batch_size=3)(s1, s2)
    direct = un.image_distance(lambda x, y: model(x, y, eps=0.0), size=16, dtype=torch.float32)(s1, s2)
    np.testing.assert_allclose(d, direct, rtol=1e-5, atol=1e-6)
    assert d[0] == 0.0 and d[2:].min() > 0


def test_image_distance_of_uniform_patches_is_the_colour_formula():
    rng = np.random.default_rng(2)
    s1, s2 = rng.uniform(0, 1, (6, 3)), rng.uniform(0, 1, (6, 3))
    d = un.image_distance(get_measure("ciede2000"), size=8)(s1, s2)
    lab1, lab2 = (colour.srgb_to_lab(torch.from_numpy(s)).numpy() for s in (s1, s2))
    np.testing.assert_allclose(d, colour_science.delta_E(lab1, lab2, method="CIE 2000"), rtol=1e-9)


# ----------------------------------------------------------------------------- Munsell

def test_munsell_chips_match_the_renotation(chips):
    assert len(chips) == 2734
    i = np.flatnonzero((chips.hue == "5R") & (chips.value == 5) & (chips.chroma == 10))[0]
    np.testing.assert_allclose(chips.xyY[i, :2], colour_science.notation.munsell_colour_to_xyY("5R 5/10")[:2],
                               atol=1e-4)
    assert 0.15 < chips.xyY[i, 2] < 0.25                                     # value 5: Y about 0.2 of the white
    assert 1000 < chips.in_gamut.sum() < len(chips)


@pytest.mark.parametrize("kind", ["value", "chroma"])
def test_munsell_steps_join_adjacent_in_gamut_chips(chips, kind):
    steps = un.munsell_steps(chips, kind)
    assert len(steps) > 500
    a, b = steps.first, steps.second
    assert np.all(chips.hue[a] == chips.hue[b]) and chips.in_gamut[a].all() and chips.in_gamut[b].all()
    same, moved = ("chroma", "value") if kind == "value" else ("value", "chroma")
    assert np.all(getattr(chips, same)[a] == getattr(chips, same)[b])
    assert np.all(getattr(chips, moved)[b] - getattr(chips, moved)[a] == un.MUNSELL_STEP[kind])
    few = un.munsell_steps(chips, kind, hues=["5R", "5PB"])
    assert set(chips.hue[few.first]) == {"5R", "5PB"}
    with pytest.raises(ValueError):
        un.munsell_steps(chips, "hue")


def test_munsell_step_cv_is_zero_for_a_measure_built_to_make_steps_equal(chips):
    """Toy measure: look the chips up in the renotation and return |ΔV| + |ΔC| / 2 (Munsell units)."""
    spec = {tuple(np.round(row, 6)): (v, c) for row, v, c in zip(chips.xyY, chips.value, chips.chroma)}
    def munsell_units(a, b):
        va, ca = np.array([spec[tuple(np.round(r, 6))] for r in a]).T
        vb, cb = np.array([spec[tuple(np.round(r, 6))] for r in b]).T
        return np.abs(vb - va) + np.abs(cb - ca) / 2.0
    steps = {kind: un.munsell_steps(chips, kind) for kind in ("value", "chroma")}
    sizes = un.step_sizes(munsell_units, chips, steps)
    assert [len(v) for v in sizes.values()] == [len(s) for s in steps.values()]
    for kind in ("value", "chroma"):
        stats = un.step_uniformity(sizes[kind])
        assert stats["cv"] == 0.0 and stats["mean"] == 1.0 and stats["max_over_min"] == 1.0
    # ... while chromaticity distance in xy, which ignores lightness, is far from uniform
    xy = un.step_uniformity(un.step_sizes(un.xy_distance, chips, steps)["chroma"])
    assert xy["cv"] > 0.3


def test_coefficient_of_variation_is_population_std_over_mean():
    assert un.coefficient_of_variation([1.0, 3.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        un.coefficient_of_variation([1.0, -1.0])


# ----------------------------------------------------------------------------- COMBVD

def test_combvd_stress_of_a_formula_as_a_distance_equals_its_column():
    pairs = un.subsample_pairs(load_combvd(), 200, seed=0)
    assert len(pairs) == 200 and len(un.subsample_pairs(pairs, None)) == 200
    rows = un.combvd_stress({"de00_patches": un.image_distance(get_measure("ciede2000"), size=4)}, pairs)
    everything = [r for r in rows if r["pairs"] == "all"]
    assert everything[-1]["subset"] == "pooled" and everything[-1]["n"] == 200
    assert sum(r["n"] for r in everything[:-1]) == 200
    for r in rows:
        assert r["de00_patches"] == pytest.approx(r["ciede2000"], rel=1e-9)
        assert 10 < r["ciede2000"] < 60
    in_gamut = [r for r in rows if r["pairs"] == "in gamut"]
    assert 100 < in_gamut[-1]["n"] < 200 and in_gamut[-1]["subset"] == "pooled"


def test_combvd_predictions_give_the_stress_rows_and_the_gamut_split():
    """The per-pair predictions behind the table: STRESS recomputed from them (evaluate.stress, one
    scale factor over all pairs) is the pooled row, and in_gamut is the 'in gamut' rows' selection."""
    pairs = un.subsample_pairs(load_combvd(), 150, seed=3)
    preds, in_gamut = un.combvd_predictions({}, pairs)
    rows = un.stress_rows(preds, in_gamut, pairs)
    assert rows == un.combvd_stress({}, pairs)
    pooled = {r["pairs"]: r for r in rows if r["subset"] == "pooled"}
    for name in ("cielab", "ciede2000"):
        assert pooled["all"][name] == pytest.approx(stress(preds[name], pairs.dv), rel=1e-12)
        assert pooled["in gamut"][name] == pytest.approx(stress(preds[name][in_gamut], pairs.dv[in_gamut]), rel=1e-12)
    assert pooled["in gamut"]["n"] == in_gamut.sum() and 0 < in_gamut.sum() < len(pairs)


# ----------------------------------------------------------------------------- figures

def test_figures_draw_one_panel_per_measure(macadam, used, chips):
    results = {"xy": un.threshold_ellipses(un.xy_distance, used), "u'v'": un.threshold_ellipses(un.uv_distance, used)}
    for fig in (un.plot_macadam(macadam, results), un.plot_mapped_ellipses(used, results)):
        assert len(fig.axes) == 2
        plt.close(fig)
    steps = {k: un.munsell_steps(chips, k, hues=["5R"]) for k in ("value", "chroma")}
    by_measure = {"xy": un.step_sizes(un.xy_distance, chips, steps), "u'v'": un.step_sizes(un.uv_distance, chips, steps)}
    sizes = {k: {name: v[k] for name, v in by_measure.items()} for k in steps}
    fig = un.plot_munsell_steps(chips, steps, sizes)
    assert len(fig.axes) == 4
    plt.close(fig)
    plt.close(un.plot_munsell_page(chips, "5R"))
    rows = [{"subset": "pooled", "n": 10, "ciede2000": 30.0, "cdflow": 40.0}]
    fig = un.plot_combvd(rows, {"ciede2000": 28.98})
    assert len(fig.axes[0].patches) == 3
    plt.close(fig)
