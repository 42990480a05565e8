"""Cortical-like responses of CD-Flow's latent units: receptive fields per scale, their
opponent-colour class (luminance, single-opponent, double-opponent), and responses to
luminance and isoluminant gratings across spatial frequency.

**Units.** A latent unit is one number of one scale's latent, ``Unit(scale, channel, row,
col)`` with scale k = 1 (finest) .. K (coarsest), as in `CDFlow.cd_map`. A unit of scale k
sits on the 2^k x 2^k pixel block ``[row * 2^k, (row + 1) * 2^k)`` (and likewise for col).

**Two fields per unit.** The flow f is a bijection, so a unit has both
- a *receptive field* (``method="jacobian"``): the Jacobian row dz_u/dx, one backward pass
  per unit (batched: the flow treats the images of a batch independently, so copy i of the
  image carries unit i's gradient). It says how much the unit responds to a small change
  of each pixel value: a covector, in units of latent per sRGB value;
- a *generative field* (``method="inverse"``): ``(f^-1(z + eps e_u) - f^-1(z)) / eps``, the
  image change that a small step along the unit decodes to (for small eps, column u of the
  Jacobian of f^-1): a vector, in sRGB values per latent unit.
Both are taken at an operating point x: a uniform grey image or a photograph.

**Opponent colour space (our choice).** Linear RGB (sRGB primaries, IEC 61966-2-1
decoding) mapped by the matrix `LINEAR_RGB_TO_OPPONENT` to

- A  = Y = 0.2126 R + 0.7152 G + 0.0722 B (the luminance of the sRGB standard, the Y row
  of `colour.SRGB_TO_XYZ`),
- RG = (R - G) / 2 (red-green),
- BY = (B - (R + G) / 2) / 2 (blue-yellow).

Why this and not S-CIELAB's Poirson-Wandell opponent space (which `colour` implements):
(1) the achromatic channel is photometric luminance, so "isoluminant" means constant Y, the
standard's luminance, exactly; (2) both chromatic channels are exactly zero for every grey
R = G = B, so a pure luminance field has no chromatic energy (the Poirson-Wandell O2 gives
the white -0.05 against 0.87 for O1, and a grey field would show a spurious red-green part);
(3) each channel is scaled so that its extent over the sRGB gamut (the unit cube of linear
RGB) is 1 (Y in [0, 1], RG and BY in [-1/2, 1/2]): a full-range luminance step and a
full-range red-green or blue-yellow step count the same, so energies can be compared
across channels. It is a cone-free stand-in for the physiologists' DKL space (luminance,
L-M at constant S, S-(L+M)); the isoluminant cardinal directions are the columns of the
matrix's inverse.

Fields are linear objects at the operating point x, so they change coordinates with the
derivative of the colour transform there: per pixel, linear RGB = D(x) * sRGB changes with
D = d(decoding)/d(sRGB). A generative field (a vector) becomes ``M (D * field)``; a receptive
field (a covector) becomes ``M^-T (field / D)``, whose channel c at pixel p is the unit's
response to a unit stimulus of opponent channel c at pixel p. (For an orthogonal M the two
rules would coincide; ours is not orthogonal.)

**Classifier** (`classify`), on a field in opponent coordinates [3, H, W]:
1. achromatic share = E_A / (E_A + E_RG + E_BY), E = sum of squares over the field. At least
   `LUMINANCE_SHARE_MIN`: *luminance*.
2. Otherwise the chromatic part (RG, BY) is projected onto its dominant axis (the leading
   eigenvector of its 2 x 2 second-moment matrix over pixels), giving one signed chromatic
   profile p(x, y). Its low-pass index = |P(0)| / max_f |P(f)| (P: the 2-D DFT of p over the
   whole field) lies in [0, 1]; it is exactly 1 for a profile of one sign and near 0 when
   positive and negative lobes balance (a centre with an antagonistic surround of the same
   chromatic channel, or an oriented chromatic edge or bar). At least `LOWPASS_INDEX_MIN`:
   *single-opponent* (a chromatically opponent centre of one spatial sign, low-pass for
   colour); below: *double-opponent* (chromatically and spatially opponent, band-pass for
   colour). This is the physiologists' distinction (single-opponent cells respond best to
   uniform colour, double-opponent cells to chromatic edges and gratings), and the DFT makes
   it robust to the faint far-flung tails of a deep network's fields.

**Gratings.** Sinusoids of a given number of cycles per image around a grey background,
modulated along one opponent channel: *luminance* (A), *red-green* (RG) or *blue-yellow*
(BY), at the same amplitude in opponent units; the chromatic ones are isoluminant (Y is
constant) by construction. A scale's response is the RMS, over its latent numbers and over
orientations and phases, of the change of its latent from that of the uniform grey image.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .. import colour
from .._checks import check_image, check_tensor
from ..colour import SRGB_TO_XYZ, _apply_matrix, _inverse, _matrix
from ..flow import MultiScaleFlow

# ----------------------------------------------------------------------------- constants

#: Names of the opponent channels, in the order of `LINEAR_RGB_TO_OPPONENT`'s rows.
OPPONENT_CHANNELS = ("A", "RG", "BY")
#: Linear RGB (sRGB primaries) -> (A = luminance Y, RG, BY); see the module docstring.
#: Row 1 is the Y row of IEC 61966-2-1's RGB -> XYZ matrix; rows 2 and 3 vanish on greys and
#: are halved so that their extent over the sRGB gamut is 1, like Y's.
LINEAR_RGB_TO_OPPONENT = (
    SRGB_TO_XYZ[1],
    (0.5, -0.5, 0.0),
    (-0.25, -0.25, 0.5),
)

#: The three classes, in the order used by every share table.
CLASSES = ("luminance", "single-opponent", "double-opponent")
#: Short labels for figures.
CLASS_LABELS = {"luminance": "L", "single-opponent": "SO", "double-opponent": "DO"}
#: A field is *luminance* when at least this share of its energy is in the A channel
#: ("mostly achromatic": a majority; a field with no colour preference puts about 1/3 there).
LUMINANCE_SHARE_MIN = 0.5
#: A chromatic field is *single-opponent* when its low-pass index |P(0)| / max |P(f)| is at
#: least this (zero-frequency response at least half the best one: low-pass for colour),
#: *double-opponent* below (band-pass for colour).
LOWPASS_INDEX_MIN = 0.5

#: How fields are computed (see the module docstring) and which change of coordinates they take.
METHODS = {"jacobian": "response", "inverse": "pattern"}
#: Default latent step of the inverse (generative) fields, in latent units. The trained
#: flow's Jacobian is ill-conditioned (the shipped model's latents at a grey image spread over
#: tens of units): a step of 0.05 already leaves the linear regime (J_f J_f^-1 off the identity
#: by 0.1), while float32 round-off of the inverse divided by a step below 0.05 swamps the
#: field. So the generative fields are computed in float64 (`INVERSE_PRECISION`), where a
#: step of 1e-4 is linear to 1e-4 and round-off stays near 1e-12.
DEFAULT_EPS = 1e-4
#: Precision of the generative fields' forward and inverse passes (see DEFAULT_EPS).
INVERSE_PRECISION = torch.float64

#: The grating kinds and the opponent channel each one modulates.
GRATING_KINDS = {"luminance": 0, "red-green": 1, "blue-yellow": 2}
#: Default grating amplitude in opponent units (gamut-normalised, see the module docstring):
#: 0.1 fits all three kinds around mid-grey (their limits there are 0.214, 0.142, 0.115);
#: for luminance it is a Michelson contrast of 0.1 / 0.214 = 47 %.
GRATING_AMPLITUDE = 0.1
#: Default grating background: sRGB mid-grey.
GRATING_BACKGROUND = 0.5
#: Side of the window a field is shown in: WINDOW_BLOCKS blocks of the scale (2^k px each),
#: at least WINDOW_MIN_PX pixels (the trained couplings spread fine-scale fields a few pixels
#: beyond their block); `window_energy_share` measures what the window holds.
WINDOW_BLOCKS = 4
WINDOW_MIN_PX = 16


# ----------------------------------------------------------------------------- opponent colour

def linear_rgb_to_opponent(x: torch.Tensor) -> torch.Tensor:
    """x: [N, 3, ...] linear sRGB-primaries RGB -> (A, RG, BY) [N, 3, ...] (A in [0, 1], RG, BY in [-1/2, 1/2] in gamut)."""
    return _apply_matrix(_matrix(LINEAR_RGB_TO_OPPONENT, x), x)


def opponent_to_linear_rgb(o: torch.Tensor) -> torch.Tensor:
    """o: [N, 3, ...] (A, RG, BY) -> linear RGB [N, 3, ...] (outside [0, 1] when out of gamut)."""
    return _apply_matrix(_inverse(LINEAR_RGB_TO_OPPONENT, o), o)


def srgb_to_opponent(x: torch.Tensor) -> torch.Tensor:
    """x: [N, 3, ...] sRGB in [0, 1] -> (A, RG, BY) of its linear RGB."""
    return linear_rgb_to_opponent(colour.srgb_to_linear(x))


def opponent_to_srgb(o: torch.Tensor) -> torch.Tensor:
    """o: [N, 3, ...] (A, RG, BY) -> sRGB (in [0, 1] when o is inside the gamut; not clipped)."""
    return colour.linear_to_srgb(opponent_to_linear_rgb(o))


def isoluminant_direction(channel: int) -> tuple[float, float, float]:
    """The linear-RGB direction that changes opponent channel `channel` (0 = A, 1 = RG, 2 = BY)
    by one unit and the other two not at all (a column of the inverse matrix)."""
    if channel not in (0, 1, 2):
        raise ValueError(f"channel must be 0 (A), 1 (RG) or 2 (BY), got {channel!r}")
    inv = torch.linalg.inv(torch.tensor(LINEAR_RGB_TO_OPPONENT, dtype=torch.float64))
    return tuple(float(v) for v in inv[:, channel])


def _decoding_slope(at: torch.Tensor) -> torch.Tensor:
    """d(linear RGB)/d(sRGB) per element at `at` (the sRGB decoding is element-wise)."""
    at = at.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (slope,) = torch.autograd.grad(colour.srgb_to_linear(at).sum(), at)
    return slope


def field_to_opponent(field: torch.Tensor, at: torch.Tensor, kind: str) -> torch.Tensor:
    """Change a field's colour coordinates from sRGB to (A, RG, BY) at the operating point `at`.

    field: [N, 3, H, W] in sRGB coordinates; at: [1 or N, 3, H, W] sRGB in [0, 1].
    kind ``"pattern"`` (an image change, e.g. a generative field): ``M (D * field)``.
    kind ``"response"`` (a gradient, e.g. a Jacobian row): ``M^-T (field / D)``, so channel c
    at pixel p is the response to a unit stimulus of opponent channel c at p.
    D is the slope of the sRGB decoding at `at` (strictly positive).
    """
    check_tensor(field, "field", channels=3)
    check_image(at, "at")
    if at.shape[0] not in (1, field.shape[0]) or at.shape[-2:] != field.shape[-2:]:
        raise ValueError(f"at: expected [1 or {field.shape[0]}, 3, {field.shape[-2]}, {field.shape[-1]}], "
                         f"got {tuple(at.shape)}")
    slope = _decoding_slope(at.to(field.dtype))
    if kind == "pattern":
        return linear_rgb_to_opponent(field * slope)
    if kind == "response":
        return _apply_matrix(_inverse(LINEAR_RGB_TO_OPPONENT, field).T, field / slope)
    raise ValueError(f"kind must be 'pattern' or 'response', got {kind!r}")


# ----------------------------------------------------------------------------- units

class Unit(NamedTuple):
    """One latent number: scale k (1 = finest .. K), channel, row, col of z_k."""
    scale: int
    channel: int
    row: int
    col: int

    def centre_px(self) -> tuple[float, float]:
        """(y, x) pixel coordinates of the centre of the unit's 2^k x 2^k block."""
        b = 2 ** self.scale
        return (self.row + 0.5) * b, (self.col + 0.5) * b


def centre_units(flow: MultiScaleFlow, size: int, channels_per_scale: int, seed: int = 0) -> list[Unit]:
    """Units at the image centre (latent position (h // 2, w // 2)) of every scale, finest first.

    Per scale, ``min(channels_per_scale, C_k)`` channels drawn without replacement (seeded,
    sorted). size: image side in pixels (divisible by 2^K).
    """
    if channels_per_scale < 1:
        raise ValueError(f"channels_per_scale must be >= 1, got {channels_per_scale}")
    flow.check_input(torch.zeros(1, flow.config["in_channels"], size, size))
    rng = np.random.default_rng(seed)
    units = []
    for k, (c, h, w) in enumerate(flow.latent_shapes(size, size), start=1):
        chosen = np.sort(rng.choice(c, size=min(channels_per_scale, c), replace=False))
        units += [Unit(k, int(ch), h // 2, w // 2) for ch in chosen]
    return units


def _check_units(flow: MultiScaleFlow, x: torch.Tensor, units) -> None:
    if not units:
        raise ValueError("units: expected at least one Unit")
    shapes = flow.latent_shapes(x.shape[-2], x.shape[-1])
    for u in units:
        if not isinstance(u, Unit):
            raise ValueError(f"units: expected Unit(scale, channel, row, col) entries, got {u!r}")
        if not 1 <= u.scale <= len(shapes):
            raise ValueError(f"{u}: scale must be in 1..{len(shapes)} (1 = finest)")
        c, h, w = shapes[u.scale - 1]
        if not (0 <= u.channel < c and 0 <= u.row < h and 0 <= u.col < w):
            raise ValueError(f"{u}: outside latent z{u.scale} of shape {(c, h, w)} for a {tuple(x.shape[-2:])} image")


def _check_one_image(flow: MultiScaleFlow, x: torch.Tensor) -> None:
    check_image(x, "x", multiple=2 ** flow.n_scales)
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one image [1, 3, H, W], got a batch of {x.shape[0]}")


def _chunks(seq, n: int):
    if n < 1:
        raise ValueError(f"batch_size must be >= 1, got {n}")
    return [seq[i:i + n] for i in range(0, len(seq), n)]


# ----------------------------------------------------------------------------- fields

def jacobian_fields(flow: MultiScaleFlow, x: torch.Tensor, units, batch_size: int = 8) -> torch.Tensor:
    """Receptive fields dz_u/dx of `units` at the image x.

    x: [1, 3, H, W] sRGB in [0, 1]. Returns [N, 3, H, W] (latent units per sRGB value), row i
    for units[i]; `batch_size` units share one forward and one backward pass.
    """
    _check_one_image(flow, x)
    _check_units(flow, x, units)
    out = []
    with torch.enable_grad():
        for chunk in _chunks(list(units), batch_size):
            xb = x.detach().expand(len(chunk), -1, -1, -1).clone().requires_grad_(True)
            zs = flow(xb)[0]
            picked = torch.stack([zs[u.scale - 1][i, u.channel, u.row, u.col] for i, u in enumerate(chunk)])
            (grad,) = torch.autograd.grad(picked.sum(), xb)
            out.append(grad)
    return torch.cat(out)


@torch.no_grad()
def inverse_fields(flow: MultiScaleFlow, x: torch.Tensor, units, eps: float = DEFAULT_EPS,
                   batch_size: int = 8, precision: torch.dtype = INVERSE_PRECISION) -> torch.Tensor:
    """Generative fields (f^-1(z + eps e_u) - f^-1(z)) / eps of `units` at the image x.

    x: [1, 3, H, W] sRGB in [0, 1]; eps > 0 in latent units. Returns [N, 3, H, W] in x's dtype
    (sRGB values per latent unit). The passes run in `precision` (on a copy of the flow when
    its dtype differs; see DEFAULT_EPS). f^-1(z) is x up to round-off; subtracting it (rather
    than x) cancels that round-off. Decoded images may leave [0, 1]: they are not clipped.
    """
    _check_one_image(flow, x)
    _check_units(flow, x, units)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    out_dtype = x.dtype
    if next(flow.parameters()).dtype != precision:
        flow = copy.deepcopy(flow).to(precision)
    x = x.to(precision)
    zs = flow(x)[0]
    x0 = flow.inverse(zs)
    out = []
    for chunk in _chunks(list(units), batch_size):
        zb = [z.expand(len(chunk), -1, -1, -1).clone() for z in zs]
        for i, u in enumerate(chunk):
            zb[u.scale - 1][i, u.channel, u.row, u.col] += eps
        out.append((flow.inverse(zb) - x0) / eps)
    return torch.cat(out).to(out_dtype)


# ----------------------------------------------------------------------------- classification

def field_statistics(opp: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(achromatic share [N], low-pass index [N]) of fields in opponent coordinates [N, 3, H, W].

    Both in [0, 1]; see the module docstring. The low-pass index is NaN for a field with no
    chromatic energy at all. Computed in float64.
    """
    check_tensor(opp, "opponent fields", channels=3)
    o = opp.detach().to(torch.float64)
    energy = o.pow(2).flatten(2).sum(-1)                           # [N, 3]
    total = energy.sum(1)
    if bool((total == 0).any()):
        raise ValueError(f"opponent fields: field(s) {torch.nonzero(total == 0).flatten().tolist()} are all zero")
    share = energy[:, 0] / total
    chrom = o[:, 1:].flatten(2)                                     # [N, 2, P]
    _, vecs = torch.linalg.eigh(chrom @ chrom.transpose(1, 2))      # ascending eigenvalues
    profile = torch.einsum("nc,ncp->np", vecs[..., -1], chrom).view(o.shape[0], *o.shape[-2:])
    spectrum = torch.fft.fft2(profile).abs().flatten(1)
    peak = spectrum.max(1).values
    lowpass = torch.where(peak > 0, spectrum[:, 0] / torch.where(peak > 0, peak, 1.0), torch.nan)
    return share.numpy(), lowpass.numpy()


def classify(share: np.ndarray, lowpass: np.ndarray) -> list[str]:
    """Class names (see `CLASSES`) from the statistics of `field_statistics`."""
    share, lowpass = np.asarray(share), np.asarray(lowpass)
    return ["luminance" if s >= LUMINANCE_SHARE_MIN else
            "single-opponent" if lp >= LOWPASS_INDEX_MIN else "double-opponent"
            for s, lp in zip(share, lowpass)]


def class_shares(classes, scales, n_scales: int) -> np.ndarray:
    """[n_scales, 3] share of each class (columns as `CLASSES`) among the fields of each scale
    (rows: scale 1 = finest first); NaN for a scale with no fields."""
    classes, scales = list(classes), np.asarray(scales)
    if len(classes) != len(scales):
        raise ValueError(f"got {len(classes)} classes for {len(scales)} scales")
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown class names {sorted(unknown)}; expected {CLASSES}")
    out = np.full((n_scales, len(CLASSES)), np.nan)
    for k in range(1, n_scales + 1):
        mine = [c for c, s in zip(classes, scales) if s == k]
        if mine:
            out[k - 1] = [mine.count(c) / len(mine) for c in CLASSES]
    return out


def single_opponent_fraction(shares: np.ndarray) -> np.ndarray:
    """[K] share of single-opponent among the chromatic (single- or double-opponent) fields of
    each scale, from a [K, 3] `class_shares` table; NaN where a scale has no chromatic field."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 2 or shares.shape[1] != len(CLASSES):
        raise ValueError(f"shares: expected a [K, {len(CLASSES)}] table, got shape {shares.shape}")
    chromatic = shares[:, 1] + shares[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chromatic > 0, shares[:, 1] / chromatic, np.nan)


def paper_claim(shares: np.ndarray) -> dict:
    """Test the paper's claim on a [K, 3] `class_shares` table (rows finest first): coarse
    scales single-opponent, fine scales double-opponent. Among chromatic fields, the claim
    holds when the single-opponent fraction is above 1/2 at the coarsest scale and below 1/2
    at the finest. Returns the two fractions (None: no chromatic field) and ``holds``."""
    frac = single_opponent_fraction(shares)
    return {"so_fraction_finest": _number(frac[0]), "so_fraction_coarsest": _number(frac[-1]),
            "holds": bool(frac[-1] > 0.5 and frac[0] < 0.5)}


def _number(v) -> float | None:
    """A float for JSON, None for NaN."""
    return None if np.isnan(v) else float(v)


@dataclass
class FieldSet:
    """Fields of `units` at one image, their opponent-colour statistics and classes.

    fields: [N, 3, H, W] in sRGB coordinates; opponent: [N, 3, H, W] (A, RG, BY);
    achromatic_share, lowpass_index: [N]; classes: N names from `CLASSES`.
    """
    units: list
    method: str
    fields: torch.Tensor
    opponent: torch.Tensor
    achromatic_share: np.ndarray
    lowpass_index: np.ndarray
    classes: list

    @property
    def scales(self) -> np.ndarray:
        return np.array([u.scale for u in self.units])

    def shares(self, n_scales: int | None = None) -> np.ndarray:
        """[K, 3] class shares per scale (see `class_shares`)."""
        return class_shares(self.classes, self.scales, n_scales or int(self.scales.max()))

    def summary(self, n_scales: int | None = None) -> dict:
        """Per scale (lists, finest first; None where undefined, so it serialises to JSON): class
        shares, median achromatic share, median low-pass index (over fields with chromatic
        energy), median window energy share, single-opponent fraction of chromatic fields."""
        k_max = n_scales or int(self.scales.max())
        in_window = window_energy_share(self)

        def medians(values):
            return [_number(np.median(values[(self.scales == k) & ~np.isnan(values)]))
                    if ((self.scales == k) & ~np.isnan(values)).any() else None for k in range(1, k_max + 1)]

        shares = self.shares(k_max)
        return {
            "shares": [[_number(v) for v in row] for row in shares],
            "median_achromatic_share": medians(self.achromatic_share),
            "median_lowpass_index": medians(self.lowpass_index),
            "median_window_energy_share": medians(in_window),
            "single_opponent_fraction": [_number(v) for v in single_opponent_fraction(shares)],
        }


def receptive_fields(flow: MultiScaleFlow, x: torch.Tensor, units, method: str = "jacobian",
                     eps: float = DEFAULT_EPS, batch_size: int = 8) -> FieldSet:
    """Fields of `units` at the image x [1, 3, H, W] by `method` ("jacobian" or "inverse"),
    in opponent coordinates, with their statistics and classes."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if method == "jacobian":
        fields = jacobian_fields(flow, x, units, batch_size)
    else:
        fields = inverse_fields(flow, x, units, eps, batch_size)
    opp = field_to_opponent(fields, x, METHODS[method])
    share, lowpass = field_statistics(opp)
    return FieldSet(list(units), method, fields.detach(), opp.detach(), share, lowpass, classify(share, lowpass))


# ----------------------------------------------------------------------------- gratings

def max_grating_amplitude(kind: str, background: float = GRATING_BACKGROUND) -> float:
    """Largest amplitude (opponent units) of a `kind` grating around the sRGB grey `background`
    that stays inside the sRGB gamut."""
    if kind not in GRATING_KINDS:
        raise ValueError(f"kind must be one of {list(GRATING_KINDS)}, got {kind!r}")
    if not 0.0 < background < 1.0:
        raise ValueError(f"background must be an sRGB grey strictly between 0 and 1, got {background}")
    g = float(colour.srgb_to_linear(torch.tensor([[background] * 3], dtype=torch.float64))[0, 0])
    return min(g, 1.0 - g) / max(abs(v) for v in isoluminant_direction(GRATING_KINDS[kind]))


def gratings(size: int, cycles, kind: str, amplitude: float = GRATING_AMPLITUDE, orientation_deg: float = 0.0,
             phase_deg: float = 0.0, background: float = GRATING_BACKGROUND,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal gratings [len(cycles), 3, size, size], sRGB in [0, 1].

    Opponent channel ``GRATING_KINDS[kind]`` is ``background + amplitude * cos(2 pi c u / size
    + phase)`` with ``u = x cos(theta) + y sin(theta)`` (pixel indices; orientation 0 varies
    along x: vertical bars), c cycles per image; the other two channels stay at the grey
    background's (so "red-green" and "blue-yellow" are isoluminant: Y is constant). Raises
    if the grating leaves the sRGB gamut (see `max_grating_amplitude`); the final clamp to
    [0, 1] only removes float round-off at the gamut boundary.
    """
    limit = max_grating_amplitude(kind, background)
    if not 0 <= amplitude <= limit:
        raise ValueError(f"a {kind} grating around grey {background} stays in the sRGB gamut only for "
                         f"amplitude in [0, {limit:.4f}], got {amplitude}")
    cyc = torch.as_tensor(cycles, dtype=torch.float64).reshape(-1)
    pos = torch.arange(size, dtype=torch.float64)
    theta = math.radians(orientation_deg)
    u = pos[None, :] * math.cos(theta) + pos[:, None] * math.sin(theta)          # [H, W]
    wave = torch.cos(2 * math.pi * cyc[:, None, None] * u / size + math.radians(phase_deg))
    grey = colour.srgb_to_linear(torch.full((1, 3, 1, 1), background, dtype=torch.float64))
    opp = linear_rgb_to_opponent(grey).expand(len(cyc), 3, size, size).clone()
    opp[:, GRATING_KINDS[kind]] += amplitude * wave
    return opponent_to_srgb(opp).clamp(0.0, 1.0).to(dtype)


@torch.no_grad()
def grating_responses(flow: MultiScaleFlow, size: int, cycles, kinds=tuple(GRATING_KINDS),
                      amplitude: float = GRATING_AMPLITUDE, orientations=(0.0, 90.0), phases=(0.0, 90.0),
                      background: float = GRATING_BACKGROUND, batch_size: int = 8) -> dict:
    """Per-scale responses to gratings: {kind: [K, len(cycles)] array}.

    Entry (k, j): the RMS over z_k's numbers, and over every orientation and phase, of
    ``z_k(grating) - z_k(uniform grey)``, for `cycles[j]` cycles per image. size: image side
    (divisible by 2^K). Runs on the flow's device and dtype.
    """
    p = next(flow.parameters())
    grey = torch.full((1, 3, size, size), background, dtype=p.dtype, device=p.device)
    z_grey = flow(grey)[0]
    cycles = list(cycles)
    out = {}
    for kind in kinds:
        total = np.zeros((flow.n_scales, len(cycles)))
        for theta in orientations:
            for phase in phases:
                images = gratings(size, cycles, kind, amplitude, theta, phase, background, p.dtype).to(p.device)
                for start in range(0, len(cycles), batch_size):
                    zs = flow(images[start:start + batch_size])[0]
                    for k, (z, zg) in enumerate(zip(zs, z_grey)):
                        ms = (z - zg).pow(2).flatten(1).mean(1).double().cpu().numpy()
                        total[k, start:start + len(ms)] += ms
        out[kind] = np.sqrt(total / (len(orientations) * len(phases)))
    return out


def lowpass_tuning_index(responses: np.ndarray) -> np.ndarray:
    """[K] response at the lowest frequency / peak response, per scale, for a [K, F] response
    table (frequencies ascending): 1 = low-pass, near 0 = band-pass or high-pass."""
    r = np.asarray(responses, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"responses: expected a [K, F] table, got shape {r.shape}")
    return r[:, 0] / r.max(1)


# ----------------------------------------------------------------------------- windows and figures

def window(field: torch.Tensor, unit: Unit, side: int | None = None) -> torch.Tensor:
    """Crop [C, H, W] to a side x side square centred on the unit's block (clamped to the image);
    default side ``max(WINDOW_BLOCKS * 2^k, WINDOW_MIN_PX)``, at most the image."""
    h, w = field.shape[-2:]
    side = min(side or max(WINDOW_BLOCKS * 2 ** unit.scale, WINDOW_MIN_PX), h, w)
    cy, cx = unit.centre_px()
    top = int(min(max(round(cy - side / 2), 0), h - side))
    left = int(min(max(round(cx - side / 2), 0), w - side))
    return field[..., top:top + side, left:left + side]


def window_energy_share(fs: FieldSet) -> np.ndarray:
    """[N] share of each field's energy (sRGB coordinates) inside its `window`."""
    total = fs.fields.pow(2).flatten(1).sum(1)
    inside = torch.stack([window(f, u).pow(2).sum() for f, u in zip(fs.fields, fs.units)])
    return (inside / total).double().cpu().numpy()


def render_field(field: torch.Tensor) -> np.ndarray:
    """A field [3, H, W] (sRGB coordinates) as an H x W x 3 image: grey 0.5 plus the field
    scaled so that its largest |value| reaches 0 or 1."""
    a = field.detach().cpu().double().numpy().transpose(1, 2, 0)
    m = np.abs(a).max()
    return 0.5 + 0.5 * a / (m if m > 0 else 1.0)


def _units_by_scale(fs: FieldSet, per_scale: int):
    rows = {}
    for i, u in enumerate(fs.units):
        rows.setdefault(u.scale, [])
        if len(rows[u.scale]) < per_scale:
            rows[u.scale].append(i)
    return rows


def field_mosaic(fs: FieldSet, per_scale: int = 6, title: str | None = None, tile: float = 1.15):
    """Figure: one row per scale (finest on top), `per_scale` fields as RGB images (see
    `render_field`), cropped by `window`; each tile titled with channel and class."""
    import matplotlib.pyplot as plt

    rows = _units_by_scale(fs, per_scale)
    per_scale = max(len(idx) for idx in rows.values())
    fig, axes = plt.subplots(len(rows), per_scale, figsize=(tile * per_scale + 0.8, tile * len(rows) + 0.5),
                             squeeze=False)
    for r, (k, idx) in enumerate(sorted(rows.items())):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(idx):
                ax.axis("off")
                continue
            i = idx[c]
            ax.imshow(render_field(window(fs.fields[i], fs.units[i])), interpolation="nearest")
            ax.set_title(f"c{fs.units[i].channel} {CLASS_LABELS[fs.classes[i]]}", fontsize=7)
            if c == 0:
                side = window(fs.fields[i], fs.units[i]).shape[-1]
                ax.set_ylabel(f"scale {k}\n{side} px", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def opponent_mosaic(fs: FieldSet, per_scale: int = 3, title: str | None = None, tile: float = 1.0):
    """Figure: one row per scale; for each of `per_scale` units its A, RG and BY channels
    (blue negative, red positive, one symmetric scale per unit so channel energies compare)."""
    import matplotlib.pyplot as plt

    rows = _units_by_scale(fs, per_scale)
    per_scale = max(len(idx) for idx in rows.values())
    ncols = 3 * per_scale
    fig, axes = plt.subplots(len(rows), ncols, figsize=(tile * ncols + 0.8, tile * len(rows) + 0.6), squeeze=False)
    for r, (k, idx) in enumerate(sorted(rows.items())):
        for j in range(per_scale):
            for ch in range(3):
                ax = axes[r, 3 * j + ch]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(idx):
                    ax.axis("off")
                    continue
                i = idx[j]
                crop = window(fs.opponent[i], fs.units[i]).cpu().double().numpy()
                m = np.abs(crop).max() or 1.0
                ax.imshow(crop[ch], cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
                label = OPPONENT_CHANNELS[ch]
                if ch == 1:
                    label = f"c{fs.units[i].channel} {CLASS_LABELS[fs.classes[i]]}\n{label}"
                ax.set_title(label, fontsize=7)
                if j == 0 and ch == 0:
                    ax.set_ylabel(f"scale {k}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def class_share_figure(shares: dict, title: str | None = None):
    """Figure: stacked bars of class shares per scale, one panel per entry of
    `shares` ({condition name: [K, 3] array from `class_shares`})."""
    import matplotlib.pyplot as plt

    colours = {"luminance": "0.6", "single-opponent": "tab:orange", "double-opponent": "tab:purple"}
    fig, axes = plt.subplots(1, len(shares), figsize=(2.6 * len(shares) + 0.6, 3.0), squeeze=False, sharey=True)
    for ax, (name, table) in zip(axes[0], shares.items()):
        table = np.nan_to_num(np.asarray(table))
        ks = np.arange(1, len(table) + 1)
        bottom = np.zeros(len(table))
        for j, cls in enumerate(CLASSES):
            ax.bar(ks, table[:, j], bottom=bottom, color=colours[cls], label=cls, width=0.75)
            bottom += table[:, j]
        ax.set_xticks(ks)
        ax.set_xlabel("scale (1 = finest)")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("share of units")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def statistics_figure(sets: dict, title: str | None = None):
    """Figure: achromatic share against low-pass index for every field, coloured by scale,
    with the two thresholds; one panel per entry of `sets` ({name: FieldSet})."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(3.0 * len(sets) + 1.0, 3.0), squeeze=False, sharey=True)
    k_max = max(int(fs.scales.max()) for fs in sets.values())
    cmap = plt.get_cmap("viridis", k_max)
    for ax, (name, fs) in zip(axes[0], sets.items()):
        lp = np.nan_to_num(fs.lowpass_index, nan=1.0)
        sc = ax.scatter(lp, fs.achromatic_share, c=fs.scales, cmap=cmap, vmin=0.5, vmax=k_max + 0.5, s=14)
        ax.axhline(LUMINANCE_SHARE_MIN, color="k", lw=0.8, ls="--")
        ax.plot([LOWPASS_INDEX_MIN] * 2, [0, LUMINANCE_SHARE_MIN], color="k", lw=0.8, ls=":")
        ax.text(0.02, 0.97, "L", transform=ax.transAxes, va="top", fontsize=8)
        ax.text(0.02, 0.03, "DO", transform=ax.transAxes, fontsize=8)
        ax.text(0.98, 0.03, "SO", transform=ax.transAxes, ha="right", fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("chromatic low-pass index")
        ax.set_title(name, fontsize=9)
    axes[0, 0].set_ylabel("achromatic energy share")
    fig.colorbar(sc, ax=axes[0, -1], ticks=range(1, k_max + 1), label="scale")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def grating_figure(responses: dict, cycles, title: str | None = None):
    """Figure: per-scale response (RMS latent change) against cycles per image, one panel
    per grating kind ({kind: [K, F] array from `grating_responses`}), log-log, shared y."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, len(responses), figsize=(3.1 * len(responses) + 0.4, 3.0), squeeze=False,
                             sharey=True)
    k_max = max(len(r) for r in responses.values())
    cmap = plt.get_cmap("viridis", k_max)
    for ax, (kind, table) in zip(axes[0], responses.items()):
        for k, row in enumerate(np.asarray(table), start=1):
            ax.plot(list(cycles), row, "o-", ms=3, color=cmap(k - 1), label=f"scale {k}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("cycles per image")
        ax.set_title(kind, fontsize=9)
    axes[0, 0].set_ylabel("RMS latent change")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
