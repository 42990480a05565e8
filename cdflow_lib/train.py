"""Training CD-Flow: the authors' loss and schedule, resumable, on one or many GPUs.

    python -m cdflow_lib.train --recipe photos --out runs/photos     # embedded photo corpus, synthetic labels
    python -m cdflow_lib.train --recipe paper --spcd-root path/to/SPCD --out runs/paper
    torchrun --nproc_per_node 4 -m cdflow_lib.train --recipe paper ...   # DistributedDataParallel
    python -m cdflow_lib.train --out runs/photos --resume               # continue where it stopped

Loss (authors' code): ``10 * (10 * MSE(dE_K, dV) + sum_{k<K} MSE(dE_k, dV)) + bpd(x) + bpd(y)``
with ``bpd = -(log_p + logdet - N log 32) / (N ln 2)``, N = 3 H W. Adam, StepLR, an EMA of
the weights used for validation, the best checkpoint by validation SRCC.

Reproducibility: the data order of epoch e is a permutation drawn from ``seed + e``, and the
augmentation of step s from ``(seed, e, s)``, so a run resumed from any checkpoint continues
bit for bit as if it had never stopped, whatever --num-workers: on the CPU, and on CUDA with
PyTorch's deterministic kernels (torch.use_deterministic_algorithms(True) and
CUBLAS_WORKSPACE_CONFIG=:4096:8); without them two CUDA runs differ slightly anyway.
Checkpoints are written atomically; a non-finite loss stops training with a diagnosis and
leaves them untouched.

The run folder (--out) holds config.json, last.pt (the full training state), best.pt (the
EMA weights of the best validation SRCC), log.csv (one row per epoch), label_cache/ and,
while a run uses it, train.lock (the process id and host of that run). SPCD's layout is
described in the repository's data/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .data.corpus import CORPORA
from .data.synthetic import DEFAULT_PAIRS_PER_IMAGE
from .evaluate import predict
from .flow import MEMORY_MODES
from .metric import CONFIGS, DISTANCE_EPS, CDFlow

#: bits-per-dim assumes 5-bit data (n_bins = 32), as in the authors' (and rosinality's) code.
N_BINS = 32
#: Loss weights of the authors' code: 10 * (10 * MSE(all scales) + sum of the partial ones).
OUTER_WEIGHT, FULL_WEIGHT = 10.0, 10.0
#: Precisions of the coupling networks (flow.MultiScaleFlow.coupling_precision).
AMP_MODES = ("off", "bf16")


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
    channels_last: bool = False    # coupling networks on channels-last tensors (flow.MultiScaleFlow.channels_last)
    compile: bool = False          # torch.compile of the coupling networks (flow.MultiScaleFlow.compile_couplings)
    max_steps: int | None = None   # stop after this many optimisation steps (tests, smoke runs)
    checkpoint_every: int = 0      # also write last.pt every N steps (0: only at epoch ends)
    num_workers: int = 0
    spcd_root: str | None = None
    data_seed: int = 0
    pairs_per_image: int | None = None
    val_pairs_per_image: int | None = None   # default: pairs_per_image
    corpus: str = "photos"         # synthetic pairs from "photos" (package + Debian photos) or "package" (the 11)
    likelihood_weight: float = 1.0  # weight of bpd(x) + bpd(y) in the loss (authors' value: 1)
    out: str = "runs/cdflow"
    progress: bool = True


#: Presets. ``paper`` is the authors' recipe for SPCD (DESIGN.md section 5). ``photos``
#: trains the ``small`` model on synthetic pairs of the photo corpus (134 training
#: photographs, 30 pairs each: 4,020 pairs an epoch) at 256 px; validation on 20 held-out
#: photographs (12 pairs each) every epoch; a higher learning rate than the paper's 1e-5
#: because the model starts from scratch, and two epochs so that a CPU can train a seed in
#: about 80 minutes (a GPU in a few). ``synthetic`` is the earlier recipe on the 11 package
#: photographs at 128 px (kept for comparison; its model was not a good CD measure).
RECIPES = {
    "paper": dict(model="paper", image_size=768, epochs=50, batch_size=4, lr=1e-5, adam_eps=1e-7, lr_step=5,
                  lr_gamma=0.5, ema_decay=0.999, seed=100, sync_augment=False),
    "synthetic": dict(model="small", image_size=128, epochs=6, batch_size=8, lr=1e-4, adam_eps=1e-7, lr_step=3,
                      lr_gamma=0.5, ema_decay=0.99, seed=100, sync_augment=False, pairs_per_image=96,
                      corpus="package"),
    "photos": dict(model="small", image_size=256, epochs=2, batch_size=8, lr=1e-4, adam_eps=1e-7, lr_step=1,
                   lr_gamma=0.5, ema_decay=0.995, seed=100, sync_augment=False, pairs_per_image=30,
                   val_pairs_per_image=12, corpus="photos"),
}
#: The recipe of a new run when --recipe is not given.
DEFAULT_RECIPE = "synthetic"

#: Options that may differ when a run is resumed: they say how long it runs, where, and how it
#: reports, not what a step computes. Every other option is the run's own and stays as saved.
#: --max-steps is a total over the run (global steps), not a count per invocation, and is not
#: inherited from the saved configuration; the others are, unless given again. A different
#: device continues the run, though not bit for bit.
RESUME_OPTIONS = ("epochs", "max_steps", "checkpoint_every", "device", "num_workers", "progress", "out")

#: What each option means (the --help text; defaults are added from RECIPES).
OPTION_HELP = {
    "model": "model size (metric.CONFIGS): paper = the published 60.5 M parameters, small = the shipped one, "
             "tiny = for tests",
    "image_size": "training resolution in pixels after augmentation; divisible by 2**n_scales of the model "
                  "(" + ", ".join(f"{m} {2 ** c['n_scales']}" for m, c in sorted(CONFIGS.items())) + ")",
    "epochs": "number of epochs (may be raised on --resume to extend a run)",
    "batch_size": "pairs per optimisation step (per process under torchrun)",
    "lr": "Adam learning rate",
    "adam_eps": "Adam epsilon",
    "lr_step": "StepLR: multiply the learning rate by --lr-gamma every this many epochs",
    "lr_gamma": "StepLR factor, in (0, 1]",
    "ema_decay": "decay of the moving average of the weights (the model validated and saved in best.pt), in [0, 1)",
    "seed": "seed of the initialisation, the data order and the augmentation",
    "augment": "the authors' training augmentation (resize, small rotation, crop, resize)",
    "sync_augment": "draw one augmentation for both images of a pair (the released code draws two)",
    "device": "auto (CUDA when available, else CPU), cpu, cuda or cuda:N",
    "tf32": "allow TF32 matrix products on CUDA (faster, less exact)",
    "amp": "precision of the coupling networks: off (float32) or bf16",
    "memory_saving": "recompute activations in the backward pass: checkpoint, or through the inverse "
                     "(inverse, inverse-step; the invertible parts run in full float32 whatever --tf32 "
                     "and --amp, and a run stops with flow.InexactInverseError if a block does not invert)",
    "channels_last": "run the coupling networks on channels-last tensors (faster convolutions on GPUs; the same "
                     "function up to float rounding, about 3e-5 relative on the distances)",
    "compile": "torch.compile the coupling networks (falls back to eager with one warning where compile is "
               "unavailable; the same function up to float rounding)",
    "max_steps": "stop once the run has taken this many optimisation steps in all (global steps; "
                 "last.pt is written, --resume continues)",
    "checkpoint_every": "also write last.pt every N steps (0: at epoch ends and when stopped)",
    "num_workers": "DataLoader worker processes that build the batches (0: the main process); "
                   "results do not depend on it",
    "spcd_root": "train on SPCD: the folder of its images with train.csv / val.csv / test.csv "
                 "(see data/README.md); unset: synthetic pairs",
    "data_seed": "seed of the synthetic data: photograph split, pairs and observer noise",
    "pairs_per_image": f"synthetic training pairs per photograph (unset: {DEFAULT_PAIRS_PER_IMAGE})",
    "val_pairs_per_image": "synthetic validation pairs per photograph (unset: --pairs-per-image)",
    "corpus": "photographs of the synthetic pairs: photos (package + Debian photographs) or package (the 11)",
    "likelihood_weight": "weight of bpd(x) + bpd(y) in the loss (the authors': 1)",
    "out": "run folder: config.json, last.pt, best.pt, log.csv, label_cache/",
    "progress": "show a progress bar",
}
#: Options with a fixed set of values.
OPTION_CHOICES = {"model": sorted(CONFIGS), "amp": AMP_MODES, "memory_saving": MEMORY_MODES, "corpus": CORPORA}


def recipe_config(recipe: str, **overrides) -> TrainConfig:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    return TrainConfig(**{**dataclasses.asdict(TrainConfig()), **RECIPES[recipe], "recipe": recipe, **overrides})


def option_flag(field: str) -> str:
    """The command-line flag of a TrainConfig field: image_size -> --image-size."""
    return "--" + field.replace("_", "-")


class ConfigError(ValueError):
    """A TrainConfig value a run cannot use; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def validate_config(cfg: TrainConfig) -> None:
    """Raise ConfigError (naming the field) for any value a run cannot use. Cheap: no data, no model."""
    def need(ok: bool, field: str, message: str) -> None:
        if not ok:
            raise ConfigError(field, message)

    need(cfg.recipe in RECIPES, "recipe", f"unknown recipe {cfg.recipe!r}; choose one of {sorted(RECIPES)}")
    for field, choices in OPTION_CHOICES.items():
        value = getattr(cfg, field)
        need(value in choices, field, f"{value!r} is not one of {list(choices)}")
    for field, low in (("image_size", 1), ("epochs", 0), ("batch_size", 1), ("lr_step", 1), ("checkpoint_every", 0),
                       ("num_workers", 0), ("max_steps", 0), ("pairs_per_image", 1), ("val_pairs_per_image", 1)):
        value = getattr(cfg, field)
        if value is None and field in ("max_steps", "pairs_per_image", "val_pairs_per_image"):
            continue
        need(isinstance(value, int) and not isinstance(value, bool) and value >= low, field,
             f"must be an integer >= {low}, got {value!r}")
    n_scales = CONFIGS[cfg.model]["n_scales"]
    multiple = 2 ** n_scales
    below = max(multiple, cfg.image_size // multiple * multiple)
    need(cfg.image_size % multiple == 0, "image_size",
         f"{cfg.image_size} is not divisible by 2**{n_scales} = {multiple} (model {cfg.model!r} has {n_scales} "
         f"scales); try {below} or {below + multiple}")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", f"must be a positive number, got {cfg.lr!r}")
    need(math.isfinite(cfg.adam_eps) and cfg.adam_eps > 0, "adam_eps", f"must be a positive number, got {cfg.adam_eps!r}")
    need(0 < cfg.lr_gamma <= 1, "lr_gamma", f"must lie in (0, 1], got {cfg.lr_gamma!r}")
    need(0 <= cfg.ema_decay < 1, "ema_decay", f"must lie in [0, 1), got {cfg.ema_decay!r}")
    need(math.isfinite(cfg.likelihood_weight) and cfg.likelihood_weight >= 0, "likelihood_weight",
         f"must be a finite number >= 0, got {cfg.likelihood_weight!r}")
    need(cfg.spcd_root is None or Path(cfg.spcd_root).is_dir(), "spcd_root", f"{cfg.spcd_root} is not a folder")
    try:
        resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError("device", str(exc)) from None


def run_changes(saved: dict, cfg: TrainConfig) -> list[tuple[str, object, object]]:
    """(field, saved value, new value) for every field outside RESUME_OPTIONS that `cfg` changes.

    saved: a run's configuration as stored (config.json, or last.pt's train_config); fields it
    lacks (older runs) are not compared.
    """
    new = dataclasses.asdict(cfg)
    return [(k, saved[k], new[k]) for k in new if k not in RESUME_OPTIONS and k in saved and saved[k] != new[k]]

# --- the loss -----------------------------------------------------------------------------

def bits_per_dim(log_p: torch.Tensor, logdet: torch.Tensor, n_dims: int) -> torch.Tensor:
    """Per-sample bits per dimension [B] of 5-bit data: -(log_p + logdet - N log 32) / (N ln 2)."""
    return -(log_p + logdet - n_dims * math.log(N_BINS)) / (n_dims * math.log(2.0))


def cdflow_loss(model: CDFlow, x: torch.Tensor, y: torch.Tensor, dv: torch.Tensor, likelihood_weight: float = 1.0):
    """The authors' training loss on one batch. Returns (loss, terms) with every term a scalar tensor.

    x, y: [B, 3, H, W] in [0, 1]; dv: [B] human (or simulated) colour differences;
    likelihood_weight: the weight of bpd(x) + bpd(y) (1 in the authors' code).
    """
    b = x.shape[0]
    zs, logdet, log_p = model.glow(torch.cat([x, y], 0))
    d = CDFlow.cumulative_distances([z[:b] for z in zs], [z[b:] for z in zs], DISTANCE_EPS)  # [K, B]
    n_dims = x[0].numel()
    bpd = bits_per_dim(log_p, logdet, n_dims)
    mse = torch.stack([F.mse_loss(dk, dv) for dk in d])  # [K], coarsest-only first
    terms = {"mse_all": mse[-1], "mse_partial": mse[:-1].sum(), "bpd_x": bpd[:b].mean(), "bpd_y": bpd[b:].mean()}
    loss = (OUTER_WEIGHT * (FULL_WEIGHT * terms["mse_all"] + terms["mse_partial"])
            + likelihood_weight * (terms["bpd_x"] + terms["bpd_y"]))
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
    """'auto' (CUDA when available, else CPU) or a torch device name; ValueError if this machine lacks it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name!r} is not a device name (auto, cpu, cuda, cuda:N): {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name!r} asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name!r} asked for, but MPS is not available on this machine")
    return device


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


def _workers_leave_signals_to_main(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: the main process finishes its step, saves and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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

class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped training. `saved`: the resumable last.pt written on the way out,
    or None when nothing was saved (the signal came before training began, or twice).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` turns it into another error.
    """

    def __init__(self, signum: int, saved: Path | None = None):
        super().__init__(signum, saved)
        self.signum, self.saved = signum, saved


class Trainer:
    """Owns the model, EMA, optimiser, scheduler and the run folder.

    Files in ``cfg.out``: ``last.pt`` (full training state, for --resume, including the
    partial sums of the epoch in progress), ``best.pt`` (EMA weights of the best validation
    SRCC, loadable with checkpoints.load), ``log.csv`` (one row per epoch) and ``config.json``.
    Setting ``stop_signal`` (a signal number) while `fit` runs makes it finish the current
    step, write last.pt and raise Interrupted.
    """

    def __init__(self, cfg: TrainConfig, train_set, val_set=None, rank: int = 0, world: int = 1):
        validate_config(cfg)
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
        self.model.glow.channels_last = cfg.channels_last
        self.model.glow.compile_couplings = cfg.compile
        self.ema = None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.lr_step, cfg.lr_gamma)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        # the epoch in progress: sums of the logged terms over its steps, their count, its seconds so far
        self.epoch_sums: dict[str, float] = {}
        self.epoch_n, self.epoch_seconds = 0, 0.0
        self.best_srcc = -math.inf
        self.history: list[dict] = []
        self.ddp = None
        self.running = False           # True while fit's loop runs (a signal then stops it cleanly)
        self.stop_signal: int | None = None
        self.stopped_at_max_steps = False

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
                "global_step": self.global_step, "best_srcc": self.best_srcc, "history": self.history,
                "epoch_sums": dict(self.epoch_sums), "epoch_n": self.epoch_n, "epoch_seconds": self.epoch_seconds}

    def save_last(self) -> None:
        if self.rank == 0:
            checkpoints.atomic_save(self.state(), self.out / "last.pt")

    def resume(self, path=None) -> None:
        """Load the training state of `path` (default <out>/last.pt). Refuses (ValueError naming
        the field) a configuration that differs from the saved run outside RESUME_OPTIONS."""
        path = Path(path or self.out / "last.pt")
        st = checkpoints.safe_load(path, "training checkpoint")
        if not isinstance(st, dict) or st.get("kind") != "training_state":
            raise ValueError(f"{path} is not a training checkpoint of cdflow_lib.train")
        changes = run_changes(st.get("train_config", {}), self.cfg)
        if changes:
            field, old, new = changes[0]
            raise ValueError(f"{path} was trained with {field}={old!r}, this run has {field}={new!r}: a resumed run "
                             f"keeps its configuration (only {', '.join(RESUME_OPTIONS)} may change)")
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
        # checkpoints of older versions lack the partial sums: their first logged epoch averages fewer steps
        self.epoch_sums, self.epoch_n = dict(st.get("epoch_sums", {})), st.get("epoch_n", 0)
        self.epoch_seconds = st.get("epoch_seconds", 0.0)

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
        loss, terms = (self.ddp(x, y, dv) if self.ddp is not None
                       else cdflow_loss(self.model, x, y, dv, self.cfg.likelihood_weight))
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

    def _loader(self, batches: list[list[int]]):
        """The batches of `batches` (index lists), built by cfg.num_workers workers (0: here), in order."""
        workers = self.cfg.num_workers
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=batches, collate_fn=_collate,
                                           num_workers=workers,
                                           worker_init_fn=_workers_leave_signals_to_main if workers else None)

    def _stop_if_asked(self, saved: bool) -> None:
        """After a step: when a signal asked to stop (on any rank), write last.pt (unless just written) and raise."""
        signum = self.stop_signal or 0
        if self.world > 1:  # every rank must stop after the same step
            import torch.distributed as dist

            flag = torch.tensor([signum], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            if not saved:
                self.save_last()
            raise Interrupted(signum, self.out / "last.pt")

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
        references = getattr(self.val_set, "references", None)
        if references:   # bits per dimension of the validation photographs under the EMA model
            bpd = []
            with torch.no_grad():
                for chunk in torch.stack(list(references.values())).split(self.cfg.batch_size):
                    _, logdet, log_p = self.ema.model.glow(chunk.to(self.device))
                    bpd.append(bits_per_dim(log_p, logdet, chunk[0].numel()).cpu())
            out["val_bpd"] = float(torch.cat(bpd).mean())
        return out

    def fit(self, resume: bool = False):
        """Train to cfg.epochs (or cfg.max_steps: then `stopped_at_max_steps`). Returns the model.

        resume: continue from <out>/last.pt when it exists. Raises Interrupted (after writing
        last.pt) when `stop_signal` is set, NonFiniteLossError on a non-finite loss.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        if resume and (self.out / "last.pt").exists():
            self.resume()   # refuses a configuration that would change the run, before config.json is written
        else:
            self.initialize_actnorm()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(_LossModule(self.model, cfg.likelihood_weight),
                                                           device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.running, self.stopped_at_max_steps = True, False
        try:
            self._loop(tqdm)
        finally:
            self.running = False
        return self.model

    def _loop(self, tqdm) -> None:
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, self.epoch, self.rank, self.world)
            if self.step_in_epoch == 0:
                self.epoch_sums, self.epoch_n, self.epoch_seconds = {}, 0, 0.0
            t0 = time.perf_counter() - self.epoch_seconds
            with tqdm(total=len(batches), initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                      disable=not (cfg.progress and self.rank == 0), dynamic_ncols=True) as bar:
                for batch in self._loader(batches[self.step_in_epoch:]):
                    if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                        self.save_last()
                        self.stopped_at_max_steps = True
                        return
                    logs = self.train_step(batch, _step_generator(cfg.seed, self.epoch, self.step_in_epoch))
                    self.step_in_epoch += 1
                    self.global_step += 1
                    for k, v in logs.items():
                        self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                    self.epoch_n += 1
                    self.epoch_seconds = time.perf_counter() - t0
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.3f}",
                                    pairs_s=f"{self.epoch_n * cfg.batch_size * self.world / self.epoch_seconds:.1f}")
                    saved = bool(cfg.checkpoint_every) and self.global_step % cfg.checkpoint_every == 0
                    if saved:
                        self.save_last()
                    self._stop_if_asked(saved)
            self.scheduler.step()
            row = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                   "seconds": round(time.perf_counter() - t0, 3),
                   **{k: v / max(self.epoch_n, 1) for k, v in self.epoch_sums.items()}}
            if self.rank == 0:
                row.update(self.validate())
                self.history.append(row)
                self._write_log()
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.epoch_sums, self.epoch_n, self.epoch_seconds = {}, 0, 0.0
            if self.rank == 0:
                srcc = row.get("val_srcc", -math.inf)
                if srcc > self.best_srcc or not (self.out / "best.pt").exists():
                    self.best_srcc = max(srcc, self.best_srcc)
                    checkpoints.save(self.ema.model, self.out / "best.pt", epoch=self.epoch, val_srcc=srcc,
                                     train_config=dataclasses.asdict(cfg))
            self.save_last()
            if self.epoch < cfg.epochs:
                self._stop_if_asked(saved=True)

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

    def __init__(self, model: CDFlow, likelihood_weight: float = 1.0):
        super().__init__()
        self.model, self.likelihood_weight = model, likelihood_weight

    def forward(self, x, y, dv):
        return cdflow_loss(self.model, x, y, dv, self.likelihood_weight)


def likelihood_weight_runs(cfg: TrainConfig, train_set, weights=(1.0, 30.0), steps: int = 150) -> dict[float, dict]:
    """Short training runs that differ only in the likelihood weight w (a controlled comparison).

    cfg: the run's configuration (its ``likelihood_weight`` is replaced by each w; nothing is
    written to ``cfg.out``); train_set: a pair set (items with x, y [3, H, W] in [0, 1] and dv);
    weights: the values of w, each >= 0 (w multiplies bpd(x) + bpd(y) in the loss);
    steps: Adam steps per run.

    Every run starts from the same weights (the model built after ``torch.manual_seed(cfg.seed)``,
    ActNorm initialised on the first batch of epoch 0, as `Trainer` does) and sees the same
    batches: step s trains on ``epoch_batches(len(train_set), cfg.batch_size, cfg.seed, s)[0]``
    (a fresh random batch each step) with the augmentation of ``_step_generator(cfg.seed, s, 0)``.
    The learning rate stays cfg.lr (no epoch ends, so StepLR never steps); no validation.

    Returns {w: {"model": the trained CDFlow (raw weights, not the EMA; eval mode),
    "log": one dict per step with the loss and its terms (floats, before that step's update:
    mse_all and mse_partial in squared ΔV units, bpd_x and bpd_y in bits per dimension),
    "batches": the index lists of the steps}}.
    """
    runs = {}
    for w in weights:
        trainer = Trainer(dataclasses.replace(cfg, likelihood_weight=float(w)), train_set)  # seeds cfg.seed
        trainer.initialize_actnorm()
        batches = [epoch_batches(len(train_set), cfg.batch_size, cfg.seed, s)[0] for s in range(steps)]
        log = [trainer.train_step(_collate([train_set[i] for i in idx]), _step_generator(cfg.seed, s, 0))
               for s, idx in enumerate(batches)]
        runs[float(w)] = {"model": trainer.model.eval(), "log": log, "batches": batches}
    return runs


def read_log(path) -> list[dict]:
    """The per-epoch rows of a run's log.csv, numbers as floats (empty cells as None)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


# --- the run folder -----------------------------------------------------------------------

#: The lock file of a run folder: {"pid", "host", "started"} of the run that uses it.
LOCK_NAME = "train.lock"
#: Files that show a folder holds a run: a new run there is refused (--resume continues it).
RUN_FILES = ("config.json", "last.pt", "best.pt", "log.csv")


class RunFolderBusy(RuntimeError):
    """Another live run holds the run folder's lock."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@contextlib.contextmanager
def run_lock(out):
    """Hold ``<out>/train.lock`` while inside: an exclusive claim on the run folder.

    The lock file holds the owner's pid and host. It is stale, and taken over, when its host
    is this machine and no process with that pid is alive; a live owner, or one on another
    host (whose processes cannot be checked from here), raises RunFolderBusy naming it and the
    file to delete if that run is gone. OSError when the folder cannot be written.
    """
    lock = Path(out) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                pid, host = int(holder["pid"]), str(holder["host"])
            except FileNotFoundError:  # released meanwhile
                continue
            except (ValueError, KeyError, TypeError):
                raise RunFolderBusy(f"{lock} is unreadable (a run starting this instant?); "
                                    f"if no run uses {out}, delete it") from None
            if host == me["host"] and not _process_alive(pid):
                lock.unlink(missing_ok=True)
                continue
            raise RunFolderBusy(f"{out} is in use by another training run (pid {pid} on {host}, since "
                                f"{holder.get('started', '?')}); wait for it or choose another --out "
                                f"(if that run is gone, delete {lock})") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise
        break
    else:
        raise RunFolderBusy(f"could not take {lock}: other runs keep claiming it")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(lock.read_text()).get("pid") == me["pid"]:
                lock.unlink()


def remove_temp_files(out) -> list[Path]:
    """Delete the temporary files that a killed save left in `out` and its label_cache (hold the lock)."""
    out = Path(out)
    stale = [*out.glob("*.tmp"), *(out / "label_cache").glob("*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# --- data and command line ----------------------------------------------------------------

def make_datasets(cfg: TrainConfig):
    """(train, val) pair sets: SPCD when cfg.spcd_root is set, else the synthetic default."""
    from . import data
    from .data.transforms import PAPER_RESIZE, PAPER_TRAIN_SIZE

    if cfg.spcd_root:  # images as stored (1024 px); the trainer augments (or resizes) to image_size
        return data.spcd_datasets(cfg.spcd_root)[:2]
    kw = {} if cfg.pairs_per_image is None else {"pairs_per_image": cfg.pairs_per_image}
    val_kw = kw if cfg.val_pairs_per_image is None else {"pairs_per_image": cfg.val_pairs_per_image}
    cache = Path(cfg.out) / "label_cache"
    # with augmentation, store references at the size the authors' transform resizes to (1024/768 of the output)
    size = round(cfg.image_size * PAPER_RESIZE / PAPER_TRAIN_SIZE) if cfg.augment else cfg.image_size
    return (data.SyntheticPairs("train", size=size, seed=cfg.data_seed, corpus=cfg.corpus, cache_dir=cache, **kw),
            data.SyntheticPairs("val", size=cfg.image_size, seed=cfg.data_seed, corpus=cfg.corpus, cache_dir=cache,
                                **val_kw))


def synthetic_train_pairs(cfg: TrainConfig) -> int:
    """How many training pairs make_datasets will build from synthetic data, without building them."""
    from .data import split_sources

    return len(split_sources(cfg.data_seed, cfg.corpus)["train"]) * (cfg.pairs_per_image or DEFAULT_PAIRS_PER_IMAGE)


def _end_distributed() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()


def _distributed():
    """(rank, world, local_rank) from torchrun's environment, initialising the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


EPILOG = f"""\
Options left out come from the recipe (new run) or from the saved run (--resume).

Resuming: --resume continues <out>/last.pt with the configuration saved in <out>/config.json.
An option that would change what a step computes is refused, naming it; these may be given:
{", ".join(option_flag(f) for f in RESUME_OPTIONS if f not in ("out", "progress"))}, --progress / --no-progress.
--epochs may extend the run; --max-steps counts global steps over the whole run and is not
inherited; a different --device continues the run, though not bit for bit.

Run folder: a new run refuses a folder that holds one ({", ".join(RUN_FILES)}); two
runs cannot share a folder ({LOCK_NAME} holds the pid and host of its run; a lock of a dead
process of this host is taken over).

Stopping: Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes last.pt and exits
with 130 or 143; --resume then continues as if it had not stopped (see Reproducibility).
A second signal stops at once.

Exit status: 0 done or stopped at --max-steps; 2 invalid options or a folder in use;
3 non-finite loss (nothing written); 130 / 143 interrupted.
"""


def _default_text(field: str) -> str:
    def show(v):
        return "unset" if v is None else "on" if v is True else "off" if v is False else str(v)

    values = {r: show(getattr(recipe_config(r), field)) for r in sorted(RECIPES)}
    if len(set(values.values())) == 1:
        return f"default: {next(iter(values.values()))}"
    return "default by recipe: " + ", ".join(f"{r} {v}" for r, v in values.items())


def build_parser() -> argparse.ArgumentParser:
    """The command line: --recipe, --resume and one option per TrainConfig field (None: not given)."""
    ap = argparse.ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                    help=f"preset of the options below (default: {DEFAULT_RECIPE}; on --resume: the run's own)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its last.pt, with its saved configuration")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        kw = dict(default=None, help=f"{OPTION_HELP[f.name]} ({_default_text(f.name)})")
        if f.type in ("bool", bool):
            ap.add_argument(option_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            ap.add_argument(option_flag(f.name), type=kind, choices=OPTION_CHOICES.get(f.name), **kw)
    return ap


def _usage_error(message: str):
    """Exit with status 2 and argparse's usage line, like any bad option."""
    build_parser().error(message)


def resumed_config(out, given: dict, recipe: str | None = None) -> TrainConfig:
    """The configuration of the run saved in `out` (config.json) with the options in `given`
    (those given on the command line) applied. ConfigError, naming the option, for any that
    would change the run (everything but RESUME_OPTIONS); --max-steps is not inherited."""
    out = Path(out)
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError("resume", f"{out} holds no run to resume (no config.json)")
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError("resume", f"{path} is not readable: {exc}") from None
    if recipe is not None and recipe != saved.get("recipe"):
        raise ConfigError("recipe", f"the run in {out} was started with recipe {saved.get('recipe')!r}; "
                                    "a resumed run keeps its configuration")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {**dataclasses.asdict(TrainConfig()), **{k: v for k, v in saved.items() if k in known},
            "max_steps": None, "out": str(out)}
    cfg = TrainConfig(**{**base, **given})
    for field, old, new in run_changes(saved, cfg):
        raise ConfigError(field, f"the run in {out} was started with {old!r}; resuming with {new!r} would change "
                                 "it (a resumed run keeps its configuration; see --help for what may change)")
    return cfg


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    """(configuration, resume) from command-line arguments: the recipe with the options given or,
    with --resume, the saved run's configuration (<out>/config.json). Exits with status 2 and a
    message naming the option for anything invalid; generates no data."""
    ns = vars(build_parser().parse_args(argv))
    resume, recipe = ns.pop("resume"), ns.pop("recipe")
    given = {k: v for k, v in ns.items() if v is not None}
    try:
        cfg = (resumed_config(given.get("out", TrainConfig.out), given, recipe) if resume
               else recipe_config(recipe or DEFAULT_RECIPE, **given))
        validate_config(cfg)
    except ConfigError as exc:
        _usage_error(f"argument {option_flag(exc.field)}: {exc.message}")
    return cfg, resume


def _claim_run_folder(out: Path, resume: bool, stack: contextlib.ExitStack) -> None:
    """Create `out`, take its lock (held until `stack` closes), refuse a new run over an old one,
    and delete temporary files of killed saves. Usage errors naming --out."""
    if out.exists() and not out.is_dir():
        _usage_error(f"argument --out: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(run_lock(out))
    except RunFolderBusy as exc:
        _usage_error(f"argument --out: {exc}")
    except OSError as exc:
        _usage_error(f"argument --out: {out} is not writable: {exc.strerror or exc}")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not resume:
        _usage_error(f"argument --out: {out} already holds a run ({', '.join(existing)}); continue it with "
                     "--resume, or choose another --out")
    remove_temp_files(out)


@contextlib.contextmanager
def _signals_stop(holder: dict):
    """While inside, SIGINT and SIGTERM ask the running Trainer ``holder["trainer"]`` to stop after
    its step (it saves last.pt); before its loop runs, or at a second signal, they raise Interrupted."""
    def handler(signum, frame):
        trainer = holder.get("trainer")
        if trainer is not None and trainer.running and trainer.stop_signal is None:
            trainer.stop_signal = signum
        else:
            raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _summary(trainer: Trainer) -> str:
    best = trainer.out / "best.pt"
    if trainer.stopped_at_max_steps:
        head = (f"stopped at --max-steps {trainer.cfg.max_steps} (epoch {trainer.epoch + 1}, step "
                f"{trainer.step_in_epoch}); training state in {trainer.out / 'last.pt'}, continue with --resume")
    else:
        head = f"done: {trainer.global_step} steps, {trainer.epoch} epochs"
    if not best.is_file():
        return f"{head}; no best.pt was written (it is written at the end of each epoch)"
    srcc = f"best validation SRCC {trainer.best_srcc:.4f}; " if math.isfinite(trainer.best_srcc) else ""
    return f"{head}; {srcc}model in {best}"


def main(argv=None) -> int:
    """Command line (see --help). Returns the exit status."""
    cfg, resume = parse_args(argv)
    out = Path(cfg.out)
    lead = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank 0 owns the folder
    holder: dict = {}
    with contextlib.ExitStack() as stack:
        if lead:
            _claim_run_folder(out, resume, stack)
        world_env = int(os.environ.get("WORLD_SIZE", "1"))
        if not cfg.spcd_root:
            try:
                n_train = synthetic_train_pairs(cfg)
            except (OSError, ValueError) as exc:
                _usage_error(f"argument --corpus: {exc}")
            if n_train < cfg.batch_size * world_env:
                _usage_error(f"argument --batch-size: {cfg.batch_size} x {world_env} process(es) is more than the "
                             f"{n_train} training pairs")
        stack.enter_context(_signals_stop(holder))
        try:
            rank, world, local_rank = _distributed()
            if world > 1:
                stack.callback(_end_distributed)
            if world > 1 and resolve_device(cfg.device).type == "cuda":
                cfg.device = f"cuda:{local_rank}"
            train_set, val_set = make_datasets(cfg)
            if len(train_set) < cfg.batch_size * world:  # SPCD: its size is known once read
                _usage_error(f"argument --batch-size: {cfg.batch_size} x {world} process(es) is more than the "
                             f"{len(train_set)} training pairs")
            trainer = holder["trainer"] = Trainer(cfg, train_set, val_set, rank, world)
            trainer.fit(resume=resume)
        except NonFiniteLossError as exc:
            if lead:
                print(f"training stopped: {exc}", file=sys.stderr)
            return 3
        except Interrupted as exc:
            if lead:
                print(_interrupted_message(exc, holder.get("trainer"), out), file=sys.stderr)
            return 128 + exc.signum
    if lead:
        print(_summary(trainer))
    return 0


def _interrupted_message(exc: Interrupted, trainer: Trainer | None, out: Path) -> str:
    name = signal.Signals(exc.signum).name
    if exc.saved is not None:
        return (f"{name}: stopped after global step {trainer.global_step} (epoch {trainer.epoch + 1}, step "
                f"{trainer.step_in_epoch}); training state saved in {exc.saved}; continue with --resume")
    if (out / "last.pt").is_file():
        return f"{name}: stopped at once; {out / 'last.pt'} holds the last checkpoint; continue with --resume"
    return f"{name}: stopped before the first training step; nothing to resume"


if __name__ == "__main__":
    raise SystemExit(main())
