"""Latent editing with a CD-Flow: perturb or swap one scale's latent and decode through the exact inverse.

The flow f is a bijection, so any edit of the latents (z1 .. zK, finest first) decodes to an
image, x' = f^-1(z'). Two edits:

- ``perturb_latent``: add ``amplitude * direction`` to scale k's latent. Useful directions come
  from ``latent_pca``: the principal components of scale k's latent **channel vectors** over a
  corpus (every spatial position of every image is one sample of C_k numbers). The direction
  is added at every position of the latent (a spatially uniform edit at that scale). Two
  units for the amplitude: ``LatentPCA.direction(i)`` is scaled to the corpus's standard
  deviation along component i (amplitude in standard deviations, σ);
  ``LatentPCA.cd_direction(i, h, w)`` is scaled so that the edit changes the whole latent by
  an RMS of exactly 1, i.e. an unclipped edit of amplitude a has CD(x, x') = |a| on every
  scale (amplitude in CD units; the explorer's unit, ``AMPLITUDE_UNIT``).
- ``swap_scale``: give x the latent of y at scale k (or at several scales).

Decoded images can leave [0, 1]; they are clipped back (``clipped_fraction`` and
``perturb_clipping`` say how much was cut), so the CD of an edit is measured on the image a
viewer would see. Without clipping, CD(x, x') would be exactly the RMS of the latent edit; a
decode that clips more than ``BROKEN_CLIPPED_SHARE`` of its values is saturated, and the
explorer says so. ``safe_amplitude`` finds the largest amplitude that stays within it.

``latent_explorer`` builds an ipywidgets explorer of both edits; ``pc_grid_figure`` and
``swap_figure`` draw the same things as static figures.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._checks import check_image
from .metric import CDFlow

#: The unit of the explorer's amplitudes: "cd" (an unclipped edit of amplitude a has CD |a|) or "sigma".
AMPLITUDE_UNIT = "cd"
#: Amplitudes (CD units) of the static grid; the widget's slider range and its default edit.
DEFAULT_AMPLITUDES = (-2.0, -1.0, 0.0, 1.0, 2.0)
AMPLITUDE_RANGE = (-4.0, 4.0)
DEFAULT_AMPLITUDE = 1.0
#: Principal components offered per scale.
DEFAULT_COMPONENTS = 4
#: Minimum side, in pixels, of each image panel the widget shows (enlarged by an integer factor, nearest neighbour).
WIDGET_PANEL_PX = 224
#: A decoded value counts as clipped when it leaves [0, 1] by more than half an 8-bit level: a smaller
#: overshoot (float error of the inverse on a pixel that was already 0 or 1) rounds to the same 8-bit value.
CLIP_TOLERANCE = 0.5 / 255
#: Above this share of clipped values a decode is saturated, not a picture of the edit: the project's
#: target for the explorer's default edit (``analysis.targets.TARGETS["explorer_clipped_fraction"]``).
BROKEN_CLIPPED_SHARE = 0.02


def _check_scale(cd: CDFlow, scale: int) -> int:
    if not isinstance(scale, (int, np.integer)) or not 1 <= scale <= cd.n_scales:
        raise ValueError(f"scale must be an integer in 1..{cd.n_scales} (1 = finest), got {scale!r}")
    return int(scale)


def _decode(cd: CDFlow, zs) -> torch.Tensor:
    return cd.flow.inverse(zs).clamp(0.0, 1.0)


@dataclass(frozen=True)
class LatentPCA:
    """Principal components of scale `scale`'s latent channel vectors over a corpus.

    mean: [C] mean channel vector; components: [k, C] orthonormal rows, by decreasing
    variance; std: [k] corpus standard deviation along each component (latent units);
    explained: [k] share of the total variance (sum of all C eigenvalues) per component.
    """
    scale: int
    mean: torch.Tensor
    components: torch.Tensor
    std: torch.Tensor
    explained: torch.Tensor

    def direction(self, i: int) -> torch.Tensor:
        """Component i (0-based) scaled to one corpus standard deviation: [C]."""
        if not 0 <= i < len(self.std):
            raise ValueError(f"component index must be in 0..{len(self.std) - 1}, got {i}")
        return self.components[i] * self.std[i]

    def cd_direction(self, i: int, height: int, width: int) -> torch.Tensor:
        """Component i scaled so that adding it at every position of this scale's latent, for an
        image of height x width pixels, changes the latent by an RMS of 1 (CD 1 before clipping): [C].

        With n = h * w positions on this scale's grid and D = 3 * height * width numbers in all,
        the RMS of the edit is |v| * sqrt(n / D), so v = unit component * sqrt(D / n).
        """
        if not 0 <= i < len(self.std):
            raise ValueError(f"component index must be in 0..{len(self.std) - 1}, got {i}")
        factor = 2 ** self.scale
        n = (height // factor) * (width // factor)
        if n < 1 or height % factor or width % factor:
            raise ValueError(f"scale {self.scale} needs sides divisible by {factor}, got {height} x {width}")
        return self.components[i] * math.sqrt(3 * height * width / n)


@torch.no_grad()
def latent_pca(cd: CDFlow, images: torch.Tensor, scale: int, k: int = DEFAULT_COMPONENTS) -> LatentPCA:
    """The top k principal components of scale `scale`'s latent over `images`.

    images: [N, 3, H, W] sRGB in [0, 1]; scale: 1 (finest) .. K; k <= C_scale (the latent's
    channel count). Samples are the channel vectors at every position of every image
    (N * h * w samples of C numbers); the SVD runs in float64.
    """
    scale = _check_scale(cd, scale)
    z = cd.latents(images)[scale - 1]                                          # [N, C, h, w]
    c = z.shape[1]
    if not isinstance(k, int) or not 1 <= k <= c:
        raise ValueError(f"k must be an integer in 1..{c} (scale {scale} has {c} latent channels), got {k!r}")
    samples = z.permute(0, 2, 3, 1).reshape(-1, c).double()
    mean = samples.mean(0)
    _, sing, vt = torch.linalg.svd(samples - mean, full_matrices=False)
    var = sing ** 2 / max(len(samples) - 1, 1)
    return LatentPCA(scale, mean.to(z.dtype), vt[:k].to(z.dtype), var[:k].sqrt().to(z.dtype),
                     (var[:k] / var.sum()).to(z.dtype))


@torch.no_grad()
def perturb_latent(cd: CDFlow, x: torch.Tensor, scale: int, direction: torch.Tensor, amplitude: float) -> torch.Tensor:
    """x with `amplitude * direction` added to scale `scale`'s latent, decoded and clipped to [0, 1].

    x: [B, 3, H, W] sRGB in [0, 1]; direction: [C] (added at every position, e.g.
    ``LatentPCA.direction(i)``) or [C, h, w] (the latent's own shape); amplitude: a float.
    Returns [B, 3, H, W]. Amplitude 0 returns x up to the inverse's float error.
    """
    return _decode(cd, _perturbed_latents(cd, x, scale, direction, amplitude))


def _perturbed_latents(cd: CDFlow, x: torch.Tensor, scale: int, direction: torch.Tensor, amplitude: float):
    scale = _check_scale(cd, scale)
    zs = list(cd.latents(x))
    z = zs[scale - 1]
    d = torch.as_tensor(direction, dtype=z.dtype, device=z.device)
    if d.shape == (z.shape[1],):
        d = d.view(1, -1, 1, 1)
    elif d.shape != z.shape[1:]:
        raise ValueError(f"direction: expected shape ({z.shape[1]},) or {tuple(z.shape[1:])} "
                         f"for scale {scale}, got {tuple(d.shape)}")
    zs[scale - 1] = z + float(amplitude) * d
    return zs


@torch.no_grad()
def swap_scale(cd: CDFlow, x: torch.Tensor, y: torch.Tensor, scale: int | Sequence[int]) -> torch.Tensor:
    """x with its latent at `scale` (one scale or several) replaced by y's, decoded and clipped to [0, 1].

    x, y: [B, 3, H, W] sRGB in [0, 1], same shape. Swapping every scale 1..K gives y.
    """
    return _decode(cd, _swapped_latents(cd, x, y, scale))


def _swapped_latents(cd: CDFlow, x: torch.Tensor, y: torch.Tensor, scale: int | Sequence[int]):
    scales = [scale] if isinstance(scale, (int, np.integer)) else list(scale)
    scales = {_check_scale(cd, k) for k in scales}
    cd.check_images(x, y)
    zs = cd.latents(torch.cat([x, y]))
    b = x.shape[0]
    return [z[b:] if k in scales else z[:b] for k, z in enumerate(zs, 1)]


@torch.no_grad()
def default_edit(cd: CDFlow, x: torch.Tensor, pca: LatentPCA) -> tuple[torch.Tensor, float]:
    """The explorer's default edit of x [1, 3, H, W]: DEFAULT_AMPLITUDE (AMPLITUDE_UNIT) along PC 1 of
    `pca`'s scale (the coarsest, in the explorer). Returns (decoded image clipped to [0, 1], share
    of its values that the clipping cut)."""
    zs = list(cd.latents(x))
    d = unit_direction(pca, 0, x).to(zs[pca.scale - 1])
    zs[pca.scale - 1] = zs[pca.scale - 1] + DEFAULT_AMPLITUDE * d.view(1, -1, 1, 1)
    return _decode(cd, zs), clipped_fraction(cd, zs)


@torch.no_grad()
def clipped_fraction(cd: CDFlow, zs, tol: float = CLIP_TOLERANCE) -> float:
    """Share of the values of f^-1(zs) outside [-tol, 1 + tol] (what the clipping of decoded images cuts)."""
    return float(_outside(cd.flow.inverse(zs), tol).mean())


def _outside(images: torch.Tensor, tol: float) -> torch.Tensor:
    """1.0 where a value lies outside [-tol, 1 + tol], else 0.0 (same shape)."""
    return ((images < -tol) | (images > 1 + tol)).float()


@torch.no_grad()
def perturb_clipping(cd: CDFlow, x: torch.Tensor, scale: int, direction: torch.Tensor, amplitudes,
                     tol: float = CLIP_TOLERANCE) -> np.ndarray:
    """Clipped share (`clipped_fraction`) of `perturb_latent(cd, x, scale, direction, a)` for each a: [A].

    x: [1, 3, H, W] sRGB in [0, 1]; direction: [C] (added at every position); amplitudes: A floats.
    The A edits are decoded as one batch.
    """
    scale = _check_scale(cd, scale)
    check_image(x, "x")
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one image [1, 3, H, W], got batch size {x.shape[0]}")
    zs = cd.latents(x)
    a = torch.as_tensor(list(amplitudes), dtype=zs[0].dtype, device=zs[0].device).view(-1, 1, 1, 1)
    d = torch.as_tensor(direction, dtype=zs[0].dtype, device=zs[0].device).view(1, -1, 1, 1)
    edited = [z.expand(len(a), *z.shape[1:]) + (a * d if k == scale else 0) for k, z in enumerate(zs, 1)]
    out = cd.flow.inverse(edited)
    return _outside(out, tol).flatten(1).mean(1).cpu().numpy()


@torch.no_grad()
def safe_amplitude(cd: CDFlow, x: torch.Tensor, scale: int, direction: torch.Tensor, limit: float = BROKEN_CLIPPED_SHARE,
                   high: float = AMPLITUDE_RANGE[1], resolution: float = 1e-3) -> float:
    """The largest amplitude a in [0, high] whose edit (`perturb_latent` along `direction`) clips at most
    `limit` of the decoded values, by bisection to `resolution` (in the direction's unit).

    x: [1, 3, H, W] sRGB in [0, 1]. Assumes the clipped share grows with a (true on every package photo);
    returns `high` when even that edit stays within the limit, 0.0 when x itself decodes beyond it.
    """
    def share(a):
        return float(perturb_clipping(cd, x, scale, direction, [a])[0])

    if share(high) <= limit:
        return float(high)
    lo, hi = 0.0, float(high)
    if share(lo) > limit:
        return 0.0
    while hi - lo > resolution:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if share(mid) <= limit else (lo, mid)
    return lo


def edit_attribution(x: torch.Tensor, y: torch.Tensor, edited: torch.Tensor) -> dict[str, np.ndarray]:
    """Whose colour and whose form an edited image has: x's, y's, or a mix.

    x: [1, 3, H, W] the original, y: [1, 3, H, W] a second reference (the swap partner; or x
    again for a perturbation), both sRGB in [0, 1]; edited: [N, 3, H, W] (e.g. `swap_table`'s
    or `pc_grid`'s images).
    Returns [N] arrays:
    - ``colour_to_x``, ``colour_to_y``: CIEDE2000 between the image-mean CIELAB colour of
      each edited image and that of x (of y): the global colour cast;
    - ``form_x``, ``form_y``: Pearson correlation of the edited image's CIELAB L* with x's
      (with y's) over the pixels: the spatial layout of lightness.
    """
    from . import colour

    check_image(x, "x")
    check_image(y, "y")
    check_image(edited, "edited")
    if not x.shape[0] == y.shape[0] == 1 or x.shape[1:] != edited.shape[1:] or y.shape != x.shape:
        raise ValueError(f"expected x, y [1, 3, H, W] and edited [N, 3, H, W] of one size, "
                         f"got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(edited.shape)}")
    lab_e, lab_x, lab_y = (colour.srgb_to_lab(t.double()) for t in (edited, x, y))
    mean_e, mean_x, mean_y = (t.mean((2, 3)) for t in (lab_e, lab_x, lab_y))

    def corr(a, b):
        a, b = a - a.mean((1, 2), keepdim=True), b - b.mean((1, 2), keepdim=True)
        return ((a * b).sum((1, 2)) / (a.pow(2).sum((1, 2)) * b.pow(2).sum((1, 2))).sqrt()).numpy()

    return dict(colour_to_x=colour.delta_e2000(mean_e, mean_x.expand_as(mean_e)).numpy(),
                colour_to_y=colour.delta_e2000(mean_e, mean_y.expand_as(mean_e)).numpy(),
                form_x=corr(lab_e[:, 0], lab_x[:, 0]), form_y=corr(lab_e[:, 0], lab_y[:, 0]))


# ----------------------------------------------------------------------------- static figures

def unit_direction(pca: LatentPCA, i: int, x: torch.Tensor, unit: str = AMPLITUDE_UNIT) -> torch.Tensor:
    """Component i of `pca` in the amplitude unit `unit` ("cd" or "sigma") for images shaped like x."""
    if unit == "cd":
        return pca.cd_direction(i, x.shape[-2], x.shape[-1])
    if unit == "sigma":
        return pca.direction(i)
    raise ValueError(f"unit must be 'cd' or 'sigma', got {unit!r}")


def unit_symbol(unit: str = AMPLITUDE_UNIT) -> str:
    return {"cd": " CD", "sigma": "σ"}[unit]


@torch.no_grad()
def pc_grid(cd: CDFlow, x: torch.Tensor, pcas: Sequence[LatentPCA], amplitudes=DEFAULT_AMPLITUDES,
            component: int = 0, unit: str = AMPLITUDE_UNIT):
    """Decoded images and their CD to x for one component per scale over `amplitudes` (in `unit`).

    x: [1, 3, H, W]; pcas: one LatentPCA per scale to show. Returns (images [S, A, 3, H, W],
    cds [S, A] numpy) with S = len(pcas), A = len(amplitudes).
    """
    check_image(x, "x")
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one image [1, 3, H, W], got batch size {x.shape[0]}")
    images, cds = [], []
    for pca in pcas:
        d = unit_direction(pca, component, x, unit)
        row = torch.cat([perturb_latent(cd, x, pca.scale, d, a) for a in amplitudes])
        images.append(row)
        cds.append(cd(x.expand_as(row), row).cpu().numpy())
    return torch.stack(images), np.stack(cds)


def pc_grid_figure(images: torch.Tensor, cds: np.ndarray, scales: Sequence[int], amplitudes=DEFAULT_AMPLITUDES,
                   component: int = 0, size: float = 1.8, suptitle: str | None = None, unit: str = AMPLITUDE_UNIT,
                   clipped: np.ndarray | None = None):
    """A grid of decoded images (rows: scales, columns: amplitudes) titled with their CD to the original.

    images: [S, A, 3, H, W] and cds: [S, A] from `pc_grid`; scales: the S scale numbers; clipped:
    optional [S, A] clipped shares (`perturb_clipping`): each title then gives its share, and a panel
    above BROKEN_CLIPPED_SHARE is titled "saturated" in red (its picture is not a finding).
    """
    import matplotlib.pyplot as plt

    from .plotting import to_numpy_image

    s, a = images.shape[:2]
    fig, axes = plt.subplots(s, a, figsize=(size * a, size * s + 0.3), squeeze=False, layout="constrained")
    for i in range(s):
        for j in range(a):
            ax = axes[i, j]
            ax.imshow(to_numpy_image(images[i, j]))
            ax.set_xticks([])
            ax.set_yticks([])
            title, colour = f"{amplitudes[j]:+.1f}{unit_symbol(unit)}: CD {cds[i, j]:.3f}", "black"
            if clipped is not None:
                broken = clipped[i, j] > BROKEN_CLIPPED_SHARE
                title += f"\n{clipped[i, j]:.0%} clipped" + (": saturated" if broken else "")
                colour = "tab:red" if broken else colour
            ax.set_title(title, fontsize=8, color=colour)
        axes[i, 0].set_ylabel(f"scale {scales[i]}, PC {component + 1}", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


@torch.no_grad()
def swap_table(cd: CDFlow, x: torch.Tensor, y: torch.Tensor):
    """x with y's latent at each single scale: (images [K, 3, H, W], CD to x [K], CD to y [K]).

    x, y: [1, 3, H, W] sRGB in [0, 1]. Row k - 1 swaps scale k.
    """
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one image [1, 3, H, W], got batch size {x.shape[0]}")
    swapped = torch.cat([swap_scale(cd, x, y, k) for k in range(1, cd.n_scales + 1)])
    return swapped, cd(x.expand_as(swapped), swapped).cpu().numpy(), cd(y.expand_as(swapped), swapped).cpu().numpy()


def swap_figure(x: torch.Tensor, y: torch.Tensor, swapped: torch.Tensor, cd_x: np.ndarray, cd_y: np.ndarray,
                names=("x", "y"), size: float = 2.0, suptitle: str | None = None):
    """x, y, then x with y's latent at scale k for k = 1..K, titled with the CD to x and to y.

    x, y: [1, 3, H, W] or [3, H, W]; swapped, cd_x, cd_y: from `swap_table`.
    """
    import matplotlib.pyplot as plt

    from .plotting import to_numpy_image

    panels = [(x.reshape(3, *x.shape[-2:]), names[0]), (y.reshape(3, *y.shape[-2:]), names[1])]
    panels += [(img, f"z{k} from {names[1]}\nCD to {names[0]} {a:.3f}\nCD to {names[1]} {b:.3f}")
               for k, (img, a, b) in enumerate(zip(swapped, cd_x, cd_y), 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.8), squeeze=False,
                             layout="constrained")
    for ax, (img, title) in zip(axes[0], panels):
        ax.imshow(to_numpy_image(img))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- the widget

def _png(images, panel: int = WIDGET_PANEL_PX) -> bytes:
    """[3, H, W] images in [0, 1] side by side as PNG bytes, each enlarged (nearest neighbour, integer
    factor) to at least `panel` px high."""
    from PIL import Image

    from .plotting import to_numpy_image

    tiles = []
    for img in images:
        arr = (to_numpy_image(img) * 255 + 0.5).astype(np.uint8)
        factor = max(1, -(-panel // arr.shape[0]))          # ceil: at least `panel` px high
        tiles.append(arr.repeat(factor, 0).repeat(factor, 1))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    buf = io.BytesIO()
    Image.fromarray(row).save(buf, format="png")
    return buf.getvalue()


def latent_explorer(cd: CDFlow, images: torch.Tensor, names: Sequence[str] | None = None,
                    n_components: int = DEFAULT_COMPONENTS):
    """An ipywidgets explorer: pick an image and a scale, then perturb that scale's latent
    along a principal component (`latent_pca` over `images`) or swap it with a second image.
    The amplitude slider is in AMPLITUDE_UNIT (CD units: an unclipped edit of amplitude a has CD |a|);
    the default edit is DEFAULT_AMPLITUDE along PC 1 of the coarsest scale (`default_edit`).

    images: [N, 3, H, W] sRGB in [0, 1] (the corpus, also the PCA's samples); names: N labels.
    Shows the original, the decoded edit and |difference| x 4, and the CD between original and
    edit (and, for a swap, to the second image). Sliders use ``continuous_update=False``.
    Returns the widget (an ``ipywidgets.VBox``); display it in the notebook. PCAs are computed
    on first use of each scale and kept.
    """
    import ipywidgets as w

    check_image(images, "images", multiple=2 ** cd.n_scales)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"names: expected {len(images)} labels, got {len(names)}")
    options = list(zip(names, range(len(images))))
    image = w.Dropdown(options=options, value=0, description="image")
    partner = w.Dropdown(options=options, value=min(1, len(images) - 1), description="swap with")
    scale = w.IntSlider(value=cd.n_scales, min=1, max=cd.n_scales, description="scale", continuous_update=False)
    mode = w.ToggleButtons(options=["perturb", "swap"], value="perturb", description="edit")
    component = w.Dropdown(options=[(f"PC {i + 1}", i) for i in range(n_components)], value=0, description="direction")
    amplitude = w.FloatSlider(value=DEFAULT_AMPLITUDE, min=AMPLITUDE_RANGE[0], max=AMPLITUDE_RANGE[1], step=0.25,
                              description=f"amplitude ({AMPLITUDE_UNIT})", continuous_update=False)
    picture = w.Image(format="png")
    report = w.HTML()
    pcas: dict[int, LatentPCA] = {}

    @torch.no_grad()
    def update(_=None):
        x = images[image.value:image.value + 1]
        k = scale.value
        if mode.value == "perturb":
            if k not in pcas:
                c = cd.flow.latent_shapes(*images.shape[-2:])[k - 1][0]
                pcas[k] = latent_pca(cd, images, k, min(n_components, c))
            pca = pcas[k]
            i = min(component.value, len(pca.std) - 1)
            zs = _perturbed_latents(cd, x, k, unit_direction(pca, i, x), amplitude.value)
            extra = f"PC {i + 1} of scale {k} explains {100 * float(pca.explained[i]):.1f}% of its variance"
        else:
            y = images[partner.value:partner.value + 1]
            zs = _swapped_latents(cd, x, y, k)
        raw = cd.flow.inverse(zs)
        edited = raw.clamp(0.0, 1.0)
        if mode.value == "swap":
            extra = f"CD(edit, {names[partner.value]}) = {float(cd(y, edited)):.4f}"
        change = float(cd(x, edited))
        clipped = float(_outside(raw, CLIP_TOLERANCE).mean())
        verdict = (f"<b>{clipped:.1%} of the decoded values clipped: the edit breaks the image</b> (saturated; "
                   f"over {BROKEN_CLIPPED_SHARE:.0%}, not a picture of what the latent encodes)"
                   if clipped > BROKEN_CLIPPED_SHARE else f"{clipped:.1%} of the decoded values clipped")
        diff = ((edited - x).abs() * 4).clamp(0, 1)
        picture.value = _png([x[0], edited[0], diff[0]])
        report.value = (f"<b>CD(original, edit) = {change:.4f}</b> &nbsp; {extra}<br>{verdict}<br>"
                        "panels: original | decoded edit | |difference| x 4")
        component.disabled = amplitude.disabled = mode.value == "swap"
        partner.disabled = mode.value == "perturb"

    for control in (image, partner, scale, mode, component, amplitude):
        control.observe(update, names="value")
    update()
    return w.VBox([w.HBox([image, scale, mode]), w.HBox([component, amplitude, partner]), picture, report])
