"""Scoring colour-difference measures against human (or simulated) judgements.

Conventions of the CD literature (DESIGN.md section 7):

- **STRESS** (Garcia et al. 2007) on raw predictions ΔE against visual differences ΔV:
  ``F = Σ ΔE² / Σ ΔE·ΔV`` and ``STRESS = 100·sqrt(Σ (ΔE − F·ΔV)² / (F²·Σ ΔV²))``, in [0, 100];
  0 is perfect agreement up to a scale, and rescaling the predictions changes nothing.
- **PLCC / SRCC / KRCC** after the 5-parameter logistic fit (VQEG style)
  ``f(x) = b1·(0.5 − 1/(1 + exp(b2·(x − b3)))) + b4 + b5·x``, fitted by Nelder-Mead on the
  squared error; the start is b1 = ±|max y − min y| (sign of the plain Pearson correlation),
  b2 = 1/std x, b3 = mean x, b4 = mean y, b5 = −1. Plain SRCC and Pearson (no fit) too.

``evaluate(measures, pairs)`` runs any set of measures on any pair source and returns rows
(a list of dicts) that ``format_table`` turns into a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from scipy import optimize, special, stats
from tqdm.auto import tqdm

from .plotting import markdown_table

#: Nelder-Mead budget and tolerances for the logistic fit. Noisy data converge in a few
#: hundred steps; noise-free curved data drift along flat directions of the 5-d error surface
#: (PLCC already > 0.997 at 5,000 evaluations on the test curves), so the budget bounds the cost.
FIT_MAX_ITER = 5_000
FIT_XATOL = 1e-8
FIT_FATOL = 1e-12

#: The keys ``correlations`` returns, in table order.
SCORE_KEYS = ("stress", "plcc", "srcc", "krcc", "srcc_plain", "pearson")


def _as_vectors(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Two equally long finite 1-d float64 arrays (at least 3 entries), or a ValueError."""
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64).ravel()
    t = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same number of entries, got {p.size} and {t.size}")
    if p.size < 3:
        raise ValueError(f"need at least 3 (prediction, target) pairs, got {p.size}")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("pred and target must be finite (found NaN or Inf)")
    return p, t


def stress(pred, target) -> float:
    """STRESS (0..100, lower is better) of predictions ΔE against visual differences ΔV.

    pred: [N] computed differences (>= 0, any scale); target: [N] visual differences (> 0).
    Invariant to multiplying `pred` by a positive constant; 0 iff pred ∝ target.
    """
    e, v = _as_vectors(pred, target)
    ev = float(np.dot(e, v))
    if ev <= 0.0:
        raise ValueError("STRESS needs Σ pred·target > 0 (non-negative differences, not all zero)")
    f = float(np.dot(e, e)) / ev
    return 100.0 * float(np.sqrt(np.sum((e - f * v) ** 2) / (f * f * np.dot(v, v))))


def logistic(x, params) -> np.ndarray:
    """The 5-parameter logistic ``b1·(0.5 − 1/(1 + exp(b2·(x − b3)))) + b4 + b5·x``.

    x: array of predictions; params: (b1, b2, b3, b4, b5). Written with ``expit`` so large
    arguments do not overflow: 1/(1 + exp(z)) = expit(−z).
    """
    b1, b2, b3, b4, b5 = params
    x = np.asarray(x, dtype=np.float64)
    return b1 * (0.5 - special.expit(-b2 * (x - b3))) + b4 + b5 * x


@dataclass(frozen=True)
class LogisticFit:
    """A fitted 5-parameter logistic; call it on predictions to map them onto the target scale."""

    params: tuple[float, float, float, float, float]
    converged: bool

    def __call__(self, x) -> np.ndarray:
        return logistic(x, self.params)


def logistic_fit(pred, target) -> LogisticFit:
    """Fit ``logistic`` from predictions to targets (Nelder-Mead on the sum of squared errors).

    Start (DESIGN.md section 7): b1 = |max y − min y| with the sign of the plain Pearson
    correlation (so a decreasing relation starts from a decreasing curve), b2 = 1/std x,
    b3 = mean x, b4 = mean y, b5 = −1. pred, target: [N] arrays.
    """
    x, y = _as_vectors(pred, target)
    sx = float(np.std(x))
    if sx == 0.0:
        raise ValueError("logistic_fit: all predictions are equal; nothing to fit")
    r = np.corrcoef(x, y)[0, 1] if np.std(y) > 0 else 0.0
    sign = -1.0 if r < 0 else 1.0
    start = np.array([sign * abs(y.max() - y.min()), 1.0 / sx, x.mean(), y.mean(), -1.0])

    def sse(b):
        return float(np.sum((logistic(x, b) - y) ** 2))

    res = optimize.minimize(sse, start, method="Nelder-Mead",
                            options=dict(maxiter=FIT_MAX_ITER, maxfev=FIT_MAX_ITER,
                                         xatol=FIT_XATOL, fatol=FIT_FATOL, adaptive=True))
    return LogisticFit(tuple(float(b) for b in res.x), bool(res.success))


def correlations(pred, target) -> dict[str, float]:
    """STRESS, PLCC / SRCC / KRCC after the logistic fit, plain SRCC and plain Pearson.

    pred, target: [N]. Returns a dict with the keys of ``SCORE_KEYS``. STRESS is computed on
    the raw predictions (it has its own scale factor) and is NaN when Σ pred·target <= 0 (a
    similarity score); the correlations are signed, so a measure that decreases with the
    visual difference scores negative correlations.
    """
    p, t = _as_vectors(pred, target)
    fitted = logistic_fit(p, t)(p)
    try:
        stress_value = stress(p, t)
    except ValueError:  # a similarity (decreasing) score: STRESS is undefined
        stress_value = float("nan")
    return {
        "stress": stress_value,
        "plcc": float(stats.pearsonr(fitted, t)[0]),
        "srcc": float(stats.spearmanr(fitted, t)[0]),
        "krcc": float(stats.kendalltau(fitted, t)[0]),
        "srcc_plain": float(stats.spearmanr(p, t)[0]),
        "pearson": float(stats.pearsonr(p, t)[0]),
    }


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap percentile interval [low, high]."""

    estimate: float
    low: float
    high: float
    level: float


#: Scores that need no logistic fit, computed directly on each bootstrap resample.
_BOOTSTRAP_STATS = {
    "stress": stress,
    "srcc_plain": lambda a, b: stats.spearmanr(a, b)[0],
    "pearson": lambda a, b: stats.pearsonr(a, b)[0],
}


def bootstrap_ci(pred, target, stat: Callable | str = "srcc", n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of a score, resampling (prediction, target) pairs.

    stat: a callable ``(pred, target) -> float`` or a key of ``correlations`` ("stress",
    "plcc", ...; the logistic fit is redone on every resample). n resamples drawn with a
    ``numpy`` generator seeded by `seed` (same seed, same interval). Resamples on which the
    statistic is undefined (e.g. all targets equal) are left out.
    """
    p, t = _as_vectors(pred, target)
    if isinstance(stat, str):
        if stat not in SCORE_KEYS:
            raise ValueError(f"unknown statistic {stat!r}; choose one of {SCORE_KEYS} or pass a callable")
        stat = _BOOTSTRAP_STATS.get(stat, lambda a, b, key=stat: correlations(a, b)[key])
    if n < 1:
        raise ValueError(f"n must be a positive number of resamples, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    values = np.empty(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(n):
            idx = rng.integers(0, p.size, p.size)
            try:
                values[i] = stat(p[idx], t[idx])
            except ValueError:  # a degenerate resample (e.g. constant predictions)
                values[i] = np.nan
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("the statistic was undefined on every bootstrap resample")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(float(stat(p, t)), float(low), float(high), level)


def _batches(pairs: Iterable[Mapping], batch_size: int):
    """Yield (x, y, dv, aligned) batches from batched dicts ([B, 3, H, W]) or single pairs ([3, H, W])."""
    pending: list[Mapping] = []

    def stack(items):
        aligned = [bool(it["aligned"]) for it in items] if all("aligned" in it for it in items) else None
        return (torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items]),
                torch.tensor([float(it["dv"]) for it in items], dtype=torch.float64), aligned)

    for item in pairs:
        missing = {"x", "y", "dv"} - set(item)
        if missing:
            raise ValueError(f"each pair must be a dict with keys 'x', 'y', 'dv' (and optionally 'aligned'); "
                             f"missing {sorted(missing)}")
        x = item["x"]
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
            raise ValueError(f"pair['x'] must be a [3, H, W] or [B, 3, H, W] tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() == 3:
            pending.append(item)
            if len(pending) == batch_size:
                yield stack(pending)
                pending = []
            continue
        dv = torch.as_tensor(item["dv"], dtype=torch.float64).reshape(-1)
        aligned = item.get("aligned")
        if aligned is not None:
            aligned = [bool(a) for a in torch.as_tensor(aligned).reshape(-1).tolist()]
        yield x, item["y"], dv, aligned
    if pending:
        yield stack(pending)


def predict(measures: Mapping[str, Callable], pairs: Iterable[Mapping], *, batch_size: int = 8,
            device: str | torch.device | None = None, progress: bool = True) -> dict:
    """Run every measure on every pair (no gradients).

    measures: name -> ``measure(x, y) -> [B]`` on [B, 3, H, W] sRGB in [0, 1].
    pairs: an iterable of dicts with "x", "y" (either [3, H, W] single pairs, grouped here into
    batches of `batch_size`, or [B, 3, H, W] batches such as a DataLoader yields), "dv" (the
    visual difference) and optionally "aligned" (bool). device: where x and y are moved.
    Returns {"pred": {name: [N] array}, "dv": [N] array, "aligned": [N] bool array or None}.
    """
    if not measures:
        raise ValueError("measures is empty: pass a dict name -> measure(x, y) -> [B]")
    preds: dict[str, list[np.ndarray]] = {name: [] for name in measures}
    dvs, aligned_all, has_aligned = [], [], True
    # The bar counts pairs; its length is known for a DataLoader or a map-style Dataset.
    dataset = pairs.dataset if isinstance(pairs, torch.utils.data.DataLoader) else pairs
    total = len(dataset) if isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__") else None
    with torch.no_grad(), tqdm(total=total, desc="evaluate", unit="pair", disable=not progress, leave=False) as bar:
        for x, y, dv, aligned in _batches(pairs, batch_size):
            if device is not None:
                x, y = x.to(device), y.to(device)
            for name, measure in measures.items():
                d = measure(x, y)
                if not isinstance(d, torch.Tensor) or d.shape != (x.shape[0],):
                    raise ValueError(f"measure {name!r} must return a [B] = [{x.shape[0]}] tensor, got "
                                     f"{tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__}")
                preds[name].append(d.detach().double().cpu().numpy())
            dvs.append(dv.numpy())
            has_aligned = has_aligned and aligned is not None
            if aligned is not None:
                aligned_all.extend(aligned)
            bar.update(x.shape[0])
    if not dvs:
        raise ValueError("pairs yielded no pairs")
    return {"pred": {name: np.concatenate(v) for name, v in preds.items()},
            "dv": np.concatenate(dvs),
            "aligned": np.array(aligned_all, dtype=bool) if has_aligned else None}


def score(predictions: dict, *, bootstrap: int = 0, seed: int = 0) -> list[dict]:
    """Rows of scores from ``predict``'s output: one per measure and subset.

    Subsets: "all", plus "aligned" and "non-aligned" when the pairs carried the flag (and
    the subset has at least 3 pairs). With ``bootstrap > 0`` each row also gets
    ``srcc_low`` / ``srcc_high``, a 95% bootstrap interval of the SRCC (seeded).
    """
    dv, aligned = predictions["dv"], predictions["aligned"]
    subsets = {"all": np.ones(dv.size, dtype=bool)}
    if aligned is not None:
        subsets.update({"aligned": aligned, "non-aligned": ~aligned})
    rows = []
    for name, pred in predictions["pred"].items():
        for subset, mask in subsets.items():
            if mask.sum() < 3:
                continue
            row = {"measure": name, "subset": subset, "n": int(mask.sum()), **correlations(pred[mask], dv[mask])}
            if bootstrap:
                ci = bootstrap_ci(pred[mask], dv[mask], "srcc_plain", n=bootstrap, seed=seed)
                row.update(srcc_low=ci.low, srcc_high=ci.high)
            rows.append(row)
    return rows


def evaluate(measures: Mapping[str, Callable], pairs: Iterable[Mapping], *, batch_size: int = 8,
             device: str | torch.device | None = None, progress: bool = True, bootstrap: int = 0,
             seed: int = 0) -> list[dict]:
    """Score every measure on a pair source: ``predict`` then ``score`` (see both).

    Returns a list of dicts with keys measure, subset, n and ``SCORE_KEYS`` (plus the bootstrap
    interval keys when asked); ``format_table(rows)`` renders them.
    """
    return score(predict(measures, pairs, batch_size=batch_size, device=device, progress=progress),
                 bootstrap=bootstrap, seed=seed)


def format_table(rows: list[dict], columns: Iterable[str] | None = None, digits: int = 3) -> str:
    """A markdown table of `rows` (dicts); floats rounded to `digits` decimals.

    columns: which keys, in order (default: the keys of the first row).
    """
    if not rows:
        raise ValueError("format_table: no rows")
    columns = list(columns) if columns is not None else list(rows[0])

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}"
        return str(v)

    return markdown_table(columns, [[cell(r.get(c, "")) for c in columns] for r in rows])


def load_model(spec: str, official: bool = False):
    """A CDFlow (eval mode) from `spec`: a checkpoint file or a shipped model name.

    A file is read in our format (checkpoints.load: ``checkpoints.save`` or a training
    checkpoint) when it says so, otherwise in the authors' released format
    (checkpoints.load_official), whatever its name (.pt, .pth); official=True always reads the
    authors' format. Returns (model, how it was read: "cdflow_lib", "official" or "shipped").
    FileNotFoundError / ValueError with the reason when it cannot be read.
    """
    from . import checkpoints

    path = Path(spec).expanduser()
    if official:
        return checkpoints.load_official(path), "official"
    if path.is_file():
        ckpt = checkpoints.safe_load(path)
        if isinstance(ckpt, dict) and ckpt.get("format") == checkpoints.FORMAT:
            return checkpoints.load(path), "cdflow_lib"
        return checkpoints.load_official(path), "official"
    if spec in checkpoints.pretrained_names():
        return checkpoints.load_pretrained(spec), "shipped"
    raise FileNotFoundError(f"{spec} is neither a checkpoint file nor a shipped model "
                            f"(shipped: {', '.join(checkpoints.pretrained_names()) or 'none'})")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of `main`."""
    from . import baselines, checkpoints
    from .data import ENV_LABELS, ENV_ROOT
    from .data.corpus import CORPORA
    from .data.synthetic import DEFAULT_PAIRS_PER_IMAGE

    ap = argparse.ArgumentParser(description=inspect.cleandoc(main.__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=checkpoints.DEFAULT_MODEL, metavar="NAME|PATH",
                    help="a shipped model name, or a checkpoint file in our format or the authors' released one "
                         f"(detected; .pt, .pth or any name) (default: {checkpoints.DEFAULT_MODEL})")
    ap.add_argument("--official", action="store_true",
                    help="read --model in the authors' released format without detecting it")
    ap.add_argument("--baselines", nargs="*", default=["ciede2000"], choices=sorted(baselines.MEASURES),
                    metavar="NAME", help=f"training-free measures scored beside CD-Flow, any of "
                                         f"{', '.join(sorted(baselines.MEASURES))} (default: ciede2000)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"),
                    help="which split of the pairs (default: test)")
    ap.add_argument("--size", type=_at_least(1), default=128,
                    help="pixels the images are resized to; divisible by 2**n_scales of the model (default: 128)")
    ap.add_argument("--spcd-root", default=os.environ.get(ENV_ROOT) or None, metavar="PATH",
                    help=f"score SPCD's pairs: the folder of its images (default: ${ENV_ROOT}; unset: synthetic pairs)")
    ap.add_argument("--spcd-labels", default=os.environ.get(ENV_LABELS) or None, metavar="PATH",
                    help=f"SPCD's label folder or file (default: ${ENV_LABELS}, else --spcd-root)")
    ap.add_argument("--corpus", default=None, choices=CORPORA,
                    help="synthetic pairs only: photographs of the pairs (default: photos)")
    ap.add_argument("--pairs-per-image", type=_at_least(1), default=None,
                    help=f"synthetic pairs only: pairs per photograph (default: {DEFAULT_PAIRS_PER_IMAGE})")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the synthetic pairs (or SPCD's scene split) and of the bootstrap (default: 0)")
    ap.add_argument("--bootstrap", type=_at_least(0), default=1000,
                    help="bootstrap resamples for the 95%% interval of the SRCC; 0: none (default: 1000)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--batch-size", type=_at_least(1), default=8, help="pairs per forward pass (default: 8)")
    ap.add_argument("--json", metavar="PATH", help="also write the scores as JSON to PATH ('-': standard output)")
    ap.add_argument("--csv", metavar="PATH", help="also write the scores as CSV to PATH ('-': standard output)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="show a progress bar (default: on)")
    return ap


#: Columns of the printed table.
TABLE_COLUMNS = ("measure", "subset", "n", "stress", "plcc", "srcc", "krcc", "srcc_plain", "srcc_low", "srcc_high")


def _first_sentence(exc: Exception, limit: int = 300) -> str:
    """An error's message on one line: torch's reasons for an unreadable file run to paragraphs."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if len(text) > limit:
        end = text.find(". ")
        text = text[:end + 1] if 0 < end else text[:limit] + "..."
    return text


def _plain(value):
    """A JSON-safe value: NaN and infinities become None, numpy scalars Python numbers."""
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text)


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _plain(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def main(argv=None) -> int:
    """Score CD-Flow and training-free baselines on image pairs with visual-difference labels:
    the synthetic test split (synthetic labels), or SPCD's (human labels). Prints a table;
    --json / --csv also write the scores. Exit status 0, or 2 for bad options or inputs.

        python -m cdflow_lib.evaluate                                     # the shipped model, synthetic pairs
        python -m cdflow_lib.evaluate --model runs/photos/best.pt --baselines ciede2000 scielab
        python -m cdflow_lib.evaluate --model CD-Flow.pth --spcd-root path/to/SPCD --size 1024 --device cuda
        python -m cdflow_lib.evaluate --json - --bootstrap 0               # scores as JSON on standard output
    """
    from . import baselines
    from .data import ENV_LABELS, ENV_ROOT, pairs_from_env
    from .train import resolve_device

    ap = build_parser()
    args = ap.parse_args(argv)
    if args.json == "-" and args.csv == "-":
        ap.error("argument --csv: only one of --json and --csv can write to standard output")
    for flag, path in (("--json", args.json), ("--csv", args.csv)):
        if path not in (None, "-") and not Path(path).parent.is_dir():
            ap.error(f"argument {flag}: folder {Path(path).parent} does not exist")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        ap.error(f"argument --device: {exc}")
    try:
        model, how = load_model(args.model, args.official)
    except (OSError, ValueError) as exc:
        ap.error(f"argument --model: {_first_sentence(exc)}")
    multiple = 2 ** model.n_scales
    if args.size % multiple:
        ap.error(f"argument --size: {args.size} is not divisible by 2**{model.n_scales} = {multiple} (the model "
                 f"has {model.n_scales} scales); try {max(multiple, args.size // multiple * multiple)}")
    synthetic = {k: v for k, v in (("corpus", args.corpus), ("pairs_per_image", args.pairs_per_image)) if v is not None}
    environ = {k: v for k, v in ((ENV_ROOT, args.spcd_root), (ENV_LABELS, args.spcd_labels)) if v}
    try:
        pairs = pairs_from_env(args.split, size=args.size, seed=args.seed, environ=environ, **synthetic)
    except (OSError, ValueError) as exc:
        ap.error(f"argument {'--spcd-root' if args.spcd_root else '--corpus'}: {exc}")
    measures = {"CD-Flow": model.to(device), **{name: baselines.get_measure(name) for name in args.baselines}}
    rows = evaluate(measures, pairs, batch_size=args.batch_size, device=device, progress=args.progress,
                    bootstrap=args.bootstrap, seed=args.seed)
    if args.json:
        document = {"model": args.model, "model_format": how, "model_config": model.config, "pairs": repr(pairs),
                    "split": args.split, "size": args.size, "seed": args.seed, "bootstrap": args.bootstrap,
                    "rows": [{k: _plain(v) for k, v in row.items()} for row in rows]}
        _write(args.json, json.dumps(document, indent=2, allow_nan=False) + "\n")
    if args.csv:
        _write(args.csv, _csv_text(rows))
    if "-" not in (args.json, args.csv):
        print(f"{pairs!r}")
        print(format_table(rows, [c for c in TABLE_COLUMNS if c in rows[0]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
