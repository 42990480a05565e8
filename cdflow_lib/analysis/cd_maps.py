"""Local colour-difference maps: CD-Flow per scale and combined, beside per-pixel ΔE maps,
and scores of how well a map finds a change whose location is known.

CD-Flow maps come from `CDFlow.map_from_latents`: each scale's latent difference is laid back
out in image layout by the un-squeezes alone. That layout is a permutation, so a latent
position of scale k owns a 2^k x 2^k patch of pixels but fills only some of its pixel-channel
slots; the raw map is speckled. `patch_rms` pools each scale's squared map over its own
2^k x 2^k patches, which keeps the mean of the squared map (and therefore the CD) unchanged.
The squared per-scale maps add up pixel by pixel to the squared combined map, raw or pooled.

Units: CD-Flow maps are in the units of the CD (an RMS of latent differences); the ΔE maps
are CIEDE2000 units, per pixel (``CIEDE2000``) or after S-CIELAB's spatial filtering
(``S-CIELAB``, the viewing geometry of `colour.samples_per_degree_for_display` for the
image's width, as the simulated observer uses).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from .. import colour
from .._checks import check_image, check_pair
from ..metric import CDFlow

#: Names of the per-pixel ΔE maps returned by `delta_e_maps` (CIEDE2000 units).
DELTA_E_MAPS = ("CIEDE2000", "S-CIELAB")
#: Name of the all-scales CD-Flow map; per-scale maps are "scale 1" (finest) .. "scale K".
COMBINED = "CD-Flow"
#: A soft mask counts as "inside" where it exceeds this (the half-maximum of a Gaussian blob).
MASK_THRESHOLD = 0.5
#: `edge_mask` marks this fraction of each image's pixels, those with the largest L* gradient.
EDGE_FRACTION = 0.15
#: The default known tint: a CIELAB shift (Δa*, Δb*) at the mask's peak; |shift| = 15 ΔE*ab, a
#: clearly visible warm-red cast (SPCD's median ΔV is about 4).
DEFAULT_TINT_AB = (9.0, 12.0)
#: The per-map colour scale of `maps_figure` ends at this quantile of the maps it shares with.
COLOUR_QUANTILE = 0.99


def scale_name(k: int) -> str:
    """The name of scale k's CD-Flow map (1 = finest)."""
    return f"scale {k}"


def patch_rms(m: torch.Tensor, patch: int) -> torch.Tensor:
    """RMS of a map over non-overlapping patch x patch squares, repeated back to full size.

    m: [B, H, W] non-negative, H and W divisible by `patch` -> [B, H, W]. The mean of the
    squared map is unchanged.
    """
    if m.dim() != 3:
        raise ValueError(f"m: expected a map batch [B, H, W], got shape {tuple(m.shape)}")
    if patch < 1 or m.shape[-2] % patch or m.shape[-1] % patch:
        raise ValueError(f"patch must be a positive divisor of the map size {tuple(m.shape[-2:])}, got {patch}")
    pooled = F.avg_pool2d(m.pow(2).unsqueeze(1), patch).sqrt()
    return F.interpolate(pooled, scale_factor=patch, mode="nearest").squeeze(1)


@torch.no_grad()
def cdflow_maps(cd: CDFlow, x: torch.Tensor, y: torch.Tensor, pool: bool = True) -> dict[str, torch.Tensor]:
    """CD-Flow maps of a pair: {"scale 1": .., .., "scale K": .., "CD-Flow": ..}, each [B, H, W].

    x, y: [B, 3, H, W] sRGB in [0, 1], H and W divisible by 2^K. pool: each scale's map as
    the RMS over its 2^k x 2^k patches (`patch_rms`), the combined map the root of their
    summed squares; False gives the raw un-squeezed maps. Either way sqrt(mean(map^2)) of the
    combined map is the CD (up to its 1e-8 floor). One forward pass for all maps.
    """
    cd.check_images(x, y)
    zs = cd.latents(torch.cat([x, y]))
    b = x.shape[0]
    zx, zy = [z[:b] for z in zs], [z[b:] for z in zs]
    per_scale = {}
    for k in range(1, cd.n_scales + 1):
        m = cd.map_from_latents(zx, zy, scale=k)
        per_scale[scale_name(k)] = patch_rms(m, 2 ** k) if pool else m
    combined = torch.stack(list(per_scale.values())).pow(2).sum(0).sqrt()
    return {**per_scale, COMBINED: combined}


def delta_e_maps(x: torch.Tensor, y: torch.Tensor, spd: float | None = None) -> dict[str, torch.Tensor]:
    """Per-pixel ΔE maps of a pair: {"CIEDE2000": .., "S-CIELAB": ..}, each [B, H, W] in ΔE00 units.

    x, y: [B, 3, H, W] sRGB in [0, 1]. spd: samples per degree for S-CIELAB; None uses the
    simulated observer's geometry (the image's width shown 30 cm wide at 60 cm).
    """
    check_image(x, "x")
    check_image(y, "y")
    check_pair(x, y)
    spd = colour.samples_per_degree_for_display(int(x.shape[-1])) if spd is None else spd
    return {"CIEDE2000": colour.delta_e2000(colour.srgb_to_lab(x), colour.srgb_to_lab(y)),
            "S-CIELAB": colour.scielab_delta_e(x, y, spd=spd, formula="2000")}


def pair_maps(cd: CDFlow, x: torch.Tensor, y: torch.Tensor, pool: bool = True,
              spd: float | None = None) -> dict[str, torch.Tensor]:
    """All maps of a pair: `cdflow_maps` then `delta_e_maps`, each [B, H, W] (see those for units)."""
    return {**cdflow_maps(cd, x, y, pool), **delta_e_maps(x, y, spd)}


# ----------------------------------------------------------------------------- known changes

def blob_mask(height: int, width: int, centre=(0.4, 0.6), sigma: float = 0.15) -> torch.Tensor:
    """A Gaussian blob [H, W] in [0, 1], 1 at `centre` (row, column as fractions of the size);
    `sigma` is its standard deviation as a fraction of the side (the mean of height and width)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    rows = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    cols = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    return torch.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (2 * sigma ** 2)).float()


def rectangle_mask(height: int, width: int, top: float, left: float, bottom: float, right: float) -> torch.Tensor:
    """A binary rectangle [H, W] (1 inside): edges as fractions of the size, 0 <= top < bottom <= 1."""
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        raise ValueError(f"need 0 <= top < bottom <= 1 and 0 <= left < right <= 1, got {top, left, bottom, right}")
    mask = torch.zeros(height, width)
    mask[round(top * height):round(bottom * height), round(left * width):round(right * width)] = 1.0
    return mask


def apply_tint(x: torch.Tensor, mask: torch.Tensor, shift_ab=DEFAULT_TINT_AB) -> torch.Tensor:
    """Tint x where `mask` is on: CIELAB a*, b* shifted by mask * shift_ab, back to sRGB, clipped.

    x: [B, 3, H, W] sRGB in [0, 1]; mask: [H, W] in [0, 1]; shift_ab: (Δa*, Δb*). Before the
    clipping to the sRGB gamut the per-pixel ΔE*ab of the pair is exactly mask * |shift_ab|;
    where the mask is 0 the pixels are copied unchanged. Returns [B, 3, H, W] in [0, 1].
    """
    check_image(x, "x")
    if mask.shape != x.shape[-2:]:
        raise ValueError(f"mask: expected shape {tuple(x.shape[-2:])} (the image's H x W), got {tuple(mask.shape)}")
    mask = mask.to(x)
    shift = torch.tensor([0.0, *shift_ab], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    tinted = colour.lab_to_srgb(colour.srgb_to_lab(x) + shift * mask).clamp(0.0, 1.0)
    return torch.where(mask > 0, tinted, x)     # exact copy where the mask is off (no round-trip error)


def edge_mask(x: torch.Tensor, fraction: float = EDGE_FRACTION) -> torch.Tensor:
    """Edges of an image batch: [B, H, W] bool, the `fraction` of pixels with the largest
    Sobel gradient magnitude of CIELAB L* (reflect padding). x: [B, 3, H, W] sRGB in [0, 1]."""
    check_image(x, "x")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    lightness = colour.srgb_to_lab(x)[:, :1]
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)                     # [2, 1, 3, 3]
    grad = F.conv2d(F.pad(lightness, (1, 1, 1, 1), mode="reflect"), kernels).pow(2).sum(1).sqrt()
    cut = torch.quantile(grad.flatten(1), 1.0 - fraction, dim=1).view(-1, 1, 1)
    return grad > cut


# ----------------------------------------------------------------------------- localisation

def _as_array(a, name: str) -> np.ndarray:
    arr = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d map [H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    return arr


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of `scores` separating labels True from False (ties count 1/2):
    the Mann-Whitney U statistic over n_pos * n_neg. 0.5 = chance, 1 = every positive above every negative."""
    scores, labels = np.ravel(scores), np.ravel(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need positives and negatives, got {n_pos} and {n_neg}")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def localisation_scores(m, mask, threshold: float = MASK_THRESHOLD) -> dict[str, float]:
    """How well a map m [H, W] (non-negative) finds the region of `mask` [H, W] in [0, 1].

    Returns a dict:
    - ``auc``: ROC AUC of the map's values for pixels inside (mask > threshold) against the
      rest; 0.5 is chance, 1 a perfect separation;
    - ``pearson``: correlation of the map with the (soft) mask over the pixels;
    - ``energy_inside``: share of the map's energy sum(m^2) on the inside pixels (for a map
      in CD units, the share of the squared CD);
    - ``area``: share of inside pixels, the energy share of a map that does not localise.
    Tensors or arrays are accepted.
    """
    m, mask = _as_array(m, "map"), _as_array(mask, "mask")
    if m.shape != mask.shape:
        raise ValueError(f"map and mask must have the same shape, got {m.shape} and {mask.shape}")
    if m.min() < 0:
        raise ValueError(f"map must be non-negative, found minimum {m.min():.4g}")
    if m.std() == 0:
        raise ValueError("map is constant: it cannot localise anything")
    energy = m ** 2
    inside = mask > threshold
    if mask.std() == 0:
        raise ValueError("mask is constant: there is no region to find")
    return dict(auc=roc_auc(m, inside), pearson=float(np.corrcoef(m.ravel(), mask.ravel())[0, 1]),
                energy_inside=float(energy[inside].sum() / energy.sum()), area=float(inside.mean()))


def energy_shares(m, regions: dict) -> dict[str, float]:
    """Share of the energy sum(m^2) of a map m [H, W] on each boolean region [H, W] of `regions`."""
    m = _as_array(m, "map")
    total = (m ** 2).sum()
    if total == 0:
        raise ValueError("map is zero everywhere: no energy to share")
    out = {}
    for name, region in regions.items():
        r = np.asarray(region.cpu() if isinstance(region, torch.Tensor) else region, dtype=bool)
        if r.shape != m.shape:
            raise ValueError(f"region {name!r}: expected shape {m.shape}, got {r.shape}")
        out[name] = float((m[r] ** 2).sum() / total)
    return out


def map_correlation(a, b) -> float:
    """Pearson correlation of two maps [H, W] over their pixels (how alike two maps are)."""
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ----------------------------------------------------------------------------- figures

def _family(name: str) -> str:
    return "ΔE00" if name in DELTA_E_MAPS else "CD"


def maps_figure(rows, map_names=None, size: float = 1.7, suptitle: str | None = None):
    """A grid, one row per pair: reference, test, |truth| (where given), the ΔE maps, the CD-Flow maps.

    rows: list of dicts with ``x``, ``y`` ([3, H, W] sRGB in [0, 1]), ``maps`` ({name: [H, W]}),
    optional ``truth`` ([H, W], e.g. the true per-pixel ΔE*ab of a tint) and ``label`` (row
    title). map_names: which maps, in order (default: the first row's). Within a row the maps
    of one family (ΔE00 maps; CD-Flow maps) share one colour scale, from 0 to the
    COLOUR_QUANTILE quantile of their values, with its colour bar at the family's right.
    """
    import matplotlib.pyplot as plt

    from ..plotting import to_numpy_image

    if not rows:
        raise ValueError("rows: need at least one pair")
    names = list(map_names or rows[0]["maps"])
    delta_e = [n for n in names if _family(n) == "ΔE00"]
    cdf = [n for n in names if _family(n) == "CD"]
    has_truth = any(r.get("truth") is not None for r in rows)
    head = ["reference", "test"] + (["|truth| (ΔE*ab)"] if has_truth else [])
    columns = head + delta_e + (["cbar:ΔE00"] if delta_e else []) + cdf + (["cbar:CD"] if cdf else [])
    ratios = [0.08 if c.startswith("cbar:") else 1.0 for c in columns]
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False,
                             figsize=(size * sum(ratios) + 0.6, size * len(rows) + 0.4),
                             gridspec_kw=dict(width_ratios=ratios), layout="constrained")
    for r, row in enumerate(rows):
        arrays = {n: np.asarray(row["maps"][n].detach().cpu() if isinstance(row["maps"][n], torch.Tensor)
                                else row["maps"][n], dtype=np.float64) for n in names}
        vmax = {fam: max(float(np.quantile(np.concatenate([arrays[n].ravel() for n in group]), COLOUR_QUANTILE)),
                         1e-12)
                for fam, group in (("ΔE00", delta_e), ("CD", cdf)) if group}
        images = {}
        for c, col in enumerate(columns):
            ax = axes[r, c]
            if col.startswith("cbar:"):
                fig.colorbar(images[col[5:]], cax=ax)
                ax.set_ylabel(col[5:], fontsize=7)
                ax.tick_params(labelsize=6)
                continue
            ax.set_xticks([])
            ax.set_yticks([])
            if col in ("reference", "test"):
                ax.imshow(to_numpy_image(row["x" if col == "reference" else "y"]))
            elif col.startswith("|truth|"):
                truth = row.get("truth")
                if truth is None:
                    ax.axis("off")
                    continue
                ax.imshow(np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth), cmap="gray")
            else:
                fam = _family(col)
                images[fam] = ax.imshow(arrays[col], cmap="magma", vmin=0.0, vmax=vmax[fam])
            if r == 0:
                ax.set_title(col, fontsize=8)
        axes[r, 0].set_ylabel(row.get("label", ""), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def scores_figure(scores: dict, metrics=("auc", "energy_inside"), chance=None, size=(4.2, 2.8),
                  suptitle: str | None = None):
    """Grouped bars of localisation scores: scores[condition][map name][metric] -> float.

    One panel per metric; bars grouped by map, one colour per condition. chance: optional
    {metric: value or {condition: value}} drawn as dashed lines, grey for one value, in the
    condition's colour per condition (e.g. auc 0.5, energy_inside the inside area).
    """
    import matplotlib.pyplot as plt

    conditions = list(scores)
    names = list(next(iter(scores.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(size[0] * len(metrics), size[1]), squeeze=False,
                             layout="constrained")
    width = 0.8 / len(conditions)
    pos = np.arange(len(names))
    colours = plt.get_cmap("tab10").colors
    for ax, metric in zip(axes[0], metrics):
        for i, cond in enumerate(conditions):
            vals = [scores[cond][n][metric] for n in names]
            ax.bar(pos + (i - (len(conditions) - 1) / 2) * width, vals, width, label=cond, color=colours[i % 10])
            level = (chance or {}).get(metric)
            if isinstance(level, dict) and level.get(cond) is not None:
                ax.axhline(level[cond], color=colours[i % 10], ls="--", lw=1)
        level = (chance or {}).get(metric)
        if level is not None and not isinstance(level, dict):
            ax.axhline(level, color="0.3", ls="--", lw=1)
        ax.set_xticks(pos, names, rotation=35, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def scale_energy(cd_maps: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of the squared CD carried by each scale, from `cdflow_maps` output ({"scale k": [B, H, W]}):
    mean over pixels and the batch of each scale's squared map over that of the combined map."""
    total = float(cd_maps[COMBINED].pow(2).mean())
    if total == 0 or not math.isfinite(total):
        raise ValueError(f"the combined map has no usable energy ({total})")
    return {n: float(m.pow(2).mean()) / total for n, m in cd_maps.items() if n != COMBINED}
