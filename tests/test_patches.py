"""COMBVD colour-patch pairs: loading, conventions, rendering, STRESS against the literature."""
import dataclasses

import colour as cs
import numpy as np
import pytest
import torch
from vsl_ial.cs.cielab import CIELAB
from vsl_ial.cs.xyz import XYZ
from vsl_ial.datasets.distance import load_combvd as vsl_load_combvd

from cdflow_lib import baselines, evaluate, patches



@pytest.fixture(scope="module")
def combvd():
    return patches.load_combvd()


@pytest.fixture(scope="module")
def data_diffs(combvd):
    return patches.data_differences(combvd)


def test_combvd_has_3813_pairs_in_the_four_subsets(combvd):
    assert len(combvd) == patches.COMBVD_N_PAIRS == 3813
    counts = {name: int((combvd.subset == name).sum()) for name in patches.COMBVD_SUBSETS}
    assert counts == {"BFD-P": 2776, "Leeds": 307, "RIT-DuPont": 312, "Witt": 418}
    assert np.all(combvd.dv[combvd.subset == "RIT-DuPont"] == 1.02)  # COMBVD's common scale for RIT-DuPont
    assert np.all(combvd.dv > 0)


def test_combvd_conventions_white_scale_and_whites(combvd):
    assert np.all(combvd.white[:, 1] == 1.0)  # Y of the white = 1
    assert 0 < combvd.xyz1[:, 1].min() and combvd.xyz1[:, 1].max() < 1
    whites = {part: tuple(np.round(combvd.white[combvd.part == part][0], 4)) for part in patches.VSL_PARTS}
    d65_10 = (0.9481, 1.0, 1.0733)
    assert whites == {"bfd_p-c": (0.9807, 1.0, 1.1823), "bfd_p-d65": d65_10, "bfd_p-m": (0.9465, 1.0, 1.0397),
                      "leeds": d65_10, "rit-dupont": d65_10, "witt": d65_10}
    # D65 for the 10° observer and illuminant C for the 2° observer, as colour-science tabulates them
    ill = cs.CCS_ILLUMINANTS
    np.testing.assert_allclose(cs.xy_to_XYZ(ill["CIE 1964 10 Degree Standard Observer"]["D65"]), d65_10, atol=3e-4)
    np.testing.assert_allclose(cs.xy_to_XYZ(ill["CIE 1931 2 Degree Standard Observer"]["C"]),
                               whites["bfd_p-c"], atol=1e-4)


def test_data_lab_matches_vsl_ial_cielab(combvd):
    lab1, lab2 = combvd.lab()
    start = 0
    for ds in vsl_load_combvd():
        lab = 100.0 * CIELAB(ds.illuminant).convert(XYZ(), ds.xyz)  # vsl-ial writes L* in [0, 1]
        pairs = np.asarray(ds.pairs)
        np.testing.assert_allclose(lab1[start:start + len(pairs)], lab[pairs[:, 0]], atol=1e-9)
        np.testing.assert_allclose(lab2[start:start + len(pairs)], lab[pairs[:, 1]], atol=1e-9)
        start += len(pairs)


def test_data_differences_match_colour_science(combvd, data_diffs):
    lab1, lab2 = combvd.lab()
    for name, method, options in (("cielab", "CIE 1976", {}), ("cie94", "CIE 1994", {}),
                                  ("ciede2000", "CIE 2000", {}), ("cmc", "CMC", {"l": 1, "c": 1})):
        np.testing.assert_allclose(data_diffs[name], cs.delta_E(lab1, lab2, method=method, **options), rtol=1e-9)
    # CAM16-UCS through XYZ_to_CAM16 on the 0-100 scale with each data set's conditions
    i = np.flatnonzero(combvd.part == "witt")
    surround = cs.appearance.InductionFactors_CAM16(1.0, 0.69, 1.0)

    def jab(xyz):
        spec = cs.XYZ_to_CAM16(100 * xyz[i], 100 * combvd.white[i[0]], 82.8, 24.9, surround)
        return cs.models.JMh_CAM16_to_CAM16UCS(np.stack([spec.J, spec.M, spec.h], -1))

    np.testing.assert_allclose(data_diffs["cam16ucs"][i], np.linalg.norm(jab(combvd.xyz1) - jab(combvd.xyz2), axis=-1),
                               rtol=1e-6)


def test_ciede2000_pooled_stress_is_near_the_literature(combvd, data_diffs):
    # Published pooled COMBVD STRESS for CIEDE2000 is about 29 (28.98 in the CD-Flow paper);
    # the published tables differ by a few tenths with the data preparation (whites, rounding),
    # so we allow ±1.5 around 29. Measured: 29.20. The other formulas keep their published
    # order: CIEDE2000 best, CIELAB worst.
    s = patches.stress_by_subset(data_diffs["ciede2000"], combvd)
    assert 27.5 < s["pooled"] < 30.5
    assert abs(s["pooled"] - patches.PAPER_COMBVD_STRESS["ciede2000"]) < 1.0
    pooled = {name: patches.stress_by_subset(d, combvd)["pooled"] for name, d in data_diffs.items()}
    assert min(pooled, key=pooled.get) == "ciede2000" and max(pooled, key=pooled.get) == "cielab"
    assert set(s) == {"BFD-P", "Leeds", "RIT-DuPont", "Witt", "pooled"}


def test_white_renders_as_srgb_white_and_rendering_matches_colour_science(combvd):
    whites = combvd.select(np.r_[np.flatnonzero(combvd.part == "bfd_p-c")[:2], np.flatnonzero(combvd.part == "witt")[:2]])
    whites = dataclasses.replace(whites, xyz1=whites.white.copy(), xyz2=whites.white.copy())
    rendered_white = patches.render_srgb(whites)
    np.testing.assert_allclose(rendered_white.srgb1, 1.0, atol=1e-6)
    assert not rendered_white.out_of_gamut.any()

    rendered = patches.render_srgb(combvd)
    oog, srgb = [], []
    for xyz in (combvd.xyz1, combvd.xyz2):
        rgb = np.empty_like(xyz)
        for part in patches.VSL_PARTS:
            i = combvd.part == part
            rgb[i] = cs.XYZ_to_RGB(xyz[i], "sRGB", illuminant=cs.XYZ_to_xy(combvd.white[i][0]),
                                   chromatic_adaptation_transform="CAT16", apply_cctf_encoding=False)
        oog.append(((rgb < -1e-6) | (rgb > 1 + 1e-6)).any(1))
        srgb.append(cs.cctf_encoding(np.clip(rgb, 0, 1), "sRGB"))
    # colour-science derives its sRGB matrix from the primaries (we use the standard's 4-digit
    # matrix): renderings agree to 5e-4, and the gamut flags up to a colour on the boundary.
    np.testing.assert_allclose(rendered.srgb1, srgb[0], atol=5e-4)
    np.testing.assert_allclose(rendered.srgb2, srgb[1], atol=5e-4)
    assert np.sum(rendered.out_of_gamut != (oog[0] | oog[1])) <= 2
    assert np.all(rendered.clip_delta_e[~rendered.out_of_gamut] < 1e-6)
    assert np.all(rendered.clip_delta_e[rendered.out_of_gamut] > 0)


def test_stress_table_rendering_preserves_in_gamut_colorimetry(combvd):
    rows = patches.combvd_stress_table(combvd, drop_out_of_gamut=True)
    by = {(r["source"], r["subset"]): r for r in rows}
    oog = {s: by[("data", s)]["out_of_gamut"] for s in patches.COMBVD_SUBSETS}
    assert oog == {"BFD-P": 452, "Leeds": 0, "RIT-DuPont": 28, "Witt": 2}  # measured; see the rendering test
    assert by[("data", "pooled")]["n"] == 3813 - 482
    # in-gamut pairs: the rendered images carry the data's CIELAB colours up to the small
    # CAT16 step from the data white to the sRGB white, so the CIELAB-based STRESS agrees
    for subset in (*patches.COMBVD_SUBSETS, "pooled"):
        for name in ("cielab", "cie94", "ciede2000", "cmc"):
            assert by[("rendered", subset)][name] == pytest.approx(by[("data", subset)][name], abs=0.15)


def test_patch_images_feed_evaluate_like_the_rendered_differences(combvd):
    some = combvd.select(np.arange(0, len(combvd), 40))
    rendered = patches.render_srgb(some)
    rows = evaluate.evaluate({"ciede2000": baselines.ciede2000}, patches.PatchImages(rendered, some.dv, size=8),
                             batch_size=32, progress=False)
    direct = patches.rendered_differences(rendered)["ciede2000"]
    assert rows[0]["n"] == len(some) == 96
    assert rows[0]["stress"] == pytest.approx(evaluate.stress(direct, some.dv), rel=1e-5)


def test_uniform_pair_images_shapes_and_checks():
    x, y = patches.uniform_pair_images(np.array([[0.1, 0.2, 0.3]]), torch.tensor([[1.0, 0.0, 0.5]]), size=5)
    assert x.shape == y.shape == (1, 3, 5, 5) and x.dtype == torch.float32
    assert torch.equal(y[0, :, 4, 2], torch.tensor([1.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        patches.uniform_pair_images(np.array([[1.2, 0.0, 0.0]]), np.array([[0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        patches.uniform_pair_images(np.zeros((2, 4)), np.zeros((2, 4)))


def test_stress_by_subset_rejects_wrong_length(combvd):
    with pytest.raises(ValueError, match="one value per pair"):
        patches.stress_by_subset(np.ones(10), combvd)
