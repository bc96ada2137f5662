"""`ir-lightning photos`: the colour-photo shards, from a Debian package made here (an ar archive holding
data.tar.xz, as dpkg-deb builds one) with small stand-in wallpapers of known colours."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from datamodules import photos
from datamodules.format import ShardError
from ir_lightning.commands import photos as command

SIDE = (600, 520)  # W x H of a stand-in wallpaper: reduced 2x to 300 x 260, one 256 tile


def colour_of(index: int) -> tuple[int, int, int]:
    return (40 + 9 * index, 200 - 7 * index, 90 + 5 * index)


def wallpapers() -> dict[str, bytes]:
    files = {}
    for index, name in enumerate(photos.TRAIN_WALLPAPERS + photos.TEST_WALLPAPERS):
        buffer = io.BytesIO()
        Image.new("RGB", SIDE, colour_of(index)).save(buffer, format="JPEG", quality=95)
        files[photos.WALLPAPER_DIR.format(name=name)] = buffer.getvalue()
    return files


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(path, files: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo("./" + member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("data.tar.xz", buffer.getvalue())
    path.write_bytes(body)


def test_the_command_writes_three_splits_by_photo_with_tiles_of_the_reduced_wallpapers(tmp_path, capsys):
    deb = tmp_path / f"{photos.PLASMA_PACKAGE}_1.0_all.deb"
    make_deb(deb, wallpapers())
    assert command.main(["--source", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "is not the package the shipped models saw" in capsys.readouterr().err  # a stand-in, not Debian's
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    keys = {split: manifest["splits"][split]["keys"] for split in ("train", "val", "test")}
    assert keys["val"] == list(photos.SKIMAGE_VAL)
    assert keys["test"] == [f"{name}_0000_0000" for name in photos.TEST_WALLPAPERS]
    assert keys["train"] == [*photos.SKIMAGE_TRAIN, *(f"{n}_0000_0000" for n in photos.TRAIN_WALLPAPERS)]
    (shard,) = sorted((tmp_path / "out").glob("test-*.tar"))
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for index, name in enumerate(photos.TEST_WALLPAPERS, start=len(photos.TRAIN_WALLPAPERS)):
        tile = np.asarray(Image.open(io.BytesIO(members[f"{name}_0000_0000.gt.png"])))
        assert tile.shape == (photos.TILE, photos.TILE, 3)
        assert np.abs(tile.reshape(-1, 3).mean(0) - colour_of(index)).max() < 2  # its colour, through JPEG


def test_an_extracted_tree_gives_the_same_tiles_as_the_package(tmp_path):
    files = wallpapers()
    for member, data in files.items():
        (tmp_path / "tree" / member).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / member).write_bytes(data)
    make_deb(tmp_path / "p.deb", files)
    name = photos.TEST_WALLPAPERS[0]
    assert np.array_equal(photos.wallpaper_rgb(tmp_path / "tree", name), photos.wallpaper_rgb(tmp_path / "p.deb", name))
    assert photos.wallpaper_rgb(tmp_path / "tree", name).shape == (SIDE[1] // 2, SIDE[0] // 2, 3)


def test_a_missing_package_or_wallpaper_is_named(tmp_path, capsys):
    assert command.main(["--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"apt-get download {photos.PLASMA_PACKAGE}" in capsys.readouterr().err
    make_deb(tmp_path / "p.deb", {})
    with pytest.raises(ShardError, match=r"p\.deb: no usr/share/wallpapers/Kite/contents/images/2560x1600\.jpg"):
        photos.wallpaper_rgb(tmp_path / "p.deb", "Kite")
    (tmp_path / "z.deb").write_bytes(b"!<arch>\n" + ar_member("data.tar.zst", b"\0" * 10))
    with pytest.raises(ShardError, match="zstd"):
        photos.deb_member(tmp_path / "z.deb", "x")
    (tmp_path / "n.deb").write_bytes(b"not an archive")
    with pytest.raises(ShardError, match="not a Debian package"):
        photos.deb_member(tmp_path / "n.deb", "x")


def test_tiles_cover_the_image_row_by_row_and_drop_the_remainder():
    image = np.arange(600 * 530 * 3).reshape(530, 600, 3)
    cut = list(photos.tiles(image, 256))
    assert [(top, left) for top, left, _ in cut] == [(0, 0), (0, 256), (256, 0), (256, 256)]
    assert np.array_equal(cut[3][2], image[256:512, 256:512])
