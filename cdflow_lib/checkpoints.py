"""Checkpoints: the authors' released format, our own format, and the shipped models.

Everything is loaded with ``torch.load(..., weights_only=True)`` (no pickled code runs) and
written atomically (temporary file in the same folder, fsync, rename), so an interrupted
save never destroys the previous file.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from .metric import CDFlow
from .paths import PACKAGE_PRETRAINED, data_root

FORMAT = "cdflow_lib"
FORMAT_VERSION = 1
#: The default model: shipped inside the package (cdflow_lib/pretrained, with its model card).
DEFAULT_MODEL = "cdflow-small-photos"
#: Folder of the models installed with the package.
PRETRAINED_DIR = PACKAGE_PRETRAINED


def atomic_save(obj, path) -> Path:
    """torch.save `obj` to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def safe_load(path, what: str = "checkpoint"):
    """torch.load with weights_only=True and a clear error for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip errors, unpickling errors, EOF: all mean "not a readable checkpoint"
        raise ValueError(f"{path} is not a readable {what} (truncated, corrupted or not a torch file): "
                         f"{type(exc).__name__}: {exc}") from exc


_BLOCK = re.compile(r"^glow\.blocks\.(\d+)\.")
_STEP = re.compile(r"^glow\.blocks\.0\.flows\.(\d+)\.")


def infer_official_config(state_dict: dict) -> dict:
    """Sizes of a CD-Flow from its state dict (official names, without ``module.``)."""
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))}
    steps = {int(m.group(1)) for k in state_dict if (m := _STEP.match(k))}
    if not blocks or not steps:
        raise ValueError("this state dict has no 'glow.blocks.<i>.flows.<j>' entries: not a CD-Flow checkpoint")
    first = "glow.blocks.0.flows.0."
    try:
        width = state_dict[first + "actnorm.loc"].shape[1]
        hidden = state_dict[first + "coupling.net.0.weight"].shape[0]
        coupling_out = state_dict[first + "coupling.net.4.conv.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"CD-Flow checkpoint is missing {exc.args[0]!r}") from exc
    return dict(in_channels=width // 4, n_scales=len(blocks), n_steps=len(steps), hidden=hidden,
                affine=coupling_out == width, conv_lu=(first + "invconv.w_l") in state_dict)


def _build(state_dict: dict, config: dict, source) -> CDFlow:
    model = CDFlow(**config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: state dict does not match a CD-Flow with {config}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    return model.eval()


def load_official(path) -> CDFlow:
    """A CDFlow from a checkpoint in the authors' released format.

    The file holds ``{"state_dict": {"module.glow.blocks....": tensor}}`` (saved from
    ``nn.DataParallel``). The ``module.`` prefix is stripped, the configuration inferred
    from the shapes, and ActNorm's ``initialized`` flags kept. Returned in eval mode.
    """
    ckpt = safe_load(path, "official CD-Flow checkpoint")
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict with a 'state_dict' entry, got {type(ckpt).__name__}")
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return _build(sd, infer_official_config(sd), path)


def save(model: CDFlow, path, **extra) -> Path:
    """Save `model` in our format: config, weights and any `extra` metadata (plain types only)."""
    return atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "config": model.config,
                        "state_dict": model.state_dict(), **extra}, path)


def load(path) -> CDFlow:
    """Load a CDFlow saved by `save` (or a training checkpoint of `cdflow_lib.train`). Eval mode."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (an official checkpoint? use load_official)" if isinstance(ckpt, dict) and "state_dict" in ckpt else ""
        raise ValueError(f"{path} is not a {FORMAT} checkpoint{hint}")
    if ckpt.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {ckpt['version']}; this cdflow_lib reads up to {FORMAT_VERSION}")
    return _build(ckpt["state_dict"], ckpt["config"], path)


def pretrained_dirs() -> list[Path]:
    """Where shipped models are looked for, in order: the package's own folder, then the
    repository's data/pretrained (or $CDFLOW_DATA/pretrained): older models kept for notebooks."""
    return [PRETRAINED_DIR, data_root() / "pretrained"]


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The checkpoint file of shipped model `name` (its model card is the .md beside it)."""
    for folder in pretrained_dirs():
        if (folder / f"{name}.pt").is_file():
            return folder / f"{name}.pt"
    raise ValueError(f"no shipped model {name!r}; available: {pretrained_names() or 'none'} "
                     f"(looked in {', '.join(str(d) for d in pretrained_dirs())})")


def pretrained_names() -> list[str]:
    """Names of the shipped models found in `pretrained_dirs()`."""
    return sorted({p.stem for d in pretrained_dirs() if d.is_dir() for p in d.glob("*.pt")})


def load_pretrained(name: str = DEFAULT_MODEL) -> CDFlow:
    """One of the shipped models (default: the package's own; see the model card beside it). Eval mode."""
    return load(pretrained_path(name))
