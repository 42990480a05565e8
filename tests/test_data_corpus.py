"""The embedded photo corpus and the geometric transforms: offline, deterministic, exact geometry.

Every data test file imports the autouse fixture `no_network` from here: it makes any
socket (or DNS lookup) raise, so a data test that touched the network would fail.
"""
import math
import socket

import numpy as np
import pytest
import torch

from cdflow_lib.data import corpus, transforms
from cdflow_lib.data.corpus import corpus_names, crop_box, load_corpus, photo_tensor, source_of
from cdflow_lib.data.transforms import PairAugment, affine_warp, misalign

EXPECTED_PHOTOS = {"astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "retina", "stereo_motorcycle", "china", "flower", "grace_hopper"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("a data test tried to use the network")
    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)


def test_network_guard_is_active():
    with pytest.raises(RuntimeError, match="network"):
        socket.create_connection(("example.org", 80))


def test_corpus_holds_every_shipped_photograph():
    assert set(corpus_names()) == EXPECTED_PHOTOS
    for name in corpus_names():
        photo = corpus.load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
        assert min(photo.shape[:2]) >= 300, name
        assert photo.std(axis=2).mean() > 2.0, f"{name} is not a colour photograph"


def test_stereo_motorcycle_is_the_left_image():
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    assert np.array_equal(corpus.load_photo("stereo_motorcycle"), left)
    assert not np.array_equal(left, right)


def test_load_corpus_is_square_in_range_and_deterministic():
    a, b = load_corpus(32), load_corpus(32)
    assert [n for n, _ in a] == corpus_names()
    for (na, ta), (nb, tb) in zip(a, b):
        assert na == nb and ta.shape == (3, 32, 32) and ta.dtype == torch.float32
        assert 0.0 <= float(ta.min()) and float(ta.max()) <= 1.0
        assert torch.equal(ta, tb)


def test_centre_crop_matches_a_brute_force_crop_and_pil_resize():
    from PIL import Image

    photo = corpus.load_photo("coffee")                       # 400 x 600
    assert crop_box(400, 600) == (100, 0, 500, 400)
    expected = np.asarray(Image.fromarray(photo[:, 100:500]).resize((48, 48), Image.Resampling.LANCZOS))
    got = (photo_tensor("coffee", 48).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(got, expected)


def test_crops_are_distinct_views_named_after_their_source():
    named = load_corpus(24, crops_per_image=3)
    assert len(named) == 3 * len(corpus_names())
    names = [n for n, _ in named]
    assert names[:3] == ["astronaut", "astronaut#1", "astronaut#2"]
    assert {source_of(n) for n in names} == EXPECTED_PHOTOS
    a0, a1, a2 = (t for _, t in named[:3])
    assert not torch.equal(a0, a1) and not torch.equal(a1, a2)
    for crop in range(corpus.MAX_CROPS_PER_IMAGE):
        left, top, right, bottom = crop_box(300, 451, crop)
        assert right - left == bottom - top and 0 <= left and right <= 451 and 0 <= top and bottom <= 300


def test_corpus_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown photograph 'lena'"):
        corpus.load_photo("lena")
    with pytest.raises(ValueError, match="crops_per_image"):
        load_corpus(32, crops_per_image=0)
    with pytest.raises(ValueError, match="size"):
        photo_tensor("coffee", 4)


def dot_image(row: int, col: int, n: int = 33) -> torch.Tensor:
    img = torch.zeros(3, n, n)
    img[:, row, col] = 1.0
    return img


def peak(img: torch.Tensor) -> tuple[int, int]:
    return divmod(int(img[0].argmax()), img.shape[-1])


def test_misalign_identity_is_an_exact_copy():
    img = torch.rand(3, 16, 16)
    out = misalign(img)
    assert torch.equal(out, img) and out is not img


def test_misalign_moves_content_as_documented():
    # Centre of a 33 x 33 image is pixel (16, 16); the dot sits 8 px to its right.
    img = dot_image(16, 24)
    assert peak(affine_warp(img, dx=3, padding="zeros")) == (16, 27)
    assert peak(affine_warp(img, dy=-2, padding="zeros")) == (14, 24)
    assert peak(affine_warp(img, angle_deg=90, padding="zeros")) == (8, 16)     # counter-clockwise: right -> up
    assert peak(affine_warp(img, scale=1.5, padding="zeros")) == (16, 28)       # 8 px from the centre -> 12


def test_misalign_rotation_matches_a_brute_force_rotation():
    # Bilinear rotation of a smooth image about its centre, against scipy's spline-free order-1 rotation.
    from scipy.ndimage import rotate

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 41), torch.linspace(0, 1, 41), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(3 * xx + 2 * yy), xx, yy])
    ours = affine_warp(img.double(), angle_deg=7.0, padding="zeros")
    ref = rotate(img.numpy().astype(np.float64), 7.0, axes=(2, 1), reshape=False, order=1, mode="constant")
    inner = slice(8, -8)
    assert np.abs(ours.numpy()[:, inner, inner] - ref[:, inner, inner]).max() < 1e-6


def test_misalign_keeps_range_and_uses_reflect_padding():
    img = torch.rand(2, 3, 24, 24)
    out = misalign(img, dx=3.5, dy=-2.0, angle_deg=1.0, scale=1.02)
    assert out.shape == img.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    bright = torch.ones(3, 24, 24)
    assert torch.allclose(misalign(bright, dx=5, angle_deg=2), bright)       # no black borders


def test_sample_misalignment_is_mild():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = transforms.sample_misalignment(rng, 128)
        assert max(abs(m["dx"]), abs(m["dy"])) <= transforms.MISALIGN_MAX_SHIFT * 128
        assert abs(m["angle_deg"]) <= transforms.MISALIGN_MAX_ROTATION_DEG
        assert abs(m["scale"] - 1) <= transforms.MISALIGN_MAX_SCALE


def test_pair_augment_scales_the_authors_recipe():
    aug = PairAugment(768)
    assert (aug.resize_to, aug.crop, aug.size) == (1024, 1000, 768)
    small = PairAugment(96)
    assert (small.resize_to, small.crop) == (128, 125)


def test_pair_augment_sync_draws_once_and_independent_draws_twice():
    img = torch.rand(3, 40, 40)
    g = torch.Generator().manual_seed(0)
    x, y = PairAugment(32, sync=True)(img, img, g)
    assert x.shape == (3, 32, 32) and torch.equal(x, y)
    x, y = PairAugment(32, sync=False)(img, img, g)
    assert not torch.equal(x, y)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(PairAugment(32)(img, img, g1), PairAugment(32)(img, img, g2)))


def test_pair_augment_rotation_stays_within_three_degrees():
    aug, g = PairAugment(64), torch.Generator().manual_seed(1)
    angles = [aug.draw(g)["angle_deg"] for _ in range(200)]
    assert max(abs(a) for a in angles) <= 3.0 and max(angles) > 2.5 and min(angles) < -2.5
    assert math.isclose(np.mean(angles), 0.0, abs_tol=0.5)


def test_transforms_reject_bad_input():
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        misalign(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="float"):
        misalign(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        misalign(torch.rand(3, 8, 8), scale=0)


# --- the Debian photo corpus (data/photos/) -------------------------------------------------

def _manifest():
    return corpus.photo_manifest()


def test_every_manifest_row_has_a_licence_an_author_and_its_file():
    from tools.build_photo_corpus import LICENCE_URLS, MANIFEST_FIELDS

    rows = _manifest()
    assert len(rows) >= 150
    folder = corpus.photos_dir()
    assert {p.name for p in folder.glob("*.jpg")} == {r["file"] for r in rows}, "photos without a manifest row"
    for r in rows:
        assert tuple(r) == MANIFEST_FIELDS
        assert r["author"].strip() and r["package"] and r["version"], r["file"]
        assert r["licence_url"] in LICENCE_URLS.values(), f"{r['file']}: licence URL {r['licence_url']!r}"
        assert (folder / r["file"]).is_file()


def test_photos_are_512_on_the_short_side_full_chroma_jpegs_under_30_mb():
    from PIL import Image, JpegImagePlugin

    folder = corpus.photos_dir()
    total = 0
    for r in _manifest():
        path = folder / r["file"]
        total += path.stat().st_size
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB", r["file"]
            assert min(img.size) == 512 and max(img.size) <= 768, f"{r['file']}: {img.size}"
            assert JpegImagePlugin.get_sampling(img) == 0, f"{r['file']} uses chroma subsampling"
            # libjpeg's standard luma table scaled for quality q >= 95 (factor <= 0.1): DC 16 -> 2, largest 121 -> 12
            quant = img.quantization[0]
            assert quant[0] <= 2 and max(quant) <= 12, f"{r['file']}: luma quantisation {max(quant)}: quality < 95"
    assert total < 30 * 2**20, f"photos take {total / 2**20:.1f} MiB"


def test_debian_photos_load_offline_as_colour_photographs():
    names = corpus.debian_photo_names()
    for name in names[::15]:
        photo = corpus.load_photo(name)
        assert photo.dtype == np.uint8 and photo.shape[2] == 3 and min(photo.shape[:2]) == 512
        assert np.abs(photo - photo.mean(axis=2, keepdims=True)).mean() > 3.0, f"{name} looks greyscale"
    assert set(corpus.corpus_names("photos")) == EXPECTED_PHOTOS | set(names)


def test_missing_photo_corpus_names_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv(corpus.ENV_DATA, str(tmp_path))
    with pytest.raises(corpus.MissingDataError, match=str(tmp_path / "photos").replace("\\", "\\\\") + ".*CDFLOW_DATA"):
        corpus.photos_dir()


def test_rcc_reader_round_trips_a_bundle(tmp_path):
    """The .rcc reader on a bundle written by hand in Qt's layout (version 2: 22-byte nodes)."""
    import struct
    import zlib

    from tools.qrc import read_rcc

    files = {"a.txt": (b"hello", 0), "b.bin": (b"x" * 100, 1)}

    def name_entry(n):
        return struct.pack(">HI", len(n), 0) + n.encode("utf-16-be")
    names = b"".join(name_entry(n) for n in ["d"] + list(files))
    name_off = [0]
    for n in ["d"] + list(files):
        name_off.append(name_off[-1] + len(name_entry(n)))
    blobs, data_off = b"", []
    for payload, flag in files.values():
        stored = struct.pack(">I", len(payload)) + zlib.compress(payload) if flag else payload
        data_off.append(len(blobs))
        blobs += struct.pack(">I", len(stored)) + stored
    tree = struct.pack(">IHII", 0, 2, 1, 1) + bytes(8)                       # root: 1 child at 1
    tree += struct.pack(">IHII", name_off[0], 2, 2, 2) + bytes(8)            # d/: 2 children at 2
    for i, (_, flag) in enumerate(files.values()):
        tree += struct.pack(">IHHHI", name_off[i + 1], flag, 0, 0, data_off[i]) + bytes(8)
    header_len = 20
    tree_at, data_at = header_len, header_len + len(tree)
    names_at = data_at + len(blobs)
    buf = b"qres" + struct.pack(">IIII", 2, tree_at, data_at, names_at) + tree + blobs + names
    (tmp_path / "t.rcc").write_bytes(buf)
    assert read_rcc(tmp_path / "t.rcc") == {"d/a.txt": b"hello", "d/b.bin": b"x" * 100}
    (tmp_path / "bad.rcc").write_bytes(b"nope" + bytes(16))
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        read_rcc(tmp_path / "bad.rcc")
