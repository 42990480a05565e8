"""The training command line keeps its word: --resume keeps the run's configuration, one run per
folder, SIGINT / SIGTERM stop with a resumable checkpoint and no temporary files, log means survive
a resume, no "model in best.pt" without a best.pt, bad options fail before any data is made."""
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from cdflow_lib import checkpoints, train
from toy_pairs import ToyPairs


def tiny_args(out, *extra) -> list[str]:
    """A tiny run: 12 toy pairs (with `toy_data`), batch 4: 3 steps an epoch."""
    return ["--recipe", "synthetic", "--model", "tiny", "--image-size", "16", "--batch-size", "4", "--epochs", "2",
            "--lr", "1e-3", "--device", "cpu", "--no-progress", "--corpus", "package", "--pairs-per-image", "2",
            "--out", str(out), *extra]


@pytest.fixture
def toy_data(monkeypatch):
    """Replace the synthetic data by ToyPairs; counts the calls."""
    calls = []

    def make(cfg):
        calls.append(cfg)
        return ToyPairs(12, 16), ToyPairs(8, 16, seed=1)

    monkeypatch.setattr(train, "make_datasets", make)
    return calls


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if any data set is built."""
    def make(cfg):
        raise AssertionError("data were generated before the options were checked")

    monkeypatch.setattr(train, "make_datasets", make)


def usage_error(capsys, argv) -> str:
    """Run main, expect argparse's exit status 2, return stderr (which holds no traceback)."""
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    return err


def final_state(out: Path) -> dict:
    return checkpoints.safe_load(out / "last.pt")


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights, EMA, optimizer state, step counters and log rows (but the seconds)."""
    sa, sb = final_state(a), final_state(b)
    assert (sa["epoch"], sa["step_in_epoch"], sa["global_step"]) == (sb["epoch"], sb["step_in_epoch"], sb["global_step"])
    for key in ("model", "state_dict"):
        for name, t in sa[key].items():
            assert torch.equal(t, sb[key][name]), (key, name)
    for ga, gb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(ga[k], gb[k]) for k in ga)
    rows_a, rows_b = train.read_log(a / "log.csv"), train.read_log(b / "log.csv")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows_a] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows_b]


# --- resume keeps the run's configuration -------------------------------------------------

def test_resume_refuses_an_option_that_changes_the_run_and_names_it(tmp_path, capsys, toy_data):
    out = tmp_path / "run"
    assert train.main(tiny_args(out, "--max-steps", "2")) == 0
    saved = json.loads((out / "config.json").read_text())
    for flag, value in (("--image-size", "32"), ("--lr", "0.01"), ("--pairs-per-image", "4"), ("--recipe", "paper")):
        err = usage_error(capsys, ["--out", str(out), "--resume", flag, value])
        assert f"argument {flag}:" in err and "resum" in err
    assert len(toy_data) == 1                                   # refused before any data
    assert json.loads((out / "config.json").read_text()) == saved  # and config.json untouched
    # a new run over the old one is refused too
    assert "already holds a run" in usage_error(capsys, tiny_args(out))
    # the library refuses as well, naming the field
    cfg = train.recipe_config("synthetic", **{**{k: v for k, v in saved.items() if k != "recipe"}, "lr": 0.5})
    with pytest.raises(ValueError, match=r"trained with lr=0\.001, this run has lr=0\.5"):
        train.Trainer(cfg, ToyPairs(12, 16)).fit(resume=True)
    # options that do not change what a step computes are allowed; the rest comes from the saved run
    assert train.main(["--out", str(out), "--resume", "--epochs", "3", "--checkpoint-every", "2", "--num-workers",
                       "0", "--device", "cpu"]) == 0
    resumed = json.loads((out / "config.json").read_text())
    assert resumed == {**saved, "epochs": 3, "checkpoint_every": 2, "max_steps": None}
    assert final_state(out)["global_step"] == 9


def test_resume_without_a_saved_run_is_refused(tmp_path, capsys, no_data):
    assert "holds no run to resume" in usage_error(capsys, ["--out", str(tmp_path / "nothing"), "--resume"])


# --- one run per folder -------------------------------------------------------------------

def test_a_folder_locked_by_a_live_process_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys, toy_data):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "earlier"}
        (out / train.LOCK_NAME).write_text(json.dumps(lock))
        err = usage_error(capsys, tiny_args(out, "--max-steps", "1"))
        assert "argument --out:" in err and f"pid {holder.pid}" in err and "in use" in err
        # a lock of another host cannot be checked from here: refused as well
        (out / train.LOCK_NAME).write_text(json.dumps({**lock, "host": "elsewhere.example"}))
        assert "in use" in usage_error(capsys, tiny_args(out, "--max-steps", "1"))
        assert toy_data == []
        (out / train.LOCK_NAME).write_text(json.dumps(lock))
    finally:
        holder.kill()
        holder.wait()
    assert train.main(tiny_args(out, "--max-steps", "1")) == 0   # the holder is dead: its lock is stale
    assert not (out / train.LOCK_NAME).exists()                  # and ours is released


# --- signals ------------------------------------------------------------------------------

def test_sigint_prints_one_line_exits_130_and_leaves_a_resumable_checkpoint(tmp_path, capsys, toy_data, monkeypatch):
    train.main(tiny_args(tmp_path / "full"))
    real_step = train.Trainer.train_step

    def step_then_ctrl_c(self, batch, gen):
        logs = real_step(self, batch, gen)
        if self.global_step == 4:   # the 5th step, mid second epoch (3 steps an epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return logs

    monkeypatch.setattr(train.Trainer, "train_step", step_then_ctrl_c)
    capsys.readouterr()
    handler = signal.getsignal(signal.SIGINT)
    cut = tmp_path / "cut"
    assert train.main(tiny_args(cut)) == 128 + signal.SIGINT   # default --checkpoint-every 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("SIGINT: stopped after global step 5")
    assert "--resume" in captured.err
    st = final_state(cut)
    assert (st["epoch"], st["step_in_epoch"], st["global_step"]) == (1, 2, 5)
    assert signal.getsignal(signal.SIGINT) is handler and not list(cut.glob("*.tmp"))   # handlers restored
    monkeypatch.setattr(train.Trainer, "train_step", real_step)
    assert train.main(["--out", str(cut), "--resume"]) == 0
    assert_same_run(tmp_path / "full", cut)


def test_sigterm_to_a_training_process_resumes_bit_for_bit_and_leaves_no_temp_files(tmp_path):
    args = ["--recipe", "synthetic", "--model", "tiny", "--image-size", "32", "--batch-size", "4", "--epochs", "5",
            "--lr", "1e-3", "--device", "cpu", "--no-progress", "--corpus", "package", "--pairs-per-image", "4",
            "--checkpoint-every", "1"]
    steps = 30   # 8 steps an epoch
    cut, full = tmp_path / "cut", tmp_path / "full"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cdflow_lib.train", *args, "--max-steps", str(steps),
                             "--out", str(cut)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900   # making the labels takes seconds, or minutes on a busy machine
    while not (cut / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert (cut / "last.pt").exists(), "the training process wrote no checkpoint"
    proc.send_signal(signal.SIGTERM)    # lands in a step or in the save after it: both must stop cleanly
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("SIGTERM: stopped after")
    assert final_state(cut)["global_step"] < steps
    assert not [*cut.rglob("*.tmp")] and not (cut / train.LOCK_NAME).exists()
    # a save killed outright (SIGKILL) leaves a temporary file: the next start removes it
    (cut / "last.pt.killed.tmp").write_bytes(b"partial")
    shutil.copytree(cut / "label_cache", full / "label_cache")   # same labels, without recomputing them
    assert train.main(["--out", str(cut), "--resume", "--max-steps", str(steps)]) == 0
    assert not [*cut.rglob("*.tmp")]
    assert train.main([*args, "--max-steps", str(steps), "--out", str(full)]) == 0
    assert_same_run(full, cut)
    assert final_state(cut)["global_step"] == steps


# --- what the log and the messages say ----------------------------------------------------

def test_log_means_after_a_resume_equal_those_of_an_uninterrupted_run(tmp_path, toy_data):
    assert train.main(tiny_args(tmp_path / "full")) == 0
    cut = tmp_path / "cut"
    assert train.main(tiny_args(cut, "--max-steps", "4")) == 0   # mid second epoch
    assert final_state(cut)["epoch_n"] == 1
    assert train.main(["--out", str(cut), "--resume"]) == 0
    rows = train.read_log(cut / "log.csv")
    assert len(rows) == 2 and rows == [{**r, "seconds": rows[i]["seconds"]}
                                       for i, r in enumerate(train.read_log(tmp_path / "full" / "log.csv"))]


@pytest.mark.parametrize("extra", [["--max-steps", "2"], ["--epochs", "0"]])
def test_no_best_pt_message_when_no_best_pt_was_written(tmp_path, capsys, toy_data, extra):
    out = tmp_path / "run"
    assert train.main(tiny_args(out, *extra)) == 0
    said = capsys.readouterr().out
    assert not (out / "best.pt").exists()
    assert "model in" not in said and "no best.pt was written" in said


def test_a_finished_run_names_its_best_pt(tmp_path, capsys, toy_data):
    out = tmp_path / "run"
    status = train.main(tiny_args(out))
    said = capsys.readouterr()
    assert status == 0, said
    assert f"model in {out / 'best.pt'}" in said.out and (out / "best.pt").is_file(), said


# --- options are checked before any data is made ------------------------------------------

def _read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write in: chmod 555, or (as root, who ignores modes) /sys."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            tempfile.TemporaryDirectory(dir=candidate).cleanup()
        except OSError:
            return candidate
    pytest.skip("no folder this process cannot write in")


@pytest.mark.parametrize("flag, value, says", [
    ("--batch-size", "0", "must be an integer >= 1"),
    ("--image-size", "50", "not divisible by 2**3 = 8"),
    ("--lr", "0", "must be a positive number"),
    ("--ema-decay", "1", "must lie in [0, 1)"),
    ("--device", "cuda:99", "cuda:99"),
    ("--batch-size", "1000", "more than the 16 training pairs"),
])
def test_bad_options_are_named_before_any_data_is_made(tmp_path, capsys, no_data, flag, value, says):
    err = usage_error(capsys, tiny_args(tmp_path / "run", flag, value))
    assert f"argument {flag}: " in err and says in err


def test_an_output_folder_that_cannot_be_written_is_named_before_any_data_is_made(tmp_path, capsys, no_data):
    err = usage_error(capsys, tiny_args(_read_only_folder(tmp_path) / "run"))
    assert "argument --out: " in err and "run" in err
    (tmp_path / "file").write_text("")
    assert "argument --out: " in usage_error(capsys, tiny_args(tmp_path / "file"))


def test_workers_build_the_same_batches_as_the_main_process(tmp_path):
    weights = []
    for workers in (0, 2):
        cfg = train.recipe_config("synthetic", model="tiny", image_size=16, batch_size=4, epochs=1, lr=1e-3,
                                  device="cpu", progress=False, num_workers=workers, out=str(tmp_path / str(workers)))
        weights.append(train.Trainer(cfg, ToyPairs(12, 16)).fit().state_dict())
    assert all(torch.equal(a, weights[1][k]) for k, a in weights[0].items())


def test_help_describes_every_option_and_points_inside_the_repository():
    parser = train.build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == {f.name for f in dataclasses.fields(train.TrainConfig)} | {"resume"}
    for action in options:
        assert action.help and len(action.help) > 15, action.dest
        assert action.dest in ("resume", "recipe") or "default" in action.help, action.dest
    assert {tuple(a.choices) for a in options if a.choices} >= {("off", "bf16"), ("paper", "small", "tiny")}
    for text in (train.__doc__, train.EPILOG):
        assert "DESIGN.md" not in text and "../" not in text and " /data" not in text
