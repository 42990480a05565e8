"""Human colour-patch data: the COMBVD pairs, rendered as uniform sRGB images, and their STRESS.

COMBVD (Luo, Cui & Rigg 2001, the data behind CIEDE2000) pools four visual-difference data
sets of surface-colour pairs: BFD-P (2,776 pairs), Leeds (307), RIT-DuPont (312) and Witt
(418), 3,813 in all, with visual differences ΔV on one common scale. We read it from the
MIT-licensed ``vsl-ial`` package (``vsl_ial.datasets.distance.load_combvd``), whose files
and loader fix these conventions (checked by the tests):

- XYZ of each sample relative to the perfect diffuser, scaled so that Y of the reference
  white is 1 (the files store Y_white = 100; the loader divides by 100). This is
  ``cdflow_lib.colour``'s scale.
- One reference white per file: (0.9481, 1, 1.0733), D65 for the CIE 1964 10° observer, for
  Witt, Leeds, RIT-DuPont and the BFD-P D65 part; (0.9807, 1, 1.1823), illuminant C for the
  2° observer, for the BFD-P C part; (0.9465, 1, 1.0397) for the BFD-P M part. BFD-P is
  stored in those three parts; we report it as one subset, as the literature does.
- CAM16 viewing conditions per file (adapting luminance L_A in cd/m², background Y_b,
  surround c, N_c, F), used for the data's own CAM16-UCS differences.
- Each pair is (standard, sample): the first colour is the reference for the asymmetric
  formulas (CIE94, CMC).

Rendering as sRGB images (for image metrics such as CD-Flow): each colour is adapted from
its data set's white to the sRGB white ``colour.D65_XYZ`` with CAT16 (CIE 248:2022), full
adaptation (D = 1), so the reference white renders as sRGB (1, 1, 1); the 10° / 2° observer
difference is absorbed by the same white-to-white mapping, as no spectra are available.
Then XYZ -> linear sRGB; a colour with a channel outside [0, 1] (beyond ``GAMUT_TOLERANCE``)
is out of gamut: it is clipped in linear RGB and its pair flagged, so callers can keep or
drop it. Values are kept in float64, not quantised to 8 bits.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from . import colour
from .baselines import get_measure
from .evaluate import stress

#: The four COMBVD subsets and their pair counts (Luo, Cui & Rigg 2001).
COMBVD_SUBSETS = ("BFD-P", "Leeds", "RIT-DuPont", "Witt")
COMBVD_PAIR_COUNTS = {"BFD-P": 2776, "Leeds": 307, "RIT-DuPont": 312, "Witt": 418}
COMBVD_N_PAIRS = 3813
#: vsl-ial's file names (DistanceDataset.name) -> COMBVD subset.
VSL_PARTS = {"bfd_p-c": "BFD-P", "bfd_p-d65": "BFD-P", "bfd_p-m": "BFD-P",
             "leeds": "Leeds", "rit-dupont": "RIT-DuPont", "witt": "Witt"}

#: The colour-difference formulas of the STRESS table: names of ``baselines.MEASURES``.
FORMULAS = ("cielab", "cie94", "ciede2000", "cmc", "cam16ucs")
#: Pooled COMBVD STRESS reported by the CD-Flow paper (Chen et al. 2023, Table on colour patches).
PAPER_COMBVD_STRESS = {"ciede2000": 28.98, "cdflow": 35.06, "cdnet": 38.87}

#: CAT used to bring each data set's white to the sRGB white (colour-science transform name).
ADAPTATION_TRANSFORM = "CAT16"
#: Linear-RGB tolerance of the gamut test (absorbs float rounding of in-gamut colours).
GAMUT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PatchPairs:
    """N pairs of uniform colour patches with visual differences. Arrays are per pair.

    xyz1, xyz2: [N, 3] XYZ, Y of the white = 1 (xyz1 is the standard); white: [N, 3] the
    reference white of each pair's data set, same scale; dv: [N] visual differences;
    subset: [N] COMBVD subset names; part: [N] vsl-ial file names; L_A [N] cd/m², Y_b [N],
    c, N_c, F [N]: CAM16 viewing conditions.
    """

    xyz1: np.ndarray
    xyz2: np.ndarray
    white: np.ndarray
    dv: np.ndarray
    subset: np.ndarray
    part: np.ndarray
    L_A: np.ndarray
    Y_b: np.ndarray
    c: np.ndarray
    N_c: np.ndarray
    F: np.ndarray

    def __len__(self) -> int:
        return len(self.dv)

    def select(self, mask) -> "PatchPairs":
        """The pairs where `mask` ([N] bool, or indices) holds."""
        return PatchPairs(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def lab(self) -> tuple[np.ndarray, np.ndarray]:
        """The data's own CIELAB (each pair under its data set's white): two [N, 3] arrays."""
        lab1, lab2 = np.empty_like(self.xyz1), np.empty_like(self.xyz2)
        for idx, white in self._groups():
            for src, dst in ((self.xyz1, lab1), (self.xyz2, lab2)):
                dst[idx] = colour.xyz_to_lab(torch.from_numpy(src[idx]), white=tuple(white)).numpy()
        return lab1, lab2

    def _groups(self):
        """(indices, white) for each run of pairs sharing one data-set file."""
        for part in dict.fromkeys(self.part):
            idx = np.flatnonzero(self.part == part)
            yield idx, self.white[idx[0]]


def load_combvd() -> PatchPairs:
    """The 3,813 COMBVD pairs from vsl-ial (see the module docstring for the conventions)."""
    from vsl_ial.datasets.distance import load_combvd as vsl_load_combvd

    parts = {name: [] for name in ("xyz1", "xyz2", "white", "dv", "subset", "part", "L_A", "Y_b", "c", "N_c", "F")}
    for ds in vsl_load_combvd():
        if ds.name not in VSL_PARTS:
            raise ValueError(f"vsl-ial's COMBVD has an unexpected part {ds.name!r}; known: {sorted(VSL_PARTS)}")
        pairs = np.asarray(ds.pairs, dtype=np.int64)
        n = len(pairs)
        parts["xyz1"].append(ds.xyz[pairs[:, 0]])
        parts["xyz2"].append(ds.xyz[pairs[:, 1]])
        parts["white"].append(np.tile(ds.illuminant, (n, 1)))
        parts["dv"].append(ds.dv)
        parts["subset"].append(np.full(n, VSL_PARTS[ds.name], dtype=object))
        parts["part"].append(np.full(n, ds.name, dtype=object))
        for key, value in (("L_A", ds.L_A), ("Y_b", ds.Y_b), ("c", ds.c), ("N_c", ds.Nc), ("F", ds.F)):
            parts[key].append(np.full(n, float(value)))
    return PatchPairs(**{k: np.concatenate(v) for k, v in parts.items()})


def data_differences(pairs: PatchPairs) -> dict[str, np.ndarray]:
    """Every formula of ``FORMULAS`` on the data's own colorimetry: name -> [N] differences.

    CIELAB-based formulas use each data set's white; CAM16-UCS uses each data set's white
    and viewing conditions (colour-science's ``XYZ_to_CAM16UCS``).
    """
    import colour as colour_science

    lab1, lab2 = (torch.from_numpy(a) for a in pairs.lab())
    out = {
        "cielab": colour.delta_e76(lab1, lab2),
        "cie94": colour.delta_e94(lab1, lab2),
        "ciede2000": colour.delta_e2000(lab1, lab2),
        "cmc": colour.delta_e_cmc(lab1, lab2, l=1.0, c=1.0),  # the same l:c as baselines.cmc
    }
    out = {name: d.numpy() for name, d in out.items()}
    cam = np.empty(len(pairs))
    for idx, white in pairs._groups():
        i = idx[0]
        conditions = dict(XYZ_w=white, L_A=pairs.L_A[i], Y_b=pairs.Y_b[i],
                          surround=colour_science.appearance.InductionFactors_CAM16(pairs.F[i], pairs.c[i], pairs.N_c[i]))
        jab1, jab2 = (colour_science.XYZ_to_CAM16UCS(xyz[idx], **conditions) for xyz in (pairs.xyz1, pairs.xyz2))
        cam[idx] = np.linalg.norm(jab1 - jab2, axis=-1)
    out["cam16ucs"] = cam
    return {name: out[name] for name in FORMULAS}


@dataclass(frozen=True)
class RenderedPairs:
    """sRGB renderings of patch pairs.

    srgb1, srgb2: [N, 3] sRGB in [0, 1] (clipped); out_of_gamut: [N] bool, true where either
    colour left the sRGB gamut before clipping; clip_delta_e: [N] the larger ΔE*ab (D65) of
    the two colours between the adapted colour and its clipped rendering (0 inside the gamut).
    """

    srgb1: np.ndarray
    srgb2: np.ndarray
    out_of_gamut: np.ndarray
    clip_delta_e: np.ndarray


def render_srgb(pairs: PatchPairs) -> RenderedPairs:
    """Render both colours of every pair as sRGB (CAT16 to the sRGB white, clip; see module doc)."""
    from colour.adaptation import chromatic_adaptation_VonKries

    target = np.asarray(colour.D65_XYZ)
    srgb, oog, clip = [], [], []
    for xyz in (pairs.xyz1, pairs.xyz2):
        adapted = np.empty_like(xyz)
        for idx, white in pairs._groups():
            adapted[idx] = chromatic_adaptation_VonKries(xyz[idx], white, target, transform=ADAPTATION_TRANSFORM)
        adapted_t = torch.from_numpy(adapted)
        linear = colour.xyz_to_linear_srgb(adapted_t)
        oog.append(((linear < -GAMUT_TOLERANCE) | (linear > 1 + GAMUT_TOLERANCE)).any(1).numpy())
        clipped = linear.clamp(0.0, 1.0)
        clip.append(colour.delta_e76(colour.xyz_to_lab(adapted_t),
                                     colour.xyz_to_lab(colour.linear_srgb_to_xyz(clipped))).numpy())
        srgb.append(colour.linear_to_srgb(clipped).clamp(0.0, 1.0).numpy())
    return RenderedPairs(srgb[0], srgb[1], oog[0] | oog[1], np.maximum(clip[0], clip[1]))


def uniform_pair_images(srgb1, srgb2, size: int = 16, dtype: torch.dtype = torch.float32):
    """Two batches of uniform images, one colour per image.

    srgb1, srgb2: [N, 3] sRGB in [0, 1] (arrays or tensors; clip or drop out-of-gamut colours
    first); size: side in pixels. Returns x, y: [N, 3, size, size] tensors of `dtype`.
    """
    a, b = (torch.as_tensor(np.asarray(s) if not isinstance(s, torch.Tensor) else s, dtype=dtype)
            for s in (srgb1, srgb2))
    for name, t in (("srgb1", a), ("srgb2", b)):
        if t.dim() != 2 or t.shape[1] != 3:
            raise ValueError(f"{name}: expected [N, 3] sRGB colours, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0.0 or float(t.max()) > 1.0:
            raise ValueError(f"{name}: sRGB values must be finite and in [0, 1] (clip or drop out-of-gamut "
                             f"colours first), found range [{float(t.min()):.4g}, {float(t.max()):.4g}]")
    if a.shape != b.shape:
        raise ValueError(f"srgb1 and srgb2 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    return (a[:, :, None, None].expand(-1, -1, size, size).contiguous(),
            b[:, :, None, None].expand(-1, -1, size, size).contiguous())


class PatchImages(torch.utils.data.Dataset):
    """Rendered patch pairs as a pair source for ``evaluate.evaluate``: item i is
    {"x": [3, size, size], "y": [3, size, size], "dv": float}, uniform sRGB images in [0, 1].

    rendered: from ``render_srgb``; dv: [N] visual differences (``PatchPairs.dv``).
    Select pairs first (e.g. in-gamut ones) with ``PatchPairs.select`` and index ``rendered``'s arrays.
    """

    def __init__(self, rendered: RenderedPairs, dv, size: int = 16):
        if len(dv) != len(rendered.srgb1):
            raise ValueError(f"dv has {len(dv)} entries for {len(rendered.srgb1)} rendered pairs")
        self.x, self.y = uniform_pair_images(rendered.srgb1, rendered.srgb2, size)
        self.dv = np.asarray(dv, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.dv)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "dv": float(self.dv[i])}


def rendered_differences(rendered: RenderedPairs, size: int = 4, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Every formula of ``FORMULAS`` as an image measure (``baselines``) on the rendered pairs.

    The patches are uniform, so the pixel-mean measures do not depend on `size`; CAM16-UCS
    here uses the sRGB display viewing conditions of ``colour.cam16ucs_delta_e``, not the
    data sets' own. Returns name -> [N] differences.
    """
    x, y = uniform_pair_images(rendered.srgb1, rendered.srgb2, size, dtype=torch.float64)
    out = {}
    with torch.no_grad():
        for name in FORMULAS:
            measure = get_measure(name)
            out[name] = torch.cat([measure(x[i:i + batch_size], y[i:i + batch_size])
                                   for i in range(0, len(x), batch_size)]).numpy()
    return out


def stress_by_subset(pred, pairs: PatchPairs) -> dict[str, float]:
    """STRESS of predictions `pred` ([N], one per pair of `pairs`) per COMBVD subset and pooled.

    Pooled STRESS puts all pairs in one sum (one scale factor F), as the COMBVD literature does.
    """
    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape != (len(pairs),):
        raise ValueError(f"pred must hold one value per pair, shape ({len(pairs)},), got {pred.shape}")
    out = {name: stress(pred[pairs.subset == name], pairs.dv[pairs.subset == name])
           for name in COMBVD_SUBSETS if np.any(pairs.subset == name)}
    out["pooled"] = stress(pred, pairs.dv)
    return out


def combvd_stress_table(pairs: PatchPairs | None = None, *, drop_out_of_gamut: bool = False,
                        size: int = 4) -> list[dict]:
    """COMBVD STRESS of every formula, per subset and pooled, on the data and on the rendering.

    Rows (for ``evaluate.format_table``): source ("data": the data's own colorimetry;
    "rendered": the measures on the rendered sRGB images), subset, n (pairs used),
    out_of_gamut (pairs flagged in that subset), then one STRESS column per formula.
    drop_out_of_gamut: leave the flagged pairs out of both sources (they are clipped otherwise).
    With vsl-ial 0.0.10 the data's pooled CIEDE2000 STRESS is 29.2 (the CD-Flow paper: 28.98).
    """
    pairs = load_combvd() if pairs is None else pairs
    rendered = render_srgb(pairs)
    keep = ~rendered.out_of_gamut if drop_out_of_gamut else np.ones(len(pairs), dtype=bool)
    sources = {"data": data_differences(pairs), "rendered": rendered_differences(rendered, size)}
    kept = pairs.select(keep)
    rows = []
    for source, diffs in sources.items():
        scores = {name: stress_by_subset(d[keep], kept) for name, d in diffs.items()}
        for subset in (*COMBVD_SUBSETS, "pooled"):
            in_subset = np.ones(len(pairs), dtype=bool) if subset == "pooled" else pairs.subset == subset
            rows.append({"source": source, "subset": subset, "n": int((in_subset & keep).sum()),
                         "out_of_gamut": int((in_subset & rendered.out_of_gamut).sum()),
                         **{name: scores[name][subset] for name in FORMULAS}})
    return rows
