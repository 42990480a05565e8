"""CD-Flow: the colour difference between two photographs as an RMS distance of flow latents.

Both images go through one MultiScaleFlow. For k = 1 .. K the coarsest k latents are
concatenated and ``dE_k = sqrt(||f(x) - f(y)||^2 / D_k + eps)`` (D_k: their dimension count,
eps = 1e-8 as in the authors' code). The reported CD is the all-scales value dE_K.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._checks import check_image, check_pair
from .flow import PAPER_N_SCALES, PAPER_N_STEPS, MultiScaleFlow
from .layers import PAPER_HIDDEN, unsqueeze

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
        multiple = 2 ** self.n_scales
        check_image(x, "x", multiple=multiple)
        if y is not None:
            check_pair(x, y)
            check_image(y, "y", multiple=multiple)

    def latents(self, x: torch.Tensor):
        """z1 .. zK (finest first) of a checked image batch x."""
        self.check_images(x)
        return self.glow(x)[0]

    def _pair_latents(self, x, y):
        self.check_images(x, y)
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

    def distances(self, x: torch.Tensor, y: torch.Tensor, eps: float = DISTANCE_EPS) -> torch.Tensor:
        """The K cumulative coarse-to-fine distances [K, B] (coarsest-only first, all scales last)."""
        zx, zy = self._pair_latents(x, y)
        return self.cumulative_distances(zx, zy, eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor, eps: float = DISTANCE_EPS) -> torch.Tensor:
        """The reported CD [B] (all scales). With ``eps=0`` it is an exact metric."""
        return self.distances(x, y, eps)[-1]

    def cd_map(self, x: torch.Tensor, y: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        """Local CD map [B, H, W].

        The per-scale latent differences are laid back out in image layout by the
        un-squeezes alone (no inverse flow steps), as the authors' first release did, and
        reduced over the 3 channels as an RMS. ``scale`` k (1 = finest .. K = coarsest) keeps
        only that scale's difference; None keeps all. Because the layout is a permutation,
        ``sqrt(mean(map**2) + 1e-8)`` over the image equals the reported CD (all scales).
        """
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


def _to_tensor(img) -> torch.Tensor:
    """A path, PIL image or HxWx3 array -> [3, H, W] float sRGB in [0, 1], with explicit conversions."""
    from PIL import Image

    if isinstance(img, (str, Path)):
        img = Image.open(img)
    if isinstance(img, Image.Image):
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64) / 65535.0
            arr = np.repeat(arr[..., None], 3, -1)
        else:
            arr = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0  # greyscale, RGBA, palette -> RGB
        return torch.from_numpy(arr).permute(2, 0, 1).float()
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr / 255.0
    elif arr.dtype == np.uint16:
        arr = arr / 65535.0
    return torch.from_numpy(np.asarray(arr, dtype=np.float32)).permute(2, 0, 1)


def prepare_images(*images, multiple: int, policy: str = "crop") -> torch.Tensor:
    """Load images (paths, PIL images or arrays) into one [N, 3, H, W] batch in [0, 1].

    Greyscale, RGBA and palette images are converted to RGB (alpha dropped); 16-bit images
    are scaled by 1/65535. All images must have the same size. Sizes not divisible by
    `multiple` follow `policy`: ``"crop"`` centre-crops to the largest multiple, ``"pad"``
    reflect-pads to the next multiple, ``"error"`` raises.
    """
    ts = [_to_tensor(im) for im in images]
    if len({t.shape for t in ts}) != 1:
        raise ValueError(f"all images must have the same size, got {[tuple(t.shape[1:]) for t in ts]}")
    x = torch.stack(ts)
    h, w = x.shape[-2:]
    if h % multiple == 0 and w % multiple == 0:
        return x
    if policy == "crop":
        nh, nw = h // multiple * multiple, w // multiple * multiple
        if nh == 0 or nw == 0:
            raise ValueError(f"image of {h} x {w} is smaller than the required multiple {multiple}")
        top, left = (h - nh) // 2, (w - nw) // 2
        return x[..., top:top + nh, left:left + nw]
    if policy == "pad":
        ph, pw = -h % multiple, -w % multiple
        return torch.nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="reflect")
    if policy == "error":
        raise ValueError(f"image size {h} x {w} is not divisible by {multiple}")
    raise ValueError(f"unknown size policy {policy!r}; use 'crop', 'pad' or 'error'")


@torch.no_grad()
def color_difference(model: CDFlow, reference, test, policy: str = "crop") -> float:
    """CD between two image files / PIL images / arrays of the same size (see `prepare_images`)."""
    batch = prepare_images(reference, test, multiple=2 ** model.n_scales, policy=policy)
    p = next(model.parameters())
    batch = batch.to(p.device, p.dtype)
    return float(model(batch[:1], batch[1:]))
