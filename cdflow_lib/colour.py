"""Colour science in torch: sRGB <-> XYZ <-> CIELAB, the ΔE family, S-CIELAB.

Every function is batched and differentiable, works in float32 and float64, and takes the
colour channel at dim 1 with any trailing dims: ``[N, 3]`` colours or ``[B, 3, H, W]``
images. Difference formulas return the per-element difference with the channel dim
removed (``[N]`` or ``[B, H, W]``).

Conventions (the ones colour-science uses, so its functions are the reference in tests):

- sRGB: IEC 61966-2-1. The piecewise transfer curve; the standard's own 4-digit
  RGB -> XYZ matrix (``SRGB_TO_XYZ``), and its exact inverse (not the standard's rounded
  inverse, so round trips are exact).
- XYZ is scaled so that Y of the white is 1. The white ``D65_XYZ`` is the sRGB white, i.e.
  ``SRGB_TO_XYZ @ [1, 1, 1]`` = (0.9505, 1.0, 1.0890); it agrees with CIE D65 at
  (x, y) = (0.3127, 0.3290) to 5e-5, and with it every grey R = G = B has a* = b* = 0
  exactly. colour-science matches when given ``illuminant=XYZ_to_xy(D65_XYZ)``.
- CIELAB: CIE 15 with the exact constants (216/24389 and 24389/27). L* in [0, 100] for
  colours inside the sRGB gamut; a*, b* roughly in [-128, 128].
- Difference formulas follow colour-science's ``delta_E_*`` (first argument = reference
  for the asymmetric CIE94 and CMC). Square roots and hue angles are "safe": they return
  exactly 0 at zero arguments with a zero gradient there, so gradients stay finite at
  identical pixels and at neutral greys (where the hue angle is undefined).

S-CIELAB (Zhang & Wandell 1996; parameters as published in the journal version, SID 1997):
see ``scielab_filter``; every convention is stated there.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import math

import numpy as np
import torch

from ._checks import check_image, check_pair, is_trusted, trusted

# ----------------------------------------------------------------------------- constants

#: IEC 61966-2-1 sRGB transfer curve: linear segment below these thresholds, then a power law.
SRGB_DECODE_THRESHOLD = 0.04045
SRGB_ENCODE_THRESHOLD = 0.0031308
SRGB_LINEAR_SLOPE = 12.92
SRGB_GAMMA = 2.4
SRGB_OFFSET = 0.055

#: IEC 61966-2-1 linear sRGB -> XYZ (D65), the standard's 4-digit matrix (as colour-science uses).
SRGB_TO_XYZ = (
    (0.4124, 0.3576, 0.1805),
    (0.2126, 0.7152, 0.0722),
    (0.0193, 0.1192, 0.9505),
)
#: The sRGB white in XYZ, Y = 1: the row sums of SRGB_TO_XYZ (see the module docstring).
D65_XYZ = tuple(float(sum(row)) for row in SRGB_TO_XYZ)

#: CIE 15 CIELAB constants: f(t) = t^(1/3) above LAB_EPSILON, linear below.
LAB_EPSILON = 216.0 / 24389.0
LAB_KAPPA = 24389.0 / 27.0

#: CIE94 parametric constants (k_L, K_1, K_2): graphic arts and textiles (CIE 116-1995).
CIE94_GRAPHIC_ARTS = (1.0, 0.045, 0.015)
CIE94_TEXTILES = (2.0, 0.048, 0.014)

#: CAM16 viewing conditions used by `cam16ucs_delta_e`: an sRGB display of white luminance
#: 80 cd/m^2 (IEC 61966-2-1 reference display), adapting luminance L_A = 20 % of it
#: (grey-world), background Y_b = 20, "Average" surround (an office-lit monitor), no
#: illuminant discounting; the adopted white is D65_XYZ.
CAM16_WHITE_LUMINANCE = 80.0
CAM16_L_A = 0.2 * CAM16_WHITE_LUMINANCE
CAM16_Y_B = 20.0
CAM16_SURROUND = "Average"

#: S-CIELAB opponent transform XYZ (Y = 1 scale) -> (O1 luminance, O2 red-green, O3 blue-yellow),
#: Poirson & Wandell's pattern-colour separable space for the 2-degree observer, with the
#: digits of the authors' S-CIELAB distribution. The paper prints it rounded to three
#: decimals with -0.077 for the Z weight of O2; we use +0.0771569 as in the authors' code,
#: because only with that sign is O2 a cone-opponent L - M channel (through the
#: Hunt-Pointer-Estevez cone matrix its S-cone weight is -0.015 against -0.183 with the
#: printed sign, and the white gives O2 = -0.05 instead of -0.22).
SCIELAB_XYZ_TO_OPP = (
    (0.2787336, 0.7218031, -0.1065520),
    (-0.4488736, 0.2898056, 0.0771569),
    (0.0859513, -0.5899859, 0.5011089),
)
#: S-CIELAB spatial filters (Zhang & Wandell 1997, table of the filter parameters): per
#: opponent channel, (weight, spread in degrees of visual angle) of each Gaussian
#: ``exp(-(x^2 + y^2) / spread^2)``. The luminance channel has a negative broad surround.
SCIELAB_FILTERS = (
    ((0.921, 0.0283), (0.105, 0.133), (-0.108, 4.336)),  # O1 luminance
    ((0.531, 0.0392), (0.330, 0.494)),                   # O2 red-green
    ((0.488, 0.0536), (0.371, 0.386)),                   # O3 blue-yellow
)
#: Each Gaussian is truncated at this many standard deviations (std = spread / sqrt(2)).
SCIELAB_TRUNCATE_STD = 3.0

#: Default viewing geometry: a 1024-px-wide image (SPCD's size) shown 30 cm wide on a
#: monitor viewed from 60 cm (pixel pitch 0.293 mm, about 87 ppi).
DEFAULT_IMAGE_WIDTH_PX = 1024
DEFAULT_DISPLAY_WIDTH_M = 0.30
DEFAULT_VIEWING_DISTANCE_M = 0.60


# ----------------------------------------------------------------------------- helpers

def _check_colour(x, name: str) -> None:
    """x: a floating tensor [N, 3, ...] (colour channel at dim 1)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor with 3 colour channels at dim 1, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[1] != 3:
        raise ValueError(
            f"{name}: expected 3 colour channels at dim 1 ([N, 3] or [B, 3, H, W]), got shape {tuple(x.shape)}"
        )
    if not is_trusted() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains {int((~torch.isfinite(x)).sum())} NaN or Inf values")


def _check_colour_pair(x, y, names=("lab1", "lab2")) -> None:
    _check_colour(x, names[0])
    _check_colour(y, names[1])
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def _matrix(m, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(m, dtype=like.dtype, device=like.device)


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """m: [3, 3]; x: [N, 3, ...] -> m applied to the colour channel of every element."""
    return torch.einsum("ij,nj...->ni...", m, x)


def _inverse(m, like: torch.Tensor) -> torch.Tensor:
    """The exact inverse of a constant matrix (computed in float64, then cast)."""
    return torch.linalg.inv(torch.as_tensor(m, dtype=torch.float64)).to(dtype=like.dtype, device=like.device)


def _white(white, like: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(white, dtype=like.dtype, device=like.device)
    if w.shape != (3,):
        raise ValueError(f"white: expected 3 values (X, Y, Z), got shape {tuple(w.shape)}")
    return w.view((1, 3) + (1,) * (like.dim() - 2))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x >= 0; exactly 0 (with zero gradient) where x <= tiny, never NaN."""
    tiny = torch.finfo(x.dtype).tiny
    positive = x > tiny
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2(y, x) in radians, 0 (with zero gradient) where x = y = 0."""
    zero = (x == 0) & (y == 0)
    return torch.where(zero, torch.zeros_like(x), torch.atan2(y, torch.where(zero, torch.ones_like(x), x)))


def _hue_degrees(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Hue angle atan2(b, a) in degrees in [0, 360); 0 for a = b = 0."""
    return torch.remainder(torch.rad2deg(_safe_atan2(b, a)), 360.0)


# ----------------------------------------------------------------------------- conversions

def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 decoding. x: [N, 3, ...] sRGB in [0, 1] -> linear RGB in [0, 1].

    Values outside [0, 1] follow the linear segment below 0 and the power law above 1.
    """
    _check_colour(x, "srgb")
    power = ((torch.clamp(x, min=SRGB_DECODE_THRESHOLD) + SRGB_OFFSET) / (1 + SRGB_OFFSET)) ** SRGB_GAMMA
    return torch.where(x <= SRGB_DECODE_THRESHOLD, x / SRGB_LINEAR_SLOPE, power)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 encoding. x: [N, 3, ...] linear RGB in [0, 1] -> sRGB in [0, 1] (no clipping)."""
    _check_colour(x, "linear rgb")
    power = (1 + SRGB_OFFSET) * torch.clamp(x, min=SRGB_ENCODE_THRESHOLD) ** (1 / SRGB_GAMMA) - SRGB_OFFSET
    return torch.where(x <= SRGB_ENCODE_THRESHOLD, x * SRGB_LINEAR_SLOPE, power)


def linear_srgb_to_xyz(x: torch.Tensor) -> torch.Tensor:
    """x: [N, 3, ...] linear sRGB in [0, 1] -> CIE XYZ (D65, 2 degrees), Y of the white = 1."""
    _check_colour(x, "linear rgb")
    return _apply_matrix(_matrix(SRGB_TO_XYZ, x), x)


def xyz_to_linear_srgb(xyz: torch.Tensor) -> torch.Tensor:
    """xyz: [N, 3, ...] CIE XYZ (Y of the white = 1) -> linear sRGB (outside [0, 1] if out of gamut)."""
    _check_colour(xyz, "xyz")
    return _apply_matrix(_inverse(SRGB_TO_XYZ, xyz), xyz)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    cube_root = torch.clamp(t, min=LAB_EPSILON) ** (1.0 / 3.0)
    return torch.where(t > LAB_EPSILON, cube_root, (LAB_KAPPA * t + 16.0) / 116.0)


def _lab_f_inverse(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f ** 3 > LAB_EPSILON, f ** 3, (116.0 * f - 16.0) / LAB_KAPPA)


def xyz_to_lab(xyz: torch.Tensor, white=D65_XYZ) -> torch.Tensor:
    """CIE 1976 L*a*b*. xyz: [N, 3, ...] with Y of the white = 1; white: (X, Y, Z) of the
    reference white, same scale. Returns L* (0 .. 100 for Y in [0, 1]), a*, b* at dim 1."""
    _check_colour(xyz, "xyz")
    f = _lab_f(xyz / _white(white, xyz))
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_xyz(lab: torch.Tensor, white=D65_XYZ) -> torch.Tensor:
    """Inverse of `xyz_to_lab`. lab: [N, 3, ...] (L* in [0, 100]) -> XYZ on the white's scale."""
    _check_colour(lab, "lab")
    L, a, b = lab.unbind(1)
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    return _lab_f_inverse(f) * _white(white, lab)


def srgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """x: [N, 3, ...] sRGB in [0, 1] -> CIELAB (D65): L* in [0, 100], a*, b* at dim 1."""
    _check_colour(x, "srgb")
    with trusted():  # checked once above; the steps skip their NaN scans
        return xyz_to_lab(linear_srgb_to_xyz(srgb_to_linear(x)))


def lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    """lab: [N, 3, ...] CIELAB (D65) -> sRGB; in [0, 1] inside the gamut, unclipped outside."""
    _check_colour(lab, "lab")
    with trusted():
        return linear_to_srgb(xyz_to_linear_srgb(lab_to_xyz(lab)))


# ----------------------------------------------------------------------------- ΔE formulas

def delta_e76(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIE 1976 ΔE*ab: the Euclidean distance in CIELAB. lab1, lab2: [N, 3, ...] -> [N, ...]."""
    _check_colour_pair(lab1, lab2)
    return _safe_sqrt(((lab1 - lab2) ** 2).sum(1))


def _delta_h_squared(lab1, lab2, c1, c2):
    """ΔH*^2 = Δa^2 + Δb^2 - ΔC^2 (clamped at 0 against rounding)."""
    d = lab1 - lab2
    return torch.clamp(d[:, 1] ** 2 + d[:, 2] ** 2 - (c1 - c2) ** 2, min=0.0)


def delta_e94(lab1: torch.Tensor, lab2: torch.Tensor, textiles: bool = False) -> torch.Tensor:
    """CIE 1994 ΔE*94 (lab1 is the reference, whose chroma sets the weights).

    lab1, lab2: [N, 3, ...] CIELAB -> [N, ...]. ``textiles`` picks k_L = 2, K_1 = 0.048,
    K_2 = 0.014 instead of the graphic-arts k_L = 1, K_1 = 0.045, K_2 = 0.015.
    """
    _check_colour_pair(lab1, lab2)
    k_l, k_1, k_2 = CIE94_TEXTILES if textiles else CIE94_GRAPHIC_ARTS
    c1 = _safe_sqrt(lab1[:, 1] ** 2 + lab1[:, 2] ** 2)
    c2 = _safe_sqrt(lab2[:, 1] ** 2 + lab2[:, 2] ** 2)
    d_l = lab1[:, 0] - lab2[:, 0]
    s_c = 1.0 + k_1 * c1
    s_h = 1.0 + k_2 * c1
    return _safe_sqrt((d_l / k_l) ** 2 + ((c1 - c2) / s_c) ** 2 + _delta_h_squared(lab1, lab2, c1, c2) / s_h ** 2)


def delta_e2000(lab1: torch.Tensor, lab2: torch.Tensor, kL: float = 1.0, kC: float = 1.0, kH: float = 1.0) -> torch.Tensor:
    """CIEDE2000 ΔE00 (CIE 142-2001) with the implementation rules of Sharma, Wu & Dalal (2005).

    lab1, lab2: [N, 3, ...] CIELAB -> [N, ...]; kL, kC, kH: parametric factors (1 by default).
    Hue rules: h' = 0 where a' = b = 0; Δh' = 0 and the mean hue is h'1 + h'2 where
    C'1 C'2 = 0; otherwise Δh' is brought into [-180, 180] and the mean hue taken on the short arc.
    Computed in degrees, as the published formula and colour-science do, so that ties at
    exactly 180 degrees fall on the same side.
    """
    _check_colour_pair(lab1, lab2)
    L1, a1, b1 = lab1.unbind(1)
    L2, a2, b2 = lab2.unbind(1)
    c_bar7 = ((_safe_sqrt(a1 ** 2 + b1 ** 2) + _safe_sqrt(a2 ** 2 + b2 ** 2)) / 2) ** 7
    g = 0.5 * (1 - _safe_sqrt(c_bar7 / (c_bar7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = _safe_sqrt(a1p ** 2 + b1 ** 2), _safe_sqrt(a2p ** 2 + b2 ** 2)
    h1p, h2p = _hue_degrees(b1, a1p), _hue_degrees(b2, a2p)

    chroma_zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(chroma_zero, torch.zeros_like(dh), dh)
    d_l = L2 - L1
    d_c = c2p - c1p
    d_h = 2 * _safe_sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh / 2))

    l_bar = (L1 + L2) / 2
    c_bar = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where(
        chroma_zero, h_sum,
        torch.where((h1p - h2p).abs() <= 180, h_sum / 2,
                    torch.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)),
    )
    t = (1 - 0.17 * torch.cos(torch.deg2rad(h_bar - 30)) + 0.24 * torch.cos(torch.deg2rad(2 * h_bar))
         + 0.32 * torch.cos(torch.deg2rad(3 * h_bar + 6)) - 0.20 * torch.cos(torch.deg2rad(4 * h_bar - 63)))
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    c_bar7p = c_bar ** 7
    r_c = 2 * _safe_sqrt(c_bar7p / (c_bar7p + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * c_bar
    s_h = 1 + 0.015 * c_bar * t
    r_t = -torch.sin(torch.deg2rad(2 * d_theta)) * r_c
    tl, tc, th = d_l / (kL * s_l), d_c / (kC * s_c), d_h / (kH * s_h)
    return _safe_sqrt(tl ** 2 + tc ** 2 + th ** 2 + r_t * tc * th)


def delta_e_cmc(lab1: torch.Tensor, lab2: torch.Tensor, l: float = 2.0, c: float = 1.0) -> torch.Tensor:
    """CMC l:c (1984) ΔE (lab1 is the reference). lab1, lab2: [N, 3, ...] -> [N, ...].

    l:c = 2:1 for acceptability (the default), 1:1 for perceptibility.
    """
    _check_colour_pair(lab1, lab2)
    L1 = lab1[:, 0]
    c1 = _safe_sqrt(lab1[:, 1] ** 2 + lab1[:, 2] ** 2)
    c2 = _safe_sqrt(lab2[:, 1] ** 2 + lab2[:, 2] ** 2)
    h1 = _hue_degrees(lab1[:, 2], lab1[:, 1])
    s_l = torch.where(L1 < 16, torch.full_like(L1, 0.511), 0.040975 * L1 / (1 + 0.01765 * L1))
    s_c = 0.0638 * c1 / (1 + 0.0131 * c1) + 0.638
    t = torch.where((h1 >= 164) & (h1 <= 345),
                    0.56 + torch.abs(0.2 * torch.cos(torch.deg2rad(h1 + 168))),
                    0.36 + torch.abs(0.4 * torch.cos(torch.deg2rad(h1 + 35))))
    c1_4 = c1 ** 4
    f = _safe_sqrt(c1_4 / (c1_4 + 1900))
    s_h = s_c * (f * t + 1 - f)
    d_l = lab1[:, 0] - lab2[:, 0]
    return _safe_sqrt((d_l / (l * s_l)) ** 2 + ((c1 - c2) / (c * s_c)) ** 2
                      + _delta_h_squared(lab1, lab2, c1, c2) / s_h ** 2)


#: Where colour-science keeps the Sharma, Wu & Dalal (2005) CIEDE2000 test data.
SHARMA_TEST_MODULE = "colour.difference.tests.test_delta_e"
SHARMA_TEST_FUNCTION = "test_delta_E_CIE2000_Sharma2004"


def sharma_test_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Sharma, Wu & Dalal (2005) CIEDE2000 test data, read from colour-science's tests.

    Returns (lab1 [N, 3], lab2 [N, 3], delta_e00 [N]) as float64 arrays, parsed from the
    installed test module (not imported, not copied here). colour-science 0.4 ships 33 of
    the 34 published pairs: it comments out pair 14, whose hue difference is exactly 180
    degrees, so that its value depends on the platform's atan2 rounding.
    Raises FileNotFoundError if colour-science was installed without its tests.
    """
    try:
        spec = importlib.util.find_spec(SHARMA_TEST_MODULE)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"colour-science's test module {SHARMA_TEST_MODULE} is not installed")
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    test = next((node for node in ast.walk(tree)
                 if isinstance(node, ast.FunctionDef) and node.name == SHARMA_TEST_FUNCTION), None)
    if test is None:
        raise FileNotFoundError(f"{spec.origin} has no {SHARMA_TEST_FUNCTION}")
    arrays = {node.targets[0].id: np.array(ast.literal_eval(node.value.args[0]), dtype=np.float64)
              for node in test.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    return arrays["Lab_1"], arrays["Lab_2"], arrays["d_E"]


def cam16ucs_delta_e(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel ΔE in CAM16-UCS (Li et al. 2017) through colour-science (numpy, no gradient).

    x, y: [B, 3, H, W] sRGB in [0, 1] -> [B, H, W] (x's dtype and device), under the viewing
    conditions of the CAM16_* constants: adopted white D65_XYZ, L_A = 16 cd/m^2, Y_b = 20,
    "Average" surround, no illuminant discounting.
    """
    import colour

    check_image(x, "x")
    check_image(y, "y")
    check_pair(x, y)
    conditions = dict(XYZ_w=np.asarray(D65_XYZ), L_A=CAM16_L_A, Y_b=CAM16_Y_B,
                      surround=colour.VIEWING_CONDITIONS_CAM16[CAM16_SURROUND])

    def jab(img):
        with torch.no_grad():
            xyz = linear_srgb_to_xyz(srgb_to_linear(img.double())).movedim(1, -1).cpu().numpy()
        return colour.XYZ_to_CAM16UCS(xyz, **conditions)

    d = colour.difference.delta_E_CAM16UCS(jab(x), jab(y))
    return torch.as_tensor(np.asarray(d), dtype=x.dtype, device=x.device)


# ----------------------------------------------------------------------------- S-CIELAB

def samples_per_degree(viewing_distance_m: float, pixel_pitch_m: float) -> float:
    """Pixels per degree of visual angle at the centre of gaze: 2 d tan(0.5 deg) / pitch.

    viewing_distance_m: eye-to-screen distance in metres; pixel_pitch_m: pixel size in metres.
    """
    if viewing_distance_m <= 0 or pixel_pitch_m <= 0:
        raise ValueError(
            f"viewing distance and pixel pitch must be positive, got {viewing_distance_m} m and {pixel_pitch_m} m"
        )
    return 2.0 * viewing_distance_m * math.tan(math.radians(0.5)) / pixel_pitch_m


def samples_per_degree_for_display(image_width_px: int = DEFAULT_IMAGE_WIDTH_PX,
                                   display_width_m: float = DEFAULT_DISPLAY_WIDTH_M,
                                   viewing_distance_m: float = DEFAULT_VIEWING_DISTANCE_M) -> float:
    """Samples per degree for an image `image_width_px` wide shown `display_width_m` wide."""
    if image_width_px <= 0:
        raise ValueError(f"image width must be a positive number of pixels, got {image_width_px}")
    return samples_per_degree(viewing_distance_m, display_width_m / image_width_px)


#: Samples per degree of the default geometry (about 35.7).
DEFAULT_SAMPLES_PER_DEGREE = samples_per_degree_for_display()


def _reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Fold indices into [0, n) by mirroring about the first and last sample (no repeat)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


@functools.lru_cache(maxsize=32)
def _gaussian_operator(n: int, spread_px: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[n, n] matrix that convolves a length-n signal with exp(-x^2 / spread_px^2).

    Truncated at SCIELAB_TRUNCATE_STD standard deviations, normalised to sum 1 over the
    truncated support, reflect boundary (each row sums to 1). Built in float64, then cast;
    cached per size, spread, dtype and device, since the same ones recur.
    """
    radius = int(math.ceil(SCIELAB_TRUNCATE_STD * spread_px / math.sqrt(2.0)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(offsets / spread_px) ** 2)
    taps = taps / taps.sum()
    rows = torch.arange(n).unsqueeze(1).expand(n, 2 * radius + 1)
    cols = _reflect_index(rows + torch.arange(-radius, radius + 1), n)
    op = torch.zeros(n * n, dtype=torch.float64)
    op.index_add_(0, (rows * n + cols).reshape(-1), taps.repeat(n))
    return op.view(n, n).to(dtype=dtype, device=device)


def scielab_filter(xyz: torch.Tensor, spd: float = DEFAULT_SAMPLES_PER_DEGREE) -> torch.Tensor:
    """The S-CIELAB spatial filtering of an XYZ image (Zhang & Wandell 1996).

    xyz: [B, 3, H, W] CIE XYZ with Y of the white = 1; spd: samples (pixels) per degree of
    visual angle. Returns the filtered image, [B, 3, H, W] XYZ (may leave the gamut slightly).

    Conventions, with the reasons:
    - Opponent space: ``SCIELAB_XYZ_TO_OPP`` (the sign of its O2 Z-weight is explained at
      the constant), and back to XYZ with its exact inverse.
    - Filters: per opponent channel the weighted sum of 2-D Gaussians of
      ``SCIELAB_FILTERS``, k_i exp(-(x^2 + y^2) / s_i^2) with s_i the spread in degrees
      times spd (the paper's form, so the standard deviation is s_i / sqrt(2)). Each
      Gaussian is separable and is applied as a row pass and a column pass.
    - Normalisation: each 1-D Gaussian is truncated at ±3 standard deviations and scaled to
      sum 1 over that support (the paper's k_i), and the weights are divided by their sum
      (the paper's overall k), so every channel's kernel sums to exactly 1 and uniform
      images pass unchanged. The broad luminance Gaussian (4.336 deg) is kept at its full
      truncated width even when it exceeds the image, rather than capping the support at
      one degree as the authors' code does, so the kernel does not depend on the image size.
    - Boundary: reflect (mirror about the edge pixel). No dark (zero) or smeared
      (replicate) borders; the reflection is folded as often as needed for wide kernels.
    """
    _check_colour(xyz, "xyz")
    if xyz.dim() != 4:
        raise ValueError(f"xyz: expected an image batch [B, 3, H, W], got shape {tuple(xyz.shape)}")
    if not spd > 0:
        raise ValueError(f"spd (samples per degree) must be positive, got {spd}")
    h, w = xyz.shape[-2:]
    opp = _apply_matrix(_matrix(SCIELAB_XYZ_TO_OPP, xyz), xyz)
    channels = []
    for c, gaussians in enumerate(SCIELAB_FILTERS):
        total = sum(weight for weight, _ in gaussians)
        out = 0
        for weight, spread_deg in gaussians:
            rows = _gaussian_operator(h, spread_deg * spd, xyz.dtype, xyz.device)
            cols = _gaussian_operator(w, spread_deg * spd, xyz.dtype, xyz.device)
            out = out + (weight / total) * (rows @ opp[:, c] @ cols.T)
        channels.append(out)
    return _apply_matrix(_inverse(SCIELAB_XYZ_TO_OPP, xyz), torch.stack(channels, dim=1))


_SCIELAB_FORMULAS = {"76": delta_e76, "2000": delta_e2000}


def scielab_delta_e(x: torch.Tensor, y: torch.Tensor, spd: float = DEFAULT_SAMPLES_PER_DEGREE,
                    formula: str = "2000") -> torch.Tensor:
    """S-CIELAB per-pixel colour difference.

    x, y: [B, 3, H, W] sRGB in [0, 1]; spd: samples per degree (see `samples_per_degree`);
    formula: "2000" (CIEDE2000) or "76" (ΔE*ab) on the filtered images' CIELAB values
    (white D65_XYZ). Returns [B, H, W], non-negative, in ΔE units.
    """
    if formula not in _SCIELAB_FORMULAS:
        raise ValueError(f"formula must be one of {sorted(_SCIELAB_FORMULAS)}, got {formula!r}")
    check_image(x, "x")
    check_image(y, "y")
    check_pair(x, y)
    with trusted():
        lab_x, lab_y = (xyz_to_lab(scielab_filter(linear_srgb_to_xyz(srgb_to_linear(img)), spd)) for img in (x, y))
        return _SCIELAB_FORMULAS[formula](lab_x, lab_y)
