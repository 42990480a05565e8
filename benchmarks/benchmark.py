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
    model.glow.initialize(torch.cat([x, y]))
    if case.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.glow.coupling_precision = case.get("amp", "off")
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

    once()  # warm-up (allocator, cudnn algorithm choice, Adam state)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mib()
    reps = case.get("reps", 3)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = once()
    sync()
    dt = (time.perf_counter() - t0) / reps
    res = {"seconds_per_call": dt, "pairs_per_second": batch / dt, "finite": bool(torch.isfinite(out).all())}
    if dev.type == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / MIB
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("build/benchmark.json"))
    ap.add_argument("--only", nargs="*", default=["inference", "training", "memory"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[256, 512, 768])
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when present")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case")
    args = ap.parse_args(argv)
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
