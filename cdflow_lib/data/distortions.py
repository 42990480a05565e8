"""Colour distortions that imitate SPCD's families, each with a continuous strength.

Every family is split in two: ``sample_distortion(family, rng)`` draws a random distortion
(a dict of plain floats and strings: its parameters at full strength) and
``render_distortion(img, family, params, strength)`` applies it at a strength in [0, 1].
``apply_distortion`` does both.

Strength is a blend weight in linear light, like a filter app's intensity slider:
``y = encode((1 - s) decode(x) + s decode(D(x)))`` with D the full-strength distortion.
For the linear parts of a camera pipeline (white balance, colour matrix, exposure,
saturation in linear light) this *is* the distortion with interpolated parameters; for
the others it is a smooth path from the photograph to D(x). Strength 0 is the identity,
and because every pixel moves along a straight line in linear RGB (so in XYZ, and in the
linear opponent space where S-CIELAB filters), the simulated observer's label grows with
the strength (tests check it for every family).

Families (SPCD's groups 02 .. 07 and its phone captures, DESIGN.md section 6):

- ``camera``: a different camera pipeline, in linear light: white-balance gains (red and
  blue, green fixed), a white-preserving colour matrix, exposure (stops), saturation about
  the luminance; then, on the encoded values, a tone curve (S-curve or its inverse).
- ``edit``: Photoshop-like edits on the encoded values: hue rotation about the grey axis,
  saturation, brightness, contrast, and a spatially varying tint (a soft blob or a linear
  gradient of colour), so that local colour difference maps have something to find.
  Each edit is active with probability EDIT_ACTIVE_PROBABILITY (at least one always).
- ``filter``: a phone filter look (``FILTER_LOOKS``) at a jittered intensity.
- ``profile``: a wrong colour profile: sRGB data decoded as a wider-gamut space (Display P3,
  Adobe RGB (1998) or ProPhoto RGB) and shown on an sRGB display (more saturated), or that
  space's data shown as sRGB (less saturated): a linear-light matrix (colour-science's
  ``matrix_RGB_to_RGB`` between its RGB_COLOURSPACES, Bradford adaptation for ProPhoto's
  D50 white, so white stays white), which the blend interpolates from the identity. Only
  the primaries are wrong: values are decoded and encoded with the sRGB curve throughout
  (Display P3 uses it; the other two spaces' gamma curves are not modelled).

Magnitudes: each parameter's size is drawn between a lower and an upper bound (with a
random sign), so no drawn distortion is invisible at full strength.

Images: [3, H, W] or [B, 3, H, W] float sRGB in [0, 1]; the output has the input's shape
and lies in [0, 1] (clipped).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..colour import SRGB_TO_XYZ, linear_to_srgb, srgb_to_linear

FAMILIES = ("camera", "edit", "filter", "profile")

#: Rec. 709 / sRGB weights (the Y row of colour.SRGB_TO_XYZ): luminance of linear values
#: (camera saturation), luma of encoded values (edits and looks).
LUMA_WEIGHTS = SRGB_TO_XYZ[1]

#: camera, at strength 1: log white-balance gain std (red and blue), colour-matrix
#: off-diagonal std, and (low, high) magnitudes of the exposure (stops), the saturation
#: change and the tone curve.
CAMERA_WB_LOG_STD = 0.12
CAMERA_MATRIX_STD = 0.06
CAMERA_EV = (0.2, 0.6)
CAMERA_SATURATION = (0.1, 0.35)
CAMERA_TONE = (0.2, 0.6)

#: edit, at strength 1: (low, high) magnitudes of the hue rotation (degrees), saturation
#: change, brightness offset and contrast change; the tint amplitude (encoded units) and the
#: tint blob radius (fraction of the side). Each edit is active with EDIT_ACTIVE_PROBABILITY.
EDIT_HUE_DEG = (8.0, 25.0)
EDIT_SATURATION = (0.15, 0.5)
EDIT_BRIGHTNESS = (0.03, 0.1)
EDIT_CONTRAST = (0.1, 0.3)
EDIT_TINT_AMPLITUDE = (0.06, 0.16)
EDIT_TINT_RADIUS = (0.15, 0.4)
EDIT_ACTIVE_PROBABILITY = 0.6
EDITS = ("hue", "saturation", "brightness", "contrast", "tint")

#: filter: the looks (full effect, before the strength blend) and the jitter of their intensity.
FILTER_LOOKS = ("warm", "cool", "fade", "teal_orange", "sepia", "vivid")
FILTER_JITTER = (0.7, 1.3)

#: profile: the mismatches, direction -> (colourspace name in colour.RGB_COLOURSPACES,
#: True if sRGB data is decoded as that space, False if that space's data is shown as sRGB).
PROFILE_MISMATCHES = {
    "srgb_as_p3": ("Display P3", True),
    "p3_as_srgb": ("Display P3", False),
    "srgb_as_adobe_rgb": ("Adobe RGB (1998)", True),
    "adobe_rgb_as_srgb": ("Adobe RGB (1998)", False),
    "srgb_as_prophoto": ("ProPhoto RGB", True),
    "prophoto_as_srgb": ("ProPhoto RGB", False),
}
PROFILE_DIRECTIONS = tuple(PROFILE_MISMATCHES)


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    return s


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown distortion family {family!r}; choose one of {FAMILIES}")


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] Rec. 709 luma."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _saturate(x: torch.Tensor, factor: float) -> torch.Tensor:
    y = _luma(x)
    return y + factor * (x - y)


def _matmul(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a [3, 3] matrix to the channels of [B, 3, H, W]."""
    return torch.einsum("ij,bjhw->bihw", m.to(x.dtype), x)


def _s_curve(x: torch.Tensor, amount: float) -> torch.Tensor:
    """x + amount (smoothstep(x) - x): more contrast for amount > 0, less for < 0; monotone for |amount| <= 1."""
    return x + amount * (x * x * (3 - 2 * x) - x)


def _chroma_direction(angle: float) -> torch.Tensor:
    """Unit RGB vector orthogonal to the grey axis, at `angle` radians in the chroma plane."""
    e1 = torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2.0)
    e2 = torch.tensor([1.0, 1.0, -2.0]) / math.sqrt(6.0)
    return math.cos(angle) * e1 + math.sin(angle) * e2


def _hue_rotation(degrees: float) -> torch.Tensor:
    """[3, 3] rotation of RGB about the grey axis (1, 1, 1) by `degrees` (Rodrigues' formula)."""
    t = math.radians(degrees)
    k = torch.full((3,), 1.0 / math.sqrt(3.0), dtype=torch.float64)
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return math.cos(t) * torch.eye(3, dtype=torch.float64) + math.sin(t) * kx + (1 - math.cos(t)) * torch.outer(k, k)


@lru_cache(maxsize=None)
def profile_matrix(direction: str) -> np.ndarray:
    """[3, 3] linear-light matrix of a profile mismatch (a direction of PROFILE_MISMATCHES), read-only.

    sRGB data decoded as space W and shown on an sRGB display: W -> sRGB. W's data shown
    as sRGB, relative to its correct rendering: sRGB -> W. From colour-science's
    ``matrix_RGB_to_RGB`` (Bradford chromatic adaptation where the whites differ).
    """
    import colour

    if direction not in PROFILE_MISMATCHES:
        raise ValueError(f"unknown profile direction {direction!r}; choose one of {PROFILE_DIRECTIONS}")
    name, srgb_data = PROFILE_MISMATCHES[direction]
    srgb, wide = colour.RGB_COLOURSPACES["sRGB"], colour.RGB_COLOURSPACES[name]
    source, target = (wide, srgb) if srgb_data else (srgb, wide)
    m = np.array(colour.matrix_RGB_to_RGB(source, target, chromatic_adaptation_transform="Bradford"), dtype=np.float64)
    m.setflags(write=False)
    return m


def _signed(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A magnitude drawn uniformly from `bounds`, with a random sign."""
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(*bounds))


def sample_distortion(family: str, rng: np.random.Generator) -> dict:
    """Draw the full-strength parameters of one distortion of `family` (a dict of floats / strings)."""
    _check_family(family)
    if family == "camera":
        off = rng.normal(0.0, CAMERA_MATRIX_STD, size=(3, 3))
        np.fill_diagonal(off, 0.0)
        np.fill_diagonal(off, -off.sum(1))         # rows sum to 0: the matrix I + E keeps white
        return dict(wb_log_red=float(rng.normal(0.0, CAMERA_WB_LOG_STD)),
                    wb_log_blue=float(rng.normal(0.0, CAMERA_WB_LOG_STD)),
                    matrix=off.round(6).tolist(), ev=_signed(rng, CAMERA_EV),
                    saturation=_signed(rng, CAMERA_SATURATION), tone=_signed(rng, CAMERA_TONE))
    if family == "edit":
        active = rng.random(len(EDITS)) < EDIT_ACTIVE_PROBABILITY
        if not active.any():
            active[rng.integers(len(EDITS))] = True
        on = dict(zip(EDITS, (float(a) for a in active)))
        return dict(hue_deg=on["hue"] * _signed(rng, EDIT_HUE_DEG),
                    saturation=on["saturation"] * _signed(rng, EDIT_SATURATION),
                    brightness=on["brightness"] * _signed(rng, EDIT_BRIGHTNESS),
                    contrast=on["contrast"] * _signed(rng, EDIT_CONTRAST),
                    tint_amplitude=on["tint"] * float(rng.uniform(*EDIT_TINT_AMPLITUDE)),
                    tint_angle=float(rng.uniform(0.0, 2 * math.pi)),
                    tint_shape=str(rng.choice(["blob", "gradient"])),
                    tint_cx=float(rng.uniform(0.15, 0.85)), tint_cy=float(rng.uniform(0.15, 0.85)),
                    tint_radius=float(rng.uniform(*EDIT_TINT_RADIUS)),
                    tint_direction=float(rng.uniform(0.0, 2 * math.pi)))
    if family == "filter":
        return dict(look=str(rng.choice(FILTER_LOOKS)), intensity=float(rng.uniform(*FILTER_JITTER)))
    return dict(direction=str(rng.choice(PROFILE_DIRECTIONS)))


def _camera(x: torch.Tensor, p: dict) -> torch.Tensor:
    lin = srgb_to_linear(x)
    gains = torch.tensor([math.exp(p["wb_log_red"]), 1.0, math.exp(p["wb_log_blue"])], dtype=x.dtype)
    lin = lin * gains.view(1, 3, 1, 1)
    lin = _matmul(torch.eye(3, dtype=torch.float64) + torch.tensor(p["matrix"], dtype=torch.float64), lin)
    lin = _saturate(lin * 2.0 ** p["ev"], 1.0 + p["saturation"]).clamp(0.0, 1.0)
    return _s_curve(linear_to_srgb(lin), p["tone"])


def _tint_mask(p: dict, h: int, w: int) -> torch.Tensor:
    """[1, 1, H, W] in [0, 1]: a Gaussian blob or a linear ramp over the image."""
    v = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    u = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    if p["tint_shape"] == "blob":
        mask = torch.exp(-((uu - p["tint_cx"]) ** 2 + (vv - p["tint_cy"]) ** 2) / (2 * p["tint_radius"] ** 2))
    else:
        a = p["tint_direction"]
        mask = 0.5 + ((uu - 0.5) * math.cos(a) + (vv - 0.5) * math.sin(a)) / math.sqrt(2.0)
    return mask[None, None]


def _edit(x: torch.Tensor, p: dict) -> torch.Tensor:
    x = _matmul(_hue_rotation(p["hue_deg"]), x)
    x = _saturate(x, 1.0 + p["saturation"])
    x = (x + p["brightness"] - 0.5) * (1.0 + p["contrast"]) + 0.5
    tint = _chroma_direction(p["tint_angle"]).to(x.dtype).view(1, 3, 1, 1)
    return x + p["tint_amplitude"] * _tint_mask(p, *x.shape[-2:]).to(x.dtype) * tint


def _look(x: torch.Tensor, look: str, j: float) -> torch.Tensor:
    """The full look of a filter at intensity j (about 1) on encoded values x: [B, 3, H, W].

    warm / cool: linear-light gains of +-15 % red and -+18 % blue; fade: blacks lifted by
    0.1, whites lowered by 0.05, saturation -35 %; teal_orange: shadows pushed to teal and
    highlights to orange by up to about 0.09; sepia: 60 % mix with a brown-toned luma; vivid:
    saturation +50 % and an S-curve (all scaled by j).
    """
    if look in ("warm", "cool"):
        sign = 1.0 if look == "warm" else -1.0
        gains = torch.tensor([1.0 + sign * 0.15 * j, 1.0, 1.0 - sign * 0.18 * j], dtype=x.dtype)
        return linear_to_srgb((srgb_to_linear(x) * gains.view(1, 3, 1, 1)).clamp(0.0, 1.0))
    if look == "fade":
        return _saturate(x * (1.0 - 0.15 * j) + 0.1 * j, 1.0 - 0.35 * j)
    if look == "teal_orange":
        orange = torch.tensor([0.7, 0.1, -0.7], dtype=x.dtype).view(1, 3, 1, 1)
        return x + 0.25 * j * (_luma(x) - 0.5) * orange
    if look == "sepia":
        sepia = _luma(x) * torch.tensor([1.08, 0.9, 0.68], dtype=x.dtype).view(1, 3, 1, 1)
        mix = min(1.0, 0.6 * j)
        return (1 - mix) * x + mix * sepia
    return _s_curve(_saturate(x, 1.0 + 0.5 * j), 0.5 * j)      # vivid


def _filter(x: torch.Tensor, p: dict) -> torch.Tensor:
    return _look(x, p["look"], p["intensity"])


def _profile(x: torch.Tensor, p: dict) -> torch.Tensor:
    lin = _matmul(torch.from_numpy(profile_matrix(p["direction"]).copy()), srgb_to_linear(x))
    return linear_to_srgb(lin.clamp(0.0, 1.0))


_FULL_STRENGTH = {"camera": _camera, "edit": _edit, "filter": _filter, "profile": _profile}


def render_distortion(img: torch.Tensor, family: str, params: dict, strength: float) -> torch.Tensor:
    """Apply a distortion drawn by `sample_distortion` at `strength` in [0, 1] (the linear-light blend).

    img: [3, H, W] or [B, 3, H, W] float sRGB in [0, 1] -> same shape, in [0, 1].
    Strength 0 returns an exact copy.
    """
    _check_family(family)
    s = _check_strength(strength)
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"img: expected a [3, H, W] or [B, 3, H, W] tensor, got "
                         f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
    if not img.is_floating_point():
        raise ValueError(f"img: expected float values in [0, 1], got dtype {img.dtype}")
    if s == 0.0:
        return img.clone()
    x = img.unsqueeze(0) if img.dim() == 3 else img
    full = srgb_to_linear(_FULL_STRENGTH[family](x, params).clamp(0.0, 1.0))
    lin = srgb_to_linear(x)
    out = linear_to_srgb(lin + s * (full - lin)).clamp(0.0, 1.0)
    return out[0] if img.dim() == 3 else out


def apply_distortion(img: torch.Tensor, family: str, strength: float, seed: int | None = None,
                     rng: np.random.Generator | None = None) -> torch.Tensor:
    """A random distortion of `family` at `strength`, drawn from `rng` or from a generator seeded with `seed`.

    img: [3, H, W] or [B, 3, H, W] float sRGB in [0, 1] -> same shape, in [0, 1]. The same
    seed gives the same distortion (one draw for the whole batch).
    """
    if rng is None:
        if seed is None:
            raise ValueError("pass a seed or an rng: the distortion must be reproducible")
        rng = np.random.default_rng(seed)
    return render_distortion(img, family, sample_distortion(family, rng), strength)
