"""Latent editing (cdflow_lib.widgets) on `tiny`: exact inverse, swaps, PCA, the widget."""
import re

import numpy as np
import pytest
import torch
from test_model import trained_like

from cdflow_lib import widgets
from cdflow_lib.data.corpus import photo_tensor

SIZE = 32


@pytest.fixture(scope="module")
def tiny():
    return trained_like("tiny")


@pytest.fixture(scope="module")
def photos():
    return torch.stack([photo_tensor(n, SIZE) for n in ("astronaut", "coffee", "chelsea", "rocket")])


def test_amplitude_zero_reproduces_the_image(tiny, photos):
    pca = widgets.latent_pca(tiny, photos, scale=2, k=3)
    out = widgets.perturb_latent(tiny, photos[:2], 2, pca.direction(0), 0.0)
    assert out.shape == photos[:2].shape
    assert (out - photos[:2]).abs().max() < 1e-5


def test_swapping_every_scale_gives_the_other_image(tiny, photos):
    x, y = photos[:1], photos[1:2]
    out = widgets.swap_scale(tiny, x, y, [1, 2, 3])
    assert (out - y).abs().max() < 1e-5
    assert (widgets.swap_scale(tiny, x, y, []) - x).abs().max() < 1e-5


def test_cd_of_a_perturbation_grows_with_amplitude(tiny, photos):
    x = photos[:1]
    pca = widgets.latent_pca(tiny, photos, scale=3, k=2)
    with torch.no_grad():
        cds = [float(tiny(x, widgets.perturb_latent(tiny, x, 3, pca.direction(0), a))) for a in (0.25, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(cds, cds[1:])), cds


def test_small_perturbation_cd_is_the_rms_of_the_latent_edit(tiny):
    """Without clipping CD(x, x') = ||Δz|| / sqrt(D): a mid-grey image stays inside [0, 1]."""
    x = torch.full((1, 3, SIZE, SIZE), 0.5) + 0.02 * torch.rand(1, 3, SIZE, SIZE)
    z = tiny.latents(x)[0]
    direction = torch.zeros(z.shape[1])
    direction[0] = 1.0
    edited = widgets.perturb_latent(tiny, x, 1, direction, 0.01)
    expected = 0.01 * (z.shape[2] * z.shape[3] / (3 * SIZE * SIZE)) ** 0.5
    with torch.no_grad():
        assert abs(float(tiny(x, edited, eps=0)) - expected) < 1e-3 * expected + 1e-6


def test_latent_pca_matches_numpy_covariance_eigenvectors(tiny, photos):
    pca = widgets.latent_pca(tiny, photos, scale=1, k=6)
    with torch.no_grad():
        z = tiny.latents(photos)[0]
    samples = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double().numpy()
    evals, evecs = np.linalg.eigh(np.cov(samples, rowvar=False))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    assert np.allclose(pca.std.double().numpy() ** 2, evals, rtol=1e-4)
    assert np.allclose(np.abs((pca.components.double().numpy() * evecs.T).sum(1)), 1.0, atol=1e-4)
    assert abs(float(pca.explained.sum()) - 1.0) < 1e-5            # all 6 components: all of the variance


def test_bad_input_gets_clear_errors(tiny, photos):
    with pytest.raises(ValueError, match="scale must be an integer in 1..3"):
        widgets.swap_scale(tiny, photos[:1], photos[1:2], 4)
    with pytest.raises(ValueError, match="direction: expected shape"):
        widgets.perturb_latent(tiny, photos[:1], 1, torch.ones(5), 1.0)
    with pytest.raises(ValueError, match="k must be an integer in 1..6"):
        widgets.latent_pca(tiny, photos, 1, 7)


def test_static_figures_build(tiny, photos):
    import matplotlib.pyplot as plt

    pcas = [widgets.latent_pca(tiny, photos, k, 2) for k in (1, 3)]
    images, cds = widgets.pc_grid(tiny, photos[:1], pcas, amplitudes=(-1.0, 0.0, 1.0))
    assert images.shape == (2, 3, 3, SIZE, SIZE) and cds.shape == (2, 3)
    assert np.all(cds[:, 1] < 1e-3) and np.all(cds[:, [0, 2]] > cds[:, [1]])
    fig = widgets.pc_grid_figure(images, cds, [1, 3], amplitudes=(-1.0, 0.0, 1.0))
    assert len(fig.axes) == 6
    plt.close(fig)
    swapped, to_x, to_y = widgets.swap_table(tiny, photos[:1], photos[1:2])
    assert swapped.shape == (3, 3, SIZE, SIZE) and to_x.shape == to_y.shape == (3,)
    fig = widgets.swap_figure(photos[:1], photos[1:2], swapped, to_x, to_y)
    assert len(fig.axes) == 5
    plt.close(fig)


def test_edit_attribution_of_the_two_originals(photos):
    x, y = photos[:1], photos[1:2]
    a = widgets.edit_attribution(x, y, torch.cat([x, y]))
    assert a["colour_to_x"][0] < 1e-9 and a["colour_to_y"][1] < 1e-9
    assert abs(a["colour_to_y"][0] - a["colour_to_x"][1]) < 1e-9 and a["colour_to_y"][0] > 1.0
    assert np.allclose([a["form_x"][0], a["form_y"][1]], 1.0)
    assert abs(a["form_y"][0] - a["form_x"][1]) < 1e-9 and abs(a["form_y"][0]) < 0.9


def _find(widget, cls, description=None):
    stack = [widget]
    while stack:
        node = stack.pop()
        if isinstance(node, cls) and (description is None or node.description == description):
            return node
        stack.extend(getattr(node, "children", ()))
    raise LookupError(cls)


def test_explorer_builds_without_a_display_and_updates_on_change(tiny, photos):
    import ipywidgets as w

    box = widgets.latent_explorer(tiny, photos, ["astronaut", "coffee", "chelsea", "rocket"])
    assert isinstance(box, w.VBox)
    sliders = [_find(box, w.IntSlider), _find(box, w.FloatSlider)]
    assert all(s.continuous_update is False for s in sliders)
    picture, report = _find(box, w.Image), _find(box, w.HTML)
    assert picture.value[:8] == b"\x89PNG\r\n\x1a\n"
    before = report.value
    sliders[1].value = 0.0
    assert report.value != before
    assert float(re.search(r"CD\(original, edit\) = ([0-9.]+)", report.value).group(1)) <= 1e-4  # the CD's 1e-8 floor
    assert "0.0% of the decoded values clipped" in report.value and "breaks" not in report.value
    sliders[1].value = widgets.AMPLITUDE_RANGE[1]
    share = widgets.perturb_clipping(tiny, photos[:1], tiny.n_scales,
                                     widgets.latent_pca(tiny, photos, tiny.n_scales, 1).cd_direction(0, SIZE, SIZE),
                                     [widgets.AMPLITUDE_RANGE[1]])[0]
    assert f"{share:.1%} of the decoded values clipped" in report.value
    assert ("breaks the image" in report.value) == (share > widgets.BROKEN_CLIPPED_SHARE)
    _find(box, w.ToggleButtons).value = "swap"
    assert "CD(edit, coffee)" in report.value


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_cd_unit_edit_of_amplitude_a_has_cd_a_before_clipping(tiny, photos, scale):
    """The explorer's unit: the latent change of a CD-unit edit has RMS |a| on every scale, so the
    unclipped decoded image is at CD |a| (checked through the exact inverse, no clipping)."""
    x = torch.full((1, 3, SIZE, SIZE), 0.5) + 0.02 * torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    pca = widgets.latent_pca(tiny, photos, scale=scale, k=1)
    a = 0.05
    with torch.no_grad():
        zs = list(tiny.latents(x))
        zs[scale - 1] = zs[scale - 1] + a * pca.cd_direction(0, SIZE, SIZE).view(1, -1, 1, 1)
        decoded = tiny.flow.inverse(zs)
        cd = float(tiny(x, decoded, eps=0.0))
    assert cd == pytest.approx(a, rel=1e-3)
    with pytest.raises(ValueError, match="divisible"):
        pca.cd_direction(0, SIZE + 1, SIZE)


def test_default_edit_reports_its_clipping(tiny, photos):
    pca = widgets.latent_pca(tiny, photos, scale=tiny.n_scales, k=1)
    edited, clipped = widgets.default_edit(tiny, photos[:1], pca)
    assert edited.shape == photos[:1].shape and 0.0 <= float(edited.min()) and float(edited.max()) <= 1.0
    zs = list(tiny.latents(photos[:1]))
    zs[-1] = zs[-1] + widgets.DEFAULT_AMPLITUDE * pca.cd_direction(0, SIZE, SIZE).view(1, -1, 1, 1)
    raw = tiny.flow.inverse(zs)
    tol = widgets.CLIP_TOLERANCE
    assert clipped == pytest.approx(float(((raw < -tol) | (raw > 1 + tol)).float().mean()))


def test_clipped_fraction_ignores_the_float_error_on_saturated_pixels(tiny):
    """An unedited image with pure black and white areas decodes 1e-5 past [0, 1]: not clipping."""
    x = torch.full((1, 3, SIZE, SIZE), 0.5)
    x[..., : SIZE // 4, :], x[..., -SIZE // 4:, :] = 0.0, 1.0
    with torch.no_grad():
        zs = tiny.latents(x)
        raw = tiny.flow.inverse(zs)
    assert widgets.clipped_fraction(tiny, zs) == 0.0
    assert widgets.clipped_fraction(tiny, zs, tol=0.0) == pytest.approx(float(((raw < 0) | (raw > 1)).float().mean()))
    assert widgets.CLIP_TOLERANCE == pytest.approx(1 / 510) and (raw - x).abs().max() < widgets.CLIP_TOLERANCE


def test_broken_share_is_the_projects_explorer_target():
    from cdflow_lib.analysis.targets import TARGETS

    assert widgets.BROKEN_CLIPPED_SHARE == TARGETS["explorer_clipped_fraction"]


def test_perturb_clipping_matches_one_edit_at_a_time(tiny, photos):
    x, scale = photos[:1], tiny.n_scales
    pca = widgets.latent_pca(tiny, photos, scale=scale, k=1)
    d = pca.cd_direction(0, SIZE, SIZE)
    amplitudes = [-1.0, 0.0, 0.3, 2.0]
    shares = widgets.perturb_clipping(tiny, x, scale, d, amplitudes)
    expected = []
    for a in amplitudes:
        zs = list(tiny.latents(x))
        zs[-1] = zs[-1] + a * d.view(1, -1, 1, 1)
        expected.append(widgets.clipped_fraction(tiny, zs))
    assert shares.shape == (4,) and np.allclose(shares, expected, atol=1e-6)
    assert shares[1] == 0.0 and shares[3] > 0.0


def test_safe_amplitude_matches_a_brute_force_scan(tiny, photos):
    x, scale = photos[1:2], tiny.n_scales
    d = widgets.latent_pca(tiny, photos, scale=scale, k=1).cd_direction(0, SIZE, SIZE)
    grid = np.arange(0.0, 4.0 + 1e-9, 0.02)
    shares = widgets.perturb_clipping(tiny, x, scale, d, grid)
    limit = 0.5 * float(shares.max())                      # a limit the scan is sure to cross
    first_over = grid[np.argmax(shares > limit)]
    found = widgets.safe_amplitude(tiny, x, scale, d, limit=limit, high=4.0, resolution=1e-3)
    assert first_over - 0.02 - 1e-3 <= found < first_over, (found, first_over)
    assert widgets.perturb_clipping(tiny, x, scale, d, [found])[0] <= limit
    assert widgets.safe_amplitude(tiny, x, scale, d, limit=1.0) == widgets.AMPLITUDE_RANGE[1]


def test_pc_grid_figure_marks_saturated_panels(tiny, photos):
    import matplotlib.pyplot as plt

    pcas = [widgets.latent_pca(tiny, photos, tiny.n_scales, 1)]
    images, cds = widgets.pc_grid(tiny, photos[:1], pcas, amplitudes=(0.0, 1.0))
    fig = widgets.pc_grid_figure(images, cds, [tiny.n_scales], amplitudes=(0.0, 1.0), clipped=np.array([[0.0, 0.5]]))
    titles = [ax.get_title() for ax in fig.axes]
    assert "0% clipped" in titles[0] and "saturated" not in titles[0]
    assert "50% clipped: saturated" in titles[1]
    plt.close(fig)
