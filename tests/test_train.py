"""Training: the loss, that it learns, resume equals uninterrupted, non-finite losses stop
cleanly, DistributedDataParallel keeps ranks identical, and the memory-saving modes give
ordinary autograd's gradients."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdflow_lib import checkpoints, flow, train
from cdflow_lib.metric import CDFlow
from test_layers import perturb
from toy_pairs import ToyPairs


def tiny_cfg(tmp_path, **kw):
    base = dict(model="tiny", image_size=16, batch_size=4, epochs=2, lr=1e-3, augment=True,
                device="cpu", out=str(tmp_path), progress=False, checkpoint_every=1)
    return train.recipe_config("synthetic", **{**base, **kw})


def test_loss_terms_match_hand_computed_reference():
    torch.manual_seed(0)
    model = CDFlow.from_config("tiny").double()
    ds = ToyPairs(4, 16)
    x, y, dv = ds.x.double(), ds.y.double(), ds.dv.double()
    model.glow.initialize(torch.cat([x, y]))
    perturb(model, 0.02)
    loss, terms = train.cdflow_loss(model, x, y, dv)
    # reference: explicit concatenation of the coarsest k latents, MSE by hand, bpd from its definition
    zx, ldx, lpx = model.glow(x)
    zy, ldy, lpy = model.glow(y)
    mses = []
    for k in range(1, 4):
        a = torch.cat([z.reshape(4, -1) for z in zx[::-1][:k]], 1)
        b = torch.cat([z.reshape(4, -1) for z in zy[::-1][:k]], 1)
        d = torch.sqrt(((a - b) ** 2).sum(1) / a.shape[1] + 1e-8)
        mses.append(((d - dv) ** 2).mean())
    n = 3 * 16 * 16
    nll_bits = lambda lp, ld: ((n * math.log(32) - lp - ld) / (n * math.log(2))).mean()  # noqa: E731
    ref = 10 * (10 * mses[2] + mses[0] + mses[1]) + nll_bits(lpx, ldx) + nll_bits(lpy, ldy)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert terms["mse_all"].item() == pytest.approx(mses[2].item(), rel=1e-10)
    assert terms["bpd_x"].item() == pytest.approx(nll_bits(lpx, ldx).item(), rel=1e-10)


def test_a_few_steps_reduce_the_loss(tmp_path):
    cfg = tiny_cfg(tmp_path, augment=False, epochs=1, lr=3e-3)
    ds = ToyPairs(8, 16)
    trainer = train.Trainer(cfg, ds, None)
    trainer.initialize_actnorm()
    batch = train._collate([ds[i] for i in range(8)])
    first = trainer.train_step(batch, torch.Generator())["loss"]
    for _ in range(15):
        last = trainer.train_step(batch, torch.Generator())["loss"]
    assert last < 0.7 * first


def test_resume_equals_uninterrupted(tmp_path):
    ds, val = ToyPairs(12, 16), ToyPairs(8, 16, seed=1)
    full = train.Trainer(tiny_cfg(tmp_path / "full"), ds, val).fit()
    # interrupted after 4 steps (mid second epoch: 3 steps per epoch), then resumed
    train.Trainer(tiny_cfg(tmp_path / "cut", max_steps=4), ds, val).fit()
    st = checkpoints.safe_load(tmp_path / "cut" / "last.pt")
    assert (st["epoch"], st["step_in_epoch"], st["global_step"]) == (1, 1, 4)
    resumed = train.Trainer(tiny_cfg(tmp_path / "cut"), ds, val).fit(resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    ema_full = checkpoints.load(tmp_path / "full" / "best.pt")
    ema_res = checkpoints.load(tmp_path / "cut" / "best.pt")
    assert all(torch.equal(a, b) for a, b in zip(ema_full.state_dict().values(), ema_res.state_dict().values()))
    log = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 3


def test_non_finite_loss_stops_with_diagnosis_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = train.cdflow_loss
    calls = {"n": 0}

    def sometimes_nan(model, x, y, dv, likelihood_weight=1.0):
        calls["n"] += 1
        loss, terms = real(model, x, y, dv, likelihood_weight)
        if calls["n"] == 3:
            terms["bpd_y"] = terms["bpd_y"] * float("nan")
            loss = loss + terms["bpd_y"]
        return loss, terms

    monkeypatch.setattr(train, "cdflow_loss", sometimes_nan)
    trainer = train.Trainer(tiny_cfg(tmp_path), ToyPairs(12, 16), None)
    with pytest.raises(train.NonFiniteLossError, match=r"epoch 0, step 2 .*terms \[.bpd_y.\]"):
        trainer.fit()
    st = checkpoints.safe_load(tmp_path / "last.pt")
    assert st["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    worker = Path(__file__).parent / "ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    init = CDFlow.from_config("tiny").state_dict()
    moved = False
    for name in a:
        assert torch.equal(a[name], b[name]), name
        moved |= a[name].is_floating_point() and not torch.equal(a[name], init[name])
    assert moved


def test_augmentation_is_independent_unless_synced_and_seeded_by_step():
    from cdflow_lib.data import PairAugment

    x = torch.rand(2, 3, 20, 20)
    ax, ay = train.augment_batch(x, x.clone(), PairAugment(16), torch.Generator().manual_seed(0))
    assert ax.shape == (2, 3, 16, 16) and not torch.allclose(ax, ay)
    bx, _ = train.augment_batch(x, x.clone(), PairAugment(16), torch.Generator().manual_seed(0))
    assert torch.equal(ax, bx)
    sx, sy = train.augment_batch(x, x.clone(), PairAugment(16, sync=True), torch.Generator().manual_seed(0))
    assert torch.equal(sx, sy)


def test_unknown_recipe_and_bad_resume_file_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe"):
        train.recipe_config("imagenet")
    model = CDFlow.from_config("tiny")
    checkpoints.save(model, tmp_path / "last.pt")
    trainer = train.Trainer(tiny_cfg(tmp_path), ToyPairs(8, 16), None)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        trainer.resume()


def test_command_line_overrides_the_recipe(tmp_path):
    cfg, resume = train.parse_args(["--recipe", "paper", "--batch-size", "2", "--no-augment", "--tf32",
                                    "--max-steps", "7", "--out", str(tmp_path), "--device", "cpu"])
    assert (cfg.model, cfg.batch_size, cfg.augment, cfg.tf32, cfg.max_steps, cfg.lr, resume) == \
        ("paper", 2, False, True, 7, 1e-5, False)


# --- memory-saving modes (issue 8) --------------------------------------------------------

def _grads(model, x, y, dv, mode):
    model.glow.memory_mode, model.glow.reconstruction_error = mode, None
    model.zero_grad()
    loss, _ = train.cdflow_loss(model, x, y, dv)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["checkpoint", "inverse", "inverse-step"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_memory_saving_gradients_equal_autograd_float64(mode, seed):
    torch.manual_seed(seed)
    model = CDFlow.from_config("tiny").double().train()
    x, y = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    dv = torch.rand(2, dtype=torch.float64) * 5
    model.glow.initialize(torch.cat([x, y]))
    perturb(model, 0.02)
    loss0, ref = _grads(model, x, y, dv, "off")
    loss1, got = _grads(model, x, y, dv, mode)
    assert loss1.item() == pytest.approx(loss0.item(), rel=1e-12)
    for g0, g1 in zip(ref, got):
        assert torch.allclose(g1, g0, rtol=1e-8, atol=1e-8 * g0.abs().max().item())


def test_memory_saving_gradients_equal_autograd_small_float32():
    torch.manual_seed(0)
    model = CDFlow.from_config("small").train()
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    dv = torch.rand(2) * 5
    model.glow.initialize(torch.cat([x, y]))
    perturb(model, 0.005)
    _, ref = _grads(model, x, y, dv, "off")
    _, got = _grads(model, x, y, dv, "inverse")
    num = torch.cat([(a - b).flatten() for a, b in zip(ref, got)]).norm()
    assert (num / torch.cat([a.flatten() for a in ref]).norm()).item() < 1e-4


def test_memory_saving_training_gives_the_same_weights_float64(tmp_path):
    states = {}
    for mode in ("off", "inverse"):
        torch.manual_seed(0)
        cfg = tiny_cfg(tmp_path / mode, memory_saving=mode, epochs=1)
        trainer = train.Trainer(cfg, ToyPairs(8, 16), None)
        trainer.model.double()
        trainer.train_set.x, trainer.train_set.y = trainer.train_set.x.double(), trainer.train_set.y.double()
        trainer.train_set.dv = trainer.train_set.dv.double()
        trainer.initialize_actnorm()
        for step in range(3):
            batch = train._collate([trainer.train_set[i] for i in range(4)])
            batch["dv"] = batch["dv"].double()
            trainer.train_step(batch, torch.Generator().manual_seed(step))
        states[mode] = trainer.model.state_dict()
    for name, a in states["off"].items():
        assert torch.allclose(a, states["inverse"][name], rtol=1e-9, atol=1e-12), name


def test_inverse_mode_refuses_an_inexact_inverse():
    torch.manual_seed(0)
    model = CDFlow.from_config("tiny").train()
    x = torch.rand(2, 3, 16, 16)
    model.glow.initialize(x)
    with torch.no_grad():  # a near-singular 1x1 convolution: inversion loses everything
        model.glow.blocks[1].flows[0].invconv.w_s[0] = -30.0
    model.glow.memory_mode = "inverse"
    with pytest.raises(flow.InexactInverseError, match="block 2 rebuilds its input with a relative error"):
        model.glow(x)
    with pytest.raises(ValueError, match="memory_mode must be one of"):
        model.glow.memory_mode = "swap"


# --- the likelihood-weight study (notebook 10) -------------------------------------------

def test_likelihood_weight_runs_share_start_and_batches_and_weight_only_the_bpd_terms(tmp_path):
    cfg = tiny_cfg(tmp_path, augment=False, lr=1e-3)
    runs = train.likelihood_weight_runs(cfg, ToyPairs(12, 16), weights=(0.0, 1.0, 30.0), steps=3)
    assert set(runs) == {0.0, 1.0, 30.0}
    first = {w: r["log"][0] for w, r in runs.items()}
    for w, r in runs.items():
        assert len(r["log"]) == 3 and r["batches"] == runs[0.0]["batches"], "every run must see the same batches"
        assert len({tuple(b) for b in r["batches"]}) > 1, "a fresh batch each step"
        # same start, same first batch: identical terms before the first update, whatever w
        for key in ("mse_all", "mse_partial", "bpd_x", "bpd_y"):
            assert first[w][key] == pytest.approx(first[0.0][key], rel=1e-6), (w, key)
        distance = 10 * (10 * first[w]["mse_all"] + first[w]["mse_partial"])
        assert first[w]["loss"] == pytest.approx(distance + w * (first[w]["bpd_x"] + first[w]["bpd_y"]), rel=1e-5)
    # the learned priors (zero at initialisation) enter only log p: w = 0 leaves them at zero
    priors = {w: torch.cat([p.flatten() for b in r["model"].glow.blocks for p in b.prior.parameters()])
              for w, r in runs.items()}
    assert torch.count_nonzero(priors[0.0]) == 0
    assert torch.count_nonzero(priors[1.0]) > 0 and torch.count_nonzero(priors[30.0]) > 0
    assert not runs[1.0]["model"].training


def test_likelihood_weight_runs_equal_adam_written_out_by_hand(tmp_path):
    """Two steps of one run against an independent computation: the model built from the seed,
    ActNorm on the first batch, the loss with weight w, and Adam's update rule written out."""
    steps = 2
    cfg = tiny_cfg(tmp_path, augment=False, lr=1e-3)
    ds = ToyPairs(12, 16)
    got = dict(train.likelihood_weight_runs(cfg, ds, weights=(30.0,), steps=steps)[30.0]["model"].named_parameters())

    def batch(s):
        idx = train.epoch_batches(len(ds), cfg.batch_size, cfg.seed, s)[0]
        return ds.x[idx], ds.y[idx], ds.dv[idx]

    def adam_by_hand(w):
        torch.manual_seed(cfg.seed)
        model = CDFlow.from_config("tiny").train()
        x0, y0, _ = batch(0)
        model.glow.initialize(torch.cat([x0, y0]))
        params = dict(model.named_parameters())
        m = {k: torch.zeros_like(p) for k, p in params.items()}
        v = {k: torch.zeros_like(p) for k, p in params.items()}
        b1, b2 = 0.9, 0.999                                     # torch.optim.Adam's defaults
        for t in range(1, steps + 1):
            loss, _ = train.cdflow_loss(model, *batch(t - 1), likelihood_weight=w)
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
            with torch.no_grad():
                for k, p in params.items():
                    m[k] = b1 * m[k] + (1 - b1) * grads[k]
                    v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                    p -= cfg.lr * (m[k] / (1 - b1 ** t)) / ((v[k] / (1 - b2 ** t)).sqrt() + cfg.adam_eps)
        return params

    tol = 1e-3 * cfg.lr                                         # Adam moves each weight by about lr a step
    by_hand = adam_by_hand(30.0)
    for name, p in by_hand.items():
        assert torch.allclose(got[name], p, rtol=0, atol=tol), name
    other = adam_by_hand(1.0)                                   # the check can tell the weights apart
    assert max((got[k] - p).abs().max().item() for k, p in other.items()) > 100 * tol


def test_channels_last_option_reaches_the_model_and_trains_the_same_steps(tmp_path):
    cfg, _ = train.parse_args(["--recipe", "synthetic", "--model", "tiny", "--image-size", "16", "--channels-last",
                               "--no-augment", "--device", "cpu", "--out", str(tmp_path / "cl")])
    assert cfg.channels_last and not cfg.compile
    ds = ToyPairs(8, 16)
    batch = train._collate([ds[i] for i in range(8)])
    losses = {}
    for name, flag in (("reference", False), ("channels_last", True)):
        trainer = train.Trainer(tiny_cfg(tmp_path / name, augment=False, channels_last=flag), ds, None)
        assert trainer.model.glow.channels_last is flag and trainer.model.glow.compile_couplings is False
        trainer.initialize_actnorm()
        losses[name] = [trainer.train_step(batch, torch.Generator())["loss"] for _ in range(3)]
    # the same function up to float rounding: three steps on the same batch agree closely, not bitwise
    assert losses["channels_last"] == pytest.approx(losses["reference"], rel=1e-4)
