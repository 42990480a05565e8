"""CD maps and localisation scores (cdflow_lib.analysis.cd_maps) on `tiny` and constructed inputs."""
import itertools
import math

import numpy as np
import pytest
import torch
from test_model import trained_like

from cdflow_lib import colour
from cdflow_lib.analysis import cd_maps
from cdflow_lib.data.corpus import photo_tensor

SIZE = 64


@pytest.fixture(scope="module")
def tiny():
    return trained_like("tiny")


@pytest.fixture(scope="module")
def photo():
    return photo_tensor("coffee", SIZE).unsqueeze(0)


def test_map_equal_to_mask_scores_perfectly():
    mask = cd_maps.rectangle_mask(40, 50, 0.2, 0.3, 0.6, 0.7)
    s = cd_maps.localisation_scores(mask, mask)
    assert s["auc"] == 1.0 and s["energy_inside"] == 1.0
    assert math.isclose(s["pearson"], 1.0, rel_tol=1e-12)
    assert s["area"] == pytest.approx(16 * 20 / (40 * 50), rel=1e-12)   # rows 8..23, columns 15..34


def test_soft_mask_map_scores_perfect_auc_and_most_energy_inside():
    mask = cd_maps.blob_mask(64, 64, sigma=0.1)
    s = cd_maps.localisation_scores(mask, mask)
    assert s["auc"] == 1.0 and math.isclose(s["pearson"], 1.0, rel_tol=1e-9)
    # a Gaussian's energy (its square, sigma / sqrt 2) inside its half-maximum circle: 1 - 2^-2 = 0.75
    assert abs(s["energy_inside"] - 0.75) < 0.02


def test_random_map_scores_chance():
    mask = cd_maps.rectangle_mask(128, 128, 0.1, 0.1, 0.5, 0.6)
    rng = np.random.default_rng(0)
    s = cd_maps.localisation_scores(rng.random((128, 128)), mask)
    assert abs(s["auc"] - 0.5) < 0.02
    assert abs(s["pearson"]) < 0.03
    assert abs(s["energy_inside"] - s["area"]) < 0.02


def test_roc_auc_matches_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 60).astype(float)          # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert math.isclose(cd_maps.roc_auc(scores, labels), brute / (len(pos) * len(neg)), rel_tol=1e-12)


def test_localisation_rejects_bad_input():
    mask = cd_maps.rectangle_mask(8, 8, 0.0, 0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="same shape"):
        cd_maps.localisation_scores(np.ones((8, 9)), mask)
    with pytest.raises(ValueError, match="non-negative"):
        cd_maps.localisation_scores(-mask, mask)
    with pytest.raises(ValueError, match="constant"):
        cd_maps.localisation_scores(np.ones((8, 8)), mask)
    with pytest.raises(ValueError, match="mask is constant"):
        cd_maps.localisation_scores(mask, torch.ones(8, 8))


def test_patch_rms_keeps_the_mean_square_and_is_constant_on_patches():
    m = torch.rand(2, 16, 16)
    p = cd_maps.patch_rms(m, 4)
    assert torch.allclose(p.pow(2).mean((1, 2)), m.pow(2).mean((1, 2)), rtol=1e-6)
    assert torch.allclose(p[0, :4, :4], m[0, :4, :4].pow(2).mean().sqrt().expand(4, 4))
    with pytest.raises(ValueError, match="divisor"):
        cd_maps.patch_rms(m, 3)


@pytest.mark.parametrize("pool", [True, False])
def test_maps_have_image_shape_and_the_combined_map_gives_the_cd(tiny, photo, pool):
    x = torch.cat([photo, photo.flip(-1)])
    y = (x * torch.tensor([1.05, 1.0, 0.9]).view(1, 3, 1, 1)).clamp(0, 1)
    maps = cd_maps.pair_maps(tiny, x, y, pool=pool)
    assert list(maps) == ["scale 1", "scale 2", "scale 3", "CD-Flow", "CIEDE2000", "S-CIELAB"]
    assert all(m.shape == (2, SIZE, SIZE) and bool((m >= 0).all()) for m in maps.values())
    with torch.no_grad():
        reported = tiny(x, y)
    assert torch.allclose(torch.sqrt(maps["CD-Flow"].pow(2).mean((1, 2)) + 1e-8), reported, rtol=1e-5)
    per_scale = sum(maps[f"scale {k}"].pow(2) for k in (1, 2, 3))
    assert torch.allclose(per_scale, maps["CD-Flow"].pow(2), rtol=1e-5, atol=1e-9)
    shares = cd_maps.scale_energy({k: v for k, v in maps.items() if k.startswith(("scale", "CD-Flow"))})
    assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-5)


def test_pooled_scale_map_is_the_rms_of_one_latent_position_over_its_cell(tiny, photo):
    """A latent position of scale k owns a 2^k x 2^k cell and nothing else lands there: the pooled
    map of the cell is the root of that position's summed squared differences over 3 * 4^k slots."""
    y = cd_maps.apply_tint(photo, cd_maps.blob_mask(SIZE, SIZE))
    maps = cd_maps.cdflow_maps(tiny, photo, y)
    with torch.no_grad():
        zs = tiny.latents(torch.cat([photo, y]))
    for k, z in enumerate(zs, start=1):
        cell = (z[:1] - z[1:]).double().pow(2).sum(1).div(3 * 4 ** k).sqrt()[0]
        expected = cell.repeat_interleave(2 ** k, 0).repeat_interleave(2 ** k, 1)
        got = maps[f"scale {k}"][0].double()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * float(expected.max())), f"scale {k}"


def test_delta_e_map_is_the_per_pixel_ciede2000_of_colour_science(photo):
    from colour.difference import delta_E_CIE2000

    x = photo.double()
    y = cd_maps.apply_tint(x, cd_maps.blob_mask(SIZE, SIZE))
    ours = cd_maps.delta_e_maps(x, y)["CIEDE2000"][0].numpy()
    lab_x, lab_y = (colour.srgb_to_lab(im)[0].permute(1, 2, 0).numpy() for im in (x, y))
    assert np.abs(ours - delta_E_CIE2000(lab_x, lab_y)).max() < 1e-9


def test_tint_moves_ab_by_mask_times_shift_inside_the_gamut():
    x = torch.full((1, 3, 16, 16), 0.5)                       # mid grey: a 15-unit shift stays in gamut
    mask = cd_maps.blob_mask(16, 16, sigma=0.3)
    y = cd_maps.apply_tint(x, mask, shift_ab=(9.0, 12.0))
    de76 = colour.delta_e76(colour.srgb_to_lab(x), colour.srgb_to_lab(y))[0]
    assert torch.allclose(de76, 15.0 * mask, atol=1e-3)


def test_finest_scale_energy_stays_in_the_tinted_quadrant(tiny, photo):
    """The finest latent sees a few pixels around each position: a tint in the top-left
    quadrant leaves the finest-scale map zero beyond that margin and puts its energy inside."""
    quadrant = cd_maps.rectangle_mask(SIZE, SIZE, 0.0, 0.0, 0.5, 0.5)
    y = cd_maps.apply_tint(photo, quadrant)
    finest = cd_maps.cdflow_maps(tiny, photo, y)["scale 1"][0]
    margin = 16                                                # > the receptive field of tiny's first block
    assert finest[SIZE // 2 + margin:, :].abs().max() == 0 and finest[:, SIZE // 2 + margin:].abs().max() == 0
    s = cd_maps.localisation_scores(finest, quadrant)
    assert s["energy_inside"] > 0.95 and s["auc"] > 0.95


def test_edge_mask_marks_the_requested_fraction_at_a_step_edge():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 16:] = 1.0
    edges = cd_maps.edge_mask(x, fraction=0.1)[0]
    assert edges.shape == (32, 32)
    assert edges[:, 15:17].all() and not edges[:, :14].any() and not edges[:, 18:].any()


def test_energy_shares_split_a_map_by_region():
    m = torch.zeros(4, 4)
    m[0, 0], m[3, 3] = 1.0, 2.0
    regions = {"a": torch.eye(4, dtype=torch.bool), "top": torch.zeros(4, 4, dtype=torch.bool)}
    regions["top"][0] = True
    assert cd_maps.energy_shares(m, regions) == {"a": 1.0, "top": 0.2}


def test_maps_figure_has_one_row_per_pair_and_two_colour_bars(tiny, photo):
    mask = cd_maps.blob_mask(SIZE, SIZE)
    y = cd_maps.apply_tint(photo, mask)
    maps = {k: v[0] for k, v in cd_maps.pair_maps(tiny, photo, y).items()}
    rows = [dict(x=photo[0], y=y[0], maps=maps, truth=15 * mask, label="tint"), dict(x=photo[0], y=y[0], maps=maps)]
    fig = cd_maps.maps_figure(rows)
    # columns: reference, test, truth, 2 ΔE maps, colour bar, 3 scales + combined, colour bar
    assert len(fig.axes) == 2 * 11
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_scores_figure_draws_one_bar_per_map_and_condition():
    import matplotlib.pyplot as plt

    scores = {c: {n: {"auc": v, "energy_inside": v / 2} for n, v in (("a", 0.9), ("b", 0.6), ("c", 0.5))}
              for c in ("aligned", "misaligned")}
    fig = cd_maps.scores_figure(scores, chance={"auc": 0.5, "energy_inside": {"aligned": 0.2}})
    assert len(fig.axes) == 2
    assert [len(ax.patches) for ax in fig.axes] == [6, 6]
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]
    plt.close(fig)
