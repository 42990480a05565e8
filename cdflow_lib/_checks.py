"""Input validation shared by the layers, the flow and the metric.

Every public entry point checks what it is given and raises a `ValueError` that names the
problem. The check for NaN / Inf needs a device synchronisation, so the flow checks its
input once and then runs its layers inside `trusted()`, which skips the per-layer
finiteness check (shape checks are free and always run).
"""
from __future__ import annotations

import contextlib
import threading

import torch

_state = threading.local()


@contextlib.contextmanager
def trusted():
    """Within this block, layers skip the (synchronising) NaN / Inf check."""
    previous = getattr(_state, "trusted", False)
    _state.trusted = True
    try:
        yield
    finally:
        _state.trusted = previous


def is_trusted() -> bool:
    return getattr(_state, "trusted", False)


def check_tensor(x, name: str = "input", *, channels: int | None = None, finite: bool = True) -> None:
    """Check that `x` is a floating [B, C, H, W] tensor (optionally with C == channels)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-d tensor [B, C, H, W], got shape {tuple(x.shape)} ({x.dim()}-d)")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if finite and not is_trusted() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: contains {n_bad} NaN or Inf values")


def check_image(x, name: str = "image", *, multiple: int = 1) -> None:
    """Check an image batch: [B, 3, H, W] float sRGB in [0, 1], H and W divisible by `multiple`."""
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise ValueError(
            f"{name}: expected float values in [0, 1], got dtype {x.dtype}; "
            "8-bit images must be converted first (x.float() / 255)"
        )
    check_tensor(x, name, channels=3)
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0.0 or hi > 1.0:
        hint = " - this looks like 0-255 data: divide by 255" if hi > 1.0 and hi <= 255.0 and lo >= 0.0 else ""
        raise ValueError(f"{name}: values must lie in [0, 1], found range [{lo:.4g}, {hi:.4g}]{hint}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{name}: height and width must be divisible by {multiple} (2^K for K scales), got {h} x {w}; "
            "crop or pad first (see cdflow_lib.metric.prepare_images)"
        )


def check_pair(x, y) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"expected two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"the two images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
