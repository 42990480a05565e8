"""Distortions, the simulated observer and SyntheticPairs: determinism, splits by photograph,
labels that ignore misalignment, grow with strength and look like SPCD's."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import colour
import numpy as np
import pytest
import torch

from cdflow_lib.data import distortions, observer
from cdflow_lib.data.corpus import corpus_names, photo_tensor
from cdflow_lib.data.distortions import FAMILIES, apply_distortion, render_distortion, sample_distortion
from cdflow_lib.data.observer import dv_from_pooled, fit_observer_mapping, pooled_delta_e, simulated_observer
from cdflow_lib.data.synthetic import STRENGTH_RANGE, SyntheticPairs, split_sources
from test_data_corpus import no_network  # noqa: F401  (autouse: sockets refuse)

SIZE = 48


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.stack([photo_tensor(n, SIZE) for n in ("coffee", "astronaut", "retina")])


@pytest.fixture(scope="module")
def default_test_set() -> SyntheticPairs:
    return SyntheticPairs("test", pairs_per_image=12)   # the photo corpus: 26 test photographs, 312 pairs


# ----------------------------------------------------------------------------- distortions

@pytest.mark.parametrize("family", FAMILIES)
def test_distortion_at_zero_strength_is_the_identity_and_stays_in_range(photos, family):
    params = sample_distortion(family, np.random.default_rng(3))
    assert torch.equal(render_distortion(photos, family, params, 0.0), photos)
    out = render_distortion(photos, family, params, 1.0)
    assert out.shape == photos.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float((out - photos).abs().mean()) > 1e-3


def test_apply_distortion_is_reproducible_from_its_seed(photos):
    a = apply_distortion(photos[0], "edit", 0.7, seed=11)
    assert torch.equal(a, apply_distortion(photos[0], "edit", 0.7, seed=11))
    assert not torch.equal(a, apply_distortion(photos[0], "edit", 0.7, seed=12))


@pytest.mark.parametrize("direction", distortions.PROFILE_DIRECTIONS)
def test_full_profile_mismatch_matches_colour_science(direction):
    # Strength 1 = decode with the sRGB curve, convert primaries, re-encode: colour-science's RGB_to_RGB.
    rgb = np.random.default_rng(0).uniform(0.05, 0.95, size=(200, 3))
    space, srgb_data = distortions.PROFILE_MISMATCHES[direction]
    src, dst = (space, "sRGB") if srgb_data else ("sRGB", space)
    lin = colour.RGB_to_RGB(colour.models.eotf_sRGB(rgb), src, dst,
                            chromatic_adaptation_transform="Bradford")
    expected = colour.models.eotf_inverse_sRGB(np.clip(lin, 0, 1))
    img = torch.from_numpy(rgb.T.reshape(3, 10, 20)).double()
    got = render_distortion(img, "profile", {"direction": direction}, 1.0).numpy().reshape(3, -1).T
    assert np.abs(got - expected).max() < 1e-6


def test_profile_mismatch_keeps_white_and_grey():
    grey = torch.full((3, 4, 4), 0.5, dtype=torch.float64)
    for direction in distortions.PROFILE_DIRECTIONS:
        assert torch.allclose(render_distortion(grey, "profile", {"direction": direction}, 1.0), grey, atol=1e-4)


def test_hue_rotation_leaves_greys_alone_and_turns_colours():
    params = dict(hue_deg=20.0, saturation=0.0, brightness=0.0, contrast=0.0, tint_amplitude=0.0, tint_angle=0.0,
                  tint_shape="blob", tint_cx=0.5, tint_cy=0.5, tint_radius=0.3, tint_direction=0.0)
    grey = torch.full((3, 2, 2), 0.4)
    assert torch.allclose(render_distortion(grey, "edit", params, 1.0), grey, atol=1e-6)
    red = torch.tensor([0.8, 0.2, 0.2]).view(3, 1, 1)
    hue = lambda x: colour.RGB_to_HSV(x.view(3).numpy())[0] * 360   # noqa: E731
    turned = hue(render_distortion(red, "edit", params, 1.0)) - hue(red)
    assert abs((turned + 180) % 360 - 180) == pytest.approx(20.0, abs=3.0)


def test_unknown_family_and_bad_strength_are_named():
    img = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="unknown distortion family 'blur'"):
        apply_distortion(img, "blur", 0.5, seed=0)
    with pytest.raises(ValueError, match="strength must lie in"):
        apply_distortion(img, "edit", 1.5, seed=0)
    with pytest.raises(ValueError, match="seed"):
        apply_distortion(img, "edit", 0.5)


# ----------------------------------------------------------------------------- the observer

def test_observer_gives_zero_for_identical_images(photos):
    assert torch.equal(simulated_observer(photos, photos, seed=4), torch.zeros(len(photos)))
    # One 8-bit level everywhere: below SPCD's 1 % quantile (1.97), far below a visible edit.
    nudged = (photos + 1.0 / 255.0).clamp(0, 1)
    assert float(simulated_observer(photos, nudged).max()) < 1.97
    edited = apply_distortion(photos, "edit", 0.5, seed=0)
    assert float(simulated_observer(photos, edited).min()) > 2 * float(simulated_observer(photos, nudged).max())


def test_pooled_difference_of_uniform_patches_is_colour_science_ciede2000():
    # S-CIELAB leaves uniform images unchanged, so every pixel carries the patches' CIEDE2000.
    a, b = np.array([0.6, 0.3, 0.2]), np.array([0.55, 0.35, 0.25])
    lab = [colour.XYZ_to_Lab(colour.sRGB_to_XYZ(c)) for c in (a, b)]
    expected = float(colour.delta_E(lab[0], lab[1], method="CIE 2000"))
    x = torch.from_numpy(a).view(1, 3, 1, 1).expand(1, 3, 16, 16).double()
    y = torch.from_numpy(b).view(1, 3, 1, 1).expand(1, 3, 16, 16).double()
    assert float(pooled_delta_e(x, y)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_observer_grows_with_strength_within_each_family(photos, family):
    strengths = [0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0]
    for seed in range(4):
        params = sample_distortion(family, np.random.default_rng(seed))
        ys = torch.stack([render_distortion(photos, family, params, s) for s in strengths], 1)    # [P, S, 3, H, W]
        x = photos.unsqueeze(1).expand_as(ys)
        for p in range(len(photos)):
            dv = simulated_observer(x[p], ys[p], seed=None)
            assert bool((dv.diff() > 0).all()), f"{family} seed {seed} photo {p}: {dv.tolist()}"
            noisy = torch.stack([simulated_observer(x[p, i], ys[p, i], seed=99) for i in range(len(strengths))])
            assert bool((noisy.diff() > 0).all())           # one noise draw per seed: the order survives


def test_observer_map_is_monotone_zero_at_zero_and_bounded():
    raw = torch.linspace(0, 200, 2001)
    dv = dv_from_pooled(raw)
    assert float(dv[0]) == 0.0 and bool((dv.diff() > 0).all()) and float(dv.max()) <= observer.DV_CEILING
    assert float(dv_from_pooled(torch.tensor([5.0]), torch.tensor([1.0]))) > float(dv_from_pooled(torch.tensor([5.0])))


def test_fit_observer_mapping_recovers_known_parameters():
    rng = np.random.default_rng(0)
    raw, z = torch.from_numpy(rng.lognormal(1.5, 0.6, 4000)), torch.from_numpy(rng.standard_normal(4000))
    dv = dv_from_pooled(raw, z, gain=1.7, exponent=0.6).double().numpy()
    levels = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    gain, exponent = fit_observer_mapping(raw, z, {str(q): float(np.quantile(dv, q)) for q in levels})
    assert gain == pytest.approx(1.7, rel=1e-3) and exponent == pytest.approx(0.6, rel=1e-3)


# ----------------------------------------------------------------------------- SyntheticPairs

def tiny(split="val", **kw) -> SyntheticPairs:
    return SyntheticPairs(split, **{"size": 32, "pairs_per_image": 4, "crops_per_image": 2, "corpus": "package", **kw})


def digest(ds: SyntheticPairs) -> str:
    h = hashlib.sha256(ds.labels.numpy().tobytes())
    for i in range(len(ds)):
        item = ds[i]
        h.update(item["x"].numpy().tobytes() + item["y"].numpy().tobytes())
    return h.hexdigest()


def test_same_seed_gives_bit_identical_pairs_and_labels():
    a, b = tiny(seed=3), tiny(seed=3)
    for i in range(len(a)):
        ia, ib = a[i], b[i]
        assert all(torch.equal(ia[k], ib[k]) for k in ("x", "y", "dv"))
        assert all(ia[k] == ib[k] for k in ("aligned", "family", "strength", "source"))
    assert not torch.equal(a.labels, tiny(seed=4).labels)


def test_pairs_are_bit_identical_in_a_fresh_process():
    code = "from test_data_synthetic import tiny, digest; print(digest(tiny(seed=3)))"
    env = {"PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == digest(tiny(seed=3))


def test_item_has_the_documented_fields():
    ds = tiny()
    item = ds[0]
    assert set(item) == {"x", "y", "dv", "aligned", "family", "strength", "source"}
    assert item["x"].shape == item["y"].shape == (3, 32, 32) and item["x"].dtype == item["y"].dtype == torch.float32
    assert item["dv"].dtype == torch.float32 and item["dv"].dim() == 0
    assert isinstance(item["aligned"], bool) and item["family"] in FAMILIES and item["source"] in corpus_names()
    assert STRENGTH_RANGE[0] <= item["strength"] <= STRENGTH_RANGE[1]


def test_package_splits_are_disjoint_by_source_photograph():
    for seed in range(10):
        splits = split_sources(seed, "package")
        sets = [set(v) for v in splits.values()]
        assert sum(map(len, sets)) == len(corpus_names()) and set.union(*sets) == set(corpus_names())
        assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (8, 1, 2)


def test_photo_splits_are_disjoint_stratified_and_keep_the_package_photos_in_test():
    from collections import Counter

    from cdflow_lib.data.corpus import photo_group

    everything = set(corpus_names("photos"))
    for seed in range(4):
        splits = split_sources(seed, "photos")
        sets = {k: set(v) for k, v in splits.items()}
        assert sum(map(len, sets.values())) == len(everything) and set.union(*sets.values()) == everything
        assert set(corpus_names("package")) <= sets["test"]
        assert len(sets["val"]) == 20 and len(sets["test"]) == 11 + 15
        groups = Counter(photo_group(n) for n in everything)
        for group, n in groups.items():
            if group == "package" or n < 10:
                continue
            share = sum(photo_group(m) == group for m in sets["train"]) / n
            assert 0.6 <= share <= 0.9, f"seed {seed}: {group} has {share:.0%} of its photos in train"
    assert split_sources(0) == split_sources(0) and split_sources(0) != split_sources(1)
    sources = {}
    for split in ("train", "val", "test"):
        ds = tiny(split, pairs_per_image=1)
        sources[split] = {ds[i]["source"] for i in range(len(ds))}
        assert sources[split] == set(split_sources(0, "package")[split])
    assert not (sources["train"] & sources["val"]) and not (sources["train"] & sources["test"])
    assert not (sources["val"] & sources["test"])


def test_misaligned_pair_has_exactly_the_label_of_its_aligned_twin():
    ds = tiny(misaligned_fraction=1.0)
    for i in range(len(ds)):
        item, twin = ds[i], ds.aligned_twin(i)
        assert not item["aligned"] and twin["aligned"]
        assert not torch.equal(item["y"], twin["y"]) and torch.equal(item["x"], twin["x"])
        assert torch.equal(item["dv"], twin["dv"])
        again = simulated_observer(twin["x"], twin["y"], seed=ds.specs[i].noise_seed)
        assert float(again) == pytest.approx(float(item["dv"]), rel=1e-5)
        assert float(simulated_observer(item["x"], item["y"], seed=ds.specs[i].noise_seed)) != pytest.approx(
            float(item["dv"]), rel=1e-3)
    assert torch.equal(tiny(misaligned_fraction=0.0).labels, ds.labels)


def test_more_pairs_per_image_keeps_the_existing_pairs():
    small, big = tiny(pairs_per_image=2), tiny(pairs_per_image=4)
    for i in range(2):
        assert small.specs[i] == big.specs[i] and torch.equal(small.labels[i], big.labels[i])


def test_label_cache_round_trips(tmp_path):
    first = tiny(cache_dir=tmp_path)
    files = list(tmp_path.glob("synthetic_val_*.pt"))
    assert len(files) == 1
    assert torch.equal(tiny(cache_dir=tmp_path).labels, first.labels)
    assert torch.equal(tiny().labels, first.labels)


def test_augmentation_follows_the_authors_recipe():
    torch.manual_seed(0)
    plain, aug = tiny()[0], tiny(augment=True)[0]
    assert aug["x"].shape == plain["x"].shape and not torch.equal(aug["x"], plain["x"])
    assert torch.equal(aug["dv"], plain["dv"])
    synced = tiny(augment=True, sync_augment=True, misaligned_fraction=0.0)
    item, reference = synced[0], synced.item(0)
    # One draw for both images: the augmented pair is the clean pair under one warp.
    warp = synced.augment
    torch.manual_seed(1)
    item = synced[0]
    torch.manual_seed(1)
    params = warp.draw()
    assert torch.allclose(item["x"], warp.apply(reference["x"], params))
    assert torch.allclose(item["y"], warp.apply(reference["y"], params))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticPairs("dev")
    with pytest.raises(ValueError, match="misaligned_fraction"):
        tiny(misaligned_fraction=1.5)
    with pytest.raises(ValueError, match="pairs_per_image"):
        tiny(pairs_per_image=0)


def test_default_test_set_labels_fall_in_spcd_range(default_test_set, spcd_labels_dir):
    stats = json.loads((spcd_labels_dir.parent / "spcd_label_stats.json").read_text())["all"]
    dv = default_test_set.labels.double().numpy()
    q = {float(k): v for k, v in stats["quantiles"].items()}
    assert q[0.0] <= dv.min() and dv.max() <= q[1.0]
    assert abs(dv.mean() - stats["mean"]) < 1.0 and abs(np.median(dv) - q[0.5]) < 1.0
    assert 0.6 < dv.std() / stats["std"] < 1.5
    assert q[0.01] <= np.quantile(dv, 0.05) and np.quantile(dv, 0.95) <= q[0.99]
    aligned = np.array([s.aligned for s in default_test_set.specs])
    assert 0.2 < 1 - aligned.mean() < 0.5                      # SPCD: a third of the pairs non-aligned
    assert {s.family for s in default_test_set.specs} == set(FAMILIES)
