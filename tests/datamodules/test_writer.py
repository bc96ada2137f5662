"""Tests of ``datamodules.writer``: round trips through webdataset, shard limits, replacing an older set,
skipping of unreadable images and atomic writes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from datamodules.folders import collect_pairs, pair_samples
from datamodules.format import ShardError, ShardSample
from datamodules.writer import UnreadableImageWarning, write_shards

BLOCK, RECORD = 512, 10240  # POSIX tar block and default record size (tarfile.BLOCKSIZE, RECORDSIZE)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def noise(seed: int, shape: tuple[int, ...] = (6, 8, 3), dtype: type = np.uint8) -> np.ndarray:
    high = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, high, size=shape, endpoint=True).astype(dtype)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image)


def read_back(pattern: str) -> list[dict]:
    return list(wds.WebDataset(pattern, shardshuffle=False))


def tiny_samples(count: int) -> list[ShardSample]:
    return [ShardSample(f"s{index:03d}", {"gt.png": encode(noise(index))}) for index in range(count)]


# ----------------------------------------------------------------------------------------------
# write_shards


def test_round_trip_keeps_bytes_pixels_and_keys(tmp_path: Path) -> None:
    rgb, grey16, photo = noise(0), noise(1, (5, 7), np.uint16), noise(2, (16, 16, 3))
    jpeg = encode(photo, "JPEG")
    samples = [
        ShardSample("rgb_0", {"gt.png": encode(rgb), "lq.png": encode(rgb[::2, ::2])}),
        ShardSample("grey16_1", {"gt.png": encode(grey16)}),
        ShardSample("photo_2", {"gt.jpg": jpeg}),
    ]
    stats = write_shards(samples, tmp_path, "train", progress=False)
    read = {sample["__key__"]: sample for sample in read_back(stats.pattern)}
    assert sorted(read) == ["grey16_1", "photo_2", "rgb_0"]
    assert all("." not in key for key in read)
    np.testing.assert_array_equal(decode(read["rgb_0"]["gt.png"]), rgb)
    np.testing.assert_array_equal(decode(read["rgb_0"]["lq.png"]), rgb[::2, ::2])
    np.testing.assert_array_equal(decode(read["grey16_1"]["gt.png"]), grey16)
    assert decode(read["grey16_1"]["gt.png"]).max() > 255  # really 16 bits, not squeezed to 8
    assert read["photo_2"]["gt.jpg"] == jpeg  # stored as is, no re-encode
    assert (stats.samples, stats.shards, stats.skipped) == (3, 1, 0)
    assert stats.pattern == str(tmp_path / "train-000000.tar")  # one shard: the plain file name


def test_maxcount_splits_and_pattern_expands_to_written_files(tmp_path: Path) -> None:
    stats = write_shards(tiny_samples(7), tmp_path, "train", maxcount=3, progress=False)
    assert stats.pattern == str(tmp_path / "train-{000000..000002}.tar")
    assert list(braceexpand(stats.pattern)) == [str(path) for path in stats.paths]
    assert sorted(path.name for path in tmp_path.iterdir()) == [path.name for path in stats.paths]
    counts = [len(read_back(str(path))) for path in stats.paths]
    assert counts == [3, 3, 1]
    assert [sample["__key__"] for sample in read_back(stats.pattern)] == [f"s{i:03d}" for i in range(7)]
    assert stats.bytes == sum(path.stat().st_size for path in stats.paths)


def reference_tar_size(member_sizes: list[int]) -> int:
    """Closed form of a ustar file: 512-byte header + data padded to 512 per member, two zero
    blocks at the end, then padding to a whole 10240-byte record."""
    content = sum(BLOCK + -(-size // BLOCK) * BLOCK for size in member_sizes) + 2 * BLOCK
    return -(-content // RECORD) * RECORD


def test_maxsize_packs_greedily_to_the_byte_limit(tmp_path: Path) -> None:
    shapes = [(20, 20, 3)] * 5 + [(64, 64, 3)] + [(20, 20, 3)] * 3  # the 64x64 one alone exceeds maxsize
    samples = [ShardSample(f"n{i}", {"gt.png": encode(noise(i, shape))}) for i, shape in enumerate(shapes)]
    maxsize = RECORD
    groups: list[list[int]] = []  # reference greedy packing by the closed-form file size
    for sample in samples:
        size = len(sample.files["gt.png"])
        if groups and reference_tar_size(groups[-1] + [size]) <= maxsize:
            groups[-1].append(size)
        else:
            groups.append([size])
    stats = write_shards(samples, tmp_path, "big", maxsize=maxsize, progress=False)
    assert len(groups) == stats.shards and stats.shards >= 3
    assert [len(read_back(str(path))) for path in stats.paths] == [len(group) for group in groups]
    assert [path.stat().st_size for path in stats.paths] == [reference_tar_size(group) for group in groups]
    oversized = [path for path in stats.paths if path.stat().st_size > maxsize]
    assert len(oversized) == 1 and len(read_back(str(oversized[0]))) == 1


def test_older_shards_of_the_prefix_are_replaced_by_the_new_set(tmp_path: Path) -> None:
    write_shards(tiny_samples(3), tmp_path, "train", maxcount=1, progress=False)
    stats = write_shards(tiny_samples(1), tmp_path, "train", progress=False)
    assert stats.pattern == str(tmp_path / "train-000000.tar")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train-000000.tar"]  # no old shard, no staging


def test_bad_keys_are_rejected(tmp_path: Path) -> None:
    assert issubclass(ShardError, ValueError)
    with pytest.raises(ShardError, match="a.b"):
        write_shards([ShardSample("a.b", {"gt.png": encode(noise(0))})], tmp_path, "train", progress=False)
    twice = [ShardSample("same", {"gt.png": encode(noise(0))})] * 2
    with pytest.raises(ValueError, match="same"):
        write_shards(twice, tmp_path / "dup", "train", progress=False)


def test_tars_are_plain_posix_and_reproducible(tmp_path: Path) -> None:
    first = write_shards(tiny_samples(2), tmp_path / "a", "train", progress=False)
    second = write_shards(tiny_samples(2), tmp_path / "b", "train", progress=False)
    assert first.paths[0].read_bytes() == second.paths[0].read_bytes()
    with tarfile.open(first.paths[0]) as tar:
        assert tar.getnames() == ["s000.gt.png", "s001.gt.png"]
        assert all(member.isreg() for member in tar.getmembers())


# ----------------------------------------------------------------------------------------------
# unreadable images


def test_unreadable_images_are_skipped_named_and_counted(tmp_path: Path) -> None:
    gt, lq = tmp_path / "gt", tmp_path / "lq"
    gt.mkdir(), lq.mkdir()
    for index in range(4):
        (gt / f"{index:04d}.png").write_bytes(encode(noise(index, (8, 8, 3))))
        (lq / f"{index:04d}.png").write_bytes(encode(noise(index, (4, 4, 3))))
    good = (gt / "0001.png").read_bytes()
    (gt / "0001.png").write_bytes(good[: len(good) // 2])  # truncated PNG: header parses, pixels do not
    (lq / "0002.png").write_bytes(np.random.default_rng(9).bytes(300))  # random bytes named .png
    pairs = collect_pairs(gt, lq)
    with pytest.warns(UnreadableImageWarning) as record:
        stats = write_shards(pair_samples(pairs), tmp_path / "out", "train", progress=False)
    messages = " ".join(str(warning.message) for warning in record)
    assert str(gt / "0001.png") in messages and str(lq / "0002.png") in messages
    assert (stats.samples, stats.skipped) == (2, 2)
    assert sorted(sample["__key__"] for sample in read_back(stats.pattern)) == ["0000", "0003"]


# ----------------------------------------------------------------------------------------------
# atomic writes


def test_a_failure_mid_shard_leaves_only_complete_shards(tmp_path: Path) -> None:
    def failing_after_five():
        yield from tiny_samples(5)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(failing_after_five(), tmp_path, "train", maxcount=2, progress=False)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["train-000000.tar", "train-000001.tar"]  # shard 2 held one sample when the error came
    assert [len(read_back(str(tmp_path / name))) for name in names] == [2, 2]
