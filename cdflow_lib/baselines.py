"""Colour-difference baselines with one calling convention: ``measure(x, y) -> [B]``.

x, y: [B, 3, H, W] sRGB in [0, 1] (same shape). Every measure returns one non-negative
difference per pair. ``MEASURES`` holds the training-free ones, ``get_measure(name, **options)``
looks them up (options such as ``spd`` or ``seed`` are bound with ``functools.partial``):

=============  ==========================================================================
"cielab"       pixel-mean CIE 1976 ΔE*ab
"cie94"        pixel-mean CIE94 (graphic arts; x is the reference, so not symmetric)
"ciede2000"    pixel-mean CIEDE2000
"cmc"          pixel-mean CMC(1:1) (perceptibility; x is the reference, so not symmetric)
"cam16ucs"     pixel-mean ΔE in CAM16-UCS (colour-science, sRGB display viewing conditions)
"scielab"      pixel-mean S-CIELAB with CIEDE2000 (Zhang & Wandell 1996)
"ms_swd"       multiscale sliced Wasserstein distance (He et al., ECCV 2024)
=============  ==========================================================================

CD-Net (Wang et al., TPAMI 2023) is a trainable baseline: ``CDNet`` and ``fit_cdnet``.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import colour
from ._checks import check_image, check_pair

#: CMC l:c used by the "cmc" measure: 1:1, the perceptibility setting (2:1 is for acceptability).
CMC_LIGHTNESS_CHROMA = (1.0, 1.0)


def _check(x, y) -> None:
    check_image(x, "x")
    check_image(y, "y")
    check_pair(x, y)


def _pixel_mean(per_pixel: torch.Tensor) -> torch.Tensor:
    """[B, H, W] per-pixel differences -> [B] image means."""
    return per_pixel.mean((1, 2))


def _lab_pair(x, y):
    _check(x, y)
    return colour.srgb_to_lab(x), colour.srgb_to_lab(y)


def cielab(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pixel-mean CIE 1976 ΔE*ab (D65). x, y: [B, 3, H, W] sRGB in [0, 1] -> [B]."""
    return _pixel_mean(colour.delta_e76(*_lab_pair(x, y)))


def cie94(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pixel-mean CIE94 (graphic-arts weights, x is the reference). x, y: [B, 3, H, W] sRGB -> [B]."""
    return _pixel_mean(colour.delta_e94(*_lab_pair(x, y)))


def ciede2000(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pixel-mean CIEDE2000 (k_L = k_C = k_H = 1). x, y: [B, 3, H, W] sRGB in [0, 1] -> [B]."""
    return _pixel_mean(colour.delta_e2000(*_lab_pair(x, y)))


def cmc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pixel-mean CMC(1:1) (x is the reference). x, y: [B, 3, H, W] sRGB in [0, 1] -> [B]."""
    lightness, chroma = CMC_LIGHTNESS_CHROMA
    return _pixel_mean(colour.delta_e_cmc(*_lab_pair(x, y), l=lightness, c=chroma))


def cam16ucs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pixel-mean ΔE in CAM16-UCS (no gradient; see ``colour.cam16ucs_delta_e``). -> [B]."""
    _check(x, y)
    return _pixel_mean(colour.cam16ucs_delta_e(x, y))


def scielab(x: torch.Tensor, y: torch.Tensor, spd: float = colour.DEFAULT_SAMPLES_PER_DEGREE) -> torch.Tensor:
    """Pixel-mean S-CIELAB with CIEDE2000 on the filtered images. -> [B].

    spd: samples (pixels) per degree of visual angle; the default is a 1024-px-wide image
    viewed as SPCD's images are (see ``colour.samples_per_degree_for_display``). Smaller
    images shown at the same physical size have proportionally fewer samples per degree.
    """
    _check(x, y)
    return _pixel_mean(colour.scielab_delta_e(x, y, spd=spd, formula="2000"))


# ----------------------------------------------------------------------------- MS-SWD

#: MS-SWD defaults: five scales and 128 random projections per scale (the authors' defaults),
#: 11 x 11 patches (the paper's patch size).
MSSWD_SCALES = 5
MSSWD_PROJECTIONS = 128
MSSWD_PATCH = 11
#: The 5-tap binomial low-pass (Burt & Adelson) used to build the Gaussian pyramid.
PYRAMID_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def gaussian_pyramid(x: torch.Tensor, n_scales: int, min_size: int = 1) -> list[torch.Tensor]:
    """[x, down(x), down(down(x)), ...]: at most n_scales levels, finest first.

    x: [B, C, H, W]. Each step blurs with the separable 5-tap binomial filter (reflect
    padding) and keeps every second pixel. Levels whose height or width would fall below
    `min_size` are not made.
    """
    taps = torch.tensor(PYRAMID_TAPS, dtype=x.dtype, device=x.device)
    taps = taps / taps.sum()
    c = x.shape[1]
    row = taps.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    col = taps.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    levels = [x]
    while len(levels) < n_scales:
        cur = levels[-1]
        h, w = cur.shape[-2:]
        if (h + 1) // 2 < min_size or (w + 1) // 2 < min_size or min(h, w) < 3:
            break
        blurred = F.conv2d(F.pad(cur, (2, 2, 0, 0), mode="reflect"), row, groups=c)
        blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="reflect"), col, groups=c)
        levels.append(blurred[..., ::2, ::2])
    return levels


def ms_swd(x: torch.Tensor, y: torch.Tensor, n_scales: int = MSSWD_SCALES, n_proj: int = MSSWD_PROJECTIONS,
           patch: int = MSSWD_PATCH, seed: int = 0) -> torch.Tensor:
    """Multiscale sliced Wasserstein distance between the patch distributions of x and y.

    x, y: [B, 3, H, W] sRGB in [0, 1], H and W >= patch -> [B], in CIELAB units.

    After He et al., "Multiscale Sliced Wasserstein Distances as Perceptual Color Difference
    Measures" (ECCV 2024), written from the paper's description:

    1. both images go to CIELAB (D65), then into a Gaussian pyramid (``gaussian_pyramid``,
       up to `n_scales` levels; coarser levels are dropped once they are smaller than a patch);
    2. at each level every `patch` x `patch` x 3 patch (all positions, no padding) is
       projected onto `n_proj` random unit directions in R^(3·patch²), drawn afresh per
       level from a generator seeded with `seed` (the same for every pair in the batch);
    3. for each direction the two sets of projections are sorted, and the 1-D Wasserstein-1
       distance is the mean absolute difference of the sorted values (equal sample counts,
       as both images have the same size);
    4. the level's distance is the mean over directions; the result, the mean over levels.

    The patch *distributions* are compared, not co-located patches, so a small shift of the
    image changes the distance little. Symmetric, 0 for identical images, differentiable in
    x and y; a different seed gives a slightly different value (a Monte-Carlo estimate).
    """
    _check(x, y)
    if min(x.shape[-2:]) < patch:
        raise ValueError(f"ms_swd: images must be at least {patch} x {patch} pixels (the patch size), "
                         f"got {tuple(x.shape[-2:])}")
    if n_scales < 1 or n_proj < 1:
        raise ValueError(f"ms_swd: n_scales and n_proj must be positive, got {n_scales} and {n_proj}")
    generator = torch.Generator().manual_seed(seed)
    batch = x.shape[0]
    pyramid = gaussian_pyramid(torch.cat([colour.srgb_to_lab(x), colour.srgb_to_lab(y)]), n_scales, min_size=patch)
    per_level = []
    for level in pyramid:
        directions = torch.randn(n_proj, 3 * patch * patch, generator=generator, dtype=torch.float64)
        directions = directions / directions.norm(dim=1, keepdim=True)
        kernels = directions.view(n_proj, 3, patch, patch).to(dtype=level.dtype, device=level.device)
        projected = F.conv2d(level, kernels).flatten(2)             # [2B, n_proj, positions]
        sorted_x, sorted_y = projected.sort(dim=2).values.split(batch)
        per_level.append((sorted_x - sorted_y).abs().mean((1, 2)))
    return torch.stack(per_level).mean(0)


#: The training-free measures, by name. Each is ``measure(x, y) -> [B]`` on sRGB in [0, 1].
MEASURES: dict[str, Callable[..., torch.Tensor]] = {
    "cielab": cielab,
    "cie94": cie94,
    "ciede2000": ciede2000,
    "cmc": cmc,
    "cam16ucs": cam16ucs,
    "scielab": scielab,
    "ms_swd": ms_swd,
}


def get_measure(name: str, **options) -> Callable[..., torch.Tensor]:
    """The measure called `name` in ``MEASURES``, with keyword `options` bound (e.g. spd, seed)."""
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; choose one of {sorted(MEASURES)}")
    return functools.partial(MEASURES[name], **options) if options else MEASURES[name]


# ----------------------------------------------------------------------------- CD-Net

#: CD-Net sizes: per-pixel feature dimension (the learned metric acts on it) and branch widths,
#: chosen so that the network has about 14k parameters, as the TPAMI paper reports.
CDNET_FEATURES = 12
CDNET_POINT_WIDTH = 32
CDNET_CONTEXT_WIDTH = 20
CDNET_HEAD_WIDTH = 64


class CDNet(nn.Module):
    """CD-Net (Wang et al., "Measuring Perceptual Color Differences of Smartphone Photographs",
    TPAMI 2023) as a small trainable baseline. ``net(x, y) -> [B]``.

    Per-pixel features f(x) ∈ R^12 from two branches on the sRGB image:
    a 1x1 branch (colour alone) and a context branch of three 3x3 convolutions with
    dilations 1, 2, 2 (receptive field 11 x 11), concatenated and mapped to 12 channels by a
    small 1x1 head. The distance is the per-pixel Mahalanobis distance
    sqrt((f(x) − f(y))ᵀ M (f(x) − f(y))) averaged over the image, with M = L Lᵀ positive
    semi-definite by construction (L lower-triangular, 12·13/2 = 78 parameters, starting at
    the identity). About 14k parameters in all.
    x, y: [B, 3, H, W] sRGB in [0, 1] -> [B] (>= 0, symmetric, 0 for identical images).
    """

    def __init__(self, features: int = CDNET_FEATURES, point_width: int = CDNET_POINT_WIDTH,
                 context_width: int = CDNET_CONTEXT_WIDTH, head_width: int = CDNET_HEAD_WIDTH):
        super().__init__()
        self.features = features
        self.point = nn.Sequential(nn.Conv2d(3, point_width, 1), nn.ReLU())
        self.context = nn.Sequential(
            nn.Conv2d(3, context_width, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
            nn.Conv2d(context_width, context_width, 3, padding=2, dilation=2, padding_mode="reflect"), nn.ReLU(),
            nn.Conv2d(context_width, context_width, 3, padding=2, dilation=2, padding_mode="reflect"), nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Conv2d(point_width + context_width, head_width, 1), nn.ReLU(),
            nn.Conv2d(head_width, head_width // 2, 1), nn.ReLU(),
            nn.Conv2d(head_width // 2, features, 1),
        )
        rows, cols = torch.tril_indices(features, features)
        self.register_buffer("tril_rows", rows, persistent=False)
        self.register_buffer("tril_cols", cols, persistent=False)
        self.cholesky = nn.Parameter((rows == cols).float())  # the identity's lower triangle

    @property
    def receptive_field(self) -> int:
        """Side of the context branch's receptive field in pixels (1 + 2·(1 + 2 + 2) = 11)."""
        return 1 + 2 * sum(conv.dilation[0] for conv in self.context if isinstance(conv, nn.Conv2d))

    def lower(self) -> torch.Tensor:
        """L: [12, 12] lower-triangular."""
        lower = self.cholesky.new_zeros(self.features, self.features)
        return lower.index_put((self.tril_rows, self.tril_cols), self.cholesky)

    def metric_matrix(self) -> torch.Tensor:
        """M = L Lᵀ: [12, 12], symmetric positive semi-definite."""
        lower = self.lower()
        return lower @ lower.T

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel features: [B, 3, H, W] sRGB -> [B, 12, H, W]."""
        return self.head(torch.cat([self.point(x), self.context(x)], dim=1))

    def distance_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pixel Mahalanobis distances [B, H, W] (x, y: [B, 3, H, W] sRGB in [0, 1], H, W >= 3)."""
        _check(x, y)
        if min(x.shape[-2:]) < 3:
            raise ValueError(f"CDNet: images must be at least 3 x 3 pixels (reflect padding), got {tuple(x.shape[-2:])}")
        diff = self.embed(x) - self.embed(y)
        projected = torch.einsum("ji,bjhw->bihw", self.lower(), diff)  # Lᵀ Δf, so ‖·‖² = Δfᵀ M Δf
        return colour._safe_sqrt(projected.pow(2).sum(1))  # exactly 0, with a finite gradient, at equal pixels

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance_map(x, y).mean((1, 2))


def fit_cdnet(model: nn.Module, loader: Iterable[Mapping], epochs: int = 1, lr: float = 1e-3, *,
              device: str | torch.device | None = None, progress: bool = True) -> list[float]:
    """Train a CD measure (e.g. ``CDNet``) to predict visual differences: MSE(model(x, y), dv), Adam.

    loader: yields dicts with "x", "y" ([B, 3, H, W] sRGB in [0, 1]) and "dv" ([B]), such as a
    DataLoader over synthetic pairs. Returns the loss of every step. Stops with a ValueError
    (and the step number) on a non-finite loss instead of writing NaN weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if device is not None:
        model.to(device)
    param = next(model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    with tqdm(total=epochs * len(loader) if hasattr(loader, "__len__") else None, desc="fit CD-Net",
              disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            for batch in loader:
                x, y = batch["x"].to(param.device), batch["y"].to(param.device)
                dv = torch.as_tensor(batch["dv"]).to(device=param.device, dtype=param.dtype).reshape(-1)
                loss = F.mse_loss(model(x, y), dv)
                if not torch.isfinite(loss):
                    raise ValueError(f"fit_cdnet: non-finite loss {loss.item()} at step {len(losses)}; "
                                     "lower the learning rate or check the inputs")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
    model.eval()
    return losses
