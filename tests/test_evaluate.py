"""STRESS, the logistic fit, correlations, bootstrap intervals and the evaluation loop."""
import numpy as np
import pytest
import torch
from scipy import stats
from vsl_ial.stress import stress as vsl_stress

from cdflow_lib import evaluate as ev


@pytest.fixture
def labels():
    return np.random.default_rng(0).uniform(0.5, 10.0, 300)


def test_stress_is_zero_for_proportional_predictions(labels):
    assert ev.stress(3.7 * labels, labels) == pytest.approx(0.0, abs=1e-5)


def test_stress_is_invariant_to_scaling_predictions(labels):
    pred = np.sqrt(labels) + np.random.default_rng(1).uniform(0, 0.5, labels.size)
    base = ev.stress(pred, labels)
    assert base > 5.0
    for k in (1e-3, 0.5, 42.0):
        assert ev.stress(k * pred, labels) == pytest.approx(base, rel=1e-10)


def test_stress_matches_hand_computation():
    # e = [1, 2, 3], v = [1, 1, 2]: F = 14/9, residuals (-5, 4, -1)/9, Σ r² = 42/81,
    # F² Σ v² = 1176/81, STRESS = 100 sqrt(42/1176) = 100/sqrt(28).
    assert ev.stress([1.0, 2.0, 3.0], [1.0, 1.0, 2.0]) == pytest.approx(100.0 / np.sqrt(28.0), rel=1e-12)


def test_stress_matches_vsl_ial_reference(labels):
    pred = labels ** 0.7 * np.random.default_rng(2).uniform(0.8, 1.2, labels.size)
    # vsl-ial writes STRESS as ||k·ΔV − ΔE|| / ||ΔE|| (a fraction) with ΔV first.
    assert ev.stress(pred, labels) == pytest.approx(100.0 * vsl_stress(labels, pred), rel=1e-10)


def test_stress_rejects_bad_input():
    with pytest.raises(ValueError, match="same number"):
        ev.stress([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        ev.stress([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])


def test_logistic_fit_plcc_of_monotone_transform_is_near_one(labels):
    for pred in (np.log(labels), np.exp(labels / 3.0), labels ** 3):
        scores = ev.correlations(pred, labels)
        assert scores["plcc"] > 0.99
        assert scores["pearson"] < scores["plcc"]  # the fit straightened a curved relation
        assert scores["srcc"] == pytest.approx(1.0)


def test_logistic_sign_rule_fits_decreasing_relation():
    x = np.linspace(0.0, 1.0, 200)
    y = 10.0 * (0.5 - 1.0 / (1.0 + np.exp(-8.0 * (x - 0.4)))) + 5.0  # a decreasing sigmoid
    fit = ev.logistic_fit(x, y)
    b1, b2 = fit.params[:2]
    assert b1 < 0 < b2 or b2 < 0 < b1  # the sigmoid part decreases
    assert np.all(np.diff(fit(x)) < 0)
    assert np.max(np.abs(fit(x) - y)) < 0.05
    scores = ev.correlations(x, y)
    assert scores["plcc"] > 0.999 and scores["pearson"] < -0.9 and scores["srcc_plain"] == pytest.approx(-1.0)


def test_correlations_match_scipy_without_fit(labels):
    pred = labels + np.random.default_rng(3).normal(0, 2.0, labels.size)
    scores = ev.correlations(pred, labels)
    assert scores["srcc_plain"] == pytest.approx(stats.spearmanr(pred, labels)[0])
    assert scores["pearson"] == pytest.approx(np.corrcoef(pred, labels)[0, 1])
    assert 0.7 < scores["plcc"] < 1.0


def test_bootstrap_ci_contains_estimate_and_is_seed_reproducible(labels):
    pred = labels + np.random.default_rng(4).normal(0, 2.0, labels.size)
    a = ev.bootstrap_ci(pred, labels, "srcc_plain", n=300, seed=7)
    b = ev.bootstrap_ci(pred, labels, "srcc_plain", n=300, seed=7)
    c = ev.bootstrap_ci(pred, labels, "srcc_plain", n=300, seed=8)
    assert a == b and (a.low, a.high) != (c.low, c.high)
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(stats.spearmanr(pred, labels)[0])
    assert 0.01 < a.high - a.low < 0.2
    s = ev.bootstrap_ci(pred, labels, ev.stress, n=200, seed=0)
    assert s.low < s.estimate < s.high


def _pairs(n=10, size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    y = (x + 0.3 * torch.rand(n, 1, 1, 1, generator=g) * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    dv = (x - y).abs().mean((1, 2, 3)).double() * 10 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    aligned = torch.arange(n) % 2 == 0
    return x, y, dv, aligned


MEASURES = {
    "mae": lambda x, y: (x - y).abs().mean((1, 2, 3)),
    "rmse": lambda x, y: (x - y).pow(2).mean((1, 2, 3)).sqrt(),
}


def test_evaluate_single_pairs_and_dataloader_agree_with_direct_scores():
    x, y, dv, aligned = _pairs()
    singles = [{"x": x[i], "y": y[i], "dv": float(dv[i]), "aligned": bool(aligned[i])} for i in range(len(x))]
    rows = ev.evaluate(MEASURES, singles, batch_size=3, progress=False)
    ds = torch.utils.data.StackDataset(x=x, y=y, dv=dv, aligned=aligned)
    rows_dl = ev.evaluate(MEASURES, torch.utils.data.DataLoader(ds, batch_size=4), progress=False)
    assert [(r["measure"], r["subset"], r["n"]) for r in rows] == [
        (m, s, n) for m in MEASURES for s, n in (("all", 10), ("aligned", 5), ("non-aligned", 5))]
    for r, r_dl in zip(rows, rows_dl):
        for key in ev.SCORE_KEYS:
            assert r[key] == pytest.approx(r_dl[key], rel=1e-9)
    direct = ev.correlations(MEASURES["rmse"](x, y).numpy(), dv.numpy())
    row = next(r for r in rows if r["measure"] == "rmse" and r["subset"] == "all")
    assert row["stress"] == pytest.approx(direct["stress"]) and row["srcc"] == pytest.approx(direct["srcc"])


def test_evaluate_runs_without_gradients_and_rejects_bad_measures():
    x, y, dv, _ = _pairs(4)
    pairs = [{"x": x, "y": y, "dv": dv}]

    def needs_no_grad(a, b):
        assert not torch.is_grad_enabled()
        return (a - b).abs().mean((1, 2, 3))

    rows = ev.evaluate({"m": needs_no_grad}, pairs, progress=False, bootstrap=50)
    assert [r["subset"] for r in rows] == ["all"] and rows[0]["srcc_low"] <= rows[0]["srcc_high"]
    with pytest.raises(ValueError, match=r"must return a \[B\]"):
        ev.evaluate({"bad": lambda a, b: (a - b).mean()}, pairs, progress=False)
    with pytest.raises(ValueError, match="missing"):
        ev.evaluate(MEASURES, [{"x": x, "y": y}], progress=False)


def test_format_table_renders_markdown():
    rows = [{"measure": "a", "stress": 12.3456, "n": 3}, {"measure": "b", "stress": 1.0, "n": 4}]
    table = ev.format_table(rows, digits=2)
    assert table.splitlines() == ["| measure | stress | n |", "| --- | --- | --- |",
                                  "| a | 12.35 | 3 |", "| b | 1.00 | 4 |"]
