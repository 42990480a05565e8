"""Measure trained runs against the targets, pick the seed to ship, write its model card.

    python tools/model_card.py runs/photos-s100 [runs/photos-s101 ...] [--name cdflow-small-photos]

For every run folder (best.pt, log.csv, config.json of `python -m cdflow_lib.train`) it
measures `cdflow_lib.analysis.targets` on the held-out test photographs; it ships the run
whose **validation** SRCC is the median of the runs (never chosen on test numbers) into
cdflow_lib/pretrained/: <name>.pt (best.pt), <name>.log.csv, <name>.json (every number,
every seed) and <name>.md (the card). --measure-only writes the JSON without shipping.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cdflow_lib import checkpoints, train  # noqa: E402
from cdflow_lib.analysis import targets  # noqa: E402


def best_validation(log: list[dict]) -> dict:
    return max(log, key=lambda r: r.get("val_srcc") or -1.0)


def measure(run: Path, n_boot: int, cache: Path) -> dict:
    model = checkpoints.load(run / "best.pt")
    log = train.read_log(run / "log.csv")
    t0 = time.perf_counter()
    scores = targets.synthetic_test_scores(model, size=targets.TARGETS["test_size"], n_boot=n_boot, cache_dir=cache,
                                           progress=True)
    size = targets.TARGETS["test_size"]
    consistency = targets.resolution_consistency(model, sizes=(256, size),
                                                 known={size: scores["predictions"]["pred"]["cdflow"]})
    tour = targets.tour_shift_vs_tint(model)
    combvd = targets.combvd_pooled_stress(model)
    return dict(run=str(run), config=json.loads((run / "config.json").read_text()), validation=best_validation(log),
                log=log, test=dict(n=scores["n"], rows=scores["rows"], paired=scores["paired"]),
                resolution=dict(sizes=consistency["sizes"], n=consistency["n"], spearman=consistency["spearman"]),
                tour=tour, combvd=combvd, seconds=round(time.perf_counter() - t0, 1))


def median_run(results: list[dict]) -> dict:
    """The run whose best validation SRCC is the median (lower median for an even count)."""
    order = sorted(results, key=lambda r: r["validation"]["val_srcc"])
    return order[(len(order) - 1) // 2]


def spread(results: list[dict], get) -> str:
    values = np.array([get(r) for r in results], dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f} (one seed)"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f} (n = {len(values)} seeds)"


def card(name: str, shipped: dict, results: list[dict], hardware: str, command: str, note: str = "") -> str:
    cfg, val, log = shipped["config"], shipped["validation"], shipped["log"]
    rows, paired = shipped["test"]["rows"], shipped["test"]["paired"]
    T = targets.TARGETS
    labels = {"cdflow": "CD-Flow (this model)", "ms_swd": "MS-SWD", "ciede2000": "pixel-mean CIEDE2000"}
    table = ["| measure | subset | n | STRESS | PLCC | SRCC [95% CI] | KRCC |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        table.append(f"| {labels[r['measure']]} | {r['subset']} | {r['n']} | {r['stress']:.1f} | {r['plcc']:.3f} | "
                     f"{targets.fmt_interval(r)} | {r['krcc']:.3f} |")
    diff = ["| SRCC(CD-Flow) − SRCC(other) | all | aligned | non-aligned |", "| --- | --- | --- | --- |"]
    for other in ("ms_swd", "ciede2000"):
        cells = [f"{p['estimate']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]"
                 for p in (paired.get(f"{other}/{s}") for s in ("all", "aligned", "non-aligned")) if p]
        diff.append(f"| {labels[other]} | " + " | ".join(cells) + " |")
    tour = shipped["tour"]
    n_below = sum(t["shift_below_tint"] for t in tour)
    tour_rows = ["| photo | CD warm tint | CD 2-px shift | shift / tint | ΔE00 tint | ΔE00 shift |",
                 "| --- | --- | --- | --- | --- | --- |"]
    tour_rows += [f"| {t['photo']} | {t['cd_tint']:.3f} | {t['cd_shift']:.3f} | {t['ratio']:.2f} | "
                  f"{t['de00_tint']:.2f} | {t['de00_shift']:.2f} |" for t in tour]
    get = lambda m, s: targets.srcc_row(rows, m, s)  # noqa: E731
    res = shipped["resolution"]["spearman"]
    combvd = shipped["combvd"]["all"]["cdflow"]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    checks = [
        ("SRCC ≥ MS-SWD's, all pairs", get("cdflow", "all")["srcc"] >= get("ms_swd", "all")["srcc"],
         f"{get('cdflow', 'all')['srcc']:.3f} vs {get('ms_swd', 'all')['srcc']:.3f}"),
        ("SRCC ≥ MS-SWD's, non-aligned pairs", get("cdflow", "non-aligned")["srcc"] >= get("ms_swd", "non-aligned")["srcc"],
         f"{get('cdflow', 'non-aligned')['srcc']:.3f} vs {get('ms_swd', 'non-aligned')['srcc']:.3f}"),
        ("SRCC > pixel-mean CIEDE2000's, all pairs", get("cdflow", "all")["srcc"] > get("ciede2000", "all")["srcc"],
         f"{get('cdflow', 'all')['srcc']:.3f} vs {get('ciede2000', 'all')['srcc']:.3f}"),
        (f"CDs at 256 vs 512 px: Spearman ≥ {T['resolution_spearman']}", res >= T["resolution_spearman"], f"{res:.3f}"),
        (f"tour: 2-px shift below the warm tint on ≥ {T['tour_photos_shift_below_tint']} of 11 photos",
         n_below >= T["tour_photos_shift_below_tint"], f"{n_below} of {len(tour)}"),
        (f"COMBVD pooled STRESS < {T['combvd_pooled_stress']:.0f}", combvd < T["combvd_pooled_stress"],
         f"{combvd:.1f} (CIEDE2000 on the same renderings: {shipped['combvd']['all']['ciede2000']:.1f})"),
    ]
    target_rows = ["| target | measured | verdict |", "| --- | --- | --- |"]
    target_rows += [f"| {t} | {m} | {verdict(ok)} |" for t, ok, m in checks]
    seeds = ["| seed | best epoch | validation SRCC (all / aligned / non-aligned) | val bpd | test SRCC all | shipped |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        v = r["validation"]
        seeds.append(f"| {r['config']['seed']} | {int(v['epoch'])} | {v['val_srcc']:.3f} / "
                     f"{v.get('val_srcc_aligned', float('nan')):.3f} / {v.get('val_srcc_nonaligned', float('nan')):.3f} | "
                     f"{v.get('val_bpd', float('nan')):.2f} | {targets.srcc_row(r['test']['rows'], 'cdflow', 'all')['srcc']:.3f} | "
                     f"{'yes' if r is shipped else ''} |")
    model = checkpoints.load_pretrained(name) if (checkpoints.PRETRAINED_DIR / f"{name}.pt").is_file() else None
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else None
    spread_lines = [
        f"- test SRCC, all pairs: {spread(results, lambda r: targets.srcc_row(r['test']['rows'], 'cdflow', 'all')['srcc'])}",
        f"- test SRCC, non-aligned pairs: {spread(results, lambda r: targets.srcc_row(r['test']['rows'], 'cdflow', 'non-aligned')['srcc'])}",
        f"- resolution Spearman: {spread(results, lambda r: r['resolution']['spearman'])}",
        f"- COMBVD pooled STRESS: {spread(results, lambda r: r['combvd']['all']['cdflow'])}",
    ]
    epochs_s = sum(r.get("seconds") or 0 for r in log)
    return "\n".join([
        f"# Model card: `{name}`",
        "",
        "The default CD-Flow of this project, loaded by `cdflow_lib.checkpoints.load_pretrained()` and",
        "installed with the package. It is **not** the paper's model: it is the `small` configuration,",
        "trained on **synthetic labels** (the simulated observer of `cdflow_lib.data.observer`), not on",
        "human judgements. For the published model, download the authors' weights and use",
        "`checkpoints.load_official(path)`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| architecture | CD-Flow `small`: 5 scales, 4 flow steps per scale, coupling width 64, affine coupling, LU 1x1 convolutions (the paper: 6, 8, 512)"
        + (f"; {n_params:,} trainable parameters |" if n_params else " |"),
        f"| input | sRGB in [0, 1], sides divisible by 32; trained at {cfg['image_size']} x {cfg['image_size']}, evaluated at 512 |",
        f"| data | `SyntheticPairs` on the photo corpus (`corpus='photos'`, data/README.md): 134 training photographs x {cfg['pairs_per_image']} pairs "
        f"= {134 * cfg['pairs_per_image']:,} pairs an epoch, 20 validation photographs x {cfg['val_pairs_per_image']} pairs; camera, edit, filter and "
        "wrong-profile distortions, a third of the pairs mildly misaligned; labels from the simulated observer on the aligned pair |",
        f"| recipe | `{cfg['recipe']}` (`cdflow_lib.train.RECIPES`): the authors' loss with likelihood weight {cfg['likelihood_weight']}, Adam lr {cfg['lr']:g} "
        f"(eps {cfg['adam_eps']:g}), StepLR every {cfg['lr_step']} epoch(s) by {cfg['lr_gamma']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"EMA {cfg['ema_decay']} (the shipped weights are the EMA), the authors' augmentation drawn independently for the two images; "
        f"best epoch by validation SRCC (epoch {int(val['epoch'])} of {len(log)}) |",
        f"| command | `{command}` then `python tools/model_card.py runs/photos-s<seed> ...` |",
        f"| hardware and time | {hardware}; {sum(len(r['log']) for r in results)} epochs in all, this seed's epochs took {epochs_s / 60:.0f} min (log) |",
        f"| log | `{name}.log.csv` (per epoch: loss terms, learning rate, validation SRCC overall / aligned / non-aligned, validation bpd) |",
        f"| all numbers | `{name}.json` (every seed, every row below) |",
        "",
        *(["## How the training went", "", note, ""] if note else []),
        "## Seeds and selection",
        "",
        f"The shipped seed is the one whose **validation** SRCC is the median of the {len(results)} trained "
        "(test numbers never choose).",
        "",
        *seeds,
        "",
        "Spread over the seeds:",
        *spread_lines,
        "",
        "## Targets",
        "",
        *target_rows,
        "",
        f"## Test numbers (synthetic labels, {shipped['test']['n']} pairs of the 26 test photographs at 512 px)",
        "",
        "95% percentile bootstrap intervals over 1,000 resamples of the pairs (paired across measures).",
        "",
        *table,
        "",
        "Paired bootstrap intervals of the SRCC difference (an interval above 0 means CD-Flow ranks better):",
        "",
        *diff,
        "",
        f"Resolution consistency: Spearman {res:.3f} between the CDs of the same {shipped['resolution']['n']} test pairs "
        "rendered at 256 and at 512 px.",
        "",
        "## The tour's test on the 11 package photos (384 px)",
        "",
        *tour_rows,
        "",
        f"COMBVD (rendered uniform patches, pooled, out-of-gamut colours clipped): STRESS {combvd:.1f}; in gamut only "
        f"{shipped['combvd']['in gamut']['cdflow']:.1f} (CIEDE2000: {shipped['combvd']['in gamut']['ciede2000']:.1f}). "
        "The paper's SPCD-trained CD-Flow: 35.06.",
        "",
        "None of these numbers measures agreement with people: the labels are synthetic.",
        "",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--name", default="cdflow-small-photos")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "label_cache")
    ap.add_argument("--hardware", default=f"CPU only: {platform.processor() or platform.machine()}, 2 cores, shared")
    ap.add_argument("--command", default="python -m cdflow_lib.train --recipe photos --seed <seed> --out runs/photos-s<seed> --checkpoint-every 25")
    ap.add_argument("--note", default="", help="a paragraph on how the training went (e.g. a run stopped early)")
    ap.add_argument("--measure-only", action="store_true")
    ap.add_argument("--from-json", type=Path, help="reuse measurements written earlier (skips measuring)")
    args = ap.parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())["runs"]
    else:
        results = [measure(run, args.bootstrap, args.cache) for run in args.runs]
    shipped = median_run(results)
    out = checkpoints.PRETRAINED_DIR
    out.mkdir(parents=True, exist_ok=True)
    numbers = dict(name=args.name, shipped=shipped["run"], targets=targets.TARGETS, runs=results)
    (out / f"{args.name}.json").write_text(json.dumps(numbers, indent=1, default=float) + "\n")
    if args.measure_only:
        return 0
    run = Path(shipped["run"])
    shutil.copyfile(run / "best.pt", out / f"{args.name}.pt")
    shutil.copyfile(run / "log.csv", out / f"{args.name}.log.csv")
    (out / f"{args.name}.md").write_text(card(args.name, shipped, results, args.hardware, args.command, args.note))
    print(f"shipped {run} as {out / args.name}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
