"""Robustness analysis: perturbations, JND-normalised movement, STRESS/SRCC tables, figures."""
import matplotlib
import numpy as np
import pytest
import torch
from scipy import stats

from cdflow_lib import baselines, colour, evaluate, metric
from cdflow_lib.analysis import robustness as rb
from cdflow_lib.data.corpus import photo_tensor
from cdflow_lib.data.transforms import misalign

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZE = 64


def mean_colour_distance(x, y):
    """A shift-invariant toy measure: CIE76 ΔE*ab between the images' mean sRGB colours. -> [B]."""
    mean_x, mean_y = x.mean((2, 3), keepdim=True), y.mean((2, 3), keepdim=True)
    return (colour.srgb_to_lab(mean_x) - colour.srgb_to_lab(mean_y)).flatten(1).norm(dim=1)


@pytest.fixture(scope="module")
def photos():
    return torch.stack([photo_tensor(name, SIZE) for name in ("coffee", "astronaut", "chelsea")])


@pytest.fixture(scope="module")
def shifted_pairs(photos):
    """Photographs and copies under global CIELAB shifts of known size; the label is the shift length."""
    g = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(12):
        x = photos[i % 3]
        length = 1.0 + 9.0 * i / 11                              # 1 .. 10 ΔE*ab
        direction = torch.randn(3, generator=g, dtype=torch.float64)
        shift = (length * direction / direction.norm()).float().view(1, 3, 1, 1)
        y = colour.lab_to_srgb(colour.srgb_to_lab(x[None]) + shift).clamp(0, 1)[0]
        pairs.append(dict(x=x, y=y, dv=length))
    return pairs


@pytest.mark.parametrize("kind", ["none", "translation", "rotation", "dilation"])
def test_zero_amount_is_identity(photos, kind):
    assert torch.equal(rb.Perturbation(kind, 0.0).apply(photos), photos)


def test_translation_moves_content_by_the_fraction_of_the_width():
    x = torch.zeros(3, 16, 32)
    x[:, :, 10] = 1.0                                          # a white column at x = 10
    y = rb.Perturbation("translation", 0.125).apply(x)         # 0.125 * 32 = 4 pixels right
    assert y[0].sum(0).argmax().item() == 14
    assert torch.allclose(y[:, :, 14], torch.ones(3, 16), atol=1e-6)


def test_amounts_map_to_misalign_parameters():
    assert rb.Perturbation("translation", 0.05).params(256) == dict(dx=pytest.approx(12.8))
    assert rb.Perturbation("rotation", 3.0).params(256) == dict(angle_deg=3.0)
    assert rb.Perturbation("dilation", 0.064).params(256) == dict(scale=pytest.approx(1.064))
    assert rb.Perturbation("dilation", 0.05).magnitude == pytest.approx(1.05)
    assert rb.Perturbation("translation", 0.05).label == "shift 5%"


@pytest.mark.parametrize("kind, amount", [("shear", 0.1), ("rotation", -1.0), ("none", 0.5), ("dilation", float("nan"))])
def test_invalid_perturbation_is_rejected(kind, amount):
    with pytest.raises(ValueError):
        rb.Perturbation(kind, amount)


def test_grid_lists_identity_then_each_kind_in_increasing_order():
    grid = rb.perturbation_grid(translations=(0.05, 0.01), rotations=(3.0,), dilations=(0.064, 0.05))
    assert [(p.kind, p.amount) for p in grid] == [("none", 0.0), ("translation", 0.01), ("translation", 0.05),
                                                 ("rotation", 3.0), ("dilation", 0.05), ("dilation", 0.064)]
    default = rb.perturbation_grid()
    assert max(p.amount for p in default if p.kind == "translation") == rb.PAPER_MAX_TRANSLATION
    assert {3.0, 10.0} <= {p.amount for p in default if p.kind == "rotation"}
    with pytest.raises(ValueError):
        rb.perturbation_grid(translations=(0.0,))


def test_just_visible_change_is_one_jnd_in_cielab():
    grey = torch.full((1, 3, 8, 8), 0.5)
    changed = rb.just_visible_changes(grey)
    assert changed.shape == (6, 1, 3, 8, 8)
    d = torch.stack([baselines.cielab(grey, c) for c in changed]).flatten()
    assert torch.allclose(d, torch.full((6,), rb.JND_DELTA_E_AB), atol=2e-3)
    # the unit of the toy measure is the JND itself
    assert rb.jnd_distance(mean_colour_distance, grey) == pytest.approx(rb.JND_DELTA_E_AB, abs=2e-3)


def test_shift_invariant_measure_scores_zero_movement_under_translation(photos):
    # Photographs in a uniform grey frame wider than the largest shift: a translation with
    # reflect padding only trades frame for frame, so the mean colour is exactly preserved.
    framed = torch.full((3, 3, SIZE + 16, SIZE + 16), 0.5)
    framed[..., 8:-8, 8:-8] = photos
    grid = rb.perturbation_grid(rotations=(), dilations=())
    assert max(p.amount for p in grid) * (SIZE + 16) < 8
    rows = rb.geometric_sensitivity({"mean colour": mean_colour_distance,
                                     "CIEDE2000": baselines.ciede2000}, framed, grid)
    toy = [r for r in rows if r["measure"] == "mean colour"]
    assert rows[0]["movement"] == 0.0                          # the identity
    assert max(r["movement_max"] for r in toy) < 1e-3
    assert max(r["movement_min"] for r in rows if r["measure"] == "CIEDE2000") > 1.0


def test_pixel_mean_delta_e_moves_a_lot_under_a_shift_of_a_photograph(photos):
    shift = rb.Perturbation("translation", rb.PAPER_MAX_TRANSLATION)
    rows = rb.geometric_sensitivity({"CIEDE2000": baselines.ciede2000,
                                     "mean colour": mean_colour_distance}, photos, [shift])
    by_name = {r["measure"]: r for r in rows}
    assert by_name["CIEDE2000"]["movement_min"] > 2.0           # every photo: more than two JNDs
    assert by_name["CIEDE2000"]["movement"] > 10 * by_name["mean colour"]["movement"]


def test_sensitivity_matches_direct_computation(photos):
    p = rb.Perturbation("rotation", 3.0)
    (row,) = rb.geometric_sensitivity({"CIEDE2000": baselines.ciede2000}, photos, [p], batch_size=2)
    d = baselines.ciede2000(photos, misalign(photos, angle_deg=3.0))
    lab = colour.srgb_to_lab(photos)
    ref = []
    for v in rb.JND_DIRECTIONS:                                # brute force: shift, clip, measure
        y = colour.lab_to_srgb(lab + rb.JND_DELTA_E_AB * torch.tensor(v).view(1, 3, 1, 1)).clamp(0, 1)
        ref.append(baselines.ciede2000(photos, y))
    ref = float(np.median(torch.cat(ref).numpy()))
    assert row["jnd_distance"] == pytest.approx(ref, rel=1e-5)
    assert row["distance"] == pytest.approx(float(d.mean()), rel=1e-5)
    assert row["movement"] == pytest.approx(float(d.mean()) / ref, rel=1e-5)
    assert row["movement_min"] <= row["movement"] <= row["movement_max"]


def test_robustness_table_has_one_row_per_measure_and_perturbation(shifted_pairs):
    grid = [rb.IDENTITY, rb.Perturbation("translation", 0.05), rb.Perturbation("rotation", 10.0)]
    measures = {"CIEDE2000": baselines.ciede2000, "mean colour": mean_colour_distance}
    rows = rb.robustness_table(measures, shifted_pairs, grid, batch_size=5)
    assert len(rows) == 6
    assert [(r["measure"], r["label"]) for r in rows[:3]] == [("CIEDE2000", "aligned"), ("CIEDE2000", "shift 5%"),
                                                             ("CIEDE2000", "rotate 10°")]
    assert all(r["n"] == 12 for r in rows)
    table = rb.pivot(rows, "srcc")
    assert [t["measure"] for t in table] == ["CIEDE2000", "mean colour"]
    assert list(table[0]) == ["measure", "aligned", "shift 5%", "rotate 10°"]
    assert "| CIEDE2000 |" in evaluate.format_table(table)


def test_robustness_scores_match_stress_and_spearman(shifted_pairs):
    rows = rb.robustness_table({"CIEDE2000": baselines.ciede2000}, shifted_pairs, [rb.IDENTITY])
    x, y, dv = rb.stack_pairs(shifted_pairs)
    pred = baselines.ciede2000(x, y).double().numpy()
    assert rows[0]["stress"] == pytest.approx(evaluate.stress(pred, dv.numpy()), rel=1e-6)
    assert rows[0]["srcc"] == pytest.approx(stats.spearmanr(pred, dv.numpy())[0], rel=1e-9)


def test_misalignment_ruins_pixel_delta_e_but_not_a_shift_invariant_measure(shifted_pairs):
    grid = [rb.IDENTITY, rb.Perturbation("translation", 0.05)]
    rows = rb.robustness_table({"CIEDE2000": baselines.ciede2000, "mean colour": mean_colour_distance},
                               shifted_pairs, grid)
    srcc = {(r["measure"], r["kind"]): r["srcc"] for r in rows}
    assert srcc[("mean colour", "none")] > 0.95 and srcc[("mean colour", "translation")] > 0.95
    assert srcc[("CIEDE2000", "none")] > 0.9
    assert srcc[("CIEDE2000", "translation")] < srcc[("CIEDE2000", "none")] - 0.3


def test_standard_measures_score_identical_images_zero():
    model = metric.CDFlow.from_config("tiny").eval()
    x = photo_tensor("coffee", 32)[None]
    measures = rb.standard_measures(model, 32)
    assert list(measures) == ["CD-Flow", "CIEDE2000", "S-CIELAB", "MS-SWD"]
    with torch.no_grad():
        assert all(float(m(x, x)[0]) < 1e-3 for m in measures.values())


def test_figures_have_one_panel_per_kind(photos, shifted_pairs):
    grid = rb.perturbation_grid(translations=(0.05,), rotations=(3.0,), dilations=(0.064,))
    sens = rb.geometric_sensitivity({"CIEDE2000": baselines.ciede2000}, photos[:1], grid)
    fig = rb.plot_sensitivity(sens)
    assert len(fig.axes) == 3
    plt.close(fig)
    rows = rb.robustness_table({"CIEDE2000": baselines.ciede2000}, shifted_pairs[:4], grid)
    fig = rb.plot_robustness(rows)
    assert len(fig.axes) == 6
    plt.close(fig)
    fig = rb.plot_perturbations(photos[0], grid)
    assert len(fig.axes) == 2 * len(grid) + 1                  # images, ΔE00 maps, colour bar
    plt.close(fig)
    with pytest.raises(ValueError):
        rb.plot_sensitivity([r for r in sens if r["kind"] == "none"])


def test_srcc_loss_difference_matches_direct_spearman_and_a_brute_force_bootstrap():
    rng = np.random.default_rng(1)
    dv = rng.uniform(0, 10, 40)
    a0, a1 = dv + rng.normal(0, 1, 40), dv + rng.normal(0, 4, 40)    # a: spoiled by the "warp"
    b0, b1 = dv + rng.normal(0, 1, 40), dv + rng.normal(0, 1, 40)    # b: barely touched
    srcc = lambda p, t: stats.spearmanr(p, t)[0]
    ci = rb.srcc_loss_difference(dv, a0, a1, b0, b1, n=200, seed=3)
    assert ci.estimate == pytest.approx((srcc(a0, dv) - srcc(a1, dv)) - (srcc(b0, dv) - srcc(b1, dv)), abs=1e-12)
    g = np.random.default_rng(3)                                     # the same resamples, written out
    boot = []
    for _ in range(200):
        i = g.integers(0, 40, 40)
        boot.append((srcc(a0[i], dv[i]) - srcc(a1[i], dv[i])) - (srcc(b0[i], dv[i]) - srcc(b1[i], dv[i])))
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)
    assert ci.low > 0                                                # a loses more: the interval says so
    swapped = rb.srcc_loss_difference(dv, b0, b1, a0, a1, n=200, seed=3)
    assert (swapped.estimate, swapped.low, swapped.high) == pytest.approx((-ci.estimate, -ci.high, -ci.low), abs=1e-12)
    with pytest.raises(ValueError):
        rb.srcc_loss_difference(dv[:2], a0[:2], a1[:2], b0[:2], b1[:2])


def test_robustness_table_returns_the_predictions_its_scores_come_from(shifted_pairs):
    grid = [rb.IDENTITY, rb.Perturbation("translation", 0.05)]
    measures = {"CIEDE2000": baselines.ciede2000, "mean colour": mean_colour_distance}
    rows, preds, dv = rb.robustness_table(measures, shifted_pairs, grid, return_predictions=True)
    assert rows == rb.robustness_table(measures, shifted_pairs, grid)
    x, y, _ = rb.stack_pairs(shifted_pairs)
    direct = baselines.ciede2000(x, misalign(y, dx=0.05 * y.shape[-1])).double().numpy()
    np.testing.assert_allclose(preds["shift 5%"]["CIEDE2000"], direct, rtol=1e-6)
    assert dv.tolist() == [p["dv"] for p in shifted_pairs]
    # the shift spoils CIEDE2000's ranking and not the mean colour's: a paired interval above 0
    ci = rb.srcc_loss_difference(dv, preds["aligned"]["CIEDE2000"], preds["shift 5%"]["CIEDE2000"],
                                 preds["aligned"]["mean colour"], preds["shift 5%"]["mean colour"], n=300)
    assert ci.low > 0
