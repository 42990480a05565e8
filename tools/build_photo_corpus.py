"""Build data/photos/: free colour photographs from Debian's archive, curated and resized.

Run once by a maintainer (users never run it: the photos are committed). It needs the
Debian packages named in PACKAGES at exactly the pinned versions, as .deb files in
--debs (``apt-get download PKG=VERSION`` fetches one; ``--download`` does it for you), and
unpacks them with ``dpkg-deb -x`` - nothing is installed.

For each photograph it writes ``data/photos/<name>.jpg``: resized (Lanczos) to SHORT_SIDE
pixels on the short side, the long side centre-cropped to at most MAX_LONG_SIDE, saved as
JPEG quality JPEG_QUALITY with no chroma subsampling (4:4:4). ``manifest.csv`` records
every photograph's source package and version, original path, author, licence and
licence URL, read from the package's own metadata (the gcompris resource READMEs, the
DEP-5 copyright files, KDE metadata files).

Curation: renders, abstracts, greyscale images and anything under SHORT_SIDE pixels on the
short side are left out. The size and greyscale rules are checked on every candidate
(MIN_CHROMA below); the hand-made exclusions are listed in EXCLUDE with their reason.

    python tools/build_photo_corpus.py --debs /tmp/debs [--download] [--out data/photos]
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qrc import read_rcc  # noqa: E402

SHORT_SIDE = 512
MAX_LONG_SIDE = 768
JPEG_QUALITY = 95
#: Mean absolute deviation of R, G, B from their mean (0-255 scale) below which an image is greyscale.
MIN_CHROMA = 3.0
MANIFEST_FIELDS = ("file", "package", "version", "original_path", "author", "licence", "licence_url")

#: Debian bookworm packages, pinned. Each entry: version and where its photographs are.
PACKAGES = {
    "gcompris-qt-data": dict(version="3.1-2", rcc=[
        "usr/share/gcompris-qt/rcc/explore_monuments.rcc", "usr/share/gcompris-qt/rcc/erase.rcc",
        "usr/share/gcompris-qt/rcc/explore_world_animals.rcc", "usr/share/gcompris-qt/rcc/explore_farm_animals.rcc",
        "usr/share/gcompris-qt/rcc/explore_world_music.rcc", "usr/share/gcompris-qt/rcc/clickgame.rcc"]),
    "lomiri-wallpapers-16.04": dict(version="20.04.0-2", glob=["usr/share/backgrounds/*.jpg"]),
    "lomiri-wallpapers-20.04": dict(version="20.04.0-2", glob=["usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"]),
    "mate-backgrounds": dict(version="1.26.0-1", glob=["usr/share/backgrounds/mate/nature/*.jpg"]),
    "tuxpaint-data": dict(version="1:0.9.28-sdl2-1", glob=["usr/share/tuxpaint/templates/*.jpg"]),
    "plasma-workspace-wallpapers": dict(version="4:5.27.5-2", glob=[
        f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg" for n in
        ("BytheWater", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Kite", "OneStandsOut", "Path",
         "summer_1am")]),
    "palapeli-data": dict(version="4:22.12.3-1", glob=["usr/share/palapeli/collection/*.jpg"]),
}

#: Candidates left out by hand (the automatic rules catch sizes and greyscale): name -> reason.
EXCLUDE = {
    "lomiri-wallpapers-16.04/umang_by_Abhishek_Mudgal.jpg": "abstract",
}

#: Files whose gcompris README entry is misspelt upstream: file -> the name the README uses.
README_ALIASES = {"germany/aulaPalatina.webp": "germany/audaPalatina.webp"}

LICENCE_URLS = {
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY-2.0": "https://creativecommons.org/licenses/by/2.0/",
    "CC-BY-3.0": "https://creativecommons.org/licenses/by/3.0/",
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-SA-2.0": "https://creativecommons.org/licenses/by-sa/2.0/",
    "CC-BY-SA-2.5": "https://creativecommons.org/licenses/by-sa/2.5/",
    "CC-BY-SA-3.0": "https://creativecommons.org/licenses/by-sa/3.0/",
    "CC-BY-SA-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "GPL-2+": "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html",
    "GPL-3+": "https://www.gnu.org/licenses/gpl-3.0.html",
    "LGPL-3": "https://www.gnu.org/licenses/lgpl-3.0.html",
    "GFDL": "https://www.gnu.org/licenses/fdl-1.3.html",
    "public-domain": "https://creativecommons.org/publicdomain/mark/1.0/",
}


class CorpusBuildError(RuntimeError):
    """A package, file or licence the build needs is missing or not understood."""


def normalise_licence(text: str) -> str:
    """A licence name as written in a package ('CC-BY-SA 4.0', 'Public Domain', 'GPLv3') -> a key of LICENCE_URLS."""
    t = text.strip().replace(" ", "-").replace("_", "-")
    low = t.lower()
    if low in ("public-domain", "publicdomain", "pd"):
        return "public-domain"
    if low in ("gplv3", "gpl-3", "gpl-3+", "gpl-3.0+"):
        return "GPL-3+"
    if low in ("lgplv3", "lgpl-3", "lgpl-3.0"):
        return "LGPL-3"
    if low in ("fdl", "gfdl", "gnu-fdl"):
        return "GFDL"
    m = re.fullmatch(r"cc-?(by(?:-sa)?|0)-?(\d\.\d)?", low)
    if m:
        kind, version = m.groups()
        return "CC0-1.0" if kind == "0" else f"CC-{kind.upper()}-{version or '4.0'}"
    if t in LICENCE_URLS:
        return t
    raise CorpusBuildError(f"licence {text!r} is not one this corpus knows; add it to LICENCE_URLS")


def deb_path(debs: Path, package: str, version: str) -> Path:
    """The .deb of package=version in folder `debs` (apt-get download writes ':' as '%3a')."""
    path = debs / f"{package}_{version.replace(':', '%3a')}_all.deb"
    if not path.is_file():
        raise CorpusBuildError(f"missing {path}: fetch it with `apt-get download {package}={version}` "
                               f"in {debs} (or pass --download)")
    return path


def unpack(deb: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    return into


def dep5_paragraphs(text: str) -> list[dict]:
    """Paragraphs of a DEP-5 copyright file as {field: value} (continuation lines joined)."""
    paragraphs, current, key = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            current[key] = value.strip()
    return paragraphs


def dep5_lookup(paragraphs: list[dict], relpath: str) -> tuple[str, str]:
    """(copyright holders, licence) of the last DEP-5 paragraph whose Files patterns match `relpath`."""
    found = None
    for p in paragraphs:
        patterns = p.get("files", "").split()
        if any(fnmatch.fnmatch(relpath, pat) or relpath.endswith("/" + pat.lstrip("*/")) and "*" not in pat
               for pat in patterns):
            found = p
    if found is None:
        raise CorpusBuildError(f"no copyright paragraph covers {relpath}")
    # strip stray accents left at line ends in some copyright files (mate-backgrounds has "...free.fr>´")
    holders = "; ".join(line.strip().rstrip("´`") for line in found.get("copyright", "").splitlines() if line.strip())
    return holders, found["license"].splitlines()[0].strip()


def gcompris_readme(text: str) -> dict[str, dict]:
    """{file name: dict(author, licence, source)} from a gcompris resource README."""
    out = {}
    for block in re.split(r"\n\s*\n", text):
        fields, files, in_files = {}, [], False
        for line in block.splitlines():
            if re.match(r"^(Copyright|License|Source|Comments|Files):", line):
                key, value = line.split(":", 1)
                in_files = key == "Files"
                if in_files:
                    files += value.split()
                else:
                    fields[key.lower()] = value.strip()
            elif in_files and line.strip():
                files += line.split()
        for f in files:
            out[f] = dict(author=fields.get("copyright", ""), licence=fields.get("license", ""),
                          source=fields.get("source", ""))
    return out


def candidates_gcompris(root: Path, spec: dict):
    """(name, original path, image bytes, author, licence) of every photograph in the gcompris bundles."""
    for rcc in spec["rcc"]:
        path = root / rcc
        if not path.is_file():
            raise CorpusBuildError(f"gcompris-qt-data has no {rcc}")
        files = read_rcc(path)
        readmes = {k.rsplit("/", 1)[0]: gcompris_readme(v.decode("utf-8")) for k, v in files.items()
                   if k.endswith("/README")}
        activity = Path(rcc).stem
        for key, data in sorted(files.items()):
            if not key.endswith(".webp"):
                continue
            folder = next((d for d in sorted(readmes, key=len, reverse=True) if key.startswith(d + "/")), None)
            rel = key[len(folder) + 1:] if folder else key
            meta = readmes.get(folder, {}).get(README_ALIASES.get(rel, rel))
            if meta is None:
                meta = dict(author="", licence="")   # sprites listed without a README entry are filtered anyway
            name = f"gcompris_{activity}_{Path(rel).stem}".replace("/", "_")
            yield name, f"{rcc}:{key}", data, meta["author"], meta["licence"], meta.get("source", "")


def candidates_files(root: Path, package: str, spec: dict):
    """(name, original path, bytes, author, licence, source) for the plain image files of a package."""
    paragraphs = dep5_paragraphs((root / f"usr/share/doc/{package}/copyright").read_text(encoding="utf-8"))
    for pattern in spec["glob"]:
        matches = sorted(root.glob(pattern))
        if not matches:
            raise CorpusBuildError(f"{package}: no file matches {pattern}")
        for path in matches:
            rel = str(path.relative_to(root))
            author, licence = dep5_lookup(paragraphs, _dep5_relpath(package, rel))
            source = ""
            if package == "plasma-workspace-wallpapers":   # the wallpaper's own metadata names its photographer
                meta = json.loads((path.parents[2] / "metadata.json").read_text(encoding="utf-8"))["KPlugin"]
                author = "; ".join(a["Name"] for a in meta.get("Authors", []))
                licence = f"{licence} (Debian copyright; metadata.json: {meta.get('License', '?')})"
                stem = path.parents[2].name
            elif package == "palapeli-data":
                desktop = path.with_suffix(".desktop").read_text(encoding="utf-8")
                author = re.search(r"^X-KDE-PluginInfo-Author=(.*)$", desktop, re.M).group(1).strip()
                licence = re.search(r"^X-KDE-PluginInfo-License=(.*)$", desktop, re.M).group(1).strip()
                stem = path.stem
            else:
                stem = path.stem
            short = package.replace("-wallpapers", "").replace("-backgrounds", "").replace("-data", "")
            yield f"{short}_{stem}".replace(".", "").replace("-", "_"), rel, path.read_bytes(), author, licence, source


def _dep5_relpath(package: str, rel: str) -> str:
    """The path a package's DEP-5 file uses for an installed file (its source-tree layout)."""
    name = Path(rel).name
    if package.startswith("lomiri-wallpapers"):
        return f"{package.rsplit('-', 1)[1]}/{name}"
    if package == "mate-backgrounds":
        return f"nature/{name}"
    return rel


def chroma(img: Image.Image) -> float:
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    return float(np.abs(a - a.mean(axis=2, keepdims=True)).mean())


def curate(img: Image.Image) -> Image.Image:
    """Resize to SHORT_SIDE on the short side (Lanczos), centre-crop the long side to MAX_LONG_SIDE."""
    w, h = img.size
    s = SHORT_SIDE / min(w, h)
    nw, nh = max(SHORT_SIDE, round(w * s)), max(SHORT_SIDE, round(h * s))
    img = img.convert("RGB").resize((nw, nh), Image.Resampling.LANCZOS)
    cw, ch = min(nw, MAX_LONG_SIDE), min(nh, MAX_LONG_SIDE)
    left, top = (nw - cw) // 2, (nh - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def build(debs: Path, out: Path, download: bool = False) -> list[dict]:
    debs.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for package, spec in PACKAGES.items():
            if download and not (debs / f"{package}_{spec['version'].replace(':', '%3a')}_all.deb").is_file():
                subprocess.run(["apt-get", "download", f"{package}={spec['version']}"], cwd=debs, check=True)
            root = unpack(deb_path(debs, package, spec["version"]), Path(tmp) / package)
            found = candidates_gcompris(root, spec) if "rcc" in spec else candidates_files(root, package, spec)
            for name, original, data, author, licence, source in found:
                img = Image.open(io.BytesIO(data))
                key = f"{package}/{Path(original).name}"
                reason = (EXCLUDE.get(key) or ("not RGB (sprite with transparency)" if img.mode not in ("RGB", "P", "L") else None)
                          or (f"short side {min(img.size)} < {SHORT_SIDE}" if min(img.size) < SHORT_SIDE else None)
                          or (f"greyscale (chroma {chroma(img):.1f} < {MIN_CHROMA})" if chroma(img) < MIN_CHROMA else None))
                if reason:
                    skipped.append((key, reason))
                    continue
                if not author or not licence:
                    raise CorpusBuildError(f"{key}: no author or licence found in the package's metadata")
                code = normalise_licence(licence.split(" (")[0])
                rows.append(dict(file=f"{name}.jpg", package=package, version=spec["version"], original_path=original,
                                 author=author, licence=licence if code in licence else code,
                                 licence_url=LICENCE_URLS[code], _image=curate(img), _source=source))
    names = [r["file"] for r in rows]
    if len(set(names)) != len(names):
        raise CorpusBuildError(f"two photographs map to one file name: {sorted({n for n in names if names.count(n) > 1})}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for r in rows:
        r.pop("_image").save(out / r["file"], quality=JPEG_QUALITY, subsampling=0, optimize=True)
        source = r.pop("_source")
        if source:
            r["original_path"] += f" (from {source})"
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["file"]))
    with open(out / "excluded.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("candidate", "reason")] + sorted(skipped))
    return rows


README_BEGIN = "<!-- photo-corpus-table: begin (written by tools/build_photo_corpus.py --readme) -->"
README_END = "<!-- photo-corpus-table: end -->"


def attribution_table(manifest: Path) -> str:
    """The markdown attribution table of a manifest.csv: one row per photograph."""
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = ["| file | author | licence | package | original |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        original = r["original_path"].replace("|", "\\|")
        lines.append(f"| `{r['file']}` | {r['author']} | [{r['licence']}]({r['licence_url']}) | "
                     f"{r['package']} {r['version']} | {original} |")
    return "\n".join(lines)


def write_readme_table(readme: Path, manifest: Path) -> None:
    """Replace the text between README_BEGIN and README_END in `readme` with the attribution table."""
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise CorpusBuildError(f"{readme} has no {README_BEGIN!r} ... {README_END!r} block")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{attribution_table(manifest)}\n{README_END}{tail}", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--debs", type=Path, required=True, help="folder holding (or to receive) the pinned .deb files")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "photos")
    ap.add_argument("--download", action="store_true", help="fetch missing packages with apt-get download")
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "README.md",
                    help="README whose attribution table is rewritten")
    args = ap.parse_args(argv)
    try:
        rows = build(args.debs, args.out, args.download)
        write_readme_table(args.readme, args.out / "manifest.csv")
    except CorpusBuildError as e:
        print(f"build_photo_corpus: {e}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in args.out.glob("*.jpg"))
    print(f"{len(rows)} photographs, {size / 2**20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
