"""Speed and memory of CD-Flow, written as JSON (never asserted in tests).

    python benchmarks/benchmark.py --out build/benchmark.json            # everything this machine can do
    python benchmarks/benchmark.py --only inference --sizes 256 512      # a subset

Sections
- ``inference``: pairs per second and peak memory of the forward distance (``cd(x, y)``)
  for ``small`` and ``paper`` at 256, 512 and 768 px, on the CPU and, where present, the GPU.
- ``training``: training pairs per second and peak memory of one optimisation step:
  ``paper`` at 768 px, batch 4, float32 / TF32 / bf16 couplings on a GPU; ``small`` at
  128 px on the CPU; with and without autograd anomaly detection (the released code runs
  with it on).
- ``memory``: peak memory and step time of the training step in each memory mode (ordinary
  autograd, torch.utils.checkpoint per block, inverse recomputation per block and per step)
  for batches 1, 4 and 16, and the largest batch that fits in 24 and 80 GiB, extrapolated
  linearly from the measured peaks (stated as such).

Each case runs in a fresh subprocess so that peak memory is its own: GPU peaks come from
``torch.cuda.max_memory_allocated``, CPU peaks from the process's maximum resident set
size minus the resident size before the measured call (both in MiB).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MIB = 2 ** 20


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: dict) -> dict:
    """Run one measurement in this process and return its numbers."""
    from cdflow_lib.metric import CDFlow
    from cdflow_lib.train import cdflow_loss

    dev = torch.device(case["device"])
    torch.manual_seed(0)
    model = CDFlow.from_config(case["model"]).to(dev)
    size, batch = case["size"], case["batch"]
    x = torch.rand(batch, 3, size, size, device=dev)
    y = (x + 0.05 * torch.rand(batch, 3, 1, 1, device=dev)).clamp(0, 1)
    if dev.type == "cuda":
        # Always explicit, on or off: cuDNN's TF32 switch is ON by default in PyTorch.
        torch.backends.cuda.matmul.allow_tf32 = bool(case.get("tf32", False))
        torch.backends.cudnn.allow_tf32 = bool(case.get("tf32", False))
        if case.get("memory_gib"):
            # a smaller GPU, emulated: the caching allocator refuses to go above this (the CUDA
            # context itself, a few hundred MiB, is not counted).
            total = torch.cuda.get_device_properties(dev).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, case["memory_gib"] * 2 ** 30 / total), dev)
    with torch.no_grad():
        model.glow.initialize(torch.cat([x, y]))
    model.glow.coupling_precision = case.get("amp", "off")
    for flag in case.get("flags", ()):
        owner = next((o for o in (model.glow, model) if hasattr(o, flag) and not callable(getattr(o, flag))), None)
        if owner is None:
            raise SystemExit(f"fast-path flag {flag!r} does not exist in this cdflow_lib")
        setattr(owner, flag, True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    if case["kind"] == "inference":
        model.eval()

        def once():
            with torch.no_grad():
                return model(x, y)
    else:
        model.train()
        model.glow.memory_mode = case.get("memory_mode", "off")
        opt = torch.optim.Adam(model.parameters(), lr=1e-5, eps=1e-7)
        dv = torch.full((batch,), 3.0, device=dev)

        def once():
            with torch.autograd.set_detect_anomaly(case.get("anomaly", False)):
                loss, _ = cdflow_loss(model, x, y, dv)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            return loss

    t0 = time.perf_counter()
    out = once()  # warm-up (allocator, cudnn algorithm choice, Adam state)
    sync()
    reps = case.get("reps", 3)
    if reps == 0:  # a fit test only: the warm-up step allocates everything a step needs
        res = {"fits": True, "seconds_first_call": time.perf_counter() - t0, "finite": bool(torch.isfinite(out).all())}
        if dev.type == "cuda":
            res["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            res["tf32"] = bool(torch.backends.cudnn.allow_tf32)
        return res
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = once()
    sync()
    dt = (time.perf_counter() - t0) / reps
    res = {"seconds_per_call": dt, "pairs_per_second": batch / dt, "finite": bool(torch.isfinite(out).all())}
    if dev.type == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / MIB
        res["peak_gpu_gib"] = res["peak_gpu_mib"] / 1024
        res["tf32"] = bool(torch.backends.cudnn.allow_tf32)
    else:
        res["peak_cpu_mib_above_start"] = max(_peak_rss_mib() - rss0, 0.0)
    return res


def measure(case: dict, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timeout after {timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {**case, "error": "out of memory" if "out of memory" in proc.stderr.lower() else last[:300]}
    return {**case, **json.loads(proc.stdout.strip().splitlines()[-1])}


def plan(devices, sizes, only) -> list[dict]:
    cases = []
    for dev in devices:
        gpu = dev == "cuda"
        if "inference" in only:
            for model in ("small", "paper"):
                for size in sizes:
                    cases.append(dict(kind="inference", device=dev, model=model, size=size, batch=1,
                                      reps=5 if gpu else (2 if model == "paper" else 3)))
        if "training" in only:
            if gpu:
                for amp, tf32 in (("off", False), ("off", True), ("bf16", True)):
                    cases.append(dict(kind="training", device=dev, model="paper", size=768, batch=4, amp=amp, tf32=tf32))
                cases.append(dict(kind="training", device=dev, model="paper", size=768, batch=4, anomaly=True, reps=2))
            for anomaly in (False, True):
                cases.append(dict(kind="training", device="cpu", model="small", size=128, batch=8, anomaly=anomaly)
                             if not gpu else dict(kind="training", device=dev, model="small", size=256, batch=8, anomaly=anomaly))
        if "memory" in only:
            model, size, batches = ("paper", 768, (1, 4, 16)) if gpu else ("small", 128, (1, 4, 16))
            for mode in ("off", "checkpoint", "inverse", "inverse-step"):
                for b in batches:
                    cases.append(dict(kind="training", device=dev, model=model, size=size, batch=b, memory_mode=mode,
                                      reps=2))
    return cases


def largest_batch(rows: list[dict], budget_gib: float) -> dict:
    """Per memory mode: the largest batch whose linearly extrapolated peak fits in `budget_gib`."""
    out = {}
    key = "peak_gpu_mib" if any("peak_gpu_mib" in r for r in rows) else "peak_cpu_mib_above_start"
    for mode in sorted({r["memory_mode"] for r in rows}):
        pts = sorted((r["batch"], r[key]) for r in rows if r["memory_mode"] == mode and key in r)
        if len(pts) < 2:
            continue
        (b0, m0), (b1, m1) = pts[0], pts[-1]
        per_pair = (m1 - m0) / (b1 - b0)
        fixed = m0 - per_pair * b0
        out[mode] = int((budget_gib * 1024 - fixed) // per_pair) if per_pair > 0 else None
    return out


# --- the GPU suite (benchmarks/gpu.sh) -------------------------------------------------------

#: Precisions of the GPU grid: (name, tf32, coupling precision). TF32 is set on or off per row.
GPU_PRECISIONS = (("fp32", False, "off"), ("tf32", True, "off"), ("tf32+bf16", True, "bf16"))
#: Per-case time limits in seconds (a case past its limit is a row with an error, never a hang).
CASE_LIMIT_S = {"b4": 60, "b16": 90, "fit": 60, "inference": 60}


def _paper(batch: int, mode: str = "off", precision: str = "fp32", **extra) -> dict:
    _, tf32, amp = next(p for p in GPU_PRECISIONS if p[0] == precision)
    return dict(kind="training", device="cuda", model="paper", size=768, batch=batch, memory_mode=mode,
                tf32=tf32, amp=amp, reps=2 if batch <= 4 else 1, **extra)


def available_flags() -> list[str]:
    """The library's speed flags (flow.MultiScaleFlow.SPEED_FLAGS): one GPU row each."""
    from cdflow_lib.flow import MultiScaleFlow

    return list(MultiScaleFlow.SPEED_FLAGS)


def plan_gpu(flags: list[str]) -> list[tuple[str, dict]]:
    """(group, case) of the GPU suite in priority order: the issue's 'Where we stand' table, the
    fast-path flags, then memory modes x precisions at batch 4 and 16. Largest batches come after."""
    table = [
        _paper(4, "off", "fp32"), _paper(4, "off", "tf32"), _paper(4, "off", "tf32+bf16"),
        _paper(4, "checkpoint", "fp32"), _paper(4, "checkpoint", "tf32"),
        _paper(4, "inverse", "fp32"), _paper(4, "inverse-step", "fp32"), _paper(16, "inverse-step", "fp32"),
        _paper(4, "inverse", "tf32"), _paper(4, "inverse-step", "tf32"),
        dict(kind="inference", device="cuda", model="paper", size=1024, batch=4, tf32=True, amp="off", reps=5),
        dict(kind="inference", device="cuda", model="paper", size=1024, batch=4, tf32=True, amp="bf16", reps=5),
    ]
    out = [("table", c) for c in table]
    if flags:
        fl = list(flags)
        out += [("flags", _paper(4, "off", "tf32+bf16", flags=fl)), ("flags", _paper(4, "inverse-step", "tf32+bf16", flags=fl)),
                ("flags", dict(kind="inference", device="cuda", model="paper", size=1024, batch=4, tf32=True, amp="bf16",
                               reps=5, flags=fl))]
    for batch in (4, 16):
        for mode in ("off", "checkpoint", "inverse", "inverse-step"):
            for prec, _, _ in GPU_PRECISIONS:
                out.append(("grid", _paper(batch, mode, prec)))
    seen, unique = set(), []
    for group, case in out:
        key = json.dumps(case, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append((group, case))
    return unique


def _limit(case: dict) -> int:
    if case.get("reps") == 0:
        return CASE_LIMIT_S["fit"]
    if case["kind"] == "inference":
        return CASE_LIMIT_S["inference"]
    return CASE_LIMIT_S["b4"] if case["batch"] <= 4 else CASE_LIMIT_S["b16"]


class Budget:
    """Wall-clock budget of the suite: each case gets min(its limit, what is left)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, case: dict, min_left: float = 15.0) -> dict:
        left = self.left()
        if left < min_left:
            return {**case, "error": "skipped: the suite's time budget is spent"}
        t0 = time.monotonic()
        row = measure(case, int(min(_limit(case), left)))
        row["wall_s"] = round(time.monotonic() - t0, 1)
        return row


def measured_largest_batch(mode: str, budget_gib: float, guess: int, budget: Budget, cap: int = 64,
                           max_tries: int = 5) -> dict:
    """The largest paper-768 training batch of `mode` (TF32 + bf16 couplings; TF32 off if the flow
    refuses to invert under it) whose step runs within `budget_gib` of GPU memory, found by trying
    (each try a fresh process with the allocator capped): start at `guess`, then grow or shrink."""
    tf32, tries, fits, fails = True, [], 0, cap + 1
    b = max(1, min(guess, cap))
    while len(tries) < max_tries and fails - fits > 1:
        case = dict(kind="training", device="cuda", model="paper", size=768, batch=b, memory_mode=mode, tf32=tf32,
                    amp="bf16", reps=0, memory_gib=budget_gib)
        row = budget.run(case)
        tries.append({"batch": b, "fits": "error" not in row, "peak_gpu_gib": row.get("peak_gpu_gib"),
                      "error": row.get("error"), "tf32": tf32})
        if "InexactInverseError" in str(row.get("error")) and tf32:
            tf32 = False
            continue
        if "skipped" in str(row.get("error")) or "timeout" in str(row.get("error")):
            break
        if "error" in row:
            fails = min(fails, b)
        else:
            fits = max(fits, b)
        if len(tries) == 1:  # the guess is usually right: check its neighbour first
            b = b + 1 if fits else b - 1
        elif fails > cap:
            b = min(cap, fits * 2)
        else:
            b = (fits + fails) // 2
        if b < 1 or b > cap or b in (fits, fails):
            break
    return {"memory_mode": mode, "budget_gib": budget_gib, "largest_batch": fits or None,
            "first_failing_batch": fails if fails <= cap else None, "cap": cap,
            "complete": fails - fits <= 1 or (fits == cap), "tf32": tf32, "amp": "bf16", "tries": tries}


def _guess(rows: list[dict], mode: str, gib: float) -> int:
    """A starting batch for the search: linear in the measured peaks of the grid (bf16 couplings)."""
    pts = sorted((r["batch"], r["peak_gpu_gib"]) for r in rows if r.get("memory_mode") == mode and r.get("amp") == "bf16"
                 and r.get("kind") == "training" and "peak_gpu_gib" in r and not r.get("flags") and r.get("reps", 1) > 0)
    if len(pts) >= 2:
        (b0, m0), (b1, m1) = pts[0], pts[-1]
        per = (m1 - m0) / (b1 - b0) if b1 != b0 else m1 / b1
        fixed = m0 - per * b0
        return max(1, int((gib - fixed) // per)) if per > 0 else 4
    if pts:
        return max(1, int(pts[0][0] * gib / pts[0][1]))
    return 4


def row_key(row: dict) -> str:
    """What identifies a measurement (its case), so that a rerun replaces the old row."""
    keep = ("kind", "device", "model", "size", "batch", "memory_mode", "tf32", "amp", "flags", "anomaly", "memory_gib",
            "suite", "path")
    return json.dumps({k: row.get(k) for k in keep}, sort_keys=True)


def merge_report(path: Path, new: dict) -> dict:
    """Merge `new` into the JSON report at `path`: list sections by row_key (new rows replace old
    ones with the same key), dict sections by key; everything else is overwritten."""
    old = json.loads(path.read_text()) if path.exists() else {}
    for k, v in new.items():
        if isinstance(v, list) and isinstance(old.get(k), list):
            merged = {row_key(r): r for r in old[k] if isinstance(r, dict)}
            merged.update({row_key(r): r for r in v if isinstance(r, dict)})
            old[k] = list(merged.values())
        elif isinstance(v, dict) and isinstance(old.get(k), dict):
            old[k] = {**old[k], **v}
        else:
            old[k] = v
    return old


def run_gpu_suite(budget_s: float, out: Path, log=print) -> dict:
    budget = Budget(budget_s)
    flags = available_flags()
    rows = []
    machine = {"python": platform.python_version(), "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
               "gpu_total_gib": torch.cuda.get_device_properties(0).total_memory / 2 ** 30}
    report = {"machine": machine, "flags_found": flags}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merge_report(out, {**report, "results": rows}), indent=2))

    for group, case in plan_gpu(flags):
        row = {**budget.run(case), "group": group}
        rows.append(row)
        log(json.dumps(row))
        save()
    largest = []
    for gib in (24, 80):
        for mode in ("off", "checkpoint", "inverse-step"):
            res = measured_largest_batch(mode, gib, _guess(rows, mode, gib), budget)
            largest.append({**res, "kind": "largest_batch", "memory_gib": gib})
            log(json.dumps(largest[-1]))
            report["largest_batch_measured"] = largest
            save()
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("build/benchmark.json"))
    ap.add_argument("--only", nargs="*", default=["inference", "training", "memory"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[256, 512, 768])
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when present")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case")
    ap.add_argument("--suite", choices=["gpu"], help="the GPU suite of benchmarks/gpu.sh (merges into --out)")
    ap.add_argument("--budget", type=float, default=330, help="seconds for the whole --suite")
    args = ap.parse_args(argv)
    if args.suite == "gpu":
        if not torch.cuda.is_available():
            print("benchmark.py --suite gpu: no CUDA device is present", file=sys.stderr)
            return 2
        run_gpu_suite(args.budget, args.out)
        print(f"wrote {args.out}")
        return 0
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for case in plan(devices, args.sizes, args.only):
        row = measure(case, args.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                    "cpu_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "results": rows,
    }
    mem_rows = [r for r in rows if "memory_mode" in r and "error" not in r]
    if mem_rows:
        report["largest_batch_extrapolated"] = {f"{g}GiB": largest_batch(mem_rows, g) for g in (24, 80)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
