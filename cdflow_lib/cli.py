"""The ``cdflow`` command: compare images, and the training and evaluation commands.

    cdflow compare REF TEST [--model NAME|PATH] [--official] [--size-policy resize|pad|crop|error]
                            [--map out.png] [--per-scale] [--json]
    cdflow compare --pairs list.csv [--out results.csv] [--per-scale]
    cdflow train ...        (python -m cdflow_lib.train ...)
    cdflow evaluate ...     (python -m cdflow_lib.evaluate ...)

Exit status: 0 done, 2 bad usage or input (one line on stderr naming the file and the
problem; ``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path

#: Exit status for bad usage or bad input.
EXIT_USAGE = 2
#: Column names accepted for the two images of a --pairs file.
REFERENCE_COLUMNS = ("reference", "ref")
TEST_COLUMNS = ("test",)


class UsageError(ValueError):
    """Bad usage of the command line (exit status 2)."""


def _forward(module: str):
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(f"cdflow_lib.{module}").main(argv)
    return run


#: Subcommands handed, with the rest of the command line, to a module's own main(argv).
FORWARDED = {"train": _forward("train"), "evaluate": _forward("evaluate")}


def build_parser() -> argparse.ArgumentParser:
    from .checkpoints import DEFAULT_MODEL
    from .images import DEFAULT_SIZE_POLICY, SIZE_POLICIES

    ap = argparse.ArgumentParser(prog="cdflow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="{compare,train,evaluate}")
    cmp = sub.add_parser("compare", help="the CD between two images (or many pairs)",
                         description="Print the CD-Flow colour difference between REF and TEST.")
    cmp.add_argument("reference", nargs="?", metavar="REF", help="reference image file")
    cmp.add_argument("test", nargs="?", metavar="TEST", help="test image file")
    cmp.add_argument("--pairs", metavar="CSV", help="a CSV file with columns 'reference' and 'test' (paths "
                     "relative to the CSV's folder); other columns are copied to the output")
    cmp.add_argument("--out", metavar="CSV", help="with --pairs: the results file (default: standard output)")
    cmp.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH",
                     help=f"a shipped model name or a checkpoint file (default: {DEFAULT_MODEL})")
    cmp.add_argument("--official", action="store_true", help="--model is a checkpoint in the authors' format")
    cmp.add_argument("--size-policy", default=DEFAULT_SIZE_POLICY, choices=SIZE_POLICIES,
                     help=f"how sizes not divisible by 2^K are handled (default: {DEFAULT_SIZE_POLICY})")
    cmp.add_argument("--map", metavar="PNG", help="write the CD map (with a colour bar) to this figure file")
    cmp.add_argument("--per-scale", action="store_true",
                     help="also print the K cumulative distances, coarsest scale only first, all scales last")
    cmp.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    cmp.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    cmp.add_argument("--debug", action="store_true", help="show tracebacks")
    for name in FORWARDED:
        sub.add_parser(name, add_help=False, help=f"python -m cdflow_lib.{name} (see cdflow {name} --help)")
    return ap


def main(argv=None) -> int:
    """Run the ``cdflow`` command with `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in FORWARDED:
            return FORWARDED[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run_compare(args)
    except (ValueError, OSError) as exc:  # bad usage (UsageError) or input: missing, unreadable or odd files
        if args.debug:
            raise
        print(f"cdflow {args.command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _one_line(exc: BaseException) -> str:
    text = str(exc) if not isinstance(exc, OSError) or not exc.filename else f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split()) or type(exc).__name__


def load_model(spec: str, official: bool = False, device=None):
    """A CDFlow in eval mode from a shipped model name or a checkpoint path (format detected as
    `evaluate.load_model` does; `official` forces the authors' format), on `device` (default: CUDA if present)."""
    import torch

    from .evaluate import load_model as read_model

    model, _ = read_model(spec, official)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def run_compare(args) -> int:
    if args.pairs is not None:
        if args.reference or args.test:
            raise UsageError("give either REF TEST or --pairs CSV, not both")
        if args.map or args.json:
            raise UsageError("--map and --json work on one pair; --pairs writes a CSV (--out)")
    elif not (args.reference and args.test):
        raise UsageError("give two images (REF TEST) or --pairs CSV")
    elif args.out:
        raise UsageError("--out goes with --pairs; for one pair use --json or --map")
    for path in (args.reference, args.test, args.pairs):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    model = load_model(args.model, args.official, args.device)
    if args.pairs is not None:
        return _compare_pairs(model, args)
    return _compare_one(model, args)


def _measure(model, reference, test, policy: str, with_map: bool = False):
    """metric.compare with the warnings it raised, as one-line strings."""
    from .metric import compare

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare(model, reference, test, policy, with_map=with_map)
    return result, [" ".join(str(w.message).split()) for w in caught]


def _compare_one(model, args) -> int:
    result, warned = _measure(model, args.reference, args.test, args.size_policy, with_map=bool(args.map))
    if args.map:
        _save_map(result, args.reference, args.test, args.map)
    if args.json:
        fields = result.as_dict()
        print(json.dumps({"cd": fields["cd"], "distances": fields["distances"], "model": args.model, **fields,
                          "map": args.map, "warnings": warned}, indent=2))
        return 0
    for message in warned:
        print(f"warning: {message}", file=sys.stderr)
    print(f"CD {result.cd:.6f}")
    if args.per_scale:
        print(f"cumulative distances, coarsest scale only .. all {len(result.distances)} scales: "
              + " ".join(f"{d:.6f}" for d in result.distances))
    for info in (result.reference, result.test):
        for note in info.notes:
            print(f"note: {info.source}: {note}")
    if args.map:
        print(f"map: {args.map}")
    return 0


def _read_pairs(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    ref = next((c for c in REFERENCE_COLUMNS if c in columns), None)
    if ref is None or "test" not in columns:
        raise UsageError(f"{path}: expected a header with columns 'reference' (or 'ref') and 'test', got {columns}")
    return columns, [{**row, "reference": row[ref]} for row in rows]


def _compare_pairs(model, args) -> int:
    from tqdm import tqdm

    path = Path(args.pairs)
    columns, rows = _read_pairs(path)
    k = model.n_scales
    extra = [f"d{i}" for i in range(1, k + 1)] if args.per_scale else []
    out_columns = [c for c in columns if c not in ("cd", "notes", "error", *extra)] + ["cd", *extra, "notes", "error"]
    failed = 0
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.DictWriter(out, out_columns, extrasaction="ignore")
        writer.writeheader()
        for row in tqdm(rows, desc="compare", unit="pair", disable=None):
            ref, test = (path.parent / row[c] for c in ("reference", "test"))
            try:
                result, warned = _measure(model, ref, test, args.size_policy)
            except (ValueError, OSError) as exc:
                failed += 1
                writer.writerow({**row, "error": _one_line(exc)})
                continue
            notes = [f"{i.source}: {n}" for i in (result.reference, result.test) for n in i.notes] + warned
            writer.writerow({**row, "cd": f"{result.cd:.6f}", "notes": "; ".join(notes),
                             **{name: f"{d:.6f}" for name, d in zip(extra, result.distances)}})
    finally:
        if args.out:
            out.close()
    if failed:
        print(f"cdflow compare: {failed} of {len(rows)} pairs failed (see the 'error' column)", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _save_map(result, reference: str, test: str, path: str) -> None:
    """The CD map of `result` as a figure: one panel with a colour bar, the CD in the title."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot()
    im = ax.imshow(result.cd_map, cmap="magma", vmin=0.0)
    fig.colorbar(im, ax=ax, label="local CD (RMS latent difference)")
    h, w = result.size
    ax.set_title(f"{Path(reference).name} vs {Path(test).name}: CD = {result.cd:.4f}\n"
                 f"(measured at {h} x {w})", fontsize=9)
    ax.set_axis_off()
    fig.savefig(path, dpi=110, bbox_inches="tight")
