"""Accuracy of every fast path of CD-Flow against the float32 reference, written as JSON.

    python benchmarks/accuracy.py --out benchmarks/results/accuracy_cpu.json          # CPU, small sizes
    python benchmarks/accuracy.py --device cuda --active-size 768 --pairs 26 --out build/accuracy_gpu.json

A *path* is a way of running the same model: TF32 matmuls/convolutions (CUDA only), bf16
coupling networks (``MultiScaleFlow.coupling_precision``), a memory mode
(``MultiScaleFlow.memory_mode``), combinations of those, and every fast-path flag the
library offers when this runs (looked up by name with ``hasattr``, so the script works
before and after such flags exist). The reference path is float32 with TF32 off (set
explicitly: cuDNN's TF32 switch is ON by default in PyTorch), ordinary autograd, no flags.

Two suites, each measured for every path:

- ``shipped``: the shipped model (``checkpoints.load_pretrained()``) on ``--pairs`` synthetic
  test pairs (``SyntheticPairs('test')``, spread over the test photographs) at
  ``--pair-size`` px, with their synthetic labels: change of test SRCC and STRESS.
- ``active``: the ``--active-config`` model (default ``paper``) with *active couplings*: the
  last, zero-initialised convolution of every coupling network gets seeded N(0, ``--active-std``)
  weights, so the coupling networks change what is computed (with the zero init they output
  0 and a precision change could not show). ``--active-pairs`` photo pairs (package photos
  with a colour shift; random images where a photo cannot be read) at ``--active-size`` px.

Per row: relative error of the K cumulative distances vs the reference
(``|d - d_ref| / |d_ref|``, worst of the K per pair, then max and median over the pairs),
the change of SRCC and STRESS vs the labels (shipped suite only), and the relative error of
the gradient of one training step (``train.cdflow_loss``, ``||g - g_ref|| / ||g_ref||`` over
all parameters, and the worst parameter tensor). A path the device lacks, or one the
library refuses (e.g. ``InexactInverseError``), is a row with ``skipped`` saying why.
The JSON is rewritten after every row, so a run stopped by a time limit keeps what it measured.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

@dataclass(frozen=True)
class Path_:
    """One way of running the model."""

    name: str
    tf32: bool = False
    amp: str = "off"                  # coupling_precision
    memory_mode: str = "off"
    flags: tuple = ()                 # fast-path attributes set to True
    cuda_only: bool = False

    @property
    def dtype(self) -> str:
        return "float32" + ("+bf16-couplings" if self.amp == "bf16" else "")


REFERENCE = Path_("fp32")


def discover_flags(model) -> list[str]:
    """The speed flags of `model`'s flow (flow.MultiScaleFlow.SPEED_FLAGS)."""
    return list(model.glow.SPEED_FLAGS)


def plan_paths(model, cuda: bool) -> list[Path_]:
    paths = [REFERENCE,
             Path_("tf32", tf32=True, cuda_only=True),
             Path_("bf16-couplings", amp="bf16"),
             Path_("tf32+bf16-couplings", tf32=True, amp="bf16", cuda_only=True)]
    for mode in ("checkpoint", "inverse", "inverse-step"):
        paths.append(Path_(mode, memory_mode=mode))
    for mode in ("checkpoint", "inverse-step"):
        paths.append(Path_(f"{mode}+bf16-couplings", amp="bf16", memory_mode=mode))
        paths.append(Path_(f"{mode}+tf32+bf16-couplings", tf32=True, amp="bf16", memory_mode=mode, cuda_only=True))
    paths.append(Path_("inverse-step+tf32", tf32=True, memory_mode="inverse-step", cuda_only=True))
    flags = discover_flags(model)
    for f in flags:
        paths.append(Path_(f"flag:{f}", flags=(f,)))
    if flags:
        paths.append(Path_("all-flags+bf16-couplings", amp="bf16", flags=tuple(flags)))
        paths.append(Path_("all-flags+tf32+bf16-couplings", tf32=True, amp="bf16", flags=tuple(flags), cuda_only=True))
    return paths


def skip_reason(path: Path_, device: torch.device) -> str | None:
    if path.cuda_only and device.type != "cuda":
        return "TF32 exists on CUDA only (device is the CPU)"
    return None


@contextlib.contextmanager
def applied(model, path: Path_):
    """Run `model` the way `path` says, restoring everything afterwards. TF32 is set explicitly
    (on or off) for both matmul and cuDNN."""
    glow = model.glow
    saved = (glow.memory_mode, glow.coupling_precision, glow.reconstruction_error,
             {f: getattr(model.glow, f) for f in path.flags})
    tf = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = path.tf32
        torch.backends.cudnn.allow_tf32 = path.tf32
        glow.coupling_precision = path.amp
        glow.memory_mode = path.memory_mode
        glow.reconstruction_error = None      # the inverse modes re-check reconstruction in this precision
        for f in path.flags:
            setattr(model.glow, f, True)
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf
        glow.memory_mode, glow.coupling_precision, glow.reconstruction_error = saved[:3]
        for f, v in saved[3].items():
            setattr(model.glow, f, v)


# --- what is compared ---------------------------------------------------------------------

def relative_error(value: torch.Tensor, reference: torch.Tensor) -> dict:
    """Distances [K, N] vs the reference [K, N]: per pair the worst of the K relative errors
    |d - d_ref| / |d_ref|; returns {'max', 'median'} over the pairs (0 for the reference itself)."""
    v, r = value.detach().double().cpu(), reference.detach().double().cpu()
    if v.shape != r.shape:
        raise ValueError(f"shapes differ: {tuple(v.shape)} vs {tuple(r.shape)}")
    err = ((v - r).abs() / r.abs().clamp_min(1e-30)).reshape(r.shape[0], -1).amax(0)
    return {"max": float(err.max()), "median": float(err.median())}


def gradient_error(grads: dict, reference: dict) -> dict:
    """Relative error of a gradient (dict name -> tensor) vs the reference: over all parameters
    together (||g - g_ref|| / ||g_ref||) and for the worst single parameter tensor."""
    num = den = 0.0
    worst, worst_name = 0.0, None
    for k, r in reference.items():
        g = grads[k].double()
        r = r.double()
        d2, r2 = float((g - r).pow(2).sum()), float(r.pow(2).sum())
        num, den = num + d2, den + r2
        if r2 > 0 and math.sqrt(d2 / r2) > worst:
            worst, worst_name = math.sqrt(d2 / r2), k
    return {"all": math.sqrt(num / den) if den > 0 else float("nan"), "worst_tensor": worst,
            "worst_tensor_name": worst_name}


def compute_distances(model, path: Path_, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    """[K, N] cumulative distances of the pairs under `path`. Memory-mode paths run the training
    forward (train mode, autograd on), where the mode acts; the others the inference forward."""
    from cdflow_lib.metric import DISTANCE_EPS, CDFlow

    train = path.memory_mode != "off"
    out = []
    model.train(train)
    try:
        with applied(model, path), torch.set_grad_enabled(train):
            for i in range(0, x.shape[0], batch):
                xb, yb = x[i:i + batch], y[i:i + batch]
                zs = model.glow(torch.cat([xb, yb], 0))[0]
                b = xb.shape[0]
                out.append(CDFlow.cumulative_distances([z[:b] for z in zs], [z[b:] for z in zs], DISTANCE_EPS).detach())
    finally:
        model.eval()
    return torch.cat(out, 1)


def training_gradient(model, path: Path_, x, y, dv) -> tuple[dict, float]:
    """Gradients of one training step (train.cdflow_loss on x, y, dv) under `path`, and the loss."""
    from cdflow_lib.train import cdflow_loss

    model.train()
    model.zero_grad(set_to_none=True)
    try:
        with applied(model, path):
            loss, _ = cdflow_loss(model, x, y, dv)
            loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    return grads, float(loss.detach())


# --- the two suites -----------------------------------------------------------------------

def synthetic_test_pairs(n: int, size: int, seed: int = 0):
    """n synthetic test pairs (spread over the test photographs) at `size` px: x, y [n, 3, s, s], dv [n]."""
    from cdflow_lib.data.synthetic import SyntheticPairs, split_sources

    n_sources = len(split_sources(seed)["test"])
    ds = SyntheticPairs("test", size=size, pairs_per_image=max(1, math.ceil(n / n_sources)), seed=seed)
    idx = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
    items = [ds[int(i)] for i in idx]
    return (torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items]),
            torch.stack([it["dv"] for it in items]).float())


def photo_pairs(n: int, size: int, seed: int = 0):
    """n (photo, colour-shifted photo) pairs at `size` px; random images where photos cannot be read."""
    gen = torch.Generator().manual_seed(seed)
    xs = []
    try:
        from cdflow_lib.data.corpus import corpus_names, photo_tensor

        xs = [photo_tensor(name, size) for name in corpus_names("package")[:n]]
        source = "package photos"
    except Exception as exc:  # noqa: BLE001 - any failure to read a photo falls back to random images
        source = f"random images ({type(exc).__name__} reading photos)"
    while len(xs) < n:
        xs.append(torch.rand(3, size, size, generator=gen))
    x = torch.stack(xs)
    gain = 1 + 0.06 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    y = (x * gain + 0.01 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)
    return x, y, torch.full((n,), 3.0), source


def activate_couplings(model, std: float, seed: int) -> None:
    """Give the last (zero-initialised) convolution of every coupling network seeded N(0, std) weights."""
    from cdflow_lib.layers import AffineCoupling

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AffineCoupling):
                conv = m.net[-1].conv
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * std)


def measure_suite(suite: str, model, x, y, dv, labels: bool, args, device, emit) -> None:
    """Every path on one model and one set of pairs; calls emit(row) per path."""
    from cdflow_lib.evaluate import correlations

    x, y, dv = x.to(device), y.to(device), dv.to(device)
    gb = min(args.grad_batch, x.shape[0])
    xg, yg, dvg = x[:gb], y[:gb], dv[:gb]
    base = dict(suite=suite, device=str(device), model=args.shipped if suite == "shipped" else args.active_config,
                size=int(x.shape[-1]), n_pairs=int(x.shape[0]), grad_batch=gb)
    t0 = time.perf_counter()
    d_ref = compute_distances(model, REFERENCE, x, y, args.batch)
    g_ref, loss_ref = training_gradient(model, REFERENCE, xg, yg, dvg)
    score_ref = correlations(d_ref[-1].cpu(), dv.cpu()) if labels else None
    ref_seconds = time.perf_counter() - t0
    for path in plan_paths(model, device.type == "cuda"):
        if args.paths and path.name not in args.paths:
            continue
        row = {**base, "path": path.name, "tf32": path.tf32, "dtype": path.dtype, "memory_mode": path.memory_mode,
               "flags": list(path.flags)}
        reason = skip_reason(path, device)
        if reason:
            emit({**row, "skipped": reason})
            continue
        t0 = time.perf_counter()
        try:
            d = d_ref if path == REFERENCE else compute_distances(model, path, x, y, args.batch)
            g, loss = (g_ref, loss_ref) if path == REFERENCE else training_gradient(model, path, xg, yg, dvg)
        except Exception as exc:  # noqa: BLE001 - a refused path is a result (e.g. InexactInverseError)
            emit({**row, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
            continue
        err = relative_error(d, d_ref)
        gerr = gradient_error(g, g_ref)
        row.update(distances_max_rel_err=err["max"], distances_median_rel_err=err["median"],
                   cd_max_rel_err=relative_error(d[-1:], d_ref[-1:])["max"],
                   grad_rel_err=gerr["all"], grad_worst_tensor_rel_err=gerr["worst_tensor"],
                   grad_worst_tensor=gerr["worst_tensor_name"], loss_rel_err=abs(loss - loss_ref) / abs(loss_ref),
                   srcc_change=None, stress_change=None,
                   seconds=(ref_seconds if path == REFERENCE else time.perf_counter() - t0))
        if labels:
            s = correlations(d[-1].cpu(), dv.cpu())
            row.update(srcc=s["srcc"], stress=s["stress"], srcc_change=s["srcc"] - score_ref["srcc"],
                       stress_change=s["stress"] - score_ref["stress"])
        emit(row)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("build/accuracy.json"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--shipped", default="cdflow-small-photos",
                    help="shipped model name for the 'shipped' suite, or 'none' to leave the suite out")
    ap.add_argument("--pairs", type=int, default=8, help="synthetic test pairs of the shipped suite")
    ap.add_argument("--pair-size", type=int, default=128, help="px of the synthetic test pairs (divisible by 32)")
    ap.add_argument("--active-config", default="paper", help="metric.CONFIGS name of the active-coupling suite, or 'none'")
    ap.add_argument("--active-size", type=int, default=64, help="px of the active suite's pairs (paper: divisible by 64)")
    ap.add_argument("--active-pairs", type=int, default=2)
    ap.add_argument("--active-std", type=float, default=0.001, help="std of the activated couplings' last convolution")
    ap.add_argument("--grad-batch", type=int, default=2, help="pairs in the training step whose gradient is compared")
    ap.add_argument("--batch", type=int, default=4, help="pairs per forward when computing distances")
    ap.add_argument("--paths", nargs="*", default=None, help="only these paths (names as in the JSON)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from cdflow_lib import checkpoints
    from cdflow_lib.metric import CDFlow

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("accuracy.py: --device cuda but no CUDA device is present", file=sys.stderr)
        return 2
    report = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                          "cpu_threads": torch.get_num_threads()},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "reference": "float32, TF32 off (matmul and cuDNN), coupling_precision off, memory_mode off, no flags",
              "rows": []}

    def emit(row):
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # explicit: cuDNN's default is on
    if args.active_config != "none":
        model = CDFlow.from_config(args.active_config).to(device)
        x, y, dv, source = photo_pairs(args.active_pairs, args.active_size, args.seed)
        report["active_pairs"] = f"{x.shape[0]} {source} with a colour shift at {args.active_size} px"
        activate_couplings(model, args.active_std, args.seed)
        with torch.no_grad(), applied(model, REFERENCE):
            model.glow.initialize(torch.cat([x, y]).to(device))
        model.eval()
        measure_suite("active", model, x, y, dv, False, args, device, emit)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.shipped != "none":
        model = checkpoints.load_pretrained(args.shipped).to(device).eval()
        try:
            x, y, dv = synthetic_test_pairs(args.pairs, args.pair_size, args.seed)
        except ImportError as exc:
            emit({"suite": "shipped", "path": "*", "device": str(device),
                  "skipped": f"synthetic pairs need {exc.name} (see benchmarks/README.md)"})
        else:
            report["shipped_pairs"] = f"{x.shape[0]} SyntheticPairs('test') pairs at {args.pair_size} px, synthetic labels"
            measure_suite("shipped", model, x, y, dv, True, args, device, emit)
        del model
    print(f"wrote {args.out} ({len(report['rows'])} rows)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
