"""CD-Flow: the colour difference between two photographs as an RMS distance of flow latents.

Both images go through one MultiScaleFlow. For k = 1 .. K the coarsest k latents are
concatenated and ``dE_k = sqrt(||f(x) - f(y)||^2 / D_k + eps)`` (D_k: their dimension count,
eps = 1e-8 as in the authors' code). The reported CD is the all-scales value dE_K.

Calling the metric (``cd(x, y)``, ``distances``, ``cd_map``, ``latents``) builds no autograd
graph unless gradients are wanted: in training mode, when an input requires grad, or when
the caller passes ``grad=True``. Training goes through ``model.glow`` and
`CDFlow.cumulative_distances` directly. Files and PIL images go through `compare` /
`color_difference` (reading and size policies: `cdflow_lib.images`).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._checks import check_image, check_pair
from .flow import PAPER_N_SCALES, PAPER_N_STEPS, MultiScaleFlow
from .images import DEFAULT_SIZE_POLICY, ImageInfo, SizeFit, load_images, range_error, read_image
from .layers import PAPER_HIDDEN, ActNorm, unsqueeze

#: The floor inside the square root of the authors' distance.
DISTANCE_EPS = 1e-8

#: Named configurations.
#: - ``paper``: the published model (60,488,496 parameters), for 768 px training on a GPU.
#: - ``small``: the shipped pretrained model. Five scales (six would add a 384-channel last
#:   block whose prior alone is 2.7 M parameters), four steps per scale and coupling width 64:
#:   about 2.5 M parameters, a ~10 MB checkpoint, and fast enough on a laptop CPU that every
#:   notebook runs with it at 128-256 px.
#: - ``tiny``: three scales, two steps, width 16: unit tests in seconds on 16-64 px inputs.
CONFIGS = {
    "paper": dict(n_scales=PAPER_N_SCALES, n_steps=PAPER_N_STEPS, hidden=PAPER_HIDDEN),
    "small": dict(n_scales=5, n_steps=4, hidden=64),
    "tiny": dict(n_scales=3, n_steps=2, hidden=16),
}


class CDFlow(nn.Module):
    """The CD-Flow metric. ``cd(x, y) -> [B]``.

    x, y: [B, 3, H, W] sRGB in [0, 1] (no centring, no dequantisation), H and W divisible
    by 2^K. The flow is stored as ``self.glow`` (the official state-dict prefix) and exposed
    as ``self.flow``.
    """

    def __init__(self, n_scales: int = PAPER_N_SCALES, n_steps: int = PAPER_N_STEPS, hidden: int = PAPER_HIDDEN,
                 affine: bool = True, conv_lu: bool = True, in_channels: int = 3):
        super().__init__()
        self.glow = MultiScaleFlow(in_channels, n_scales, n_steps, hidden, affine, conv_lu)

    @classmethod
    def from_config(cls, name: str = "paper", **overrides) -> "CDFlow":
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)} or pass sizes to CDFlow()")
        return cls(**{**CONFIGS[name], **overrides})

    @property
    def flow(self) -> MultiScaleFlow:
        return self.glow

    @property
    def config(self) -> dict:
        return dict(self.glow.config)

    @property
    def n_scales(self) -> int:
        return self.glow.n_scales

    def check_images(self, x, y=None) -> None:
        """Check x (and y): [B, 3, H, W] float sRGB in [0, 1], H and W divisible by 2^K, same shapes."""
        multiple = 2 ** self.n_scales
        for t, name in ((x, "x"), (y, "y")):
            _check_values(t, name)
        check_image(x, "x", multiple=multiple)
        if y is not None:
            check_pair(x, y)
            check_image(y, "y", multiple=multiple)

    def _inputs(self, *images):
        """Checked images cast to the model's dtype (a float64 batch for a float32 model is fine)."""
        self.check_images(*images)
        p = next(self.parameters())
        for t, name in zip(images, "xy"):
            if t.device != p.device:
                raise ValueError(f"{name} is on {t.device} but the model is on {p.device}: move one of them")
        if not self.training and not all(m.is_initialized() for m in self.glow.modules() if isinstance(m, ActNorm)):
            warnings.warn("this CDFlow is in eval mode but its ActNorm layers are not initialised: this call "
                          "initialises them from its own images, so its CDs depend on what the model saw first. "
                          "Initialise with model.flow.initialize(typical_images) or load a trained checkpoint "
                          "(cdflow_lib.checkpoints).", UninitializedWarning, stacklevel=3)
        return [t.to(p.dtype) for t in images]

    def _autograd(self, grad: bool | None, *images):
        """The context a call runs in: no autograd graph unless gradients are wanted (see the module doc)."""
        if grad is None:
            grad = self.training or any(t.requires_grad for t in images)
        return contextlib.nullcontext() if grad else torch.no_grad()

    def latents(self, x: torch.Tensor, grad: bool | None = None):
        """z1 .. zK (finest first) of a checked image batch x."""
        with self._autograd(grad, x):
            (x,) = self._inputs(x)
            return self.glow(x)[0]

    def _pair_latents(self, x, y):
        x, y = self._inputs(x, y)
        zs = self.glow(torch.cat([x, y], 0))[0]
        b = x.shape[0]
        return [z[:b] for z in zs], [z[b:] for z in zs]

    @staticmethod
    def cumulative_distances(zx, zy, eps: float = DISTANCE_EPS) -> torch.Tensor:
        """[K, B]: row 0 uses the coarsest latent only, row K-1 all latents (the reported CD)."""
        sq = torch.stack([(a - b).pow(2).flatten(1).sum(1) for a, b in zip(zx, zy)])  # [K, B], finest first
        dims = torch.tensor([a[0].numel() for a in zx], dtype=sq.dtype, device=sq.device)
        sq, dims = sq.flip(0).cumsum(0), dims.flip(0).cumsum(0)  # coarse-to-fine
        return torch.sqrt(sq / dims[:, None] + eps)

    def distances(self, x: torch.Tensor, y: torch.Tensor, eps: float = DISTANCE_EPS,
                  grad: bool | None = None) -> torch.Tensor:
        """The K cumulative coarse-to-fine distances [K, B] (coarsest-only first, all scales last).

        x, y: [B, 3, H, W] sRGB in [0, 1] (any float dtype: cast to the model's). ``grad``:
        None builds an autograd graph only in training mode or when an input requires grad;
        True / False force it on / off (True still respects an enclosing ``torch.no_grad()``).
        """
        with self._autograd(grad, x, y):
            zx, zy = self._pair_latents(x, y)
            return self.cumulative_distances(zx, zy, eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor, eps: float = DISTANCE_EPS,
                grad: bool | None = None) -> torch.Tensor:
        """The reported CD [B] (all scales). With ``eps=0`` it is an exact metric. ``grad``: see `distances`."""
        return self.distances(x, y, eps, grad)[-1]

    def cd_map(self, x: torch.Tensor, y: torch.Tensor, scale: int | None = None,
               grad: bool | None = None) -> torch.Tensor:
        """Local CD map [B, H, W].

        The per-scale latent differences are laid back out in image layout by the
        un-squeezes alone (no inverse flow steps), as the authors' first release did, and
        reduced over the 3 channels as an RMS. ``scale`` k (1 = finest .. K = coarsest) keeps
        only that scale's difference; None keeps all. Because the layout is a permutation,
        ``sqrt(mean(map**2) + 1e-8)`` over the image equals the reported CD (all scales).
        ``grad``: see `distances`.
        """
        with self._autograd(grad, x, y):
            zx, zy = self._pair_latents(x, y)
            return self.map_from_latents(zx, zy, scale)

    def map_from_latents(self, zx, zy, scale: int | None = None) -> torch.Tensor:
        k_max = len(zx)
        if scale is not None and not 1 <= scale <= k_max:
            raise ValueError(f"scale must be in 1..{k_max} (1 = finest) or None, got {scale}")
        diffs = [(a - b) if scale in (None, k + 1) else torch.zeros_like(a) for k, (a, b) in enumerate(zip(zx, zy))]
        out = None
        for d in reversed(diffs):
            out = unsqueeze(d if out is None else torch.cat([out, d], 1))
        return out.pow(2).mean(1).sqrt()


class UninitializedWarning(UserWarning):
    """A CDFlow in eval mode is about to initialise its ActNorm layers from the images it measures."""


def _check_values(t, name: str) -> None:
    """Before `check_image`: refuse an empty batch, and name values outside [0, 1] by their likely
    cause (`images.range_error`: a rounding overshoot of 1e-6 is not 0-255 data)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return
    if t.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(t.shape)}: no pixels to compare")
    lo, hi = (float(v) for v in torch.aminmax(t.detach()))
    if np.isfinite(lo) and np.isfinite(hi) and (message := range_error(name, lo, hi)):
        raise ValueError(message)


def _to_tensor(img) -> torch.Tensor:
    """A path, PIL image or H x W x 3 array -> [3, H, W] float32 sRGB in [0, 1] (see `images.read_image`)."""
    return read_image(img)[0]


def prepare_images(*images, multiple: int, policy: str = DEFAULT_SIZE_POLICY) -> torch.Tensor:
    """Load images (paths, PIL images or arrays) of one size into a [N, 3, H, W] batch in [0, 1].

    Reading (EXIF orientation, 16-bit and float files, ICC profiles, greyscale / alpha /
    palettes) is `images.read_image`. Sizes not divisible by `multiple` follow `policy`:
    ``"resize"`` (default) resamples to the nearest multiple, ``"pad"`` reflect-pads,
    ``"crop"`` centre-crops, ``"error"`` raises; a policy that discards or invents more than
    1% of the pixels warns (`images.ImageWarning`).
    """
    return load_images(*images, multiple=multiple, policy=policy)[0]


@dataclass(frozen=True)
class Comparison:
    """The result of `compare`: the CD, its K cumulative distances and what was done to the images."""

    cd: float
    distances: tuple[float, ...]  # K cumulative distances, coarsest scale only first, all scales (= cd) last
    size: tuple[int, int]  # (H, W) the model saw
    fit: SizeFit
    reference: ImageInfo
    test: ImageInfo
    cd_map: np.ndarray | None = None  # [H, W] local CD map (all scales) when asked for

    def as_dict(self) -> dict:
        """Plain types only (no map): for JSON."""
        return {"cd": self.cd, "distances": list(self.distances), "size": list(self.size),
                "size_policy": self.fit.as_dict(), "reference": self.reference.as_dict(), "test": self.test.as_dict()}


@torch.no_grad()
def compare(model: CDFlow, reference, test, policy: str = DEFAULT_SIZE_POLICY, with_map: bool = False) -> Comparison:
    """CD between two image files / PIL images / arrays of one size, and what was done to read them.

    Images are read with `images.read_image` and fitted to 2^K with `policy` (see
    `prepare_images`); the model runs in its own device and dtype.
    """
    batch, (ref_info, test_info), fit = load_images(reference, test, multiple=2 ** model.n_scales, policy=policy)
    p = next(model.parameters())
    batch = batch.to(p.device, p.dtype)
    zx, zy = model._pair_latents(batch[:1], batch[1:])
    d = model.cumulative_distances(zx, zy)[:, 0].tolist()
    m = model.map_from_latents(zx, zy)[0].float().cpu().numpy() if with_map else None
    return Comparison(d[-1], tuple(d), tuple(batch.shape[-2:]), fit, ref_info, test_info, m)


def color_difference(model: CDFlow, reference, test, policy: str = DEFAULT_SIZE_POLICY) -> float:
    """CD between two image files / PIL images / arrays of the same size (see `compare`)."""
    return compare(model, reference, test, policy).cd


if __name__ == "__main__":  # python -m cdflow_lib.metric REF TEST: the same as cdflow compare
    import sys

    from .cli import main

    raise SystemExit(main(["compare", *sys.argv[1:]]))
