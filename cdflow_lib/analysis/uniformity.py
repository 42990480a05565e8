"""Perceptual uniformity of colour-difference measures on uniform colour patches.

A measure is perceptually uniform when equal distances mean equal perceived differences
everywhere in colour space. Three classical tests, applied to any measure that compares two
colours - CIELAB ΔE76 and CIEDE2000 on the colours, CD-Flow on the colours rendered as uniform
sRGB patch images (``patches.uniform_pair_images``):

1. **MacAdam (1942) ellipses.** MacAdam measured, for 25 chromaticities at constant
   luminance, the standard deviation of colour matching along every direction in the CIE
   1931 xy diagram: an ellipse per centre (observer PGN; Wyszecki & Stiles 2000, table
   2(5.4.1); we use the "calculated" columns, as colour-science recommends). For a measure
   we find its own threshold contour around each centre - the step along each of N
   directions in xy, at fixed Y, at which the measure reaches a fixed small distance
   (``threshold_steps``) - and fit an ellipse to it (``fit_ellipse``). A perfectly uniform
   measure predicts MacAdam's ellipses up to one common scale; equivalently, in the
   measure's own (locally Euclidean) space MacAdam's ellipses become equal circles.
   ``ellipse_agreement`` defines the numbers that say how far from that a measure is.
2. **Munsell value and chroma steps.** The Munsell renotation (Newhall, Nickerson & Judd
   1943) spaces its chips in visually equal steps: value steps of 1 at fixed hue and
   chroma, chroma steps of 2 at fixed hue and value. A uniform measure gives equal
   distances to all steps of one kind: ``step_uniformity`` reports their coefficient of
   variation (0 is perfectly uniform).
3. **COMBVD STRESS** (``combvd_stress``): agreement with the visual differences of 3,813
   surface-colour pairs, via ``patches``.

Colour conventions. MacAdam's and Munsell's colours are CIE xyY under illuminant C (2°
observer), Y of the white = 1 (the Munsell renotation's Y, relative to smoked MgO = 100, is
divided by 100). They are shown on an sRGB display, as ``patches`` renders COMBVD: CAT16
from illuminant C to the sRGB white with full adaptation, then XYZ -> linear sRGB. A
colour with a linear channel outside [0, 1] (beyond ``patches.GAMUT_TOLERANCE``) cannot be
shown and is left out: MacAdam centres whose neighbourhood leaves the gamut
(``macadam_ellipses``), Munsell chips outside the gamut (``munsell_chips``); a distance
asked for an out-of-gamut colour raises a ValueError (``on_chromaticity``). Every measure
then sees the same rendered colours, so ΔE76 and CIEDE2000 are computed in CIELAB relative
to the sRGB white (D65), like the image baselines.

Distances come in two kinds: an ``SrgbDistance`` compares sRGB colours
(``srgb1, srgb2: [N, 3]`` in [0, 1] -> ``[N]``); a ``ColourDistance`` compares xyY colours
(``xyY1, xyY2: [N, 3]`` -> ``[N]``). ``image_distance`` and ``cdflow_distance`` make the
first from an image measure, ``on_chromaticity`` turns it into the second.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Mapping

import numpy as np
import torch

from .. import colour
from ..patches import (ADAPTATION_TRANSFORM, COMBVD_SUBSETS, GAMUT_TOLERANCE, PatchPairs, load_combvd,
                       render_srgb, rendered_differences, stress_by_subset, uniform_pair_images)

# ----------------------------------------------------------------------------- constants

#: Chromaticity of CIE illuminant C, CIE 1931 2° observer (CIE 15:2004, as in colour-science's
#: CCS_ILLUMINANTS): the white of MacAdam's experiment and of the Munsell renotation.
ILLUMINANT_C_XY = (0.31006, 0.31616)
#: MacAdam's semi-axes are tabulated in units of 10^-3 of the xy chromaticity.
MACADAM_AXIS_UNIT = 1e-3
#: Luminance factor Y (white = 1) of every MacAdam colour here. MacAdam kept his field at
#: 48 cd/m² on a 24 cd/m² surround; on an sRGB display that is Y ≈ 0.6, where only 4 of the
#: 25 centres can be shown. At Y = 0.2 (L* ≈ 52, a mid grey's lightness) 12 centres fit with
#: their neighbourhood, the most of any luminance tried (0.05 .. 0.4).
MACADAM_LUMINANCE = 0.2
#: A MacAdam centre is used when the whole disc of this radius (in xy) around it renders
#: inside the sRGB gamut at MACADAM_LUMINANCE: 3 to 30 times MacAdam's semi-axes, so every
#: threshold contour stays in the gamut.
MACADAM_GAMUT_MARGIN = 0.01
#: Points on the margin circle tested for the gamut (every 5 degrees).
GAMUT_TEST_POINTS = 72
#: Directions of the threshold search, evenly spread over the full circle.
N_DIRECTIONS = 16
#: Points per MacAdam ellipse at which ``reference_threshold`` measures a distance.
REFERENCE_POINTS = 8
#: Patch side in pixels: 2^5, the smallest image the 5-scale shipped model accepts. CD-Flow is
#: fully convolutional, but its values depend on the size through the borders (zero padding).
PATCH_SIZE = 32
#: The Munsell renotation's Y is relative to smoked MgO = 100; we divide by 100 (white = 1).
MUNSELL_Y_SCALE = 0.01
#: Adjacent Munsell chips: one value step, or one chroma step of 2 (the renotation's grid).
MUNSELL_STEP = {"value": 1.0, "chroma": 2.0}
#: The ten principal and intermediate hues at the middle of their hue sectors.
PRINCIPAL_HUES = ("5R", "5YR", "5Y", "5GY", "5G", "5BG", "5B", "5PB", "5P", "5RP")

SrgbDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]
ColourDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- colours

def _colours(a, name: str) -> np.ndarray:
    """An [N, 3] finite float64 array, or a ValueError naming `name`."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name}: expected [N, 3] colours, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return a


def xyY_to_xyz(xyY) -> np.ndarray:
    """xyY: [N, 3] chromaticity x, y (y > 0) and luminance factor Y -> [N, 3] XYZ (same Y scale)."""
    xyY = _colours(xyY, "xyY")
    x, y, Y = xyY.T
    if np.any(y <= 0):
        raise ValueError("xyY: chromaticity y must be > 0")
    return np.stack([x / y * Y, Y, (1.0 - x - y) / y * Y], axis=1)


def _white_xyz(white_xy) -> np.ndarray:
    return xyY_to_xyz([[white_xy[0], white_xy[1], 1.0]])[0]


def xyY_to_srgb(xyY, white_xy=ILLUMINANT_C_XY) -> tuple[np.ndarray, np.ndarray]:
    """Render colours seen under the white `white_xy` on an sRGB display (see the module doc).

    xyY: [N, 3], Y of the white = 1. Returns srgb: [N, 3] in [0, 1] (float64; out-of-gamut
    colours clipped in linear RGB) and in_gamut: [N] bool.
    """
    from colour.adaptation import chromatic_adaptation_VonKries

    xyz = xyY_to_xyz(xyY)
    adapted = chromatic_adaptation_VonKries(xyz, _white_xyz(white_xy), np.asarray(colour.D65_XYZ),
                                            transform=ADAPTATION_TRANSFORM)
    linear = colour.xyz_to_linear_srgb(torch.from_numpy(np.atleast_2d(adapted)))
    in_gamut = ((linear >= -GAMUT_TOLERANCE) & (linear <= 1 + GAMUT_TOLERANCE)).all(1).numpy()
    srgb = colour.linear_to_srgb(linear.clamp(0.0, 1.0)).clamp(0.0, 1.0).numpy()
    return srgb, in_gamut


def srgb_gamut_xy(white_xy=ILLUMINANT_C_XY) -> np.ndarray:
    """[3, 2] xy of the sRGB primaries (R, G, B) as seen under `white_xy` (inverse CAT16).

    The triangle of colours ``xyY_to_srgb`` can show (at a low enough Y).
    """
    from colour.adaptation import chromatic_adaptation_VonKries

    primaries = colour.linear_srgb_to_xyz(torch.eye(3, dtype=torch.float64)).numpy()
    back = chromatic_adaptation_VonKries(primaries, np.asarray(colour.D65_XYZ), _white_xyz(white_xy),
                                         transform=ADAPTATION_TRANSFORM)
    return back[:, :2] / back.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- distances

def image_distance(measure, size: int = PATCH_SIZE, batch_size: int = 512,
                   dtype: torch.dtype = torch.float64) -> SrgbDistance:
    """An image measure as a distance between sRGB colours, each shown as a uniform patch.

    measure(x, y) -> [B] on x, y: [B, 3, size, size] sRGB in [0, 1] (e.g. a ``baselines``
    measure). Returns distance(srgb1, srgb2) with srgb1, srgb2: [N, 3] in [0, 1] -> [N] float64.
    """
    def distance(srgb1, srgb2) -> np.ndarray:
        s1, s2 = _colours(srgb1, "srgb1"), _colours(srgb2, "srgb2")
        out = []
        with torch.no_grad():
            for i in range(0, len(s1), batch_size):
                x, y = uniform_pair_images(s1[i:i + batch_size], s2[i:i + batch_size], size, dtype=dtype)
                out.append(measure(x, y).detach().cpu().double().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return distance


def cdflow_distance(model, size: int = PATCH_SIZE, batch_size: int = 64) -> SrgbDistance:
    """CD-Flow (all scales, eps = 0: the exact metric) between uniform patches of sRGB colours.

    model: a ``metric.CDFlow`` (on any device; evaluated without gradients in its dtype).
    The distance of two patches depends only on their latents, so each distinct colour goes
    through the flow once, however many pairs it is in. Same values as
    ``image_distance(lambda x, y: model(x, y, eps=0.0), size)``. Returns distance(srgb1,
    srgb2): [N, 3] sRGB in [0, 1] each -> [N] float64.
    """
    from ..metric import CDFlow

    def distance(srgb1, srgb2) -> np.ndarray:
        s1, s2 = _colours(srgb1, "srgb1"), _colours(srgb2, "srgb2")
        if s1.shape != s2.shape:
            raise ValueError(f"srgb1 and srgb2 must have the same shape, got {s1.shape} and {s2.shape}")
        unique, inverse = np.unique(np.concatenate([s1, s2]), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        p = next(model.parameters())
        latents = []
        with torch.no_grad():
            for i in range(0, len(unique), batch_size):
                x, _ = uniform_pair_images(unique[i:i + batch_size], unique[i:i + batch_size], size, dtype=p.dtype)
                latents.append(model.latents(x.to(p.device)))
            zs = [torch.cat(level) for level in zip(*latents)]
            ix, iy = (torch.as_tensor(inverse[:len(s1)]), torch.as_tensor(inverse[len(s1):]))
            out = [CDFlow.cumulative_distances([z[ix[i:i + batch_size].to(z.device)] for z in zs],
                                               [z[iy[i:i + batch_size].to(z.device)] for z in zs], eps=0.0)[-1]
                   for i in range(0, len(s1), batch_size)]
        return torch.cat(out).cpu().double().numpy() if out else np.zeros(0)

    return distance


def on_chromaticity(distance: SrgbDistance, white_xy=ILLUMINANT_C_XY) -> ColourDistance:
    """An sRGB distance as a distance between xyY colours seen under `white_xy` (``xyY_to_srgb``).

    The returned function raises a ValueError when a colour is outside the sRGB gamut.
    """
    def on_xyY(xyY1, xyY2) -> np.ndarray:
        (s1, ok1), (s2, ok2) = xyY_to_srgb(xyY1, white_xy), xyY_to_srgb(xyY2, white_xy)
        bad = int((~ok1).sum() + (~ok2).sum())
        if bad:
            raise ValueError(f"{bad} colour(s) outside the sRGB gamut: select in-gamut colours, or use a "
                             "smaller threshold or luminance")
        return distance(s1, s2)

    return on_xyY


def xy_distance(xyY1, xyY2) -> np.ndarray:
    """Euclidean distance in the CIE 1931 xy chromaticity diagram (ignores Y). [N, 3] x2 -> [N]."""
    return np.linalg.norm(_colours(xyY1, "xyY1")[:, :2] - _colours(xyY2, "xyY2")[:, :2], axis=1)


def xy_to_uv(xy) -> np.ndarray:
    """[..., 2] CIE 1931 xy -> [..., 2] CIE 1976 UCS u'v' (u' = 4x / d, v' = 9y / d, d = -2x + 12y + 3)."""
    xy = np.asarray(xy, dtype=np.float64)
    d = -2.0 * xy[..., 0] + 12.0 * xy[..., 1] + 3.0
    return np.stack([4.0 * xy[..., 0] / d, 9.0 * xy[..., 1] / d], axis=-1)


def uv_distance(xyY1, xyY2) -> np.ndarray:
    """Euclidean distance in the CIE 1976 u'v' chromaticity diagram (ignores Y). [N, 3] x2 -> [N]."""
    a, b = _colours(xyY1, "xyY1"), _colours(xyY2, "xyY2")
    return np.linalg.norm(xy_to_uv(a[:, :2]) - xy_to_uv(b[:, :2]), axis=1)


# ----------------------------------------------------------------------------- threshold search

def unit_directions(n: int = N_DIRECTIONS) -> np.ndarray:
    """[n, 2] unit vectors at angles 2πk/n, k = 0 .. n-1 (counter-clockwise from +x)."""
    if n < 3:
        raise ValueError(f"need at least 3 directions to fit an ellipse, got {n}")
    angle = 2.0 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def threshold_steps(distance: ColourDistance, centres, directions, threshold: float, *,
                    initial_step: float = 1e-3, rtol: float = 1e-3, max_evaluations: int = 40) -> np.ndarray:
    """The step along each direction at which a measure reaches `threshold`.

    distance: a ColourDistance; centres: [n, 3] xyY; directions: [m, 2] unit vectors in xy;
    threshold > 0 in the measure's units. For every centre c and direction u, finds t > 0 with
    distance(c, c + t·(u, 0)) = threshold (Y fixed) within a relative tolerance `rtol` on the
    distance. Returns [n, m] steps in xy units.

    The search assumes the distance grows with t from 0 (the first crossing is found). Until
    the threshold is bracketed, the next step extrapolates linearly through the origin (at
    most x4 at a time); then Illinois regula falsi, which is exact in one step for a distance
    linear in t. All rays are evaluated together, one call of `distance` per round.
    """
    centres, directions = _colours(centres, "centres"), np.asarray(directions, dtype=np.float64)
    if directions.ndim != 2 or directions.shape[1] != 2:
        raise ValueError(f"directions: expected [m, 2] unit vectors, got shape {directions.shape}")
    if not np.allclose(np.linalg.norm(directions, axis=1), 1.0):
        raise ValueError("directions must be unit vectors")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    n, m = len(centres), len(directions)
    c = np.repeat(centres, m, axis=0)
    u = np.concatenate([np.tile(directions, (n, 1)), np.zeros((n * m, 1))], axis=1)
    lo, f_lo = np.zeros(n * m), np.full(n * m, -threshold)
    hi, f_hi = np.full(n * m, np.inf), np.full(n * m, np.nan)
    last = np.zeros(n * m, dtype=int)            # -1: lo moved last, +1: hi moved last
    t = np.full(n * m, float(initial_step))
    done = np.zeros(n * m, dtype=bool)
    for _ in range(max_evaluations):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        d = np.asarray(distance(c[act], c[act] + t[act, None] * u[act]), dtype=np.float64)
        f = d - threshold
        converged = np.abs(f) <= rtol * threshold
        done[act] = converged
        act, d, f = act[~converged], d[~converged], f[~converged]
        below = f < 0
        for mask, end, f_end, other_f, side in ((below, lo, f_lo, f_hi, -1), (~below, hi, f_hi, f_lo, 1)):
            idx = act[mask]
            other_f[idx[last[idx] == side]] *= 0.5       # Illinois: an end kept twice counts half
            end[idx], f_end[idx], last[idx] = t[idx], f[mask], side
        bracketed = np.isfinite(hi[act])
        grow = np.where(d > 0, threshold / np.maximum(d, np.finfo(float).tiny), 4.0)
        t[act[~bracketed]] *= np.clip(grow[~bracketed], 1.0, 4.0)
        b = act[bracketed]
        t[b] = lo[b] - f_lo[b] * (hi[b] - lo[b]) / (f_hi[b] - f_lo[b])
    if not done.all():
        raise ValueError(f"threshold search did not converge for {int((~done).sum())} of {n * m} rays in "
                         f"{max_evaluations} evaluations (is the distance increasing from 0 along each ray?)")
    return t.reshape(n, m)


# ----------------------------------------------------------------------------- ellipses

def ellipse_matrix(a, b, theta_deg) -> np.ndarray:
    """Ellipses as matrices: [..., 2, 2] A with boundary {Δ : Δᵀ A Δ = 1} (Δ in xy).

    a, b: semi-axes (> 0, xy units; a along the direction theta_deg, counter-clockwise from +x).
    """
    a, b, th = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, theta_deg)))
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("semi-axes must be > 0")
    c, s = np.cos(np.deg2rad(th)), np.sin(np.deg2rad(th))
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)         # columns: major, minor axis
    scale = np.zeros(a.shape + (2, 2))
    scale[..., 0, 0], scale[..., 1, 1] = a ** -2.0, b ** -2.0
    return rot @ scale @ np.swapaxes(rot, -1, -2)


def ellipse_axes(matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``ellipse_matrix``: [..., 2, 2] -> semi-major a, semi-minor b, theta in [0, 180) degrees."""
    matrix = np.asarray(matrix, dtype=np.float64)
    w, v = np.linalg.eigh(matrix)                                              # ascending: w[0] <-> major axis
    if np.any(w <= 0):
        raise ValueError("ellipse matrices must be positive definite")
    theta = np.rad2deg(np.arctan2(v[..., 1, 0], v[..., 0, 0])) % 180.0
    return w[..., 0] ** -0.5, w[..., 1] ** -0.5, theta


def fit_ellipse(directions, steps) -> tuple[np.ndarray, np.ndarray]:
    """Centred ellipses through threshold contours, by least squares on 1/t² = uᵀ A u.

    directions: [m, 2] unit vectors (m >= 3); steps: [n, m] contour steps t > 0 along them.
    Returns matrices [n, 2, 2] (see ``ellipse_matrix``) and residuals [n]: the RMS over the
    directions of t_ellipse / t - 1, 0 when the contour is exactly an ellipse.
    """
    u = np.asarray(directions, dtype=np.float64)
    t = np.atleast_2d(np.asarray(steps, dtype=np.float64))
    if t.shape[1] != len(u) or len(u) < 3:
        raise ValueError(f"steps must be [n, m] for m >= 3 directions, got {t.shape} for {len(u)} directions")
    if not (np.isfinite(t).all() and np.all(t > 0)):
        raise ValueError("steps must be finite and > 0")
    design = np.stack([u[:, 0] ** 2, 2.0 * u[:, 0] * u[:, 1], u[:, 1] ** 2], axis=1)
    coef = np.linalg.lstsq(design, (t ** -2.0).T, rcond=None)[0].T                # [n, 3]
    matrix = np.stack([np.stack([coef[:, 0], coef[:, 1]], -1), np.stack([coef[:, 1], coef[:, 2]], -1)], -2)
    if np.any(np.linalg.eigvalsh(matrix) <= 0):
        raise ValueError("a threshold contour does not fit an ellipse (the fitted form is not positive definite)")
    quad = coef @ design.T                                                         # [n, m] uᵀ A u
    residual = np.sqrt(np.mean((quad ** -0.5 / t - 1.0) ** 2, axis=1))
    return matrix, residual


def mapped_axes(reference, predicted) -> tuple[np.ndarray, np.ndarray]:
    """Semi-axes of the `reference` ellipses in the space where `predicted` ellipses are unit circles.

    reference, predicted: [n, 2, 2] ellipse matrices (``ellipse_matrix``). For a measure whose
    threshold ellipse is `predicted`, the map Δ -> A^(1/2) Δ makes its contour a unit circle
    and its distances locally Euclidean (in threshold units). The reference ellipse M becomes
    an ellipse with semi-axes 1/sqrt(λ), λ the generalised eigenvalues of M v = λ A v.
    Returns (major, minor), each [n], major >= minor.
    """
    from scipy.linalg import eigh

    lam = np.array([eigh(m, a, eigvals_only=True) for m, a in zip(np.asarray(reference), np.asarray(predicted))])
    return lam[:, 0] ** -0.5, lam[:, 1] ** -0.5


def coefficient_of_variation(values) -> float:
    """Standard deviation (population, ddof = 0) over mean of positive values: 0 when all are equal."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all() or np.any(v <= 0):
        raise ValueError("coefficient_of_variation needs a non-empty set of finite positive values")
    return float(v.std() / v.mean())


def ellipse_agreement(reference, predicted) -> dict[str, np.ndarray]:
    """How a measure's threshold ellipses (`predicted`) compare with measured ones (`reference`).

    reference, predicted: [n, 2, 2] ellipse matrices. Per ellipse, [n] arrays:

    - ``axis_ratio``: major / minor semi-axis of the reference ellipse in the measure's
      space (``mapped_axes``); 1 when the measure predicts the reference's shape and
      orientation exactly (the reference maps to a circle).
    - ``size``: sqrt(major · minor) in that space, i.e. sqrt(reference area / predicted
      area); a uniform measure gives one value for all ellipses (its CV is 0).
    - ``major_ratio``, ``minor_ratio``: predicted / reference semi-major and semi-minor axes.
    - ``orientation_error``: angle between the two major axes, degrees in [0, 90].
    """
    major, minor = mapped_axes(reference, predicted)
    a_ref, b_ref, th_ref = ellipse_axes(reference)
    a_pred, b_pred, th_pred = ellipse_axes(predicted)
    diff = np.abs(th_pred - th_ref) % 180.0
    return {"axis_ratio": major / minor, "size": np.sqrt(major * minor), "major_ratio": a_pred / a_ref,
            "minor_ratio": b_pred / b_ref, "orientation_error": np.minimum(diff, 180.0 - diff)}


def uniformity_summary(agreement: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Scalars from ``ellipse_agreement``: n; axis_ratio_median / _max (1 best); size_cv,
    major_ratio_cv, minor_ratio_cv (coefficients of variation across ellipses, 0 best);
    orientation_error_mean / _median in degrees (0 best)."""
    ar, err = agreement["axis_ratio"], agreement["orientation_error"]
    return {"n": int(len(ar)), "axis_ratio_median": float(np.median(ar)), "axis_ratio_max": float(ar.max()),
            "size_cv": coefficient_of_variation(agreement["size"]),
            "major_ratio_cv": coefficient_of_variation(agreement["major_ratio"]),
            "minor_ratio_cv": coefficient_of_variation(agreement["minor_ratio"]),
            "orientation_error_mean": float(err.mean()), "orientation_error_median": float(np.median(err))}


# ----------------------------------------------------------------------------- MacAdam 1942

@dataclass(frozen=True)
class MacAdamEllipses:
    """MacAdam's (1942) ellipses, observer PGN, calculated columns. Arrays per ellipse.

    number: [n] 1 .. 25, the row of Wyszecki & Stiles' table 2(5.4.1); centre: [n, 2] xy
    (illuminant C); matrix: [n, 2, 2] the ellipse (``ellipse_matrix``, xy units, 1 standard
    deviation of colour matching); in_gamut: [n] bool, the disc of radius `margin` around the
    centre renders inside the sRGB gamut at `luminance` (Y, white = 1).
    """

    number: np.ndarray
    centre: np.ndarray
    matrix: np.ndarray
    in_gamut: np.ndarray
    luminance: float
    margin: float

    def __len__(self) -> int:
        return len(self.number)

    def select(self, mask) -> "MacAdamEllipses":
        """The ellipses where `mask` ([n] bool, or indices) holds."""
        return MacAdamEllipses(**{f.name: getattr(self, f.name)[mask] if f.name not in ("luminance", "margin")
                                  else getattr(self, f.name) for f in fields(self)})

    def centres_xyY(self) -> np.ndarray:
        """[n, 3] xyY of the centres at the set luminance."""
        return np.concatenate([self.centre, np.full((len(self), 1), self.luminance)], axis=1)


def macadam_ellipses(luminance: float = MACADAM_LUMINANCE, margin: float = MACADAM_GAMUT_MARGIN,
                     white_xy=ILLUMINANT_C_XY) -> MacAdamEllipses:
    """All 25 MacAdam (1942) ellipses from colour-science, with their sRGB gamut flags."""
    from colour.models import DATA_MACADAM_1942_ELLIPSES

    data = np.asarray(DATA_MACADAM_1942_ELLIPSES, dtype=np.float64)
    centre = data[:, :2]
    matrix = ellipse_matrix(data[:, 5] * MACADAM_AXIS_UNIT, data[:, 6] * MACADAM_AXIS_UNIT, data[:, 7])
    angle = 2.0 * np.pi * np.arange(GAMUT_TEST_POINTS) / GAMUT_TEST_POINTS
    ring = margin * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    points = (centre[:, None, :] + np.concatenate([np.zeros((1, 2)), ring])[None]).reshape(-1, 2)
    _, ok = xyY_to_srgb(np.concatenate([points, np.full((len(points), 1), luminance)], axis=1), white_xy)
    return MacAdamEllipses(np.arange(1, len(data) + 1), centre, matrix, ok.reshape(len(data), -1).all(1),
                           float(luminance), float(margin))


def reference_threshold(distance: ColourDistance, ellipses: MacAdamEllipses, n_points: int = REFERENCE_POINTS) -> float:
    """A measure's threshold matched to MacAdam's: the median of its distances from each centre
    to `n_points` evenly spread points of MacAdam's ellipse there (1 standard deviation)."""
    angle = 2.0 * np.pi * np.arange(n_points) / n_points
    a, b, th = ellipse_axes(ellipses.matrix)
    local = np.stack([np.outer(a, np.cos(angle)), np.outer(b, np.sin(angle))], -1)          # [n, p, 2]
    c, s = np.cos(np.deg2rad(th))[:, None], np.sin(np.deg2rad(th))[:, None]
    offset = np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1]], -1)
    centres = np.repeat(ellipses.centres_xyY(), n_points, axis=0)
    points = centres + np.concatenate([offset.reshape(-1, 2), np.zeros((len(centres), 1))], axis=1)
    return float(np.median(distance(centres, points)))


@dataclass(frozen=True)
class ThresholdEllipses:
    """A measure's threshold contours around MacAdam's centres and the ellipses fitted to them.

    threshold: the distance of the contour (measure units); directions: [m, 2]; steps: [n, m]
    contour steps in xy; matrix: [n, 2, 2] fitted ellipses; residual: [n] fit residuals
    (``fit_ellipse``).
    """

    threshold: float
    directions: np.ndarray
    steps: np.ndarray
    matrix: np.ndarray
    residual: np.ndarray


def threshold_ellipses(distance: ColourDistance, ellipses: MacAdamEllipses, n_directions: int = N_DIRECTIONS,
                       threshold: float | None = None, **search) -> ThresholdEllipses:
    """Threshold contours of `distance` around the centres of `ellipses` (select in-gamut ones first).

    threshold: None for ``reference_threshold`` (the predicted ellipses then have MacAdam's
    typical size). `search`: keyword arguments of ``threshold_steps``; the initial step is
    MacAdam's median semi-minor axis unless given.
    """
    if len(ellipses) == 0:
        raise ValueError("no ellipses given (all out of gamut?)")
    if threshold is None:
        threshold = reference_threshold(distance, ellipses)
    search.setdefault("initial_step", float(np.median(ellipse_axes(ellipses.matrix)[1])))
    directions = unit_directions(n_directions)
    steps = threshold_steps(distance, ellipses.centres_xyY(), directions, threshold, **search)
    matrix, residual = fit_ellipse(directions, steps)
    return ThresholdEllipses(float(threshold), directions, steps, matrix, residual)


def macadam_table(results: Mapping[str, ThresholdEllipses], ellipses: MacAdamEllipses) -> list[dict]:
    """One row per measure: measure, threshold, ``uniformity_summary`` of its agreement with
    MacAdam's ellipses, and contour_residual_max (how far its contours are from ellipses)."""
    return [{"measure": name, "threshold": r.threshold,
             **uniformity_summary(ellipse_agreement(ellipses.matrix, r.matrix)),
             "contour_residual_max": float(r.residual.max())} for name, r in results.items()]


# ----------------------------------------------------------------------------- Munsell

@dataclass(frozen=True)
class MunsellChips:
    """Munsell renotation chips ("real" colours, colour-science's MUNSELL_COLOURS_REAL). Per chip:

    hue: [N] str (e.g. "5R"); value: [N] 1 .. 9; chroma: [N] 2, 4, ...; xyY: [N, 3]
    (illuminant C, Y of the white = 1); srgb: [N, 3] in [0, 1] (``xyY_to_srgb``, clipped);
    in_gamut: [N] bool.
    """

    hue: np.ndarray
    value: np.ndarray
    chroma: np.ndarray
    xyY: np.ndarray
    srgb: np.ndarray
    in_gamut: np.ndarray

    def __len__(self) -> int:
        return len(self.hue)


def munsell_chips(white_xy=ILLUMINANT_C_XY) -> MunsellChips:
    """The 2,734 real Munsell renotation colours, rendered for an sRGB display."""
    from colour.notation import MUNSELL_COLOURS_REAL

    spec = [s for s, _ in MUNSELL_COLOURS_REAL]
    xyY = np.array([v for _, v in MUNSELL_COLOURS_REAL], dtype=np.float64) * [1.0, 1.0, MUNSELL_Y_SCALE]
    srgb, ok = xyY_to_srgb(xyY, white_xy)
    return MunsellChips(np.array([h for h, _, _ in spec]), np.array([v for _, v, _ in spec], dtype=np.float64),
                        np.array([c for _, _, c in spec], dtype=np.float64), xyY, srgb, ok)


@dataclass(frozen=True)
class MunsellSteps:
    """Adjacent pairs of in-gamut chips. kind: "value" (V -> V + 1 at fixed hue and chroma) or
    "chroma" (C -> C + 2 at fixed hue and value); first, second: [N] chip indices (second is
    the lighter / more chromatic chip)."""

    kind: str
    first: np.ndarray
    second: np.ndarray

    def __len__(self) -> int:
        return len(self.first)

    def select(self, mask) -> "MunsellSteps":
        return MunsellSteps(self.kind, self.first[mask], self.second[mask])


def munsell_steps(chips: MunsellChips, kind: str, hues=None) -> MunsellSteps:
    """Every adjacent pair of `kind` ("value" or "chroma") whose two chips are both in gamut.

    hues: None for all 40 hue pages, or a list of hue names (e.g. ``PRINCIPAL_HUES``).
    """
    if kind not in MUNSELL_STEP:
        raise ValueError(f"kind must be one of {sorted(MUNSELL_STEP)}, got {kind!r}")
    if hues is not None and not set(hues) <= set(chips.hue):
        raise ValueError(f"unknown Munsell hues {sorted(set(hues) - set(chips.hue))}")
    index = {(h, v, c): i for i, (h, v, c) in enumerate(zip(chips.hue, chips.value, chips.chroma))}
    step = MUNSELL_STEP[kind]
    pairs = []
    for (h, v, c), i in index.items():
        j = index.get((h, v + step, c) if kind == "value" else (h, v, c + step))
        if j is not None and chips.in_gamut[i] and chips.in_gamut[j] and (hues is None or h in hues):
            pairs.append((i, j))
    first, second = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    return MunsellSteps(kind, first, second)


def step_sizes(distance: ColourDistance, chips: MunsellChips, steps: Mapping[str, MunsellSteps]) -> dict[str, np.ndarray]:
    """The distance between the two chips of every step: name -> [N] (the measure's units).

    steps: name (e.g. the kind) -> MunsellSteps; all steps go through `distance` in one call.
    """
    first = np.concatenate([s.first for s in steps.values()])
    second = np.concatenate([s.second for s in steps.values()])
    sizes = np.asarray(distance(chips.xyY[first], chips.xyY[second]), dtype=np.float64)
    ends = np.cumsum([0] + [len(s) for s in steps.values()])
    return {name: sizes[a:b] for name, a, b in zip(steps, ends[:-1], ends[1:])}


def step_uniformity(sizes) -> dict[str, float]:
    """n, mean, cv (``coefficient_of_variation``, 0 = all steps equal) and max/min of step sizes."""
    s = np.asarray(sizes, dtype=np.float64)
    return {"n": int(s.size), "mean": float(s.mean()), "cv": coefficient_of_variation(s),
            "max_over_min": float(s.max() / s.min())}


# ----------------------------------------------------------------------------- COMBVD

def subsample_pairs(pairs: PatchPairs, n: int | None, seed: int = 0) -> PatchPairs:
    """A uniform random subset of n pairs (order kept); all pairs when n is None or >= len(pairs)."""
    if n is None or n >= len(pairs):
        return pairs
    if n < 3:
        raise ValueError(f"need at least 3 pairs for STRESS, got n = {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(pairs), size=n, replace=False))
    return pairs.select(idx)


def combvd_predictions(distances: Mapping[str, SrgbDistance], pairs: PatchPairs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-pair predictions on the rendered COMBVD patch pairs, for paired comparisons.

    distances: name -> SrgbDistance; pairs: COMBVD or a subset (``subsample_pairs``). Returns
    name -> [N] predicted differences, for every ``patches.FORMULAS`` and every distance, and
    in_gamut: [N] bool (False where a colour of the pair was clipped).
    """
    rendered = render_srgb(pairs)
    preds = rendered_differences(rendered)
    preds.update({name: np.asarray(dist(rendered.srgb1, rendered.srgb2)) for name, dist in distances.items()})
    return preds, ~rendered.out_of_gamut


def stress_rows(predictions: Mapping[str, np.ndarray], in_gamut, pairs: PatchPairs) -> list[dict]:
    """The rows of ``combvd_stress`` from ``combvd_predictions``' output (see there)."""
    in_gamut = np.asarray(in_gamut, dtype=bool)
    rows = []
    for label, keep in (("all", np.ones(len(pairs), dtype=bool)), ("in gamut", in_gamut)):
        kept = pairs.select(keep)
        scores = {name: stress_by_subset(np.asarray(p)[keep], kept) for name, p in predictions.items()}
        subsets = [s for s in COMBVD_SUBSETS if np.any(kept.subset == s)] + ["pooled"]
        rows += [{"pairs": label, "subset": s, "n": int(len(kept) if s == "pooled" else np.sum(kept.subset == s)),
                  **{name: scores[name][s] for name in predictions}} for s in subsets]
    return rows


def combvd_stress(distances: Mapping[str, SrgbDistance], pairs: PatchPairs | None = None) -> list[dict]:
    """COMBVD STRESS of the formulas and of sRGB distances on the rendered patch pairs.

    distances: name -> SrgbDistance (e.g. "cdflow": ``cdflow_distance(model)``); pairs: COMBVD
    (default: all 3,813) or a subset. Rows: pairs ("all": out-of-gamut colours clipped, or
    "in gamut": pairs with a clipped colour left out), subset (each COMBVD subset, then
    "pooled"), n, then the STRESS of every ``patches.FORMULAS`` on the rendering and of every
    distance (lower is better). ``combvd_predictions`` and ``stress_rows`` do the two halves.
    """
    pairs = load_combvd() if pairs is None else pairs
    return stress_rows(*combvd_predictions(distances, pairs), pairs)


# ----------------------------------------------------------------------------- figures

MEASURE_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")


def _ellipse_outline(centre, matrix, scale: float = 1.0, n: int = 100) -> np.ndarray:
    """[n, 2] boundary points of centre + scale · ellipse."""
    a, b, th = ellipse_axes(matrix)
    t = np.linspace(0, 2 * np.pi, n)
    c, s = np.cos(np.deg2rad(th)), np.sin(np.deg2rad(th))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.asarray(centre) + scale * np.stack([c * x - s * y, s * x + c * y], axis=1)


def _chromaticity_background(ax, white_xy) -> None:
    import colour as colour_science

    cmfs = colour_science.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"]
    locus = colour_science.XYZ_to_xy(cmfs.values)
    ax.plot(*np.vstack([locus, locus[:1]]).T, color="0.35", lw=0.8)
    tri = srgb_gamut_xy(white_xy)
    ax.fill(*tri.T, color="0.93", zorder=0, label="sRGB gamut")
    ax.plot(*white_xy, "+", color="0.4", ms=6)
    ax.set(xlim=(0.0, 0.75), ylim=(0.0, 0.85), xlabel="x", ylabel="y", aspect="equal")


def plot_macadam(ellipses: MacAdamEllipses, results: Mapping[str, ThresholdEllipses], magnification: float = 10.0,
                 ncols: int | None = None, white_xy=ILLUMINANT_C_XY):
    """Figure: one CIE 1931 xy panel per measure (`ncols` per row); MacAdam's ellipses (black)
    and the measure's threshold ellipses (colour, at its threshold), both magnified. Centres
    left out for the gamut are grey crosses. `ellipses`: all 25 (with in_gamut flags)."""
    import matplotlib.pyplot as plt

    used = ellipses.select(ellipses.in_gamut)
    ncols = ncols or len(results)
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.4 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    for ax, (colour_, (name, res)) in zip(axes.flat, zip(MEASURE_COLOURS, results.items())):
        _chromaticity_background(ax, white_xy)
        for i in range(len(used)):
            ax.plot(*_ellipse_outline(used.centre[i], used.matrix[i], magnification).T, color="k", lw=1.0)
            ax.plot(*_ellipse_outline(used.centre[i], res.matrix[i], magnification).T, color=colour_, lw=1.4)
        out = ellipses.centre[~ellipses.in_gamut]
        ax.plot(*out.T, "x", color="0.55", ms=4)
        ax.set_title(f"{name} (colour) vs MacAdam (black)", fontsize=10)
    fig.suptitle(f"Threshold ellipses at Y = {ellipses.luminance:g}, magnified {magnification:g}x; "
                 "x: centres outside the sRGB gamut", fontsize=10)
    fig.tight_layout()
    return fig


def plot_mapped_ellipses(ellipses: MacAdamEllipses, results: Mapping[str, ThresholdEllipses]):
    """Figure: MacAdam's in-gamut ellipses as each measure sees them (``mapped_axes``), all
    centred at the origin and divided by their geometric-mean size, on one scale for all
    panels. A uniform measure draws one unit circle (dashed)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.0 * len(results), 3.3), squeeze=False)
    t = np.linspace(0, 2 * np.pi, 100)
    curves = {}
    for name, res in results.items():
        size = ellipse_agreement(ellipses.matrix, res.matrix)["size"]
        norm = np.exp(np.mean(np.log(size)))
        curves[name] = []
        for m, a in zip(ellipses.matrix, res.matrix):
            w, v = np.linalg.eigh(a)
            root_inv = v @ np.diag(w ** -0.5) @ v.T                    # A^(-1/2): measure space -> xy
            lam, vec = np.linalg.eigh(root_inv @ m @ root_inv)          # ascending: vec[:, 0] is the major axis
            big, small = lam ** -0.5 / norm
            ang = np.arctan2(vec[1, 0], vec[0, 0])
            x, y = big * np.cos(t), small * np.sin(t)
            curves[name].append((np.cos(ang) * x - np.sin(ang) * y, np.sin(ang) * x + np.cos(ang) * y))
    lim = 1.05 * max(1.0, max(float(np.abs(np.concatenate([np.ravel(c) for c in cs])).max()) for cs in curves.values()))
    for ax, (colour_, (name, res)) in zip(axes[0], zip(MEASURE_COLOURS, results.items())):
        for x, y in curves[name]:
            ax.plot(x, y, color=colour_, lw=1.0)
        ax.plot(np.cos(t), np.sin(t), "k--", lw=0.8)
        s = uniformity_summary(ellipse_agreement(ellipses.matrix, res.matrix))
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"{name}\naxis ratio {s['axis_ratio_median']:.2f}, size CV {s['size_cv']:.2f}", fontsize=9)
    fig.suptitle("MacAdam's ellipses in each measure's own space (uniform = equal circles)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_munsell_steps(chips: MunsellChips, steps: Mapping[str, MunsellSteps],
                       sizes: Mapping[str, Mapping[str, np.ndarray]]):
    """Figure: a row per step kind, a column per measure; step size / the measure's mean step,
    as box plots by the starting value (value steps) or chroma (chroma steps). A uniform
    measure keeps every box at 1. sizes: kind -> measure name -> [N] step sizes."""
    import matplotlib.pyplot as plt

    kinds = list(steps)
    names = list(next(iter(sizes.values())))
    fig, axes = plt.subplots(len(kinds), len(names), figsize=(3.6 * len(names), 2.9 * len(kinds)),
                             squeeze=False, sharey="row")
    for r, kind in enumerate(kinds):
        level = (chips.value if kind == "value" else chips.chroma)[steps[kind].first]
        levels = np.unique(level)
        for c, (colour_, name) in enumerate(zip(MEASURE_COLOURS, names)):
            s = sizes[kind][name] / sizes[kind][name].mean()
            ax = axes[r, c]
            ax.boxplot([s[level == lv] for lv in levels], positions=np.arange(len(levels)), widths=0.6,
                       showfliers=False, patch_artist=True, boxprops=dict(facecolor=colour_, alpha=0.5),
                       medianprops=dict(color="k"))
            ax.axhline(1.0, color="k", ls="--", lw=0.8)
            step = MUNSELL_STEP[kind]
            ax.set_xticks(np.arange(len(levels)), [f"{lv:g}" for lv in levels], fontsize=7)
            ax.set(xlabel=f"{kind} step from {kind} (+{step:g})")
            ax.set_title(f"{name}: CV {coefficient_of_variation(sizes[kind][name]):.2f}", fontsize=9)
            if c == 0:
                ax.set_ylabel("step / mean step")
    fig.suptitle("Munsell steps (visually equal by design): a uniform measure keeps every box at 1", fontsize=10)
    fig.tight_layout()
    return fig


def plot_munsell_page(chips: MunsellChips, hue: str):
    """Figure: the chips of one Munsell hue page (value up, chroma right) as the sRGB display shows
    them; out-of-gamut chips are left blank."""
    import matplotlib.pyplot as plt

    sel = np.flatnonzero((chips.hue == hue) & chips.in_gamut)
    if sel.size == 0:
        raise ValueError(f"no in-gamut chips of hue {hue!r}")
    values, chromas = np.unique(chips.value[sel]), np.unique(chips.chroma[sel])
    img = np.ones((len(values), len(chromas), 3))
    for i in sel:
        img[np.searchsorted(values, chips.value[i]), np.searchsorted(chromas, chips.chroma[i])] = chips.srgb[i]
    fig, ax = plt.subplots(figsize=(0.45 * len(chromas) + 1.2, 0.45 * len(values) + 0.9))
    ax.imshow(img, origin="lower", interpolation="nearest")
    ax.set_xticks(np.arange(len(chromas)), [f"{c:g}" for c in chromas], fontsize=7)
    ax.set_yticks(np.arange(len(values)), [f"{v:g}" for v in values], fontsize=7)
    ax.set(xlabel="chroma", ylabel="value", title=f"Munsell hue {hue} (in-gamut chips)")
    fig.tight_layout()
    return fig


def plot_combvd(rows: list[dict], paper: Mapping[str, float] | None = None):
    """Figure: pooled COMBVD STRESS per measure (bars, from the first pooled row of
    ``combvd_stress``) and, where given, the published values (name -> STRESS, hatched)."""
    import matplotlib.pyplot as plt

    pooled = next(r for r in rows if r["subset"] == "pooled")
    names = [k for k in pooled if k not in ("pairs", "subset", "n")]
    fig, ax = plt.subplots(figsize=(1.0 * (len(names) + len(paper or {})) + 1.5, 3.4))
    x = np.arange(len(names))
    ax.bar(x, [pooled[n] for n in names], color="#7570b3")
    labels = list(names)
    if paper:
        px = len(names) + np.arange(len(paper))
        ax.bar(px, list(paper.values()), color="white", edgecolor="#d95f02", hatch="//")
        labels += [f"{k}\n(paper)" for k in paper]
        x = np.concatenate([x, px])
    ax.set_xticks(x, labels, fontsize=8, rotation=30, ha="right")
    ax.set(ylabel="STRESS (lower is better)", title=f"COMBVD pooled STRESS ({pooled['n']} pairs)")
    fig.tight_layout()
    return fig
