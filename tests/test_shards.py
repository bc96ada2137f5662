"""Tests of ``ir_lightning.shards``: round trips through webdataset, shard limits, skipping of
unreadable images, pairing of folders, the validation split, the command line and atomic writes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from ir_lightning.shards import (
    ShardError,
    ShardSample,
    UnreadableImageWarning,
    collect_pairs,
    main,
    pair_samples,
    parse_size,
    split_keys,
    write_shards,
)

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
# collect_pairs


def write_images(folder: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(encode(noise(index, (4, 4, 3))))


def test_pairs_match_with_lq_suffix_and_hold_both_files(tmp_path: Path) -> None:
    write_images(tmp_path / "hr", ["0001.png", "0002.png", "0003.JPEG"])
    write_images(tmp_path / "lr", ["0001x4.png", "0002x4.png", "0003x4.png"])
    pairs = collect_pairs(tmp_path / "hr", tmp_path / "lr", lq_suffix="x4")
    assert [pair.key for pair in pairs] == ["0001", "0002", "0003"]
    samples = list(pair_samples(pairs))
    assert sorted(samples[2].files) == ["gt.jpeg", "lq.png"]  # extension as on disk, lower-cased
    assert samples[0].files["gt.png"] == (tmp_path / "hr" / "0001.png").read_bytes()
    assert samples[0].files["lq.png"] == (tmp_path / "lr" / "0001x4.png").read_bytes()


def test_unmatched_files_are_listed_with_their_count(tmp_path: Path) -> None:
    write_images(tmp_path / "hr", [f"{i:04d}.png" for i in range(25)])
    write_images(tmp_path / "lr", ["0000x4.png", "0001x4.png", "extra.png"])  # extra.png lacks the suffix
    with pytest.raises(ValueError) as error:
        collect_pairs(tmp_path / "hr", tmp_path / "lr", lq_suffix="x4")
    message = str(error.value)
    assert "23 GT images" in message and "1 LQ images" in message and "extra.png" in message
    assert "0002.png" in message and "0021.png" in message  # the first 20 of 23 are listed
    assert "0022.png" not in message and "(3 more)" in message


def test_recursive_keys_and_key_clashes(tmp_path: Path) -> None:
    write_images(tmp_path / "gt", ["top.png", "sub/0001.png", "sub/.hidden.png"])
    assert [pair.key for pair in collect_pairs(tmp_path / "gt", recursive=True)] == ["sub_0001", "top"]
    assert [pair.key for pair in collect_pairs(tmp_path / "gt")] == ["top"]
    write_images(tmp_path / "clash", ["a.b.png", "a_b.png"])  # both give the key a_b
    with pytest.raises(ValueError, match=r"a\.b\.png and .*a_b\.png -> a_b"):
        collect_pairs(tmp_path / "clash")
    write_images(tmp_path / "twice", ["x.png", "x.jpg"])
    with pytest.raises(ValueError, match=r"x\.jpg.*x\.png"):
        collect_pairs(tmp_path / "twice")


# ----------------------------------------------------------------------------------------------
# split_keys


def test_split_is_reproducible_disjoint_and_complete() -> None:
    keys = [f"k{i:02d}" for i in range(30)]
    train, val = split_keys(keys, val_count=7, seed=3)
    assert len(val) == 7 and set(train).isdisjoint(val) and sorted(train + val) == keys
    assert split_keys(reversed(keys), val_count=7, seed=3) == (train, val)  # input order does not matter
    assert split_keys(keys, val_count=7, seed=4)[1] != val
    assert len(split_keys(keys, val_fraction=0.1)[1]) == 3
    assert split_keys(keys, val_keys=["k05", "k01"]) == ([k for k in keys if k not in ("k01", "k05")], ["k01", "k05"])
    assert split_keys(keys) == (keys, [])
    with pytest.raises(ValueError, match="nope"):
        split_keys(keys, val_keys=["nope"])
    with pytest.raises(ValueError):
        split_keys(keys, val_count=30)


def test_parse_size_units() -> None:
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2gb") == 2 * 10**9
    assert parse_size("1GiB") == 2**30
    assert parse_size("12345") == 12345
    with pytest.raises(Exception, match="not a size"):
        parse_size("lots")


# ----------------------------------------------------------------------------------------------
# command line


def test_main_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_images(tmp_path / "hr", [f"{i:04d}.png" for i in range(5)])
    write_images(tmp_path / "lr", [f"{i:04d}x2.png" for i in range(5)])
    out = tmp_path / "shards"
    argv = ["--gt", str(tmp_path / "hr"), "--lq", str(tmp_path / "lr"), "--lq-suffix", "x2", "--out", str(out),
            "--val-count", "1", "--maxcount", "2", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "train: 4 samples in 2 shards" in printed and "val: 1 samples in 1 shards" in printed
    assert f"data.init_args.train_shards: {out}/train-{{000000..000001}}.tar" in printed
    assert f"data.init_args.val_shards: {out}/val-000000.tar" in printed
    assert sorted(path.name for path in out.iterdir()) == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    assert all(set(sample) >= {"gt.png", "lq.png"} for sample in read_back(f"{out}/train-{{000000..000001}}.tar"))


def test_help_names_every_option_and_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    options = ["--gt", "--lq", "--lq-suffix", "--out", "--maxcount", "--maxsize", "--val-count", "--val-fraction",
               "--val-keys", "--seed", "--prefix", "--recursive", "--no-progress"]
    assert all(option in text for option in options) and "examples:" in text


def test_main_reports_a_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_folder"
    assert main(["--gt", str(missing), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and str(missing) in captured.err and "Traceback" not in captured.err


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
