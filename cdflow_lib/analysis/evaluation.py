"""The evaluation table with confidence intervals, and its figures.

``cdflow_lib.evaluate`` computes the scores (STRESS on raw predictions; PLCC, SRCC, KRCC after
the 5-parameter logistic fit) and a bootstrap interval of one score. This module adds what a
table of many measures needs:

- ``scores_with_intervals``: every score of every measure on every subset (all, aligned,
  non-aligned) with a 95 % percentile bootstrap interval. All intervals use the **same**
  resampled pair indices (one seed), so the bootstrap is paired across measures and scores.
  The logistic is fitted once per measure and subset, on all its pairs, and held fixed on
  the resamples: the PLCC / SRCC / KRCC intervals show the sampling of pairs, not the
  uncertainty of the fit (refitting on each of 1,000 resamples would cost a few minutes per
  table on a CPU for intervals that differ little).
- ``paired_difference``: the bootstrap interval of a score difference between two measures
  on the same pairs ("does A beat B?" asks whether that interval excludes 0).
- ``interval_bars`` and ``prediction_scatter``: the figures.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ..evaluate import Interval, bootstrap_ci, logistic_fit, stress

#: The scores of the table, in order, and whether larger is better.
TABLE_SCORES = ("stress", "plcc", "srcc", "krcc")
HIGHER_IS_BETTER = {"stress": False, "plcc": True, "srcc": True, "krcc": True}
#: Subsets of a pair set with the "aligned" flag, in table order.
SUBSETS = ("all", "aligned", "non-aligned")

#: Scores on SPCD's test pairs (all pairs) as published in the CD-Flow paper (Chen et al.,
#: CVPR 2023; CD-Net from the same comparison). Published numbers: reproducing them needs SPCD.
PAPER_SPCD_SCORES = {
    "cdflow": {"stress": 18.47, "plcc": 0.871, "srcc": 0.865},
    "cdnet": {"stress": 21.43, "plcc": 0.846, "srcc": 0.842},
    "ciede2000": {"stress": 31.44, "plcc": 0.726, "srcc": 0.686},
    "cielab": {"stress": 31.87, "plcc": 0.716, "srcc": 0.666},
}

#: Statistics on (fitted or raw prediction, target), each a function of two [N] arrays -> float.
_STATISTICS = {
    "stress": stress,
    "plcc": lambda a, b: stats.pearsonr(a, b)[0],
    "srcc": lambda a, b: stats.spearmanr(a, b)[0],
    "krcc": lambda a, b: stats.kendalltau(a, b)[0],
}


def subset_masks(n: int, aligned=None) -> dict[str, np.ndarray]:
    """{"all": [n] True, and with `aligned` ([n] bool) also "aligned" and "non-aligned"}."""
    masks = {"all": np.ones(n, dtype=bool)}
    if aligned is not None:
        aligned = np.asarray(aligned, dtype=bool)
        if aligned.shape != (n,):
            raise ValueError(f"aligned must be a [{n}] bool array, got shape {aligned.shape}")
        masks.update({"aligned": aligned, "non-aligned": ~aligned})
    return masks


def score_intervals(pred, target, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Interval]:
    """STRESS, PLCC, SRCC, KRCC of one measure with percentile bootstrap intervals.

    pred: [N] predictions; target: [N] visual differences (N >= 3). STRESS on the raw
    predictions; the correlations on the logistic-fitted predictions (fit once, on all N
    pairs; see the module docstring). The estimates equal ``evaluate.correlations``'s.
    Returns {score: Interval} for the keys of ``TABLE_SCORES``.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    fitted = logistic_fit(p, t)(p)
    return {name: bootstrap_ci(p if name == "stress" else fitted, t, _STATISTICS[name], n=n_boot, seed=seed,
                               level=level)
            for name in TABLE_SCORES}


def scores_with_intervals(predictions: Mapping, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[dict]:
    """Rows of the evaluation table from ``evaluate.predict``'s output.

    One row per measure and subset (``SUBSETS``; "aligned" / "non-aligned" only when the
    pairs carried the flag, and only subsets with at least 3 pairs): keys measure, subset, n,
    then for each score of ``TABLE_SCORES`` the estimate and ``<score>_low`` / ``<score>_high``
    (the `level` percentile bootstrap interval over `n_boot` resamples, seeded by `seed`),
    and ``srcc_plain`` (Spearman on the raw predictions).
    """
    dv = np.asarray(predictions["dv"], dtype=np.float64)
    masks = subset_masks(dv.size, predictions.get("aligned"))
    rows = []
    for name, pred in predictions["pred"].items():
        pred = np.asarray(pred, dtype=np.float64)
        for subset, mask in masks.items():
            if mask.sum() < 3:
                continue
            row = {"measure": name, "subset": subset, "n": int(mask.sum())}
            for score, ci in score_intervals(pred[mask], dv[mask], n_boot, seed, level).items():
                row.update({score: ci.estimate, f"{score}_low": ci.low, f"{score}_high": ci.high})
            row["srcc_plain"] = float(stats.spearmanr(pred[mask], dv[mask])[0])
            rows.append(row)
    return rows


def paired_difference(pred_a, pred_b, target, score: str = "srcc", n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> Interval:
    """Bootstrap interval of score(A) − score(B) on the same pairs (paired resampling).

    pred_a, pred_b, target: [N]. score: one of ``TABLE_SCORES``; both measures' logistic fits
    are made once on all pairs, as in ``score_intervals``. For STRESS a negative difference
    favours A; for the correlations a positive one does.
    """
    if score not in _STATISTICS:
        raise ValueError(f"unknown score {score!r}; choose one of {TABLE_SCORES}")
    t = np.asarray(target, dtype=np.float64)
    a, b = (np.asarray(p, dtype=np.float64) for p in (pred_a, pred_b))
    if not a.shape == b.shape == t.shape:
        raise ValueError(f"pred_a, pred_b and target must have the same shape, got {a.shape}, {b.shape}, {t.shape}")
    if score != "stress":
        a, b = logistic_fit(a, t)(a), logistic_fit(b, t)(b)
    stat = _STATISTICS[score]

    def difference(index, target_resampled):
        # bootstrap_ci resamples (index, target) together; the index picks the same pairs of a and b.
        i = index.astype(np.int64)
        return stat(a[i], target_resampled) - stat(b[i], target_resampled)

    return bootstrap_ci(np.arange(t.size, dtype=np.float64), t, difference, n=n_boot, seed=seed, level=level)


def interval_bars(rows: Sequence[Mapping], scores: Sequence[str] = TABLE_SCORES, subsets: Sequence[str] | None = None,
                  labels: Mapping[str, str] | None = None, title: str | None = None):
    """Figure: one panel per score, grouped bars (one group per measure, one bar per subset)
    with the bootstrap intervals of ``scores_with_intervals`` rows as error bars.

    labels: measure name -> axis label (default: the name). Measures keep the rows' order.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("interval_bars: no rows")
    measures = list(dict.fromkeys(r["measure"] for r in rows))
    subsets = list(subsets) if subsets is not None else list(dict.fromkeys(r["subset"] for r in rows))
    by_key = {(r["measure"], r["subset"]): r for r in rows}
    width = 0.8 / len(subsets)
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores) + 0.6, 3.9), squeeze=False)
    positions = np.arange(len(measures))
    for ax, score in zip(axes[0], scores):
        for j, subset in enumerate(subsets):
            present = [m for m in measures if (m, subset) in by_key]
            x = positions[[measures.index(m) for m in present]] + (j - (len(subsets) - 1) / 2) * width
            est = np.array([by_key[m, subset][score] for m in present])
            low = np.array([by_key[m, subset][f"{score}_low"] for m in present])
            high = np.array([by_key[m, subset][f"{score}_high"] for m in present])
            ax.bar(x, est, width, color=colours[j % len(colours)], label=subset,
                   yerr=np.vstack([est - low, high - est]), capsize=2, error_kw=dict(lw=0.8))
        arrow = "higher is better" if HIGHER_IS_BETTER.get(score, True) else "lower is better"
        ax.set_title(f"{score.upper()} ({arrow})", fontsize=10)
        ax.set_xticks(positions, [labels.get(m, m) if labels else m for m in measures], rotation=55, ha="right",
                      fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", ncol=len(subsets), fontsize=9,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def prediction_scatter(predictions: Mapping, measures: Sequence[str], labels: Mapping[str, str] | None = None,
                       target_label: str = "ΔV", title: str | None = None):
    """Figure: prediction (x) against target (y) for each of `measures`, aligned and
    non-aligned pairs in two colours, with the logistic fitted on all pairs drawn through.

    predictions: ``evaluate.predict``'s output; measures: names in predictions["pred"].
    """
    import matplotlib.pyplot as plt

    dv = np.asarray(predictions["dv"], dtype=np.float64)
    masks = subset_masks(dv.size, predictions.get("aligned"))
    groups = [(k, masks[k]) for k in ("aligned", "non-aligned")] if len(masks) > 1 else [("all", masks["all"])]
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.8), squeeze=False)
    for ax, name in zip(axes[0], measures):
        if name not in predictions["pred"]:
            raise ValueError(f"prediction_scatter: no predictions for {name!r}; have {sorted(predictions['pred'])}")
        p = np.asarray(predictions["pred"][name], dtype=np.float64)
        for (group, mask), marker in zip(groups, ("o", "^")):
            ax.scatter(p[mask], dv[mask], s=14, marker=marker, alpha=0.7, label=f"{group} ({mask.sum()})")
        fit = logistic_fit(p, dv)
        grid = np.linspace(p.min(), p.max(), 200)
        ax.plot(grid, fit(grid), "k-", lw=1.4, label="logistic fit")
        label = labels.get(name, name) if labels else name
        ax.set(xlabel=f"{label} prediction", ylabel=target_label)
        ax.set_title(f"{label}: SRCC (all pairs) {stats.spearmanr(fit(p), dv)[0]:.3f}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
