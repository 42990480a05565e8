"""The evaluation command line: any checkpoint (ours, the authors' format by detection or
--official, the authors' fixture), JSON and CSV output that agree with a direct computation, and
argparse errors (status 2, no traceback) for bad options."""
import csv
import json

import numpy as np
import pytest
import torch

from cdflow_lib import checkpoints
from cdflow_lib import evaluate as ev
from cdflow_lib.data import SyntheticPairs
from test_model import trained_like

#: Six synthetic test pairs of the 11 package photographs: 2 photographs x 3 pairs.
PAIRS = ["--corpus", "package", "--pairs-per-image", "3", "--bootstrap", "0", "--no-progress", "--device", "cpu",
         "--batch-size", "4"]


def direct_scores(model, size: int) -> dict:
    """CD-Flow's scores on the same pairs, computed here in one batch."""
    ds = SyntheticPairs("test", size=size, corpus="package", pairs_per_image=3)
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        pred = model(torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items]))
    return ev.correlations(pred.double().numpy(), np.array([float(it["dv"]) for it in items]))


def run(argv, capsys) -> str:
    assert ev.main(argv) == 0
    return capsys.readouterr().out


@pytest.fixture
def tiny(tmp_path):
    model = trained_like("tiny")
    return model, checkpoints.save(model, tmp_path / "tiny.pt")


def test_scores_our_checkpoint_as_json_and_csv_that_agree_with_a_direct_computation(tmp_path, capsys, tiny):
    model, path = tiny
    out = run(["--model", str(path), "--size", "16", *PAIRS, "--json", str(tmp_path / "s.json"),
               "--csv", str(tmp_path / "s.csv")], capsys)
    assert "| CD-Flow | all | 6 |" in out                      # the table on standard output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert (doc["model_format"], doc["model_config"], doc["size"]) == ("cdflow_lib", model.config, 16)
    assert [(r["measure"], r["subset"]) for r in doc["rows"]][:2] == [("CD-Flow", "all"), ("CD-Flow", "aligned")]
    assert {r["measure"] for r in doc["rows"]} == {"CD-Flow", "ciede2000"}
    with open(tmp_path / "s.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(doc["rows"])
    for row, line in zip(doc["rows"], table):
        assert (line["measure"], line["subset"], int(line["n"])) == (row["measure"], row["subset"], row["n"])
        assert all(float(line[k]) == pytest.approx(row[k], rel=1e-12) for k in ev.SCORE_KEYS)
    ref = direct_scores(model, 16)
    cd = doc["rows"][0]
    for key in ("stress", "srcc_plain", "pearson", "plcc"):
        assert cd[key] == pytest.approx(ref[key], rel=1e-5), key


def test_detects_the_authors_format_whatever_the_file_is_called(tmp_path, capsys, tiny):
    model, path = tiny
    official = tmp_path / "CD-Flow.pth"   # the authors' layout: DataParallel's module. prefix, no config
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, official)
    ours = json.loads(run(["--model", str(path), "--size", "16", *PAIRS, "--json", "-"], capsys))
    for extra in ([], ["--official"]):
        theirs = json.loads(run(["--model", str(official), *extra, "--size", "16", *PAIRS, "--json", "-"], capsys))
        assert theirs["model_format"] == "official" and theirs["model_config"] == model.config
        assert theirs["rows"] == ours["rows"]


def test_scores_the_authors_fixture_checkpoint(official_dir, tmp_path, capsys):
    path = official_dir / "official_small_checkpoint.pt"
    out = run(["--model", str(path), "--size", "64", *PAIRS, "--csv", "-"], capsys)
    table = list(csv.DictReader(out.splitlines()))
    assert [r["measure"] for r in table if r["subset"] == "all"] == ["CD-Flow", "ciede2000"]
    ref = direct_scores(checkpoints.load_official(path), 64)
    assert float(table[0]["srcc_plain"]) == pytest.approx(ref["srcc_plain"], rel=1e-6)
    assert float(table[0]["stress"]) == pytest.approx(ref["stress"], rel=1e-5)


@pytest.mark.parametrize("argv, says", [
    (["--model", "{tmp}/missing.pth"], "argument --model: "),
    (["--model", "{tmp}/notes.txt"], "argument --model: "),
    (["--model", "no-such-shipped-model"], "neither a checkpoint file nor a shipped model"),
    (["--model", "{tmp}/tiny.pt", "--size", "20"], "argument --size: 20 is not divisible by 2**3 = 8"),
    (["--model", "{tmp}/tiny.pt", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["--model", "{tmp}/tiny.pt", "--bootstrap", "-1"], "argument --bootstrap: "),
    (["--model", "{tmp}/tiny.pt", "--device", "cuda:99"], "argument --device: "),
    (["--model", "{tmp}/tiny.pt", "--json", "{tmp}/no/such/folder.json"], "argument --json: "),
    (["--model", "{tmp}/tiny.pt", "--json", "-", "--csv", "-"], "argument --csv: "),
    (["--model", "{tmp}/tiny.pt", "--split", "dev"], "argument --split: invalid choice"),
])
def test_bad_options_are_argparse_errors_without_a_traceback(tmp_path, capsys, tiny, argv, says):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        ev.main(PAIRS + [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) < 400   # one readable line, not torch's essay
