"""The ``cdflow`` command: compare two images (number, JSON, map), many pairs, forwarding to
train / evaluate, and exit status 2 with one line for bad usage or input. A tiny model
saved in tmp_path stands in for the shipped one."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cdflow_lib import checkpoints, cli
from test_images import matrix_shaper_icc, tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny model and two 32 x 32 PNGs (a photo-like noise image and a warmer copy)."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model()
    checkpoints.save(model, root / "tiny.pt")
    ref = np.random.default_rng(0).integers(0, 200, (32, 32, 3), dtype=np.uint8)
    test = ref.copy()
    test[..., 0] += 40
    Image.fromarray(ref).save(root / "ref.png")
    Image.fromarray(test).save(root / "test.png")
    return root, model, ref, test


def expected_cd(model, ref, test) -> float:
    """The CD computed straight from the arrays (no file reading): the reference for the command."""
    x, y = (torch.from_numpy(a / 255.0).permute(2, 0, 1)[None].float() for a in (ref, test))
    return model(x, y).item()


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_prints_the_cd(setup, capsys):
    root, model, ref, test = setup
    code, out, err = run(["compare", root / "ref.png", root / "test.png", "--model", root / "tiny.pt"], capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[0] == f"CD {expected_cd(model, ref, test):.6f}"


def test_compare_per_scale_prints_the_cumulative_distances(setup, capsys):
    root, model, ref, test = setup
    code, out, _ = run(["compare", root / "ref.png", root / "test.png", "--model", root / "tiny.pt", "--per-scale"],
                       capsys)
    x, y = (torch.from_numpy(a / 255.0).permute(2, 0, 1)[None].float() for a in (ref, test))
    expected = " ".join(f"{d:.6f}" for d in model.distances(x, y)[:, 0].tolist())
    assert code == 0 and out.splitlines()[1] == f"cumulative distances, coarsest scale only .. all 3 scales: {expected}"


def test_compare_json_for_scripts(setup, capsys):
    root, model, ref, test = setup
    code, out, _ = run(["compare", root / "ref.png", root / "test.png", "--model", root / "tiny.pt", "--json"], capsys)
    result = json.loads(out)
    assert code == 0
    assert result["cd"] == pytest.approx(expected_cd(model, ref, test), rel=1e-6)
    assert len(result["distances"]) == 3 and result["distances"][-1] == result["cd"]
    assert result["size"] == [32, 32] and result["size_policy"]["policy"] == "resize"
    assert result["test"]["icc_profile"] is None and result["warnings"] == [] and result["map"] is None


def test_compare_json_names_the_converted_profile(setup, tmp_path, capsys):
    root, _, _, test = setup
    Image.fromarray(test).save(tmp_path / "adobe.png", icc_profile=matrix_shaper_icc("Adobe-like test RGB"))
    code, out, _ = run(["compare", root / "ref.png", tmp_path / "adobe.png", "--model", root / "tiny.pt", "--json"],
                       capsys)
    result = json.loads(out)
    assert code == 0 and result["test"]["icc_profile"] == "Adobe-like test RGB" and result["test"]["icc_converted"]


def test_compare_writes_the_map_figure(setup, tmp_path, capsys):
    root, *_ = setup
    code, out, _ = run(["compare", root / "ref.png", root / "test.png", "--model", root / "tiny.pt",
                        "--map", tmp_path / "map.png"], capsys)
    assert code == 0 and f"map: {tmp_path / 'map.png'}" in out
    with Image.open(tmp_path / "map.png") as fig:
        assert fig.format == "PNG" and fig.width > 200 and fig.height > 200


def test_missing_file_exits_2_with_one_line(setup, capsys):
    root, *_ = setup
    code, out, err = run(["compare", root / "ref.png", root / "missing.png", "--model", root / "tiny.pt"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"cdflow compare: {root / 'missing.png'}: no such file"]


def test_debug_shows_the_exception(setup):
    root, *_ = setup
    with pytest.raises(ValueError, match="missing.png: no such file"):
        cli.main(["compare", str(root / "ref.png"), str(root / "missing.png"), "--model", str(root / "tiny.pt"),
                  "--debug"])


@pytest.mark.parametrize("problem", ["not an image", "other size", "bad model"])
def test_bad_input_exits_2_naming_the_file(setup, tmp_path, capsys, problem):
    root, *_ = setup
    test, model = root / "test.png", root / "tiny.pt"
    if problem == "not an image":
        test = tmp_path / "notes.png"
        test.write_text("hello")
        expected = f"{test}: not an image file Pillow can read"
    elif problem == "other size":
        test = tmp_path / "big.png"
        Image.new("RGB", (40, 32)).save(test)
        expected = "all images must have the same size"
    else:
        model = tmp_path / "nothing.pt"
        expected = f"{model} is neither a checkpoint file nor a shipped model"
    code, _, err = run(["compare", root / "ref.png", test, "--model", model], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    assert run(["compare", "only-one.png"], capsys)[0] == 2
    assert run(["compare", "a.png", "b.png", "--size-policy", "stretch"], capsys)[0] == 2
    assert run([], capsys)[0] == 2
    assert run(["--help"], capsys)[0] == 0


def test_official_checkpoint(setup, tmp_path, capsys):
    root, model, ref, test = setup
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "o.pt")
    code, out, _ = run(["compare", root / "ref.png", root / "test.png", "--model", tmp_path / "o.pt", "--official"],
                       capsys)
    assert code == 0 and out.splitlines()[0] == f"CD {expected_cd(model, ref, test):.6f}"


def test_pairs_csv_gives_one_row_per_pair(setup, tmp_path, capsys):
    root, model, ref, test = setup
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"reference,test,dv\n{root / 'ref.png'},{root / 'test.png'},1.5\n"
                     f"{root / 'ref.png'},{root / 'ref.png'},0\n")
    code, _, err = run(["compare", "--pairs", pairs, "--out", tmp_path / "out.csv", "--model", root / "tiny.pt",
                        "--per-scale"], capsys)
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert code == 0 and err == ""
    assert list(rows[0]) == ["reference", "test", "dv", "cd", "d1", "d2", "d3", "notes", "error"]
    assert [r["dv"] for r in rows] == ["1.5", "0"]
    assert float(rows[0]["cd"]) == pytest.approx(expected_cd(model, ref, test), abs=1e-6)
    assert rows[0]["d3"] == rows[0]["cd"] and float(rows[1]["cd"]) == pytest.approx(1e-4, abs=1e-6)


def test_pairs_with_a_bad_pair_report_it_and_exit_2(setup, tmp_path, capsys):
    root, *_ = setup
    (tmp_path / "ref.png").write_bytes((root / "ref.png").read_bytes())
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("ref,test\nref.png,ref.png\nref.png,gone.png\n")  # paths relative to the CSV's folder
    code, out, err = run(["compare", "--pairs", pairs, "--model", root / "tiny.pt"], capsys)
    rows = list(csv.DictReader(out.splitlines()))
    assert code == 2 and err.strip() == "cdflow compare: 1 of 2 pairs failed (see the 'error' column)"
    assert rows[0]["error"] == "" and rows[1]["error"] == f"{tmp_path / 'gone.png'}: no such file"


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_forward_the_rest_of_the_command_line(monkeypatch, command):
    import importlib

    seen = []
    monkeypatch.setattr(importlib.import_module(f"cdflow_lib.{command}"), "main", lambda argv: seen.append(argv) or 7)
    assert cli.main([command, "--size", "64", "--help-me"]) == 7
    assert seen == [["--size", "64", "--help-me"]]


def test_python_dash_m_cdflow_lib(setup):
    root, model, ref, test = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cdflow_lib", "compare", str(root / "ref.png"),
                           str(root / "test.png"), "--model", str(root / "tiny.pt"), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cd"] == pytest.approx(expected_cd(model, ref, test), rel=1e-6)
