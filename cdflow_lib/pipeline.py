"""The figure pipeline (`make figures`): execute every notebook with papermill.

    python -m cdflow_lib.pipeline [--only 02 07] [--smoke] [--figures DIR] [--build DIR] [--no-html]

Each notebook runs with its default parameters plus ``INTERACTIVE=False``,
``SOLUTIONS=True`` (the exercises' solutions run) and ``FIG_ROOT=<figures>``; the executed copy goes to ``<build>/<name>.ipynb`` and an HTML
rendering to ``<build>/html/<name>.html``. One line per notebook with its time. The
notebooks pick the GPU themselves when one is present.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .paths import MissingDataError, require_checkout


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
                        progress_bar=False, report_mode=False)
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
        try:
            out = run_notebook(nb, args.build, args.figures, smoke=args.smoke)
            if not args.no_html:
                to_html(out, args.build / "html")
            print(f"ok    {time.perf_counter() - t0:7.1f} s", flush=True)
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
