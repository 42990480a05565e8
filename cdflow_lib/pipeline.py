"""The figure pipeline (`make figures`): execute every notebook with papermill.

    python -m cdflow_lib.pipeline [--only 02 07] [--smoke] [--figures DIR] [--build DIR] [--no-html]

Each notebook runs with its default parameters plus ``INTERACTIVE=False``,
``SOLUTIONS=True`` (the exercises' solutions run) and ``FIG_ROOT=<figures>``; the executed copy goes to ``<build>/<name>.ipynb`` and an HTML
rendering to ``<build>/html/<name>.html``. One line per notebook with its time and what it
changed under <figures>. The notebooks pick the GPU themselves when one is present.

Reproducible outputs: an unchanged model must give back the committed files byte for byte, on
any machine, although floating-point results differ in their last bits between CPUs, thread
counts and BLAS builds. So, after each notebook,
- every float in the JSON and CSV files it wrote is rounded to FLOAT_DIGITS significant digits
  (JSON re-written with indent 2);
- a file whose content equals the previous version within that noise is restored byte for byte:
  JSON/CSV numbers equal to a relative 1e-5 (one unit in the 6th digit), PNGs of the same size
  whose pixels differ by at most PNG_NOISE_LEVELS (of 255) on at most PNG_NOISE_SHARE of them
  (anti-aliased edges and colour-map bins that flip with the last float bit). Anything larger is
  a real change and is written.
The kernels run over IPC sockets (not TCP: quieter and nothing listens on a port).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .paths import MissingDataError, require_checkout

#: Significant digits kept for every float written to a JSON or CSV output.
FLOAT_DIGITS = 6
#: Relative tolerance under which two numbers of an output count as the same (float noise).
FLOAT_NOISE_RTOL = 1e-5
#: A PNG is the same figure when at most this share of its pixels differ, by at most this much.
PNG_NOISE_SHARE = 0.01
PNG_NOISE_LEVELS = 8
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?|[-+]?(nan|inf)", re.IGNORECASE)


_SOCKETS: tempfile.TemporaryDirectory | None = None


def ipc_kernel_manager():
    """A kernel-manager class whose kernels talk over IPC sockets in a private temporary folder
    (one per process, removed when it exits). Built on first use: jupyter_client is a
    dependency of the `notebooks` extra, not of the library."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            global _SOCKETS
            if _SOCKETS is None:
                _SOCKETS = tempfile.TemporaryDirectory(prefix="cdflow-kernels-")
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(_SOCKETS.name, "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def round_floats(value, digits: int = FLOAT_DIGITS):
    """`value` (JSON-like: dicts, lists, numbers, strings) with every float rounded to `digits`
    significant digits; ints, bools, strings and non-finite floats unchanged."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def same_within_noise(a, b, rtol: float = FLOAT_NOISE_RTOL) -> bool:
    """Do two JSON-like values have the same structure and numbers equal to `rtol`?"""
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_within_noise(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_within_noise(x, y, rtol) for x, y in zip(a, b))
    return a == b


def _csv_cell(text: str, digits: int = FLOAT_DIGITS):
    """A CSV cell as a rounded float when it is a number with a fraction or exponent, else as is."""
    if _FLOAT.fullmatch(text.strip()) and not text.strip().lstrip("+-").isdigit():
        return float(f"{float(text):.{digits}g}")
    return text


def _read_table(data: bytes) -> list[list]:
    return [[_csv_cell(c) for c in row] for row in csv.reader(io.StringIO(data.decode("utf-8")))]


def same_png(a: bytes, b: bytes, share: float = PNG_NOISE_SHARE, levels: int = PNG_NOISE_LEVELS) -> bool:
    """Are two PNGs the same figure up to float noise (same size; few pixels, slightly changed)?"""
    import numpy as np
    from PIL import Image

    try:
        x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGBA"), dtype=np.int16) for d in (a, b))
    except OSError:
        return False
    if x.shape != y.shape:
        return False
    diff = np.abs(x - y).max(axis=-1)
    return int(diff.max()) <= levels and float((diff > 0).mean()) <= share


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every file under `folder` and its bytes (the state before a notebook runs)."""
    return {p: p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()} if Path(folder).exists() else {}


def settle_outputs(folder: Path, before: dict[Path, bytes]) -> dict[str, int]:
    """Round the floats of the JSON/CSV files under `folder` and restore every file that equals
    its version in `before` within float noise. Returns counts: new, changed, noise (restored),
    unchanged."""
    counts = dict(new=0, changed=0, noise=0, unchanged=0)
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data, old = path.read_bytes(), before.get(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            value = round_floats(json.loads(data))
            data = (json.dumps(value, indent=2, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")
            noise = old is not None and _parses(old, json.loads) and same_within_noise(value, json.loads(old))
        elif suffix == ".csv":
            rows = _read_table(data)
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            data = buf.getvalue().encode("utf-8")
            noise = old is not None and _parses(old, _read_table) and same_within_noise(rows, _read_table(old))
        elif suffix == ".png":
            noise = old is not None and old != data and same_png(old, data)
        else:
            noise = False
        if old == data:
            counts["unchanged"] += 1
        elif noise:
            counts["noise"] += 1
            data = old
        else:
            counts["new" if old is None else "changed"] += 1
        if path.read_bytes() != data:
            path.write_bytes(data)
    return counts


def _parses(data: bytes, reader) -> bool:
    try:
        reader(data)
        return True
    except (ValueError, UnicodeDecodeError):
        return False


def find_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    books = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        books = [b for b in books if any(b.stem.startswith(o) or b.stem == o for o in only)]
        if not books:
            raise ValueError(f"no notebook in {folder} matches {only}")
    return books


def run_notebook(path: Path, build: Path, figures: Path, smoke: bool = False, extra: dict | None = None) -> Path:
    import logging

    import papermill as pm

    # papermill cannot type-infer parameters that are expressions (os.environ lookups) and says so
    # for every notebook; the injected cell overrides them all the same
    logging.getLogger("papermill").setLevel(logging.ERROR)

    # SOLUTIONS: the exercises' solutions run, which proves every exercise solvable
    params = {"INTERACTIVE": False, "FIG_ROOT": str(figures.resolve()), "SOLUTIONS": True}
    if smoke:
        params["SMOKE"] = True
    params.update(extra or {})
    out = build / path.name
    pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent), kernel_name="python3",
                        progress_bar=False, report_mode=False,
                        kernel_manager_class=ipc_kernel_manager())
    return out


def to_html(executed: Path, folder: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    folder.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    out = folder / (executed.stem + ".html")
    out.write_text(body, encoding="utf-8")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notebooks", type=Path, default=None, help="default: the checkout's notebooks/")
    ap.add_argument("--build", type=Path, default=None, help="default: the checkout's build/")
    ap.add_argument("--figures", type=Path, default=None, help="default: the checkout's figures/")
    ap.add_argument("--only", nargs="*", help="notebook numbers or stems to run (default: all)")
    ap.add_argument("--smoke", action="store_true", help="inject SMOKE=True (small sizes)")
    ap.add_argument("--no-html", action="store_true", help="skip the HTML rendering")
    args = ap.parse_args(argv)
    try:
        for name in ("notebooks", "build", "figures"):
            if getattr(args, name) is None:
                setattr(args, name, require_checkout(name, f"the figure pipeline's default --{name} folder"))
    except MissingDataError as exc:
        print(f"cdflow_lib.pipeline: {exc}", file=sys.stderr)
        return 2

    books = find_notebooks(args.notebooks, args.only)
    args.build.mkdir(parents=True, exist_ok=True)
    start, failed = time.perf_counter(), []
    for i, nb in enumerate(books, 1):
        t0 = time.perf_counter()
        print(f"[{i:2d}/{len(books)}] {nb.stem:<32s} ", end="", flush=True)
        before = snapshot(args.figures / nb.stem)
        try:
            out = run_notebook(nb, args.build, args.figures, smoke=args.smoke)
            if not args.no_html:
                to_html(out, args.build / "html")
            n = settle_outputs(args.figures / nb.stem, before)
            print(f"ok    {time.perf_counter() - t0:7.1f} s  (outputs: {n['new']} new, {n['changed']} changed, "
                  f"{n['unchanged'] + n['noise']} unchanged, {n['noise']} of them within float noise)", flush=True)
        except Exception as exc:  # keep going: report every failing notebook at the end
            failed.append(nb.stem)
            print(f"FAIL  {time.perf_counter() - t0:7.1f} s  ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})",
                  flush=True)
    total = time.perf_counter() - start
    print(f"{len(books) - len(failed)} passed, {len(failed)} failed in {total:.0f} s; figures in {args.figures}, "
          f"executed notebooks in {args.build}")
    if failed:
        print("failed: " + ", ".join(failed) + f" (see {args.build}/<name>.ipynb)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
