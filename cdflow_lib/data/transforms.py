"""Geometric perturbations and the authors' train / test transforms, on tensors.

Images are [3, H, W] (or [B, 3, H, W]) float sRGB in [0, 1]; every function returns a new
tensor in [0, 1] and leaves its input unchanged.

- `affine_warp` / `misalign`: a similarity transform (translation in pixels, rotation in
  degrees, isotropic scale) about the image centre, bilinear, with reflect padding for
  `misalign` (the mild misalignment of SPCD's phone captures) and zero (black) padding for
  the rotation of the training augmentation (torchvision's RandomRotation fills with 0).
- `PairAugment`: the authors' training augmentation (DESIGN.md section 5) scaled to the
  output size: resize to 1024/768 of the output size, rotate by U(-3, 3) degrees, random
  crop of 1000/768 of the output size, resize to the output size. The released code draws
  the random parameters independently for the two images (an implicit misalignment
  augmentation); ``sync=True`` draws once for both, as earlier versions did.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: The authors' training pipeline at its native output size (DESIGN.md section 5).
PAPER_TRAIN_SIZE = 768
PAPER_RESIZE = 1024
PAPER_CROP = 1000
PAPER_MAX_ROTATION_DEG = 3.0


def _as_batch(img: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4) or img.shape[-3] != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"{name}: expected a [3, H, W] or [B, 3, H, W] float tensor, got {shape}")
    if not img.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor in [0, 1], got dtype {img.dtype}")
    return (img.unsqueeze(0), True) if img.dim() == 3 else (img, False)


def affine_warp(img: torch.Tensor, dx: float = 0.0, dy: float = 0.0, angle_deg: float = 0.0,
                scale: float = 1.0, padding: str = "reflection") -> torch.Tensor:
    """Warp `img` by a similarity transform about its centre.

    img: [3, H, W] or [B, 3, H, W] float in [0, 1]. The content moves right by `dx` and down
    by `dy` pixels, turns counter-clockwise by `angle_deg` degrees and is magnified by
    `scale` (> 1 zooms in). `padding`: "reflection", "border" or "zeros" (black). Bilinear
    sampling; the identity returns an exact copy.
    """
    x, squeezed = _as_batch(img, "img")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if padding not in ("reflection", "border", "zeros"):
        raise ValueError(f"padding must be 'reflection', 'border' or 'zeros', got {padding!r}")
    if dx == 0 and dy == 0 and angle_deg == 0 and scale == 1:
        out = x.clone()
    else:
        b, _, h, w = x.shape
        a = math.radians(angle_deg)
        # Content moves as p' = c + scale * R(a) (p - c) + t, where R(a) = [[cos, sin], [-sin, cos]]
        # turns counter-clockwise on screen (y points down). Output pixel p' samples the input at
        # c + inv (p' - c - t) with inv = R(-a) / scale, in pixel units about the centre c.
        cos, sin = math.cos(a) / scale, math.sin(a) / scale
        inv = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
        shift = -inv @ torch.tensor([dx, dy], dtype=torch.float64)
        # affine_grid works in normalised coordinates [-1, 1] per axis (align_corners=False).
        to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64))
        from_norm = torch.diag(torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64))
        theta = torch.cat([to_norm @ inv @ from_norm, (to_norm @ shift).unsqueeze(1)], dim=1)
        grid = F.affine_grid(theta.to(x.dtype).expand(b, 2, 3), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False).clamp(0.0, 1.0)
    return out[0] if squeezed else out


def misalign(img: torch.Tensor, dx: float = 0.0, dy: float = 0.0, angle_deg: float = 0.0,
             scale: float = 1.0) -> torch.Tensor:
    """A mildly misaligned copy of `img` (reflect padding): see `affine_warp` for the parameters.

    Applied to the test image of a pair only; the label of a pair never depends on it.
    """
    return affine_warp(img, dx, dy, angle_deg, scale, padding="reflection")


#: Ranges of the mild misalignment of synthetic non-aligned pairs, like SPCD's phone
#: captures (registered by hand, leaving a few pixels of shift at 1024 px, under a degree of
#: rotation and under one percent of scale): translation as a fraction of the width
#: (0.005: up to 5 px at 1024, 2.6 px at 512), rotation in degrees, relative scale change.
MISALIGN_MAX_SHIFT = 0.005
MISALIGN_MAX_ROTATION_DEG = 0.75
MISALIGN_MAX_SCALE = 0.008


def sample_misalignment(rng: np.random.Generator, size: int) -> dict:
    """Draw misalign() parameters for a size x size image: dx, dy (pixels), angle_deg, scale."""
    dx, dy = rng.uniform(-MISALIGN_MAX_SHIFT, MISALIGN_MAX_SHIFT, size=2) * size
    return dict(dx=float(dx), dy=float(dy),
                angle_deg=float(rng.uniform(-MISALIGN_MAX_ROTATION_DEG, MISALIGN_MAX_ROTATION_DEG)),
                scale=float(1.0 + rng.uniform(-MISALIGN_MAX_SCALE, MISALIGN_MAX_SCALE)))


def resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize [3, H, W] or [B, 3, H, W] to size x size (bilinear, antialiased, clamped to [0, 1])."""
    x, squeezed = _as_batch(img, "img")
    if tuple(x.shape[-2:]) == (size, size):
        out = x.clone()
    else:
        out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)
    return out[0] if squeezed else out


class PairAugment:
    """The authors' training augmentation for a pair, scaled to `size` (see the module docstring).

    ``aug(x, y, generator=None) -> (x', y')``: x, y [3, H, W] float in [0, 1] (any square
    size; SPCD images are 1024 px); outputs [3, size, size]. ``sync``: one draw for both
    images (True) or independent draws (False, as the released code). Random numbers come
    from `generator` (a torch.Generator) or torch's global generator.
    """

    def __init__(self, size: int = PAPER_TRAIN_SIZE, sync: bool = False,
                 max_rotation_deg: float = PAPER_MAX_ROTATION_DEG):
        self.size = int(size)
        self.sync = bool(sync)
        self.max_rotation_deg = float(max_rotation_deg)
        self.resize_to = int(round(size * PAPER_RESIZE / PAPER_TRAIN_SIZE))
        self.crop = int(round(size * PAPER_CROP / PAPER_TRAIN_SIZE))

    def draw(self, generator: torch.Generator | None = None) -> dict:
        """One set of random parameters: rotation angle (degrees) and crop corner (pixels)."""
        u = torch.rand(3, generator=generator, dtype=torch.float64)
        room = self.resize_to - self.crop
        return dict(angle_deg=float((2 * u[0] - 1) * self.max_rotation_deg),
                    top=int(u[1] * (room + 1)) if room else 0, left=int(u[2] * (room + 1)) if room else 0)

    def apply(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply one drawn parameter set to one image [3, H, W] -> [3, size, size]."""
        big = affine_warp(resize(img, self.resize_to), angle_deg=params["angle_deg"], padding="zeros")
        top, left = params["top"], params["left"]
        return resize(big[..., top:top + self.crop, left:left + self.crop], self.size)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        px = self.draw(generator)
        py = px if self.sync else self.draw(generator)
        return self.apply(x, px), self.apply(y, py)

    def __repr__(self) -> str:
        return f"PairAugment(size={self.size}, sync={self.sync}, max_rotation_deg={self.max_rotation_deg})"
