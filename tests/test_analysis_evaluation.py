"""The evaluation table with bootstrap intervals, paired differences, and its figures."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from cdflow_lib import evaluate as ev  # noqa: E402
from cdflow_lib.analysis import evaluation  # noqa: E402

N_BOOT = 200


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    dv = rng.uniform(0.5, 10.0, 80)
    good = np.sqrt(dv) * rng.uniform(0.9, 1.1, dv.size)   # a noisy monotone predictor
    bad = rng.uniform(0.0, 5.0, dv.size)                   # unrelated to dv
    aligned = np.arange(dv.size) % 3 != 0
    return dv, good, bad, aligned


def test_estimates_equal_evaluate_correlations(data):
    dv, good, _, _ = data
    intervals = evaluation.score_intervals(good, dv, n_boot=N_BOOT)
    reference = ev.correlations(good, dv)
    for score in evaluation.TABLE_SCORES:
        assert intervals[score].estimate == pytest.approx(reference[score], rel=1e-9)


def test_intervals_match_brute_force_bootstrap(data):
    dv, good, _, _ = data
    intervals = evaluation.score_intervals(good, dv, n_boot=N_BOOT, seed=3)
    fitted = ev.logistic_fit(good, dv)(good)
    rng = np.random.default_rng(3)          # the resampling bootstrap_ci documents
    srcc, stress = [], []
    for _ in range(N_BOOT):
        i = rng.integers(0, dv.size, dv.size)
        srcc.append(stats.spearmanr(fitted[i], dv[i])[0])
        stress.append(100 * np.sqrt(np.sum((good[i] - good[i] @ good[i] / (good[i] @ dv[i]) * dv[i]) ** 2)
                                    / ((good[i] @ good[i] / (good[i] @ dv[i])) ** 2 * dv[i] @ dv[i])))
    assert (intervals["srcc"].low, intervals["srcc"].high) == pytest.approx(tuple(np.quantile(srcc, [0.025, 0.975])))
    assert (intervals["stress"].low, intervals["stress"].high) == pytest.approx(
        tuple(np.quantile(stress, [0.025, 0.975])))


def test_exact_predictor_has_degenerate_intervals(data):
    dv, _, _, _ = data
    intervals = evaluation.score_intervals(2.5 * dv, dv, n_boot=N_BOOT)
    assert intervals["stress"].high == pytest.approx(0.0, abs=1e-5)
    for score in ("srcc", "krcc"):
        assert intervals[score].low == pytest.approx(1.0) and intervals[score].high == pytest.approx(1.0)
    assert intervals["plcc"].low > 0.9999


def test_table_rows_cover_measures_and_subsets(data):
    dv, good, bad, aligned = data
    predictions = {"pred": {"good": good, "bad": bad}, "dv": dv, "aligned": aligned}
    rows = evaluation.scores_with_intervals(predictions, n_boot=N_BOOT, seed=1)
    assert [(r["measure"], r["subset"]) for r in rows] == [
        (m, s) for m in ("good", "bad") for s in evaluation.SUBSETS]
    non_aligned = next(r for r in rows if r["measure"] == "good" and r["subset"] == "non-aligned")
    assert non_aligned["n"] == int((~aligned).sum())
    direct = evaluation.score_intervals(good[~aligned], dv[~aligned], n_boot=N_BOOT, seed=1)["krcc"]
    assert (non_aligned["krcc"], non_aligned["krcc_low"], non_aligned["krcc_high"]) == (
        direct.estimate, direct.low, direct.high)
    assert non_aligned["srcc_plain"] == pytest.approx(stats.spearmanr(good[~aligned], dv[~aligned])[0])
    good_all = rows[0]
    bad_all = next(r for r in rows if r["measure"] == "bad" and r["subset"] == "all")
    assert good_all["srcc_low"] > 0.8 and bad_all["srcc_high"] < 0.5
    assert good_all["stress"] < bad_all["stress"]


def test_table_without_aligned_flag_has_only_all(data):
    dv, good, _, _ = data
    rows = evaluation.scores_with_intervals({"pred": {"good": good}, "dv": dv, "aligned": None}, n_boot=50)
    assert [r["subset"] for r in rows] == ["all"]


def test_paired_difference_of_identical_measures_is_zero(data):
    dv, good, _, _ = data
    diff = evaluation.paired_difference(good, good.copy(), dv, "srcc", n_boot=N_BOOT)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)


def test_paired_difference_favours_the_better_measure(data):
    dv, good, bad, _ = data
    srcc = evaluation.paired_difference(good, bad, dv, "srcc", n_boot=N_BOOT)
    assert srcc.estimate == pytest.approx(ev.correlations(good, dv)["srcc"] - ev.correlations(bad, dv)["srcc"])
    assert srcc.low > 0.5
    stress = evaluation.paired_difference(good, bad, dv, "stress", n_boot=N_BOOT)
    assert stress.estimate == pytest.approx(ev.stress(good, dv) - ev.stress(bad, dv))
    assert stress.high < 0.0


def test_bad_arguments_raise(data):
    dv, good, bad, _ = data
    with pytest.raises(ValueError, match="unknown score"):
        evaluation.paired_difference(good, bad, dv, "rmse")
    with pytest.raises(ValueError, match="same shape"):
        evaluation.paired_difference(good, bad[:-1], dv)
    with pytest.raises(ValueError, match="aligned must be"):
        evaluation.subset_masks(5, [True, False])


def test_figures_have_one_bar_per_measure_and_subset(data):
    dv, good, bad, aligned = data
    predictions = {"pred": {"good": good, "bad": bad}, "dv": dv, "aligned": aligned}
    rows = evaluation.scores_with_intervals(predictions, n_boot=50)
    fig = evaluation.interval_bars(rows, labels={"good": "Good"})
    assert len(fig.axes) == len(evaluation.TABLE_SCORES)
    assert len(fig.axes[0].patches) == 2 * len(evaluation.SUBSETS)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Good", "bad"]
    plt.close(fig)
    fig = evaluation.prediction_scatter(predictions, ["good", "bad"])
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="no predictions"):
        evaluation.prediction_scatter(predictions, ["cdflow"])
