"""The colour photographs the shipped models are trained on, rebuilt from public packages (issue 21).

Sources, and only these, so that anyone can rebuild the data:

- scikit-image's colour photographs (in its wheel: no download);
- the photographs (not the drawings or renders) in Debian's ``plasma-workspace-wallpapers`` package
  (bookworm: 4:5.27.5-2). Debian's ``ukui-wallpapers`` (20.04.3-1.1) was read too: its 12 images are all
  drawings or renders (vector shapes, ribbons, cartoon animals), so it contributes none. Two wallpapers
  that are photographs but grey (ColdRipple, Grey) are left out: the set is colour photographs only.

Splits, by photograph (a photo's tiles never straddle two splits):

- ``train``: tiles of the training wallpapers and the training scikit-image photos;
- ``val``: the demo's held-out scikit-image photos (astronaut, coffee, chelsea), whole;
- ``test``: tiles of wallpapers no training used (``TEST_WALLPAPERS``), photos "of the same kind".

The wallpapers are 2560 x 1600 JPEGs; each is first reduced by ``REDUCE`` (antialiased bicubic, as
DIV2K-style HR sets are made clean of JPEG and demosaicing artefacts), then cut into non-overlapping tiles.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datamodules.format import ShardError, ShardSample

PLASMA_PACKAGE = "plasma-workspace-wallpapers"
UKUI_PACKAGE = "ukui-wallpapers"
PLASMA_SHA256 = "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b"
"""Debian bookworm's plasma-workspace-wallpapers_4:5.27.5-2_all.deb, the file the shipped models saw."""

WALLPAPER_DIR = "usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
TRAIN_WALLPAPERS = ("BytheWater", "DarkestHour", "EveningGlow", "Kite", "OneStandsOut", "Path", "summer_1am")
TEST_WALLPAPERS = ("ColorfulCups", "FallenLeaf")
SKIMAGE_TRAIN = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left", "motorcycle_right")
SKIMAGE_VAL = ("astronaut", "coffee", "chelsea")  # the demo's held-out photos

REDUCE = 2
"""Wallpapers are reduced 2x before tiling: 2560 x 1600 -> 1280 x 800."""
TILE = 256
"""Side of the training and test tiles (pixels, after the reduction)."""


@dataclass(frozen=True)
class Photo:
    key: str
    split: str
    rgb: object  # H x W x 3 uint8 numpy array


def skimage_photo(name: str):
    """One of scikit-image's colour photos as an H x W x 3 uint8 array."""
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(skimage.data, name)()[..., :3]


def deb_member(deb: Path, member: str) -> bytes:
    """One file of a Debian package (an ar archive holding ``data.tar.xz``), read without dpkg."""
    return deb_members(deb, [member])[member]


def deb_members(deb: Path, members: list[str]) -> dict[str, bytes]:
    """Files of a Debian package, read without dpkg, its data archive decompressed once for all of them."""
    data = Path(deb).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ShardError(f"{deb}: not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise ShardError(f"{deb}: {name} is zstd-compressed; extract it with dpkg-deb -x and pass the folder")
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                return {member: _tar_file(tar, member, deb) for member in members}
        offset += 60 + size + (size % 2)
    raise ShardError(f"{deb}: no data.tar.* member")


def _tar_file(tar: tarfile.TarFile, member: str, deb: Path) -> bytes:
    for candidate in (member, "./" + member):
        try:
            extracted = tar.extractfile(candidate)
        except KeyError:
            continue
        if extracted is not None:
            return extracted.read()
    raise ShardError(f"{deb}: no {member} in its data archive")


def find_plasma(source: Path) -> tuple[Path, bool]:
    """The plasma wallpapers as a .deb file or an extracted tree (``dpkg-deb -x``) in or at `source`:
    (path, is_deb)."""
    source = Path(source)
    if source.is_file():
        return source, True
    if (source / "usr/share/wallpapers").is_dir():
        return source, False
    debs = sorted(source.glob(f"{PLASMA_PACKAGE}_*.deb"))
    if debs:
        return debs[-1], True
    raise ShardError(
        f"{source}: neither {PLASMA_PACKAGE}_*.deb nor an extracted tree (usr/share/wallpapers) is there; "
        f"get it with: apt-get download {PLASMA_PACKAGE}"
    )


def wallpaper_rgb(source: Path, name: str):
    """One wallpaper, reduced by `REDUCE`, as an H x W x 3 uint8 array."""
    return wallpapers_rgb(source, [name])[name]


def wallpapers_rgb(source: Path, names: list[str]) -> dict:
    """Wallpapers by name, each reduced by `REDUCE`, as H x W x 3 uint8 arrays (a package is read once)."""
    import numpy as np
    from PIL import Image

    path, is_deb = find_plasma(source)
    members = {name: WALLPAPER_DIR.format(name=name) for name in names}
    if is_deb:
        files = deb_members(path, list(members.values()))
    else:
        files = {member: (path / member).read_bytes() for member in members.values()}
    arrays = {}
    for name, member in members.items():
        image = Image.open(io.BytesIO(files[member])).convert("RGB")
        size = (image.width // REDUCE, image.height // REDUCE)
        arrays[name] = np.asarray(image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None))
    return arrays


def tiles(rgb, tile: int = TILE) -> Iterator[tuple[int, int, object]]:
    """Non-overlapping `tile` x `tile` crops, row by row (the remainder at the right and bottom is dropped)."""
    height, width = rgb.shape[:2]
    for top in range(0, height - tile + 1, tile):
        for left in range(0, width - tile + 1, tile):
            yield top, left, rgb[top : top + tile, left : left + tile]


def photos(source: Path) -> Iterator[Photo]:
    """Every sample of every split, tiled where the module docstring says."""
    for name in SKIMAGE_TRAIN:
        yield Photo(name, "train", skimage_photo(name))
    for name in SKIMAGE_VAL:
        yield Photo(name, "val", skimage_photo(name))
    wallpapers = wallpapers_rgb(source, [*TRAIN_WALLPAPERS, *TEST_WALLPAPERS])
    for split, names in (("train", TRAIN_WALLPAPERS), ("test", TEST_WALLPAPERS)):
        for name in names:
            for top, left, crop in tiles(wallpapers[name]):
                yield Photo(f"{name}_{top:04d}_{left:04d}", split, crop)


def png(rgb) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def shard_samples(items: list[Photo]) -> Iterator[ShardSample]:
    for photo in items:
        yield ShardSample(key=photo.key, files={"gt.png": png(photo.rgb)})


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
