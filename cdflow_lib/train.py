"""Training CD-Flow: the authors' loss and schedule, resumable, on one or many GPUs.

    python -m cdflow_lib.train --recipe synthetic --out runs/small      # embedded default data
    python -m cdflow_lib.train --recipe paper --spcd-root /data/SPCD --out runs/paper
    torchrun --nproc_per_node 4 -m cdflow_lib.train --recipe paper ...   # DistributedDataParallel
    python -m cdflow_lib.train --out runs/small --resume                 # continue where it stopped

Loss (authors' code): ``10 * (10 * MSE(dE_K, dV) + sum_{k<K} MSE(dE_k, dV)) + bpd(x) + bpd(y)``
with ``bpd = -(log_p + logdet - N log 32) / (N ln 2)``, N = 3 H W. Adam, StepLR, an EMA of
the weights used for validation, the best checkpoint by validation SRCC.

Reproducibility: the data order of epoch e is a permutation drawn from ``seed + e``, and the
augmentation of step s from ``(seed, e, s)``, so a run resumed from any checkpoint continues
bit for bit (on the same hardware) as if it had never stopped. Checkpoints are written
atomically; a non-finite loss stops training with a diagnosis and leaves them untouched.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .evaluate import predict
from .metric import DISTANCE_EPS, CDFlow

#: bits-per-dim assumes 5-bit data (n_bins = 32), as in the authors' (and rosinality's) code.
N_BINS = 32
#: Loss weights of the authors' code: 10 * (10 * MSE(all scales) + sum of the partial ones).
OUTER_WEIGHT, FULL_WEIGHT = 10.0, 10.0


# --- configuration ------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything that defines a run. `recipe` presets fill the rest (see RECIPES)."""

    recipe: str = "synthetic"
    model: str = "small"
    image_size: int = 128          # training resolution (after augmentation)
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    adam_eps: float = 1e-7
    lr_step: int = 5               # StepLR every `lr_step` epochs ...
    lr_gamma: float = 0.5          # ... by this factor
    ema_decay: float = 0.999
    seed: int = 100
    augment: bool = True
    sync_augment: bool = False     # authors' released code draws the two images' augmentations independently
    device: str = "auto"
    tf32: bool = False
    amp: str = "off"               # "off" | "bf16": bf16 only inside the coupling networks
    memory_saving: str = "off"     # "off" | "checkpoint" | "inverse" (see flow.MultiScaleFlow.memory_mode)
    max_steps: int | None = None   # stop after this many optimisation steps (tests, smoke runs)
    checkpoint_every: int = 0      # also write last.pt every N steps (0: only at epoch ends)
    num_workers: int = 0
    spcd_root: str | None = None
    data_seed: int = 0
    pairs_per_image: int | None = None
    out: str = "runs/cdflow"
    progress: bool = True


#: Presets. ``paper`` is the authors' recipe for SPCD (DESIGN.md section 5). ``synthetic``
#: trains the ``small`` model on the embedded photo corpus: a higher learning rate than
#: the paper's 1e-5 because the model starts from scratch on a far smaller data set, 128 px
#: images and a short schedule so that a CPU can train it (a GPU takes minutes).
RECIPES = {
    "paper": dict(model="paper", image_size=768, epochs=50, batch_size=4, lr=1e-5, adam_eps=1e-7, lr_step=5,
                  lr_gamma=0.5, ema_decay=0.999, seed=100, sync_augment=False),
    "synthetic": dict(model="small", image_size=128, epochs=6, batch_size=8, lr=1e-4, adam_eps=1e-7, lr_step=3,
                      lr_gamma=0.5, ema_decay=0.99, seed=100, sync_augment=False, pairs_per_image=96),
}


def recipe_config(recipe: str, **overrides) -> TrainConfig:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    return TrainConfig(**{**dataclasses.asdict(TrainConfig()), **RECIPES[recipe], "recipe": recipe, **overrides})


# --- the loss -----------------------------------------------------------------------------

def bits_per_dim(log_p: torch.Tensor, logdet: torch.Tensor, n_dims: int) -> torch.Tensor:
    """Per-sample bits per dimension [B] of 5-bit data: -(log_p + logdet - N log 32) / (N ln 2)."""
    return -(log_p + logdet - n_dims * math.log(N_BINS)) / (n_dims * math.log(2.0))


def cdflow_loss(model: CDFlow, x: torch.Tensor, y: torch.Tensor, dv: torch.Tensor):
    """The authors' training loss on one batch. Returns (loss, terms) with every term a scalar tensor.

    x, y: [B, 3, H, W] in [0, 1]; dv: [B] human (or simulated) colour differences.
    """
    b = x.shape[0]
    zs, logdet, log_p = model.glow(torch.cat([x, y], 0))
    d = CDFlow.cumulative_distances([z[:b] for z in zs], [z[b:] for z in zs], DISTANCE_EPS)  # [K, B]
    n_dims = x[0].numel()
    bpd = bits_per_dim(log_p, logdet, n_dims)
    mse = torch.stack([F.mse_loss(dk, dv) for dk in d])  # [K], coarsest-only first
    terms = {"mse_all": mse[-1], "mse_partial": mse[:-1].sum(), "bpd_x": bpd[:b].mean(), "bpd_y": bpd[b:].mean()}
    loss = OUTER_WEIGHT * (FULL_WEIGHT * terms["mse_all"] + terms["mse_partial"]) + terms["bpd_x"] + terms["bpd_y"]
    return loss, terms


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term is NaN or Inf; the message says which term and which batch."""


# --- augmentation ---------------------------------------------------------------------

def augment_batch(x: torch.Tensor, y: torch.Tensor, aug, gen: torch.Generator):
    """Apply `aug` (a data.PairAugment: the authors' train transform) to each pair of a batch.

    x, y: [B, 3, H, W]; every random draw comes from `gen`, so a step's augmentation
    depends only on the step's seed.
    """
    pairs = [aug(a, b, generator=gen) for a, b in zip(x, y)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# --- EMA ----------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


# --- helpers ------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _rng_state() -> dict:
    """All global RNG states as plain tensors and ints (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)


def _collate(items):
    out = {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items]),
           "dv": torch.stack([torch.as_tensor(it["dv"], dtype=torch.float32) for it in items])}
    if "aligned" in items[0]:
        out["aligned"] = torch.tensor([bool(it["aligned"]) for it in items])
    return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The index batches of one epoch: a permutation from seed + epoch, split across ranks."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_step = batch_size * world
    n_steps = n // per_step
    if n_steps == 0:
        raise ValueError(f"the training set has {n} pairs, fewer than one global batch ({per_step})")
    return [perm[s * per_step + rank * batch_size: s * per_step + (rank + 1) * batch_size] for s in range(n_steps)]


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a), np.asarray(b))[0])


# --- the trainer --------------------------------------------------------------------------

class Trainer:
    """Owns the model, EMA, optimiser, scheduler and the run folder.

    Files in ``cfg.out``: ``last.pt`` (full training state, for --resume), ``best.pt`` (EMA
    weights of the best validation SRCC, loadable with checkpoints.load), ``log.csv`` (one
    row per epoch) and ``config.json``.
    """

    def __init__(self, cfg: TrainConfig, train_set, val_set=None, rank: int = 0, world: int = 1):
        self.cfg, self.train_set, self.val_set, self.rank, self.world = cfg, train_set, val_set, rank, world
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        if cfg.tf32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        from .data import PairAugment

        self.augment = PairAugment(cfg.image_size, sync=cfg.sync_augment) if cfg.augment else None
        self.model = CDFlow.from_config(cfg.model).to(self.device)
        self.model.glow.memory_mode = cfg.memory_saving
        self.model.glow.coupling_precision = cfg.amp
        self.ema = None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.lr_step, cfg.lr_gamma)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_srcc = -math.inf
        self.history: list[dict] = []
        self.ddp = None

    # -- state --------------------------------------------------------------------------
    def initialize_actnorm(self) -> None:
        """ActNorm's data-dependent init, once, on the first training batch (before any wrapping)."""
        idx = epoch_batches(len(self.train_set), self.cfg.batch_size, self.cfg.seed, 0)[0]
        batch = _collate([self.train_set[i] for i in idx])
        x, y = self._prepare(batch, _step_generator(self.cfg.seed, -1, 0))[:2]
        self.model.glow.initialize(torch.cat([x, y], 0))
        self.ema = EMA(self.model, self.cfg.ema_decay)

    def state(self) -> dict:
        return {"format": checkpoints.FORMAT, "version": checkpoints.FORMAT_VERSION, "kind": "training_state",
                "config": self.model.config, "train_config": dataclasses.asdict(self.cfg),
                "state_dict": self.ema.model.state_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "best_srcc": self.best_srcc, "history": self.history}

    def save_last(self) -> None:
        if self.rank == 0:
            checkpoints.atomic_save(self.state(), self.out / "last.pt")

    def resume(self, path=None) -> None:
        path = Path(path or self.out / "last.pt")
        st = checkpoints.safe_load(path, "training checkpoint")
        if not isinstance(st, dict) or st.get("kind") != "training_state":
            raise ValueError(f"{path} is not a training checkpoint of cdflow_lib.train")
        if st["config"] != self.model.config:
            raise ValueError(f"{path} holds a model {st['config']}, this run builds {self.model.config}")
        self.model.load_state_dict(st["model"])
        self.ema = EMA(self.model, self.cfg.ema_decay)
        self.ema.model.load_state_dict(st["state_dict"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        _set_rng_state(st["rng"])
        self.epoch, self.step_in_epoch, self.global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        self.best_srcc, self.history = st["best_srcc"], st["history"]

    # -- steps --------------------------------------------------------------------------
    def _prepare(self, batch, gen):
        from .data.transforms import resize

        x, y = batch["x"], batch["y"]
        if self.augment is not None:
            x, y = augment_batch(x, y, self.augment, gen)
        elif x.shape[-1] != self.cfg.image_size:
            x, y = resize(x, self.cfg.image_size), resize(y, self.cfg.image_size)
        return x.to(self.device), y.to(self.device), batch["dv"].to(self.device)

    def train_step(self, batch, gen) -> dict:
        x, y, dv = self._prepare(batch, gen)
        self.model.train()
        # under DDP the forward must go through the wrapper so that gradients are synchronised
        loss, terms = self.ddp(x, y, dv) if self.ddp is not None else cdflow_loss(self.model, x, y, dv)
        if not torch.isfinite(loss):
            bad = [k for k, v in terms.items() if not torch.isfinite(v)]
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.epoch}, step {self.step_in_epoch} (global step {self.global_step}): "
                f"terms {bad or ['(all finite: the sum overflowed)']} = "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                + f"; dv range [{dv.min().item():.3g}, {dv.max().item():.3g}]. "
                "Nothing was written; the last checkpoint is intact (try a lower --lr).")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}

    # -- loops --------------------------------------------------------------------------
    def validate(self) -> dict:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        res = predict({"cd": self.ema.model}, self.val_set, batch_size=self.cfg.batch_size, device=self.device,
                      progress=False)
        pred, dv, aligned = res["pred"]["cd"], res["dv"], res["aligned"]
        out = {"val_srcc": spearman(pred, dv)}
        if aligned is not None and 2 < aligned.sum() < len(aligned) - 2:
            out["val_srcc_aligned"] = spearman(pred[aligned], dv[aligned])
            out["val_srcc_nonaligned"] = spearman(pred[~aligned], dv[~aligned])
        return out

    def fit(self, resume: bool = False):
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        if resume and (self.out / "last.pt").exists():
            self.resume()
        else:
            self.initialize_actnorm()
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(_LossModule(self.model),
                                                           device_ids=[self.device.index] if self.device.type == "cuda" else None)
        while self.epoch < cfg.epochs:
            batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, self.epoch, self.rank, self.world)
            bar = tqdm(total=len(batches), initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       disable=not (cfg.progress and self.rank == 0), dynamic_ncols=True)
            sums, n, t0 = {}, 0, time.perf_counter()
            while self.step_in_epoch < len(batches):
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                    bar.close()
                    self.save_last()
                    return self.model
                batch = _collate([self.train_set[i] for i in batches[self.step_in_epoch]])
                logs = self.train_step(batch, _step_generator(cfg.seed, self.epoch, self.step_in_epoch))
                self.step_in_epoch += 1
                self.global_step += 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", pairs_s=f"{n * cfg.batch_size * self.world / (time.perf_counter() - t0):.1f}")
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self.save_last()
            bar.close()
            self.scheduler.step()
            row = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                   "seconds": round(time.perf_counter() - t0, 3), **{k: v / max(n, 1) for k, v in sums.items()}}
            if self.rank == 0:
                row.update(self.validate())
                self.history.append(row)
                self._write_log()
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if self.rank == 0:
                srcc = row.get("val_srcc", -math.inf)
                if srcc > self.best_srcc or not (self.out / "best.pt").exists():
                    self.best_srcc = max(srcc, self.best_srcc)
                    checkpoints.save(self.ema.model, self.out / "best.pt", epoch=self.epoch, val_srcc=srcc,
                                     train_config=dataclasses.asdict(cfg))
            self.save_last()
        return self.model

    def _write_log(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        tmp = self.out / "log.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        os.replace(tmp, self.out / "log.csv")


class _LossModule(nn.Module):
    """Wraps a CDFlow so that DistributedDataParallel sees the whole loss computation."""

    def __init__(self, model: CDFlow):
        super().__init__()
        self.model = model

    def forward(self, x, y, dv):
        return cdflow_loss(self.model, x, y, dv)


def read_log(path) -> list[dict]:
    """The per-epoch rows of a run's log.csv, numbers as floats (empty cells as None)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


# --- data and command line ----------------------------------------------------------------

def make_datasets(cfg: TrainConfig):
    """(train, val) pair sets: SPCD when cfg.spcd_root is set, else the synthetic default."""
    from . import data
    from .data.transforms import PAPER_RESIZE, PAPER_TRAIN_SIZE

    if cfg.spcd_root:  # images as stored (1024 px); the trainer augments (or resizes) to image_size
        return data.spcd_datasets(cfg.spcd_root)[:2]
    kw = {} if cfg.pairs_per_image is None else {"pairs_per_image": cfg.pairs_per_image}
    # with augmentation, store references at the size the authors' transform resizes to (1024/768 of the output)
    size = round(cfg.image_size * PAPER_RESIZE / PAPER_TRAIN_SIZE) if cfg.augment else cfg.image_size
    return (data.SyntheticPairs("train", size=size, seed=cfg.data_seed, **kw),
            data.SyntheticPairs("val", size=cfg.image_size, seed=cfg.data_seed, **kw))


def _distributed():
    """(rank, world, local_rank) from torchrun's environment, initialising the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="synthetic", choices=sorted(RECIPES))
    ap.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(flag, default=None, action=argparse.BooleanOptionalAction)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            ap.add_argument(flag, default=None, type=kind)
    ns = vars(ap.parse_args(argv))
    resume = ns.pop("resume")
    recipe = ns.pop("recipe")
    overrides = {k: v for k, v in ns.items() if v is not None}
    if "max_steps" in overrides:
        overrides["max_steps"] = int(overrides["max_steps"])
    return recipe_config(recipe, **overrides), resume


def main(argv=None) -> int:
    cfg, resume = parse_args(argv)
    rank, world, local_rank = _distributed()
    if world > 1 and resolve_device(cfg.device).type == "cuda":
        cfg.device = f"cuda:{local_rank}"
    train_set, val_set = make_datasets(cfg)
    trainer = Trainer(cfg, train_set, val_set, rank, world)
    try:
        trainer.fit(resume=resume)
    except NonFiniteLossError as exc:
        print(f"training stopped: {exc}")
        return 2
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        print(f"done: {trainer.global_step} steps; best validation SRCC {trainer.best_srcc:.4f}; "
              f"model in {Path(cfg.out) / 'best.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
