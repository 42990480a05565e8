"""Image files in, sRGB tensors out: reading, colour management and fitting sizes to the model.

`read_image` turns a path, a PIL image or an array into a [3, H, W] float32 tensor of sRGB
values in [0, 1] and an `ImageInfo` saying what it found and did:

- EXIF orientation is applied, so the tensor is the picture as a viewer displays it;
- 16-bit PNGs and TIFFs keep their 16 bits (Pillow cuts 16-bit RGB to 8 bits, so 16-bit
  PNGs are decoded here and 16-bit / float TIFFs read with tifffile); samples / 65535;
- float TIFFs are read as sRGB values and must lie in [0, 1]; 32-bit integer samples have
  no standard range and are refused;
- an embedded ICC profile is converted to sRGB with Pillow's ImageCms (LittleCMS, its
  default perceptual intent), unless the profile is an sRGB profile already;
- greyscale is expanded to RGB, palettes are expanded, alpha is dropped (not composited).

`fit_to_multiple` makes a batch's height and width divisible by 2^K (the model's multiple)
under a size policy, and `load_images` does both for several images of one size. A policy
that discards or invents more than `WARN_FRACTION` of the pixels says so with an
`ImageWarning` naming how many.
"""
from __future__ import annotations

import dataclasses
import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: How `fit_to_multiple` may reach a multiple: ``resize`` (bilinear, antialiased, to the
#: nearest multiple: every pixel contributes), ``pad`` (reflect), ``crop`` (centre), ``error``.
SIZE_POLICIES = ("resize", "pad", "crop", "error")
#: The default policy: it never drops part of the image and never invents a border.
DEFAULT_SIZE_POLICY = "resize"
#: A size policy that discards or invents more than this fraction of the pixels warns.
WARN_FRACTION = 0.01
#: Values this far outside [0, 1] are the rounding error of a colour conversion, not another range.
ROUNDING_SLACK = 1e-3

EXIF_ORIENTATION_TAG = 0x0112
TIFF_ICC_TAG = 34675
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
#: Samples per pixel of the PNG colour types that can hold 16 bits (grey, RGB, grey+alpha, RGBA).
PNG16_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
#: Adam7 interlacing: (first row, first column, row step, column step) of the seven passes.
ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
#: What each EXIF orientation does to show the stored pixels upright (as ImageOps.exif_transpose).
ORIENTATIONS = {1: "none", 2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
                5: "transposed", 6: "rotated 90 degrees clockwise", 7: "transversed",
                8: "rotated 90 degrees counter-clockwise"}
#: Pillow modes whose samples are wider than 8 bits.
WIDE_MODES = ("F", "I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageWarning(UserWarning):
    """An image was changed in a way worth knowing: pixels dropped or invented, precision lost."""


@dataclass(frozen=True)
class ImageInfo:
    """What `read_image` found and did. height, width: the image as displayed (after orientation)."""

    source: str
    height: int
    width: int
    bits: int  # bits per stored sample: 8, 16, or 32 / 64 for float
    orientation: int = 1  # the EXIF orientation applied (1: none)
    icc_profile: str | None = None  # description of the embedded ICC profile
    icc_converted: bool = False  # True when the pixels were converted from icc_profile to sRGB
    notes: tuple[str, ...] = ()  # every conversion made, one phrase each

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "notes": list(self.notes)}


@dataclass(frozen=True)
class SizeFit:
    """What `fit_to_multiple` did: sizes (H, W) before and after, pixels discarded and invented."""

    policy: str
    before: tuple[int, int]
    after: tuple[int, int]
    discarded: int = 0
    invented: int = 0

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        (h, w), (nh, nw) = self.before, self.after
        if not self.changed:
            return f"{h} x {w}, unchanged"
        n = h * w
        what = {"crop": "cropped", "pad": "reflect-padded", "resize": "resized"}[self.policy]
        counts = [f"{k} {v:,} of {n:,} pixels ({v / n:.1%})"
                  for k, v in (("discarded", self.discarded), ("invented", self.invented)) if v]
        return f"{what} {h} x {w} to {nh} x {nw}: " + ", ".join(counts)

    def as_dict(self) -> dict:
        return {"policy": self.policy, "before": list(self.before), "after": list(self.after),
                "discarded": self.discarded, "invented": self.invented}


def range_error(name: str, lo: float, hi: float) -> str | None:
    """The message for values [lo, hi] outside [0, 1], naming the likely cause; None when inside."""
    if lo >= 0.0 and hi <= 1.0:
        return None
    if lo >= -ROUNDING_SLACK and hi <= 1.0 + ROUNDING_SLACK:
        cause = "a rounding overshoot (of a colour conversion?), not another range: clamp to [0, 1]"
    elif lo >= 0.0 and hi <= 255.0:
        cause = "this looks like 0-255 data: divide by 255"
    elif lo >= 0.0 and hi <= 65535.0:
        cause = "this looks like 16-bit data: divide by 65535"
    else:
        cause = "sRGB values lie in [0, 1]; encode linear or HDR data first"
    return f"{name}: values must lie in [0, 1], found range [{lo:.7g}, {hi:.7g}]; {cause}"


# ----------------------------------------------------------------------------- reading

def read_image(src) -> tuple[torch.Tensor, ImageInfo]:
    """A path, PIL image or H x W x 3 array -> ([3, H, W] float32 sRGB in [0, 1], ImageInfo).

    Arrays: uint8 (/ 255), uint16 (/ 65535) or float in [0, 1]; taken as sRGB, no metadata.
    Files and PIL images: see the module docstring. Anything unreadable or ambiguous gets a
    ValueError (FileNotFoundError for a missing path) that starts with the source's name.
    """
    from PIL import Image

    if isinstance(src, (str, Path)):
        return _read_path(Path(src))
    if isinstance(src, Image.Image):
        name = getattr(src, "filename", "") or "PIL image"
        return _from_pil(src, str(name))
    if isinstance(src, np.ndarray):
        return _from_array(src)
    raise ValueError(f"expected a path, a PIL image or an H x W x 3 array, got {type(src).__name__}")


def _read_path(path: Path) -> tuple[torch.Tensor, ImageInfo]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    with path.open("rb") as f:
        head = f.read(32)
    if head.startswith(PNG_SIGNATURE) and len(head) >= 25 and head[24] == 16:
        return _read_png16(path)
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        if head[:4] in TIFF_SIGNATURES:
            return _read_tiff(path)
        raise ValueError(f"{path}: not an image file Pillow can read") from None
    with img:
        if head[:4] in TIFF_SIGNATURES and (img.mode in WIDE_MODES or max(_tiff_bits(img)) > 8):
            return _read_tiff(path)
        try:
            img.load()
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"{path}: cannot decode ({exc}); the file may be truncated") from None
        return _from_pil(img, str(path))


def _tiff_bits(img) -> tuple[int, ...]:
    bits = getattr(img, "tag_v2", {}).get(258, (8,))
    return tuple(bits) if isinstance(bits, (tuple, list)) else (int(bits),)


def _empty_check(name: str, h: int, w: int) -> None:
    if h == 0 or w == 0:
        raise ValueError(f"{name}: empty image ({h} x {w} pixels)")


def _from_array(arr: np.ndarray) -> tuple[torch.Tensor, ImageInfo]:
    name = "array"
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected an H x W x 3 array, got shape {arr.shape}")
    _empty_check(name, *arr.shape[:2])
    values, bits = _unit_range(arr, name, f"dtype {arr.dtype} has no standard range; "
                                          "use uint8 (0-255), uint16 (0-65535) or float in [0, 1]")
    notes = ("float64 values cast to float32",) if arr.dtype == np.float64 else ()
    return _tensor(values), ImageInfo(name, arr.shape[0], arr.shape[1], bits, notes=notes)


def _unit_range(arr: np.ndarray, name: str, unsupported: str) -> tuple[np.ndarray, int]:
    """8-bit, 16-bit or float samples as values in [0, 1] (float64) and their bit depth; any
    other dtype raises ValueError("<name>: <unsupported>")."""
    if arr.dtype == np.uint8:
        return arr / 255.0, 8
    if arr.dtype == np.uint16:
        return arr / 65535.0, 16
    if np.issubdtype(arr.dtype, np.floating):
        return _checked_float(arr.astype(np.float64), name), arr.dtype.itemsize * 8
    raise ValueError(f"{name}: {unsupported}")


def _checked_float(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains {int((~np.isfinite(arr)).sum())} NaN or Inf values")
    message = range_error(name, float(arr.min()), float(arr.max()))
    if message:
        raise ValueError(message)
    return arr


def _tensor(values: np.ndarray) -> torch.Tensor:
    """H x W x 3 array in [0, 1] -> [3, H, W] float32."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).permute(2, 0, 1).contiguous()


def _from_pil(img, name: str) -> tuple[torch.Tensor, ImageInfo]:
    from PIL import ImageOps

    _empty_check(name, img.height, img.width)
    orientation = _orientation(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    icc = img.info.get("icc_profile")
    img = ImageOps.exif_transpose(img)
    notes = [f"EXIF orientation {orientation} applied ({ORIENTATIONS[orientation]})"] if orientation != 1 else []
    if img.mode in WIDE_MODES:
        values, bits = _wide_pil_values(img, name), (32 if img.mode in ("F", "I") else 16)
        if values.shape[-1] == 1:
            values = np.repeat(values, 3, -1)
            notes.append("greyscale expanded to RGB")
        return _finish(values, name, bits, orientation, icc, notes)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("alpha channel dropped (not composited)")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" else "RGB")
        notes.append("palette expanded")
    if img.mode in ("1", "L", "LA", "La"):
        notes.append("greyscale expanded to RGB")
    profile = _profile(icc, name)
    if profile is not None and not _is_srgb(profile):
        out = _icc_to_srgb(img, profile, name)
        notes.append(f"ICC profile {_describe(profile)!r} converted to sRGB")
        return _tensor(np.asarray(out, np.float64) / 255.0), ImageInfo(
            name, out.height, out.width, 8, orientation, _describe(profile), True, tuple(notes))
    if img.mode == "CMYK":
        notes.append("CMYK converted to RGB without a profile (Pillow's naive formula)")
    if profile is not None:
        notes.append(f"embedded sRGB profile {_describe(profile)!r}: no conversion needed")
    arr = np.asarray(img.convert("RGB"), np.float64) / 255.0
    return _tensor(arr), ImageInfo(name, img.height, img.width, 8, orientation,
                                   _describe(profile) if profile is not None else None, False, tuple(notes))


def _wide_pil_values(img, name: str) -> np.ndarray:
    """H x W x 1 values in [0, 1] of a Pillow image in one of WIDE_MODES."""
    arr = np.asarray(img)
    if img.mode == "F":
        return _checked_float(arr.astype(np.float64), name)[..., None]
    if img.mode == "I" and img.format != "PNG":
        raise ValueError(f"{name}: 32-bit integer samples have no standard range; "
                         "save the image as 8-bit, 16-bit or float in [0, 1]")
    return (arr.astype(np.float64) / 65535.0)[..., None]


def _finish(values: np.ndarray, name: str, bits: int, orientation: int, icc, notes: list):
    """Wide (16-bit or float) H x W x 3 values in [0, 1], oriented: apply the ICC profile if any."""
    profile = _profile(icc, name)
    converted = profile is not None and not _is_srgb(profile)
    if converted:
        quantised = np.round(values * 255.0).astype(np.uint8)
        values = np.asarray(_icc_to_srgb(_pil_rgb(quantised), profile, name), np.float64) / 255.0
        notes.append(f"ICC profile {_describe(profile)!r} converted to sRGB at 8-bit precision")
        warnings.warn(f"{name}: {bits}-bit image with ICC profile {_describe(profile)!r} was converted to sRGB "
                      "at 8-bit precision (Pillow's ImageCms converts 8-bit images only)", ImageWarning, stacklevel=4)
    elif profile is not None:
        notes.append(f"embedded sRGB profile {_describe(profile)!r}: no conversion needed")
    return _tensor(values), ImageInfo(name, values.shape[0], values.shape[1], bits, orientation,
                                      _describe(profile) if profile is not None else None, converted, tuple(notes))


def _pil_rgb(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr, "RGB")


def _orientation(value) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if value in ORIENTATIONS else 1


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Show stored pixels [H, W, ...] upright for an EXIF orientation (what ImageOps.exif_transpose does)."""
    if orientation in (5, 7):
        arr = arr.swapaxes(0, 1)
    return {1: arr, 2: arr[:, ::-1], 3: arr[::-1, ::-1], 4: arr[::-1], 5: arr,
            6: np.rot90(arr, -1), 7: arr[::-1, ::-1], 8: np.rot90(arr, 1)}[orientation]


# ----------------------------------------------------------------------------- colour profiles

def _profile(icc, name: str):
    if not icc:
        return None
    from PIL import ImageCms

    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError) as exc:
        raise ValueError(f"{name}: the embedded ICC profile is unreadable ({exc})") from None


def _describe(profile) -> str:
    return (profile.profile.profile_description or "unnamed profile").strip()


def _is_srgb(profile) -> bool:
    return "srgb" in _describe(profile).lower().replace(" ", "")


def _icc_to_srgb(img, profile, name: str):
    """An 8-bit Pillow image in `profile`'s colour space -> an RGB image in sRGB (ImageCms)."""
    from PIL import ImageCms

    space = profile.profile.xcolor_space.strip()
    mode = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}.get(space)
    if mode is None:
        raise ValueError(f"{name}: ICC profile {_describe(profile)!r} is for colour space {space!r}; "
                         "only RGB, grey and CMYK profiles are converted")
    try:
        return ImageCms.profileToProfile(img.convert(mode), profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except ImageCms.PyCMSError as exc:
        raise ValueError(f"{name}: converting ICC profile {_describe(profile)!r} to sRGB failed ({exc})") from None


# ----------------------------------------------------------------------------- 16-bit PNG

def _read_png16(path: Path) -> tuple[torch.Tensor, ImageInfo]:
    """A 16-bit PNG at full depth: samples / 65535; metadata (EXIF, ICC) as Pillow reads it."""
    from PIL import Image

    name = str(path)
    samples = decode_png16(path.read_bytes(), name)
    with Image.open(path) as img:
        orientation = _orientation(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
        icc = img.info.get("icc_profile")
    notes = []
    if samples.shape[-1] in (2, 4):
        samples = samples[..., :-1]
        notes.append("alpha channel dropped (not composited)")
    if samples.shape[-1] == 1:
        samples = np.repeat(samples, 3, -1)
        notes.append("greyscale expanded to RGB")
    values = apply_orientation(samples / 65535.0, orientation)
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied ({ORIENTATIONS[orientation]})")
    return _finish(values, name, 16, orientation, icc, notes)


def decode_png16(data: bytes, name: str = "PNG") -> np.ndarray:
    """The samples of a 16-bit PNG file's bytes as uint16 [H, W, C] (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).

    Pillow decodes 16-bit RGB(A) PNGs to 8 bits; this decoder keeps all 16. It handles the
    five scanline filters and Adam7 interlacing, and checks every chunk's CRC.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{name}: not a PNG file")
    header, idat, pos = None, [], len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body, crc = data[pos + 8:pos + 8 + length], data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"{name}: PNG chunk {kind!r} is truncated or corrupted (bad length or CRC)")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError(f"{name}: PNG without {'IHDR' if header is None else 'IDAT'} chunk")
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 16 or colour_type not in PNG16_CHANNELS:
        raise ValueError(f"{name}: expected a 16-bit grey, grey+alpha, RGB or RGBA PNG, got bit depth {depth}, "
                         f"colour type {colour_type}")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"{name}: PNG image data is corrupted ({exc})") from None
    channels = PNG16_CHANNELS[colour_type]
    out = np.zeros((height, width, channels), np.uint16)
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    offset = 0
    for r0, c0, dr, dc in passes:
        h, w = -(-(height - r0) // dr), -(-(width - c0) // dc)
        if h <= 0 or w <= 0:
            continue
        size = h * (1 + w * channels * 2)
        if offset + size > len(raw):
            raise ValueError(f"{name}: PNG image data is truncated")
        rows = unfilter(np.frombuffer(raw, np.uint8, size, offset).reshape(h, -1), channels * 2, name)
        pairs = rows.reshape(h, w, channels, 2).astype(np.uint16)
        out[r0::dr, c0::dc] = (pairs[..., 0] << 8) | pairs[..., 1]
        offset += size
    return out


def unfilter(rows: np.ndarray, bpp: int, name: str = "PNG") -> np.ndarray:
    """Undo PNG scanline filtering. rows: uint8 [H, 1 + W * bpp] (filter byte first) -> uint8 [H, W * bpp].

    Each byte depends on its left, upper and upper-left neighbours (one pixel = bpp bytes
    apart), so all pixels on one anti-diagonal r + c = t are independent: H + W - 1 vector steps.
    """
    kinds = rows[:, 0].astype(np.int32)
    if (kinds > 4).any():
        raise ValueError(f"{name}: unknown PNG filter type {int(kinds.max())}")
    h, w = rows.shape[0], (rows.shape[1] - 1) // bpp
    filtered = rows[:, 1:].reshape(h, w, bpp).astype(np.int32)
    out = np.zeros((h + 1, w + 1, bpp), np.int32)  # a zero row above and a zero column to the left
    for t in range(h + w - 1):
        r = np.arange(max(0, t - w + 1), min(h, t + 1))
        c = t - r
        a, b, ab = out[r + 1, c], out[r, c + 1], out[r, c]  # left, up, up-left
        p = a + b - ab
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ab)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ab))
        kind = kinds[r][:, None]
        predictor = np.select([kind == 1, kind == 2, kind == 3, kind == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[r + 1, c + 1] = (filtered[r, c] + predictor) & 255
    return out[1:, 1:].reshape(h, w * bpp).astype(np.uint8)


# ----------------------------------------------------------------------------- TIFF

def _read_tiff(path: Path) -> tuple[torch.Tensor, ImageInfo]:
    """A 16-bit or float TIFF (first page) with tifffile: uint16 / 65535, float as sRGB in [0, 1]."""
    import tifffile

    name = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr, axes, photometric = page.asarray(), page.axes, int(page.photometric)
            tag = page.tags.get(274)
            orientation = _orientation(tag.value if tag else 1)
            icc = page.tags.get(TIFF_ICC_TAG)
            icc = bytes(icc.value) if icc else None
    except Exception as exc:  # tifffile raises many kinds for a broken or exotic file
        raise ValueError(f"{name}: cannot read this TIFF ({type(exc).__name__}: {exc})") from None
    if "S" in axes:
        arr = np.moveaxis(arr, axes.index("S"), -1)
    else:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a single image, got a TIFF page of shape {arr.shape} (axes {axes})")
    if photometric not in (1, 2):  # MINISBLACK, RGB
        raise ValueError(f"{name}: TIFF photometric interpretation {photometric} is not supported "
                         "(only greyscale and RGB at more than 8 bits)")
    _empty_check(name, *arr.shape[:2])
    values, bits = _unit_range(arr, name, f"{arr.dtype.itemsize * 8}-bit integer samples have no standard range; "
                                          "save the image as 8-bit, 16-bit or float in [0, 1]")
    notes = [f"{arr.dtype} samples read as sRGB values in [0, 1]"] if np.issubdtype(arr.dtype, np.floating) else []
    expected = 1 if photometric == 1 else 3
    if arr.shape[-1] > expected:
        values = values[..., :expected]
        notes.append("alpha channel dropped (not composited)")
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, -1)
        notes.append("greyscale expanded to RGB")
    values = apply_orientation(values, orientation)
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied ({ORIENTATIONS[orientation]})")
    return _finish(values, name, bits, orientation, icc, notes)


# ----------------------------------------------------------------------------- sizes

def fit_to_multiple(x: torch.Tensor, multiple: int, policy: str = DEFAULT_SIZE_POLICY) -> tuple[torch.Tensor, SizeFit]:
    """Make H and W of x [N, 3, H, W] divisible by `multiple` (2^K) under `policy` (see SIZE_POLICIES).

    ``resize``: bilinear with antialiasing to the nearest multiple (at least one multiple)
    on each side; ``pad``: reflect-pad to the next multiple (the padding must be smaller
    than the image); ``crop``: centre-crop to the largest multiple; ``error``: refuse.
    Returns the new batch and a SizeFit; values stay in [0, 1].
    """
    if policy not in SIZE_POLICIES:
        raise ValueError(f"unknown size policy {policy!r}; use one of {', '.join(SIZE_POLICIES)}")
    h, w = x.shape[-2:]
    if h % multiple == 0 and w % multiple == 0:
        return x, SizeFit(policy, (h, w), (h, w))
    if policy == "error":
        raise ValueError(f"image size {h} x {w} is not divisible by {multiple} (size policy 'error'); "
                         f"use policy 'resize', 'pad' or 'crop'")
    if policy == "crop":
        nh, nw = h // multiple * multiple, w // multiple * multiple
        if nh == 0 or nw == 0:
            raise ValueError(f"image of {h} x {w} is smaller than the required multiple {multiple}: "
                             "cannot crop; use policy 'resize'")
        top, left = (h - nh) // 2, (w - nw) // 2
        return x[..., top:top + nh, left:left + nw], SizeFit(policy, (h, w), (nh, nw), discarded=h * w - nh * nw)
    if policy == "pad":
        ph, pw = -h % multiple, -w % multiple
        sides = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
        if max(sides[:2]) >= w or max(sides[2:]) >= h:
            raise ValueError(f"policy 'pad' cannot reflect-pad an image of {h} x {w} to {h + ph} x {w + pw}: "
                             "a reflection needs the image to be larger than the padding; use policy 'resize'")
        out = torch.nn.functional.pad(x, sides, mode="reflect")
        return out, SizeFit(policy, (h, w), (h + ph, w + pw), invented=(h + ph) * (w + pw) - h * w)
    nh, nw = (max(multiple, math.floor(s / multiple + 0.5) * multiple) for s in (h, w))
    out = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    change = nh * nw - h * w
    return out.clamp(0.0, 1.0), SizeFit(policy, (h, w), (nh, nw), discarded=max(0, -change), invented=max(0, change))


def load_images(*sources, multiple: int = 1, policy: str = DEFAULT_SIZE_POLICY):
    """Read images of one size into a batch fitted to `multiple`.

    Returns (batch [N, 3, H, W] float32 sRGB in [0, 1], [ImageInfo per image], SizeFit).
    Warns (ImageWarning) when the size policy discards or invents more than WARN_FRACTION
    of the pixels.
    """
    read = [read_image(s) for s in sources]
    infos = [info for _, info in read]
    if len({t.shape for t, _ in read}) != 1:
        sizes = ", ".join(f"{i.source} {i.height} x {i.width}" for i in infos)
        raise ValueError(f"all images must have the same size, got {sizes}")
    batch, fit = fit_to_multiple(torch.stack([t for t, _ in read]), multiple, policy)
    if max(fit.discarded, fit.invented) > WARN_FRACTION * fit.before[0] * fit.before[1]:
        names = ", ".join(i.source for i in infos)
        hint = "; policy 'resize' keeps the whole image" if policy in ("crop", "pad") else ""
        warnings.warn(f"{names}: the model needs sizes divisible by {multiple}; size policy {policy!r} "
                      f"{fit.describe()}{hint}", ImageWarning, stacklevel=2)
    return batch, infos, fit
