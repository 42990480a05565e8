"""benchmarks/accuracy.py and benchmarks/gpu.sh: fast checks on the `tiny` config (no timing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import accuracy  # noqa: E402
import benchmark  # noqa: E402

from cdflow_lib.metric import CDFlow  # noqa: E402


@pytest.fixture(scope="module")
def active_tiny():
    """A tiny CDFlow with active couplings, initialised on two photo-like pairs at 32 px."""
    torch.manual_seed(0)
    model = CDFlow.from_config("tiny")
    x, y, dv, _ = accuracy.photo_pairs(2, 32)
    accuracy.activate_couplings(model, 0.05, seed=0)
    with torch.no_grad(), accuracy.applied(model, accuracy.REFERENCE):
        model.glow.initialize(torch.cat([x, y]))
    return model.eval(), x, y, dv


def test_relative_error_is_zero_for_the_reference_and_positive_for_bf16(active_tiny):
    model, x, y, _ = active_tiny
    ref = accuracy.compute_distances(model, accuracy.REFERENCE, x, y, batch=2)
    again = accuracy.compute_distances(model, accuracy.REFERENCE, x, y, batch=2)
    bf16 = accuracy.compute_distances(model, accuracy.Path_("bf16-couplings", amp="bf16"), x, y, batch=2)
    assert ref.shape == (model.n_scales, 2)
    assert accuracy.relative_error(again, ref) == {"max": 0.0, "median": 0.0}
    err = accuracy.relative_error(bf16, ref)
    assert err["max"] > 0 and err["median"] > 0
    assert err["max"] < 0.1  # bf16 coupling networks move the distances, but not wildly
    assert model.glow.coupling_precision == "off"  # applied() restores the model


def test_gradient_error_is_zero_for_identical_gradients():
    g = {"a": torch.ones(3), "b": torch.arange(4.0)}
    assert accuracy.gradient_error(g, g)["all"] == 0.0
    moved = {"a": torch.ones(3), "b": torch.arange(4.0) * 1.01}
    assert accuracy.gradient_error(moved, g)["all"] > 0
    assert accuracy.gradient_error(moved, g)["worst_tensor_name"] == "b"


def test_accuracy_json_has_the_expected_fields(tmp_path):
    out = tmp_path / "acc.json"
    rc = accuracy.main(["--device", "cpu", "--shipped", "none", "--active-config", "tiny", "--active-size", "32",
                        "--active-pairs", "2", "--out", str(out),
                        "--paths", "fp32", "tf32", "bf16-couplings", "inverse-step"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert {"machine", "settings", "reference", "rows"} <= set(report)
    rows = {r["path"]: r for r in report["rows"]}
    assert set(rows) == {"fp32", "tf32", "bf16-couplings", "inverse-step"}
    for r in rows.values():
        assert {"suite", "path", "device", "tf32", "dtype", "memory_mode", "flags"} <= set(r)
    assert "CUDA" in rows["tf32"]["skipped"] and rows["tf32"]["tf32"] is True
    measured = ("distances_max_rel_err", "distances_median_rel_err", "srcc_change", "stress_change", "grad_rel_err")
    for name in ("fp32", "bf16-couplings", "inverse-step"):
        assert set(measured) <= set(rows[name]), name
        assert rows[name]["srcc_change"] is None  # the active suite has no labels
    assert rows["fp32"]["distances_max_rel_err"] == 0 and rows["fp32"]["grad_rel_err"] == 0
    assert rows["bf16-couplings"]["distances_max_rel_err"] > 0 and rows["bf16-couplings"]["grad_rel_err"] > 0
    assert rows["bf16-couplings"]["dtype"] == "float32+bf16-couplings"
    assert rows["inverse-step"]["distances_max_rel_err"] == 0  # a memory mode computes the same forward
    assert 0 <= rows["inverse-step"]["grad_rel_err"] < 1e-3


def test_largest_batch_search_finds_the_boundary():
    class FakeBudget:
        def __init__(self, fits_up_to):
            self.fits_up_to = fits_up_to

        def run(self, case, min_left=15.0):
            return {**case, "peak_gpu_gib": 1.0} if case["batch"] <= self.fits_up_to else {**case, "error": "out of memory"}

    for true, guess in ((11, 11), (11, 12), (11, 8), (3, 1), (0, 4)):
        res = benchmark.measured_largest_batch("off", 24, guess, FakeBudget(true), max_tries=8)
        assert res["largest_batch"] == (true or None), (true, guess, res["tries"])
        assert res["complete"]
    assert len(benchmark.measured_largest_batch("off", 24, 11, FakeBudget(11))["tries"]) == 2


def test_merge_report_replaces_rows_of_the_same_case(tmp_path):
    path = tmp_path / "gpu.json"
    a = {"kind": "training", "batch": 4, "tf32": False, "seconds_per_call": 2.0}
    b = {"kind": "training", "batch": 16, "tf32": False, "seconds_per_call": 9.0}
    path.write_text(json.dumps({"results": [a, b]}))
    merged = benchmark.merge_report(path, {"results": [{**a, "seconds_per_call": 1.5}]})
    assert sorted(r["seconds_per_call"] for r in merged["results"]) == [1.5, 9.0]


def test_gpu_sh_fails_clearly_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no CUDA device is present" in proc.stderr
    assert "unchanged" in proc.stderr
