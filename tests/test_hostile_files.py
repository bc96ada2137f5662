"""Hostile inputs to the commands that write files (issue 15): keys and file names from data never make a
path outside its folder (point 1), outputs never land on or among the inputs (point 7), a shard folder
never holds two data sets under one pattern (point 9), and images too small for a checkpoint are named
with their size and the minimum (point 14). Every case asserts the exit status, the one-line message and
what is on disk afterwards: inputs unchanged, nothing written outside the output folder."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.format import ShardError, ShardSample
from datamodules.writer import write_shards
from ir_lightning.commands import evaluate
from ir_lightning.commands.restore import main as restore
from ir_lightning.commands.shards import main as shards
from ir_lightning.inference.tiling import restored_bands
from ir_lightning.io.atomic import host_tag
from tests.commands.test_evaluate import Nearest, use_method
from tests.datamodules.test_presets import gopro
from tests.helpers.checkpoints import save_checkpoint, small_deqir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def photo(path: Path, shape: tuple[int, ...] = (8, 8, 3), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def photos(folder: Path) -> Path:
    photo(folder / "a.png", seed=1)
    photo(folder / "sub" / "b.png", seed=2)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `folder` (links not followed) with its bytes and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"", p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(small_deqir(), tmp_path / "deqir.ckpt")


# --- point 1: keys and file names from data stay plain names inside their folder ----------------------------
def test_shard_keys_made_from_file_names_are_plain_names(tmp_path):
    gt = tmp_path / "gt"
    for name in ("a\\b.png", "c.d.png", "sub/e.png"):
        photo(gt / name)
    assert shards(["--gt", str(gt), "--recursive", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        assert tar.getnames() == ["a_b.gt.png", "c_d.gt.png", "sub_e.gt.png"]


@pytest.mark.parametrize("key", ["../x", "/abs", "a/b", "a\\b", "a\0b", "..", ""])
def test_unsafe_sample_keys_are_refused_naming_their_source(tmp_path, key):
    sample = ShardSample(key, {"gt.png": photo(tmp_path / "x.png").read_bytes()}, {"gt.png": "/data/x.png"})
    with pytest.raises(ShardError, match=r"sample from /data/x\.png: .*sample key") as error:
        write_shards([sample], tmp_path / "out", "train", progress=False)
    assert repr(key) in str(error.value)
    assert files_below(tmp_path / "out") == []


def test_preset_keys_are_checked_naming_the_preset_and_the_file(tmp_path, capsys):
    root = tmp_path / "GOPRO_Large"
    gopro(root)
    (root / "test" / "GOPR0384_11_00").rename(root / "test" / "GOPR0384\\11")  # a folder name that makes the key
    assert shards(["--preset", "gopro", "--root", str(root), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "preset 'gopro': " in err and str(root / "test" / "GOPR0384\\11" / "blur" / "000001.png") in err
    assert not (tmp_path / "out").exists() or files_below(tmp_path / "out") == []


def test_symlinks_inside_the_input_cannot_make_restore_write_outside_the_output(tmp_path, ckpt):
    outside = photos(tmp_path / "outside")
    inputs = photos(tmp_path / "in")
    (inputs / "link.png").symlink_to(outside / "a.png")
    (inputs / "linked_folder").symlink_to(outside)
    before = snapshot(outside)
    out = tmp_path / "out"
    assert restore(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--device", "cpu"]) == 0
    assert snapshot(outside) == before
    assert files_below(out) == [
        "a.png",
        "link.png",
        "sub/b.png",
    ]  # the linked file under its link's name; folders not entered


def test_a_symlinked_folder_in_the_output_cannot_lead_restore_outside_it(tmp_path, ckpt, capsys):
    inputs, elsewhere, out = photos(tmp_path / "in"), tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    assert restore(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--device", "cpu"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert (
        f"--input {inputs / 'sub' / 'b.png'}: its output {out / 'sub' / 'b.png'} would be written outside {out}" in err
    )
    assert files_below(elsewhere) == [] and not (out / "a.png").exists()  # refused before any work


def test_restore_refuses_an_input_name_that_is_not_a_plain_name(tmp_path, ckpt, capsys):
    inputs = photos(tmp_path / "in")
    odd = photo(inputs / "a\\b.png")
    assert restore(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 2
    assert f"--input {odd}: sample key 'a\\\\b.png' holds a '\\'" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def evaluate_folders(root: Path) -> tuple[Path, Path]:
    for name in ("a.png", "sub/b.png"):
        photo(root / "gt" / name, (12, 12, 3))  # SSIM's window is 11 x 11
        photo(root / "lq" / name, (12, 12, 3))
    return root / "gt", root / "lq"


def run_evaluate(gt: Path, lq: Path, out: Path) -> int:
    return evaluate.main(
        [
            "--ckpt",
            "unused.ckpt",
            "--preset",
            "gopro",
            "--gt",
            str(gt),
            "--lq",
            str(lq),
            "--out",
            str(out),
            "--save-images",
            "--no-wandb",
            "--device",
            "cpu",
        ]
    )


def test_evaluate_saves_nested_names_inside_out_images_and_never_through_a_symlink(tmp_path, monkeypatch, capsys):
    use_method(monkeypatch, Nearest(1))
    gt, lq = evaluate_folders(tmp_path)
    assert run_evaluate(gt, lq, tmp_path / "out") == 0
    assert files_below(tmp_path / "out" / "images") == ["a.png", "sub/b.png"]
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out2"
    elsewhere.mkdir()
    (out / "images").mkdir(parents=True)
    (out / "images" / "sub").symlink_to(elsewhere)
    capsys.readouterr()
    assert run_evaluate(gt, lq, out) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"--gt {gt / 'sub' / 'b.png'}: its output {out / 'images' / 'sub' / 'b.png'} would be written outside" in err
    assert files_below(elsewhere) == [] and not (out / "results.json").exists()


def test_evaluate_refuses_a_gt_name_that_is_not_a_plain_name(tmp_path, monkeypatch, capsys):
    use_method(monkeypatch, Nearest(1))
    gt, lq = evaluate_folders(tmp_path)
    odd = photo(gt / "c\\d.png", (12, 12, 3))
    photo(lq / "c\\d.png", (12, 12, 3))
    assert run_evaluate(gt, lq, tmp_path / "out") == 2
    assert f"--gt {odd}: sample key 'c\\\\d.png'" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# --- point 7: outputs never replace or join the inputs ------------------------------------------------------
@pytest.mark.parametrize("where", ["the input folder", "inside it", "a link to it"])
def test_restore_refuses_an_output_folder_that_is_or_lies_in_the_input_folder(tmp_path, ckpt, capsys, where):
    inputs = photos(tmp_path / "photos")
    out = {"the input folder": inputs, "inside it": inputs / "restored", "a link to it": tmp_path / "link"}[where]
    if where == "a link to it":
        out.symlink_to(inputs)
    before = snapshot(inputs)
    assert restore(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--device", "cpu"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"--output {out} would write {out / 'a.png'} inside --input {inputs}" in err
    assert snapshot(inputs) == before


def test_restore_refuses_to_write_over_an_input_file(tmp_path, ckpt, capsys):
    inputs = photos(tmp_path / "photos")
    before = snapshot(inputs)
    assert (
        restore(["--ckpt", str(ckpt), "--input", str(inputs / "a.png"), "--output", str(inputs), "--device", "cpu"])
        == 2
    )
    err = one_error_line(capsys.readouterr().err)
    assert f"--output {inputs} would write {inputs / 'a.png'} over the input {inputs / 'a.png'}" in err
    assert snapshot(inputs) == before


def test_an_input_folder_inside_the_output_is_restored_unless_an_output_lands_in_it(tmp_path, ckpt, capsys):
    out = tmp_path / "out"
    inputs = photos(out / "photos")
    before = snapshot(inputs)
    assert restore(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--device", "cpu"]) == 0
    assert snapshot(inputs) == before and files_below(out) == ["a.png", "photos/a.png", "photos/sub/b.png", "sub/b.png"]
    photo(inputs / "photos" / "c.jpg")  # its output would be out/photos/c.png: inside the input folder
    before = snapshot(inputs)
    capsys.readouterr()
    assert restore(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--device", "cpu"]) == 2
    assert f"would write {out / 'photos' / 'c.png'} inside --input {inputs}" in one_error_line(capsys.readouterr().err)
    assert snapshot(inputs) == before


@pytest.mark.parametrize("where", ["--out is --gt", "--out inside --lq", "--gt is <out>/images"])
def test_evaluate_refuses_to_save_images_on_or_among_its_inputs(tmp_path, monkeypatch, capsys, where):
    use_method(monkeypatch, Nearest(1))
    if where == "--gt is <out>/images":
        gt, lq = evaluate_folders(tmp_path / "out")  # out/gt, out/lq
        gt = gt.rename(tmp_path / "out" / "images")
        out, flag, folder = tmp_path / "out", "--gt", gt
    else:
        gt, lq = evaluate_folders(tmp_path)
        out, flag, folder = (gt, "--gt", gt) if where == "--out is --gt" else (lq / "results", "--lq", lq)
    before = snapshot(tmp_path)
    assert run_evaluate(gt, lq, out) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"--out {out} would write {out / 'images' / 'a.png'} inside {flag} {folder}" in err
    assert snapshot(tmp_path) == before


# --- point 9: one data set per shard pattern -----------------------------------------------------------------
def shards_of(folder: Path, count: int, seed: int) -> Path:
    for i in range(count):
        photo(folder / f"{seed}_{i}.png", seed=seed + i)
    return folder


def keys_in(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return [name.split(".")[0] for name in tar.getnames()]


def test_shards_into_a_folder_holding_that_prefix_are_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "shards"
    old = shards_of(tmp_path / "old", 5, seed=10)
    assert shards(["--gt", str(old), "--out", str(out), "--maxcount", "1", "--no-progress"]) == 0
    before = snapshot(out)
    assert sorted(before) == [f"train-00000{i}.tar" for i in range(5)]
    new = shards_of(tmp_path / "new", 1, seed=20)
    capsys.readouterr()
    assert shards(["--gt", str(new), "--out", str(out), "--no-progress"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert (
        f"--out {out} already holds shards with the prefix 'train' (train-000000.tar, train-000001.tar, train-000002.tar and 2 more)"
        in err
    )
    assert snapshot(out) == before
    assert shards(["--gt", str(new), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train-000000.tar"]  # the old set gone, no staging folder left
    assert keys_in(out / "train-000000.tar") == ["20_0"]


def test_a_split_already_in_the_folder_is_refused_before_any_split_is_written(tmp_path, capsys):
    out = tmp_path / "shards"
    write_shards([ShardSample("v", {"gt.png": photo(tmp_path / "v.png").read_bytes()})], out, "val", progress=False)
    before = snapshot(out)
    gt = shards_of(tmp_path / "gt", 4, seed=0)
    assert shards(["--gt", str(gt), "--out", str(out), "--val-count", "1", "--no-progress"]) == 2
    assert "the prefix 'val' (val-000000.tar)" in one_error_line(capsys.readouterr().err)
    assert snapshot(out) == before  # no train-*.tar either


def test_overwrite_keeps_the_old_set_whole_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "shards"
    samples = [ShardSample(f"old{i}", {"gt.png": photo(tmp_path / f"{i}.png", seed=i).read_bytes()}) for i in range(3)]
    write_shards(samples, out, "train", maxcount=1, progress=False)
    before = snapshot(out)

    def failing_after_two():
        yield from (ShardSample(f"new{i}", sample.files) for i, sample in enumerate(samples[:2]))
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(failing_after_two(), out, "train", maxcount=1, progress=False)
    assert snapshot(out) == before  # nothing replaced, no staging folder left


def test_a_killed_overwrite_s_staging_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "shards"
    write_shards([ShardSample("a", {"gt.png": photo(tmp_path / "a.png").read_bytes()})], out, "train", progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = out / f".train.staging-{host_tag()}-{dead.pid}"
    leftover.mkdir()
    (leftover / "train-000000.tar").write_bytes(b"half")
    write_shards([ShardSample("b", {"gt.png": photo(tmp_path / "b.png").read_bytes()})], out, "train", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["train-000000.tar"] and keys_in(out / "train-000000.tar") == ["b"]


def test_a_preset_refuses_a_split_already_in_the_folder_unless_overwrite(tmp_path, capsys):
    root, out = tmp_path / "GOPRO_Large", tmp_path / "shards"
    gopro(root)
    out.mkdir()
    (out / "test-000000.tar").write_bytes(b"an older test set")
    args = ["--preset", "gopro", "--root", str(root), "--out", str(out), "--no-progress"]
    assert shards(args) == 2
    assert f"--out {out} already holds shards with the prefix 'test' (test-000000.tar)" in one_error_line(
        capsys.readouterr().err
    )
    assert sorted(p.name for p in out.iterdir()) == ["test-000000.tar"]  # train not written either
    assert shards([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["test-000000.tar", "train-000000.tar"]
    assert keys_in(out / "test-000000.tar") == ["GOPR0384_11_00_000001"] * 2 + ["GOPR0384_11_00_000002"] * 2


# --- point 14: too-small images, narrow images ----------------------------------------------------------------
def test_too_small_images_are_named_with_their_size_and_the_minimum_and_the_others_restored(tmp_path, capsys):
    ckpt = save_checkpoint(small_deqir(operator="colorization"), tmp_path / "deqir.ckpt")  # U-Net pads to even sizes
    inputs = tmp_path / "in"
    for h, w in ((1, 1), (1, 40), (40, 1), (8, 8)):
        photo(inputs / f"{h}x{w}.png", (h, w, 3))
    out = tmp_path / "out"
    assert restore(["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    for h, w in ((1, 1), (1, 40), (40, 1)):
        assert (
            f"error: {inputs / f'{h}x{w}.png'}: {h} x {w} pixels is too small: this DeqIR checkpoint restores images "
            "of at least 2 x 2 pixels"
        ) in err
    assert files_below(out) == ["8x8.png"]
    args = ["--ckpt", str(ckpt), "--input", str(inputs / "8x8.png"), "--device", "cpu", "--tile", "1", "--overlap", "0"]
    assert restore([*args, "--output", str(tmp_path / "tiles")]) == 1
    assert (
        "--tile 1 is below the smallest tile this DeqIR checkpoint restores (2 x 2 pixels)" in capsys.readouterr().err
    )


def test_tiles_of_a_narrow_image_are_clipped_to_it():
    shapes = []

    def restore_tiles(tiles: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(tiles.shape[-2:]))
        return tiles

    lq = torch.rand(1, 3, 600, 16)
    (top, band), *rest = list(restored_bands(restore_tiles, lq, tile=256, overlap=32, batch=2))
    assert set(shapes) == {(256, 16)} and len(shapes) == 2  # 3 tiles (starts 0, 224, 344) in batches of 2
    torch.testing.assert_close(torch.cat([band, *(b for _, b in rest)], dim=-2), lq)
