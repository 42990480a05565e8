"""Images in, numbers out: reading files (orientation, bit depth, float TIFF, ICC profiles),
size policies, and the metric's own input handling (empty, float64, rounding overshoot,
autograd, uninitialised ActNorm). Every test image is generated here, in tmp_path."""
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms, ImageOps

from cdflow_lib import images, metric
from cdflow_lib.metric import CDFlow

# --- independent writers ----------------------------------------------------------------------

#: Adobe RGB (1998) as its ICC profile stores it: D50-adapted colorants and gamma 563/256.
ADOBE_COLORANTS = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
ADOBE_GAMMA = 563 / 256
D50 = (0.9642, 1.0, 0.8249)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filter_rows(samples: np.ndarray, first_kind: int = 0) -> bytes:
    """PNG-filter uint16 [H, W, C] samples; row r uses filter (first_kind + r) % 5 (all five appear)."""
    h, w, c = samples.shape
    raw = samples.astype(">u2").view(np.uint8).reshape(h, w, 2 * c).astype(np.int32)
    left = np.concatenate([np.zeros((h, 1, 2 * c), np.int32), raw[:, :-1]], 1)
    up = np.concatenate([np.zeros((1, w, 2 * c), np.int32), raw[:-1]], 0)
    up_left = np.concatenate([np.zeros((h, 1, 2 * c), np.int32), up[:, :-1]], 1)
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    predictors = [np.zeros_like(raw), left, up, (left + up) // 2, paeth]
    out = b""
    for r in range(h):
        kind = (first_kind + r) % 5
        out += bytes([kind]) + ((raw[r] - predictors[kind][r]) % 256).astype(np.uint8).tobytes()
    return out


def write_png16(path, samples: np.ndarray, interlace: bool = False, orientation: int | None = None,
                icc: bytes | None = None):
    """A 16-bit PNG of uint16 samples [H, W, C] (C = 1, 2, 3, 4), written without Pillow."""
    h, w, c = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    if interlace:
        passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
        data = b"".join(_filter_rows(samples[r0::dr, c0::dc], i) for i, (r0, c0, dr, dc) in enumerate(passes)
                        if samples[r0::dr, c0::dc].size)
    else:
        data = _filter_rows(samples)
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, int(interlace)))]
    if icc is not None:
        chunks.append(_png_chunk(b"iCCP", b"test profile\0\0" + zlib.compress(icc)))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(data)))
    if orientation is not None:
        exif = Image.Exif()
        exif[images.EXIF_ORIENTATION_TAG] = orientation
        chunks.append(_png_chunk(b"eXIf", exif.tobytes().removeprefix(b"Exif\0\0")))
    chunks.append(_png_chunk(b"IEND", b""))
    path.write_bytes(images.PNG_SIGNATURE + b"".join(chunks))
    return path


def matrix_shaper_icc(description: str, colorants=ADOBE_COLORANTS, gamma: float = ADOBE_GAMMA) -> bytes:
    """An ICC v2 RGB display profile (colorants in D50 XYZ, one gamma for all three curves)."""
    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(v):
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    text = description.encode("ascii") + b"\0"
    # textDescriptionType: ASCII count and text, then empty Unicode (8 bytes) and ScriptCode (70 bytes) parts
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 78
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"cprt", b"text\0\0\0\0public domain\0"), (b"wtpt", xyz(D50)),
            (b"rXYZ", xyz(colorants[0])), (b"gXYZ", xyz(colorants[1])), (b"bXYZ", xyz(colorants[2])),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 28 + b"".join(s15(c) for c in D50) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def tiny_model(n_scales: int = 3, seed: int = 0) -> CDFlow:
    """A tiny CDFlow with ActNorm initialised on random images, in eval mode."""
    torch.manual_seed(seed)
    model = CDFlow.from_config("tiny", n_scales=n_scales)
    model.flow.initialize(torch.rand(4, 3, 2 ** n_scales * 2, 2 ** n_scales * 2))
    return model.eval()


def random_rgb(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- EXIF orientation ---------------------------------------------------------------------------

def test_exif_rotated_jpeg_gives_the_cd_of_the_explicitly_rotated_image(tmp_path):
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION_TAG] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(random_rgb(32, 48)).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    stored = np.asarray(Image.open(tmp_path / "r.jpg"))  # Pillow's open does not rotate
    upright = np.ascontiguousarray(np.rot90(stored, -1))  # 48 x 32, as a viewer shows it
    x, info = images.read_image(tmp_path / "r.jpg")
    assert x.shape == (3, 48, 32) and info.orientation == 6
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), (upright / 255.0).astype(np.float32))
    model, reference = tiny_model(), random_rgb(48, 32, seed=1)
    from_file = metric.color_difference(model, reference, tmp_path / "r.jpg")
    explicit = metric.color_difference(model, reference, upright)
    assert from_file == pytest.approx(explicit, abs=1e-6) and from_file > 1e-3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    pixels = random_rgb(5, 7)
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    np.testing.assert_array_equal(images.apply_orientation(pixels, orientation), expected)
    np.testing.assert_array_equal(images.read_image(tmp_path / "o.png")[0].permute(1, 2, 0).numpy(),
                                  (expected / 255.0).astype(np.float32))


# --- 16-bit PNG ------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_png_is_read_at_full_depth(tmp_path, channels, interlace):
    raw = np.random.default_rng(channels).integers(0, 65536, (13, 11, channels), dtype=np.uint16)
    path = write_png16(tmp_path / "a.png", raw, interlace=interlace)
    assert Image.open(path).mode in ("RGB", "RGBA", "LA", "I;16")  # Pillow: 8 bits for colour
    x, info = images.read_image(path)
    colour = raw[..., :3] if channels >= 3 else np.repeat(raw[..., :1], 3, -1)
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), (colour / 65535.0).astype(np.float32))
    assert info.bits == 16 and ("alpha channel dropped (not composited)" in info.notes) == (channels in (2, 4))


def test_16bit_png_keeps_values_pillow_cuts_to_8_bits(tmp_path):
    raw = np.full((8, 8, 3), 1000, np.uint16)
    path = write_png16(tmp_path / "a.png", raw)
    assert np.asarray(Image.open(path))[0, 0, 0] == 1000 >> 8  # Pillow keeps the high byte: 3 / 255 = 0.0118
    assert images.read_image(path)[0][0, 0, 0].item() == pytest.approx(1000 / 65535, rel=1e-7)


def test_16bit_png_exif_orientation_is_applied(tmp_path):
    raw = np.random.default_rng(0).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    x, info = images.read_image(write_png16(tmp_path / "a.png", raw, orientation=8))
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), (np.rot90(raw, 1) / 65535.0).astype(np.float32))
    assert info.orientation == 8


def test_corrupted_16bit_png_gets_a_clear_error(tmp_path):
    path = write_png16(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint16))
    data = bytearray(path.read_bytes())
    data[45] ^= 0xFF  # inside the IDAT chunk's data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"a\.png: PNG chunk b'IDAT' is truncated or corrupted"):
        images.read_image(path)


# --- TIFF ------------------------------------------------------------------------------------

def test_float_tiff_is_read_not_zeroed(tmp_path):
    grey = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    rgb = np.random.default_rng(1).random((6, 8, 3)).astype(np.float32)
    Image.fromarray(grey, "F").save(tmp_path / "grey.tif")  # Pillow mode F: used to load as zeros
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")  # Pillow cannot open this one
    x, info = images.read_image(tmp_path / "grey.tif")
    np.testing.assert_array_equal(x.numpy(), np.repeat(grey[None], 3, 0))
    assert info.bits == 32 and "float32 samples read as sRGB values in [0, 1]" in info.notes
    np.testing.assert_array_equal(images.read_image(tmp_path / "rgb.tif")[0].permute(1, 2, 0).numpy(), rgb)


def test_float_tiff_outside_the_unit_range_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "hdr.tif", np.full((4, 4, 3), 4.0, np.float32), photometric="rgb")
    with pytest.raises(ValueError, match=r"hdr\.tif: values must lie in \[0, 1\], found range \[4, 4\]"):
        images.read_image(tmp_path / "hdr.tif")


def test_int32_tiff_is_refused_with_a_clear_error(tmp_path):
    tifffile.imwrite(tmp_path / "i.tif", np.arange(16, dtype=np.int32).reshape(4, 4) * 100_000)
    with pytest.raises(ValueError, match=r"i\.tif: 32-bit integer samples have no standard range"):
        images.read_image(tmp_path / "i.tif")


def test_16bit_tiff_is_read_at_full_depth(tmp_path):
    raw = np.random.default_rng(0).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", raw, photometric="rgb")
    assert Image.open(tmp_path / "a.tif").mode == "RGB"  # Pillow: 8 bits
    np.testing.assert_array_equal(images.read_image(tmp_path / "a.tif")[0].permute(1, 2, 0).numpy(),
                                  (raw / 65535.0).astype(np.float32))


# --- ICC profiles ----------------------------------------------------------------------------

def test_icc_profile_is_converted_to_srgb_as_imagecms_does(tmp_path):
    import colour as colour_science

    pixels = np.random.default_rng(0).integers(40, 216, (16, 16, 3), dtype=np.uint8)
    icc = matrix_shaper_icc("Adobe-like test RGB")
    Image.fromarray(pixels).save(tmp_path / "adobe.png", icc_profile=icc)
    x, info = images.read_image(tmp_path / "adobe.png")
    assert (info.icc_profile, info.icc_converted) == ("Adobe-like test RGB", True)
    assert "ICC profile 'Adobe-like test RGB' converted to sRGB" in info.notes
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    reference = ImageCms.profileToProfile(Image.fromarray(pixels), src, ImageCms.createProfile("sRGB"),
                                          outputMode="RGB")
    got = x.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, (np.asarray(reference) / 255.0).astype(np.float32))
    by_formula = colour_science.RGB_to_RGB(pixels / 255.0, "Adobe RGB (1998)", "sRGB", apply_cctf_decoding=True,
                                           apply_cctf_encoding=True)
    inside = ((by_formula > 0.02) & (by_formula < 0.98)).all(-1)  # colours inside both gamuts
    assert inside.mean() > 0.5
    assert np.abs(got[inside] - by_formula[inside]).max() < 2.5 / 255  # 8-bit rounding in LittleCMS
    assert np.abs(got - pixels / 255.0).max() > 0.05  # the conversion changed the colours


def test_srgb_profile_is_recognised_and_left_alone(tmp_path):
    pixels = random_rgb(8, 8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pixels).save(tmp_path / "s.png", icc_profile=srgb)
    x, info = images.read_image(tmp_path / "s.png")
    assert (info.icc_profile, info.icc_converted) == ("sRGB built-in", False)
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), (pixels / 255.0).astype(np.float32))


def test_16bit_png_with_a_profile_is_converted_at_8_bit_precision_and_says_so(tmp_path):
    raw = (np.random.default_rng(0).integers(40, 216, (8, 8, 3)) * 257).astype(np.uint16)  # exact 8-bit values
    icc = matrix_shaper_icc("Adobe-like test RGB")
    path = write_png16(tmp_path / "a.png", raw, icc=icc)
    with pytest.warns(images.ImageWarning, match="converted to sRGB at 8-bit precision"):
        x, info = images.read_image(path)
    Image.fromarray((raw // 257).astype(np.uint8)).save(tmp_path / "b.png", icc_profile=icc)
    assert info.icc_converted
    np.testing.assert_array_equal(x.numpy(), images.read_image(tmp_path / "b.png")[0].numpy())


def test_compare_reports_the_converted_profile(tmp_path):
    pixels = random_rgb(16, 16)
    Image.fromarray(pixels).save(tmp_path / "ref.png")
    Image.fromarray(pixels).save(tmp_path / "test.png", icc_profile=matrix_shaper_icc("Adobe-like test RGB"))
    result = metric.compare(tiny_model(), tmp_path / "ref.png", tmp_path / "test.png")
    assert result.reference.icc_profile is None and not result.reference.icc_converted
    assert result.test.as_dict()["icc_profile"] == "Adobe-like test RGB" and result.test.icc_converted
    assert result.cd > 1e-3 and result.distances[-1] == result.cd and len(result.distances) == 3


# --- size policies ---------------------------------------------------------------------------

def _top_rows_differ(rows: int = 15, size: int = 63):
    x = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    y = x.copy()
    y[:rows] = 255 - y[:rows]
    return x, y


def test_crop_warns_naming_the_discarded_pixels():
    """The issue's case: 63 x 63 images differing in their top 15 rows, a 32-multiple model."""
    model = tiny_model(n_scales=5)
    x, y = _top_rows_differ()
    with pytest.warns(images.ImageWarning, match=r"'crop' cropped 63 x 63 to 32 x 32: discarded 2,945 of 3,969 "
                                                 r"pixels \(74\.2%\)"):
        cropped = metric.color_difference(model, x, y, policy="crop")
    assert cropped == pytest.approx(1e-4, rel=1e-6)  # blind to the difference: the floor sqrt(1e-8)


def test_default_policy_resizes_and_sees_the_whole_image():
    model = tiny_model(n_scales=5)
    x, y = _top_rows_differ()
    assert images.DEFAULT_SIZE_POLICY == "resize"
    with pytest.warns(images.ImageWarning, match=r"'resize' resized 63 x 63 to 64 x 64: invented 127 of 3,969"):
        result = metric.compare(model, x, y)
    assert result.size == (64, 64) and result.fit.as_dict()["invented"] == 127
    assert result.cd > 0.01


def test_resize_keeps_values_in_range_and_a_constant_image_constant():
    x = torch.full((1, 3, 20, 30), 0.3)
    out, fit = images.fit_to_multiple(torch.cat([x, torch.rand(1, 3, 20, 30)]), 8, "resize")
    assert out.shape == (2, 3, 24, 32) and fit.after == (24, 32)  # 20 / 8 = 2.5 rounds up, 30 / 8 to 4
    assert torch.allclose(out[0], torch.tensor(0.3), atol=1e-6) and 0 <= out.min() and out.max() <= 1


def test_small_changes_do_not_warn_and_large_ones_do():
    x = torch.rand(1, 3, 199, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = metric.prepare_images(x[0].permute(1, 2, 0).numpy(), multiple=8, policy="pad")  # 200 pixels: 0.5%
    assert out.shape == (1, 3, 200, 200)
    with pytest.warns(images.ImageWarning, match=r"reflect-padded 20 x 20 to 24 x 24: invented 176 of 400"):
        metric.prepare_images(np.zeros((20, 20, 3), np.uint8), multiple=8, policy="pad")


def test_pad_on_a_tiny_image_is_refused_by_name():
    tiny = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(ValueError, match=r"policy 'pad' cannot reflect-pad an image of 3 x 3 to 8 x 8"):
        metric.prepare_images(tiny, multiple=8, policy="pad")
    with pytest.warns(images.ImageWarning):
        assert metric.prepare_images(tiny, multiple=8).shape == (1, 3, 8, 8)


def test_mismatched_sizes_name_both_images(tmp_path):
    Image.fromarray(random_rgb(16, 16)).save(tmp_path / "a.png")
    Image.fromarray(random_rgb(16, 24)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"same size, got .*a\.png 16 x 16, .*b\.png 16 x 24"):
        metric.prepare_images(tmp_path / "a.png", tmp_path / "b.png", multiple=8)


# --- the metric's input handling ---------------------------------------------------------------

def test_empty_inputs_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"x: empty tensor of shape \(0, 3, 16, 16\)"):
        model(torch.empty(0, 3, 16, 16), torch.empty(0, 3, 16, 16))
    with pytest.raises(ValueError, match=r"array: empty image \(0 x 5 pixels\)"):
        images.read_image(np.zeros((0, 5, 3), np.uint8))


def test_float64_input_is_cast_to_the_model_dtype():
    model = tiny_model()
    x, y = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    d = model(x, y)
    assert d.dtype == torch.float32
    assert torch.allclose(d, model(x.float(), y.float()), rtol=0, atol=1e-6)
    assert torch.allclose(model.distances(x, y), model.distances(x.float(), y.float()), rtol=0, atol=1e-6)


def test_a_rounding_overshoot_is_not_called_0_255_data():
    model = tiny_model()
    x = torch.full((1, 3, 16, 16), 0.5)
    x[0, 0, 0, 0] = 1 + 1e-6
    with pytest.raises(ValueError, match=r"x: values must lie in \[0, 1\], found range \[0\.5, 1\.000001\]; "
                                         r"a rounding overshoot") as err:
        model(x, torch.rand(1, 3, 16, 16))
    assert "0-255" not in str(err.value)
    with pytest.raises(ValueError, match="0-255 data"):
        model(x * 200, x)


def test_eval_use_builds_no_autograd_graph():
    model = tiny_model()
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    results = [model(x, y), model.distances(x, y), model.cd_map(x, y), model.latents(x)[0]]
    assert not any(r.requires_grad for r in results)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(model(x, y)) > 0  # no "requires_grad to a scalar" warning


def test_gradients_flow_when_asked_for():
    model = tiny_model()
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    xg = x.clone().requires_grad_(True)  # an input that requires grad: gradient wrt the image
    model(xg, y).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    model.zero_grad()
    model(x, y, grad=True).sum().backward()  # eval mode, asked: gradient wrt the parameters
    asked = [p.grad for p in model.parameters()]
    model.zero_grad()
    model.train()
    model(x, y).sum().backward()  # training mode: as before
    trained = [p.grad for p in model.parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in asked) > 10
    assert all((a is None and b is None) or torch.allclose(a, b) for a, b in zip(asked, trained))
    with torch.no_grad():
        assert not model(x, y, grad=True).requires_grad  # an enclosing no_grad wins


def test_uninitialised_model_in_eval_mode_warns_because_its_cd_depends_on_what_it_saw_first():
    x, y, other = (torch.rand(1, 3, 16, 16) for _ in range(3))
    first, second = CDFlow.from_config("tiny").eval(), CDFlow.from_config("tiny").eval()
    second.load_state_dict(first.state_dict())
    with pytest.warns(metric.UninitializedWarning, match="ActNorm layers are not initialised"):
        a = first(x, y)
    with pytest.warns(metric.UninitializedWarning):
        second(other, other * 0.5)
    assert abs(second(x, y).item() - a.item()) > 1e-4 * a.item()  # the same pair, another CD
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first(x, y)  # initialised now: silent
        tiny_model()(x, y)
