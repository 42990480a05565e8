"""A reader for Qt resource bundles (.rcc), enough to list and extract their files.

Format (Qt's rcc, versions 1-3): a big-endian header ``b"qres"``, version, and the offsets
of three regions - the tree, the data and the names. The tree is an array of nodes
(14 bytes in version 1, 22 from version 2 on, which adds a modification time). A node
holds the offset of its name, flags (1 = zlib-compressed, 2 = directory, 4 = zstd-compressed)
and either (child count, index of the first child) for a directory or (country, language,
data offset) for a file. A name is (length: u16, hash: u32, UTF-16BE characters); a data
blob is (size: u32, bytes). zlib blobs start with the uncompressed size (u32, Qt's
qCompress format) before the zlib stream.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 1, 2, 4


class RccError(ValueError):
    """The file is not a Qt resource bundle this reader understands."""


def read_rcc(path) -> dict[str, bytes]:
    """{path inside the bundle: file bytes} for every file of the .rcc at `path`."""
    path = Path(path)
    buf = path.read_bytes()
    if buf[:4] != b"qres":
        raise RccError(f"{path}: not a Qt resource bundle (magic {buf[:4]!r}, expected b'qres')")
    version, tree, data, names = struct.unpack(">IIII", buf[4:20])
    if version not in (1, 2, 3):
        raise RccError(f"{path}: rcc format version {version} is not supported (1-3 are)")
    node_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", buf[names + offset:names + offset + 2])
        start = names + offset + 6
        return buf[start:start + 2 * length].decode("utf-16-be")

    def blob(offset: int, flags: int) -> bytes:
        (size,) = struct.unpack(">I", buf[data + offset:data + offset + 4])
        raw = buf[data + offset + 4:data + offset + 4 + size]
        if flags & COMPRESSED:
            return zlib.decompress(raw[4:])
        if flags & COMPRESSED_ZSTD:
            import zstandard

            return zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 30)
        return raw

    files: dict[str, bytes] = {}

    def walk(index: int, prefix: str) -> None:
        base = tree + index * node_size
        name_off, flags = struct.unpack(">IH", buf[base:base + 6])
        name = "" if index == 0 else name_at(name_off)
        full = f"{prefix}/{name}" if name else prefix
        if flags & DIRECTORY:
            count, first = struct.unpack(">II", buf[base + 6:base + 14])
            for child in range(first, first + count):
                walk(child, full)
        else:
            (offset,) = struct.unpack(">I", buf[base + 10:base + 14])
            files[full.lstrip("/")] = blob(offset, flags)

    walk(0, "")
    return files
