"""Robustness of colour-difference measures to small geometric changes of the test image.

SPCD's phone captures (groups ``_01_01`` .. ``_01_06``) are registered by hand, so a third of
its pairs keep a residual misalignment: a few pixels of shift, a fraction of a degree, about
a percent of scale. Observers ignore it and rate the colour; a pixel-wise formula compares
different scene points and reports a large difference. Two questions, on any set of
measures ``measure(x, y) -> [B]`` (x, y: [B, 3, H, W] sRGB in [0, 1]):

1. **Accuracy under misalignment** (``robustness_table``): take pairs labelled on their
   aligned version, warp the test image by a `Perturbation`, and score each measure's
   predictions against the unchanged labels (STRESS and Spearman's SRCC); whether one
   measure loses less SRCC than another, with a paired bootstrap interval
   (``srcc_loss_difference``).
2. **Movement under a pure geometric change** (``geometric_sensitivity``): d(x, warp(x)),
   where nothing about the colour changed, in units of the same measure's distance for a
   just-visible colour change (``jnd_distance``), so measures on different scales compare.

The warps are ``cdflow_lib.data.transforms.misalign`` (similarity transform about the
centre, bilinear, reflect padding). Ranges follow the CD-Flow paper's robustness study
(DESIGN.md section 8): translation up to 5 % of the width, rotation up to 3 degrees (and
10 degrees as a stress case), dilation by 1.05 to 1.064.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from .. import colour
from .._checks import check_image
from ..baselines import get_measure
from ..data.transforms import misalign
from ..evaluate import Interval, predict, stress

#: Perturbation kinds; "none" (amount 0) is the unperturbed reference.
PERTURBATION_KINDS = ("none", "translation", "rotation", "dilation")
#: Units of each kind's amount.
AMOUNT_UNITS = {"none": "", "translation": "fraction of the width", "rotation": "degrees",
                "dilation": "relative scale change (scale - 1)"}

#: The paper's robustness ranges (DESIGN.md section 8): translation as a fraction of the
#: width, rotation in degrees (3 degrees, and 10 as a stress case), dilation as a scale factor.
PAPER_MAX_TRANSLATION = 0.05
PAPER_MAX_ROTATION_DEG = 3.0
STRESS_ROTATION_DEG = 10.0
PAPER_DILATION_RANGE = (1.05, 1.064)

#: Default grids (amounts in the units of AMOUNT_UNITS); they span the paper's ranges.
DEFAULT_TRANSLATIONS = (0.0125, 0.025, 0.0375, 0.05)
DEFAULT_ROTATIONS = (1.0, 2.0, 3.0, 5.0, 10.0)
DEFAULT_DILATIONS = (0.025, 0.05, 0.057, 0.064)

#: A just-noticeable colour difference: about 2.3 CIELAB ΔE*ab units (Mahy, Van Eycken &
#: Oosterlinck 1994, as quoted by Sharma & Trussell 1997, "Digital color imaging").
JND_DELTA_E_AB = 2.3
#: The six unit directions (L*, a*, b*) of the just-visible global shifts: ±L*, ±a*, ±b*.
JND_DIRECTIONS = ((1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                  (0.0, -1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, -1.0))

Measure = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Perturbation:
    """A geometric change of a test image.

    kind: one of PERTURBATION_KINDS; amount >= 0 in the kind's unit (AMOUNT_UNITS):
    translation = fraction of the image width (the content moves right), rotation =
    degrees (counter-clockwise), dilation = relative scale change (1 + amount is the
    magnification). Amount 0 is the identity for every kind; "none" only allows 0.
    """

    kind: str
    amount: float

    def __post_init__(self):
        if self.kind not in PERTURBATION_KINDS:
            raise ValueError(f"unknown perturbation kind {self.kind!r}; choose one of {PERTURBATION_KINDS}")
        if not (np.isfinite(self.amount) and self.amount >= 0):
            raise ValueError(f"{self.kind}: amount must be a finite number >= 0, got {self.amount}")
        if self.kind == "none" and self.amount != 0:
            raise ValueError(f"the 'none' perturbation has amount 0, got {self.amount}")

    def params(self, width: int) -> dict:
        """Keyword arguments of ``misalign`` for an image `width` pixels wide."""
        if self.kind == "translation":
            return dict(dx=self.amount * width)
        if self.kind == "rotation":
            return dict(angle_deg=self.amount)
        if self.kind == "dilation":
            return dict(scale=1.0 + self.amount)
        return {}

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """The perturbed copy of img ([3, H, W] or [B, 3, H, W] sRGB in [0, 1]); amount 0 gives an exact copy."""
        return misalign(img, **self.params(int(img.shape[-1])))

    @property
    def magnitude(self) -> float:
        """The amount as plotted: translation in % of the width, rotation in degrees, dilation as the scale factor."""
        return {"none": 0.0, "translation": 100.0 * self.amount, "rotation": self.amount,
                "dilation": 1.0 + self.amount}[self.kind]

    @property
    def label(self) -> str:
        """A short name: 'aligned', 'shift 5%', 'rotate 3°', 'scale 1.064'."""
        if self.kind == "translation":
            return f"shift {100 * self.amount:g}%"
        if self.kind == "rotation":
            return f"rotate {self.amount:g}°"
        if self.kind == "dilation":
            return f"scale {1 + self.amount:.4g}"
        return "aligned"


IDENTITY = Perturbation("none", 0.0)


def perturbation_grid(translations: Iterable[float] = DEFAULT_TRANSLATIONS,
                      rotations: Iterable[float] = DEFAULT_ROTATIONS,
                      dilations: Iterable[float] = DEFAULT_DILATIONS,
                      include_identity: bool = True) -> list[Perturbation]:
    """The perturbations to study: IDENTITY first (if asked), then each kind by increasing amount.

    translations: fractions of the width; rotations: degrees; dilations: scale - 1 (all > 0).
    """
    grid = [IDENTITY] if include_identity else []
    for kind, amounts in (("translation", translations), ("rotation", rotations), ("dilation", dilations)):
        amounts = sorted(float(a) for a in amounts)
        if any(a <= 0 for a in amounts):
            raise ValueError(f"{kind} amounts must be > 0 (the identity is IDENTITY), got {amounts}")
        grid += [Perturbation(kind, a) for a in amounts]
    if not grid:
        raise ValueError("perturbation_grid: no perturbations")
    return grid


def standard_measures(model: Measure, width: int) -> dict[str, Measure]:
    """The measures of the robustness study for images `width` pixels wide.

    model: a CD-Flow (``CDFlow``); the others come from ``cdflow_lib.baselines``: pixel-mean
    CIEDE2000, S-CIELAB with the samples per degree of a `width`-pixel image shown 30 cm
    wide at 60 cm (the simulated observer's viewing geometry), and MS-SWD (default options).
    """
    return {"CD-Flow": model,
            "CIEDE2000": get_measure("ciede2000"),
            "S-CIELAB": get_measure("scielab", spd=colour.samples_per_degree_for_display(width)),
            "MS-SWD": get_measure("ms_swd")}


def _measure(measure: Measure, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    """measure(x, y) in batches, without gradients: [N] float64."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            d = measure(x[i:i + batch_size], y[i:i + batch_size])
            if not isinstance(d, torch.Tensor) or d.shape != (min(batch_size, x.shape[0] - i),):
                raise ValueError(f"a measure must return one value per pair, got "
                                 f"{tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__}")
            out.append(d.double().cpu().numpy())
    return np.concatenate(out)


def just_visible_changes(x: torch.Tensor, delta_e: float = JND_DELTA_E_AB) -> torch.Tensor:
    """Global CIELAB shifts of x by `delta_e` along ±L*, ±a*, ±b*: [6, B, 3, H, W] sRGB in [0, 1].

    x: [B, 3, H, W] sRGB in [0, 1]. Every pixel moves by the same CIELAB vector of length
    `delta_e` (ΔE*ab units), then is clipped to the sRGB gamut, so a pixel at the gamut's
    edge moves less (the change is at most `delta_e` everywhere).
    """
    check_image(x, "x")
    lab = colour.srgb_to_lab(x)
    shifts = torch.tensor(JND_DIRECTIONS, dtype=lab.dtype, device=lab.device) * delta_e
    return torch.stack([colour.lab_to_srgb(lab + s.view(1, 3, 1, 1)).clamp(0.0, 1.0) for s in shifts])


def jnd_distance(measure: Measure, images: torch.Tensor, delta_e: float = JND_DELTA_E_AB,
                 batch_size: int = 8) -> float:
    """A measure's typical distance for a just-visible colour change: its unit of movement.

    The median, over `images` ([N, 3, H, W] sRGB in [0, 1]) and the six directions of
    ``just_visible_changes``, of measure(x, shifted x). In the measure's own units.
    """
    changed = just_visible_changes(images, delta_e)
    d = np.concatenate([_measure(measure, images, c, batch_size) for c in changed])
    ref = float(np.median(d))
    if not ref > 0:
        raise ValueError(f"the measure gives {ref} for a just-visible colour change; it cannot serve as a unit")
    return ref


def geometric_sensitivity(measures: Mapping[str, Measure], images: torch.Tensor,
                          perturbations: Sequence[Perturbation], *, batch_size: int = 8,
                          references: Mapping[str, float] | None = None) -> list[dict]:
    """How far each measure moves for a pure geometric change: d(x, p(x)) in JND units.

    measures: name -> measure(x, y) -> [B]; images: [N, 3, H, W] sRGB in [0, 1];
    perturbations: applied to the second argument. references: name -> ``jnd_distance``
    (computed here when not given). One row per (measure, perturbation), in that order:
    measure, kind, amount, magnitude, label, n (images), distance (mean of d over the
    images, the measure's units), jnd_distance, movement = distance / jnd_distance, and
    movement_min / movement_max over the images. movement 1 means the warp alone looks, to
    that measure, like a just-visible colour change.
    """
    check_image(images, "images")
    if not measures or not perturbations:
        raise ValueError("geometric_sensitivity needs at least one measure and one perturbation")
    warped = [p.apply(images) for p in perturbations]
    rows = []
    for name, measure in measures.items():
        ref = references[name] if references is not None else jnd_distance(measure, images, batch_size=batch_size)
        for p, y in zip(perturbations, warped):
            d = _measure(measure, images, y, batch_size)
            rows.append(dict(measure=name, kind=p.kind, amount=p.amount, magnitude=p.magnitude, label=p.label,
                             n=int(d.size), distance=float(d.mean()), jnd_distance=ref,
                             movement=float(d.mean() / ref), movement_min=float(d.min() / ref),
                             movement_max=float(d.max() / ref)))
    return rows


def stack_pairs(pairs: Iterable[Mapping]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (dicts with x, y [3, H, W] and dv) -> x, y [N, 3, H, W] and dv [N] float64."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs given")
    missing = {"x", "y", "dv"} - set(pairs[0])
    if missing:
        raise ValueError(f"each pair must be a dict with keys 'x', 'y', 'dv'; missing {sorted(missing)}")
    x = torch.stack([p["x"] for p in pairs])
    y = torch.stack([p["y"] for p in pairs])
    dv = torch.tensor([float(p["dv"]) for p in pairs], dtype=torch.float64)
    return x, y, dv


def robustness_table(measures: Mapping[str, Measure], pairs: Iterable[Mapping],
                     perturbations: Sequence[Perturbation], *, batch_size: int = 8,
                     progress: bool = False, return_predictions: bool = False):
    """STRESS and SRCC of each measure when the test image of every pair is perturbed.

    pairs: dicts with x, y ([3, H, W] sRGB in [0, 1]; y the *aligned* test image) and dv
    (its label); each perturbation warps every y, the labels stay. One row per (measure,
    perturbation), in that order: measure, kind, amount, magnitude, label, n, stress (0..100,
    lower is better; ``evaluate.stress``) and srcc (Spearman, higher is better; monotone
    maps such as the logistic fit leave it unchanged). With `return_predictions` the result
    is (rows, predictions, dv): predictions[label][measure] is the [N] float64 array of that
    measure's scores under that perturbation, dv the [N] labels (for ``srcc_loss_difference``).
    """
    x, y, dv = stack_pairs(pairs)
    if not measures or not perturbations:
        raise ValueError("robustness_table needs at least one measure and one perturbation")
    preds = {}
    for p in perturbations:
        yp = p.apply(y)
        batches = [dict(x=x[i:i + batch_size], y=yp[i:i + batch_size], dv=dv[i:i + batch_size])
                   for i in range(0, x.shape[0], batch_size)]
        preds[p] = predict(measures, batches, progress=progress)["pred"]
    rows = [dict(measure=name, kind=p.kind, amount=p.amount, magnitude=p.magnitude, label=p.label,
                 n=int(dv.numel()), stress=stress(preds[p][name], dv),
                 srcc=float(stats.spearmanr(preds[p][name], dv.numpy())[0]))
            for name in measures for p in perturbations]
    if return_predictions:
        return rows, {p.label: preds[p] for p in perturbations}, dv.numpy()
    return rows


def srcc_loss_difference(dv, aligned_a, warped_a, aligned_b, warped_b, *, n: int = 1000, seed: int = 0,
                         level: float = 0.95) -> Interval:
    """How much more SRCC measure a loses under a warp than measure b, with a paired bootstrap interval.

    dv: [N] labels; aligned_*, warped_*: [N] scores of measures a and b on the aligned and the
    warped test images of the same N pairs. The loss of a measure is SRCC(aligned) -
    SRCC(warped) (> 0: the warp spoiled its ranking); the estimate is loss_a - loss_b (< 0:
    a is the more robust of the two). The interval resamples the N pairs with replacement,
    the same resample for all four score vectors (``numpy`` generator seeded by `seed`), and
    takes the percentile interval at `level`; resamples with an undefined SRCC are left out.
    """
    vectors = [np.asarray(v, dtype=np.float64).ravel() for v in (dv, aligned_a, warped_a, aligned_b, warped_b)]
    if len({v.size for v in vectors}) != 1 or vectors[0].size < 3:
        raise ValueError(f"srcc_loss_difference needs five vectors of one length >= 3, got {[v.size for v in vectors]}")
    if n < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"n must be >= 1 and level in (0, 1), got n={n}, level={level}")
    t, a0, a1, b0, b1 = vectors

    def diff(idx):
        r = [stats.spearmanr(v[idx], t[idx])[0] for v in (a0, a1, b0, b1)]
        return (r[0] - r[1]) - (r[2] - r[3])

    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():                  # a resample with constant scores: SRCC undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.array([diff(rng.integers(0, t.size, t.size)) for _ in range(n)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("the SRCC was undefined on every bootstrap resample")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(float(diff(np.arange(t.size))), float(low), float(high), level)


def pivot(rows: Sequence[Mapping], value: str, labels: Sequence[str] | None = None) -> list[dict]:
    """Rows -> one row per measure with a column per perturbation label holding `value`.

    labels: which perturbations, in order (default: all, in the order they appear).
    Feed the result to ``evaluate.format_table``.
    """
    labels = list(labels) if labels is not None else list(dict.fromkeys(r["label"] for r in rows))
    table = {}
    for r in rows:
        if r["label"] in labels:
            table.setdefault(r["measure"], {"measure": r["measure"]})[r["label"]] = r[value]
    return [{"measure": m, **{lab: cells.get(lab, float("nan")) for lab in labels}} for m, cells in table.items()]


# ----------------------------------------------------------------------------- figures

_KIND_AXES = {"translation": "translation (% of width)", "rotation": "rotation (degrees)",
              "dilation": "scale factor"}


def _curves(rows: Sequence[Mapping], kind: str, value: str) -> dict[str, tuple[list, list]]:
    """name -> (magnitudes, values) of one kind, with the 'none' row as magnitude 0 (scale 1)."""
    origin = {"translation": 0.0, "rotation": 0.0, "dilation": 1.0}[kind]
    out: dict[str, list] = {}
    for r in rows:
        if r["kind"] in (kind, "none"):
            m = origin if r["kind"] == "none" else r["magnitude"]
            out.setdefault(r["measure"], []).append((m, r[value]))
    return {name: tuple(map(list, zip(*sorted(pts)))) for name, pts in out.items()}


def _legend_below(fig, ax) -> None:
    """One legend for the whole figure, in a row under the panels (it never covers a curve)."""
    handles, names = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))   # 0.35 inch for the legend
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)


def plot_sensitivity(rows: Sequence[Mapping], log: bool = True):
    """Movement (JND units) against magnitude, one panel per kind, one line per measure -> Figure.

    rows: from ``geometric_sensitivity``. The dashed line marks one just-visible colour
    change. With `log` the y axis is logarithmic (the zero of the identity is left out).
    """
    import matplotlib.pyplot as plt

    kinds = [k for k in _KIND_AXES if any(r["kind"] == k for r in rows)]
    if not kinds:
        raise ValueError("plot_sensitivity: no translation, rotation or dilation rows")
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False, sharey=True)
    spread = {k: _curves(rows, k, "movement_max") for k in kinds}
    for ax, kind in zip(axes[0], kinds):
        for name, (m, v) in _curves(rows, kind, "movement").items():
            m, v, hi = np.array(m), np.array(v), np.array(spread[kind][name][1])
            keep = v > 0 if log else np.ones_like(v, dtype=bool)
            line, = ax.plot(m[keep], v[keep], "o-", label=name)
            ax.fill_between(m[keep], v[keep], hi[keep], color=line.get_color(), alpha=0.12)
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_xlabel(_KIND_AXES[kind])
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    axes[0, 0].set_ylabel("movement d(x, warp x) / d(JND)")
    fig.suptitle("How far each measure moves for a pure geometric change (mean over images; band up to the max)")
    _legend_below(fig, axes[0, 0])
    return fig


def plot_robustness(rows: Sequence[Mapping]):
    """STRESS (top) and SRCC (bottom) against magnitude, one column per kind -> Figure.

    rows: from ``robustness_table``; the unperturbed scores sit at magnitude 0 (scale 1).
    """
    import matplotlib.pyplot as plt

    kinds = [k for k in _KIND_AXES if any(r["kind"] == k for r in rows)]
    if not kinds:
        raise ValueError("plot_robustness: no translation, rotation or dilation rows")
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.2 * len(kinds), 6.4), squeeze=False, sharey="row")
    for col, kind in enumerate(kinds):
        for row, (value, title) in enumerate((("stress", "STRESS (lower is better)"), ("srcc", "SRCC (higher is better)"))):
            ax = axes[row, col]
            for name, (m, v) in _curves(rows, kind, value).items():
                ax.plot(m, v, "o-", label=name)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(title)
            if row == 1:
                ax.set_xlabel(_KIND_AXES[kind])
    fig.suptitle("Accuracy when the test image is perturbed (labels of the aligned pairs)")
    _legend_below(fig, axes[0, 0])
    return fig


def plot_perturbations(image: torch.Tensor, perturbations: Sequence[Perturbation], size: float = 2.2):
    """Each perturbation of `image` ([3, H, W] sRGB in [0, 1]) above its per-pixel ΔE00 map -> Figure.

    The maps (CIEDE2000 between the image and its warped copy, same colour scale for all)
    show what a pixel-wise measure sees: no colour changed, yet every edge lights up.
    """
    import matplotlib.pyplot as plt

    from ..plotting import to_numpy_image

    if not perturbations:
        raise ValueError("plot_perturbations: no perturbations")
    x = image.unsqueeze(0) if image.dim() == 3 else image[:1]
    check_image(x, "image")
    warped = torch.cat([p.apply(x) for p in perturbations])
    lab = colour.srgb_to_lab(torch.cat([x.expand_as(warped), warped]))
    maps = colour.delta_e2000(*lab.split(warped.shape[0])).numpy()
    vmax = float(np.quantile(maps, 0.99)) or 1.0
    n = len(perturbations)
    fig, axes = plt.subplots(2, n, figsize=(size * n, 2 * size + 0.4), squeeze=False)
    for i, p in enumerate(perturbations):
        axes[0, i].imshow(to_numpy_image(warped[i]))
        axes[0, i].set_title(p.label, fontsize=9)
        im = axes[1, i].imshow(maps[i], cmap="magma", vmin=0, vmax=vmax)
        axes[1, i].set_title(f"mean ΔE00 {maps[i].mean():.2f}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1].tolist(), fraction=0.02, pad=0.01, label="ΔE00")
    return fig
