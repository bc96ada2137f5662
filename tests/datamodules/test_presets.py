"""Tests of ``datamodules.presets`` and ``ir-lightning shards --preset``: every preset on a miniature copy
of its official tree, read back from the shards it writes, and the errors for missing folders, unmatched
images and unknown presets.

Every image file gets its own random pixels (seeded by its path), so a shard member whose bytes
equal one file on disk can only have come from that file: comparing bytes checks that GT, LQ and
mask were matched to the right partner and put in the right role and split.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from datamodules import ShardDataModule
from datamodules.presets import (
    PRESETS,
    PresetError,
    collect_preset,
    get_preset,
)
from ir_lightning.commands.shards import main

Expected = dict[str, dict[str, dict[str, Path]]]
"""split -> key -> role (``gt``, ``lq``, ``mask``) -> file the member must come from."""


def image(root: Path, relative: str, channels: int = 3) -> Path:
    """Write a 6x8 image of random pixels seeded by ``relative``, as PNG or JPEG by its extension."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (6, 8, channels) if channels > 1 else (6, 8)
    pixels = np.random.default_rng(zlib.crc32(relative.encode())).integers(0, 256, shape, dtype=np.uint8)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def pairs(root: Path, items: list[tuple[str, str, str]]) -> dict[str, dict[str, Path]]:
    """Write the images of ``(key, gt path, lq path)`` rows; return their expected entries."""
    return {key: {"gt": image(root, gt), "lq": image(root, lq)} for key, gt, lq in items}


def clean(root: Path, items: list[tuple[str, str]]) -> dict[str, dict[str, Path]]:
    return {key: {"gt": image(root, gt)} for key, gt in items}


# ----------------------------------------------------------------------------------------------
# Miniature official trees: each builder writes one below ``root`` and returns what must come out.
# Decoys (folders the preset must ignore) hold images too, so picking them up changes the keys.


def div2k(root: Path) -> Expected:
    image(root, "DIV2K_train_LR_bicubic/X4/0001x4.png")  # decoy
    return {
        "train": clean(root, [("0001", "DIV2K_train_HR/0001.png"), ("0002", "DIV2K_train_HR/0002.png")]),
        "val": clean(root, [("0801", "DIV2K_valid_HR/0801.png")]),
    }


def flickr2k(root: Path) -> Expected:
    image(root, "Flickr2K_LR_bicubic/X2/000001x2.png")  # decoy
    return {"train": clean(root, [("000001", "Flickr2K_HR/000001.png"), ("002650", "Flickr2K_HR/002650.png")])}


def df2k(root: Path) -> Expected:
    train = clean(root, [("div2k_0001", "DIV2K_train_HR/0001.png"), ("div2k_0800", "DIV2K_train_HR/0800.png")])
    train |= clean(root, [("flickr2k_000001", "Flickr2K/Flickr2K_HR/000001.png")])  # nested, as the tar unpacks
    image(root, "Flickr2K/Flickr2K_LR_bicubic/X4/000001x4.png")  # decoy
    return {"train": train, "val": clean(root, [("div2k_0801", "DIV2K_valid_HR/0801.png")])}


def ffhq_tree(folder: str, decoy: str) -> Callable[[Path], Expected]:
    def build(root: Path) -> Expected:
        image(root, f"{decoy}/00000/00000.png")
        return {
            "train": clean(root, [(n, f"{folder}/{n[:2]}000/{n}.png") for n in ("00000", "00001", "59999")]),
            "val": clean(root, [(n, f"{folder}/{n[:2]}000/{n}.png") for n in ("60000", "69999")]),
        }

    return build


def gopro(root: Path) -> Expected:
    def sequence(split: str, name: str, frames: list[str]) -> dict[str, dict[str, Path]]:
        for frame in frames:
            image(root, f"{split}/{name}/blur_gamma/{frame}.png")  # decoy: not the LQ
        return pairs(
            root,
            [
                (f"{name}_{frame}", f"{split}/{name}/sharp/{frame}.png", f"{split}/{name}/blur/{frame}.png")
                for frame in frames
            ],
        )

    train = sequence("train", "GOPR0372_07_00", ["000047", "000048"]) | sequence("train", "GOPR0374_11_00", ["000001"])
    return {"train": train, "test": sequence("test", "GOPR0384_11_00", ["000001", "000002"])}


def rain13k(root: Path) -> Expected:
    expected = {
        "train": pairs(
            root,
            [
                (name, f"train/Rain13K/target/{name}.jpg", f"train/Rain13K/input/{name}.jpg")
                for name in ("1", "2", "10")
            ],
        )
    }
    for test_set in ("Rain100H", "Rain100L", "Test100", "Test1200", "Test2800"):
        expected[f"test-{test_set.lower()}"] = pairs(
            root,
            [(name, f"test/{test_set}/target/{name}.png", f"test/{test_set}/input/{name}.png") for name in ("1", "2")],
        )
    return expected


def sidd(root: Path) -> Expected:
    (root / "Scene_Instances.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "Scene_Instances.txt").write_text("0001_001_S6_00100_00060_3200_L\n0052_002_S6_01600_01000_5500_N\n")
    train = {}
    for scene in ("0001_001_S6_00100_00060_3200_L", "0052_002_S6_01600_01000_5500_N"):
        number = scene[:4]
        train |= pairs(
            root,
            [
                (
                    f"{scene}_{capture}",
                    f"Data/{scene}/{number}_GT_SRGB_{capture}.PNG",
                    f"Data/{scene}/{number}_NOISY_SRGB_{capture}.PNG",
                )
                for capture in ("010", "011")
            ],
        )
    return {"train": train}


def lol(root: Path) -> Expected:
    return {
        "train": pairs(root, [(n, f"our485/high/{n}.png", f"our485/low/{n}.png") for n in ("2", "5", "100")]),
        "test": pairs(root, [(n, f"eval15/high/{n}.png", f"eval15/low/{n}.png") for n in ("1", "22")]),
    }


def istd(root: Path) -> Expected:
    expected = {}
    for split, names in (("train", ["1-1", "1-2", "2-1"]), ("test", ["90-1"])):
        expected[split] = {
            name: {
                "gt": image(root, f"{split}/{split}_C/{name}.png"),
                "lq": image(root, f"{split}/{split}_A/{name}.png"),
                "mask": image(root, f"{split}/{split}_B/{name}.png", channels=1),
            }
            for name in names
        }
    return expected


def realblur(variant: str) -> Callable[[Path], Expected]:
    top = {
        "J": "RealBlur-J_ECC_IMCORR_centroid_itensity_ref",
        "R": "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref",
    }[variant]

    def build(root: Path) -> Expected:
        image(root, f"{top}/scene999/gt/gt_1.png"), image(root, f"{top}/scene999/blur/blur_1.png")  # in no list
        expected = {}
        listed = {"train": [("scene001", 1), ("scene001", 2), ("scene002", 1)], "test": [("scene230", 7)]}
        for split, items in listed.items():
            rows = [
                (f"{scene}_gt_{n}", f"{top}/{scene}/gt/gt_{n}.png", f"{top}/{scene}/blur/blur_{n}.png")
                for scene, n in items
            ]
            expected[split] = pairs(root, rows)
            text = "".join(f"{gt} {lq}\n" for _, gt, lq in rows)
            (root / f"RealBlur_{variant}_{split}_list.txt").write_text(text + "\n")  # a trailing empty line
        return expected

    return build


def spa(root: Path) -> Expected:
    gt = {place: image(root, f"real_world_gt/000/000_{place}.png") for place in ("0_0", "0_1")}
    gt["1_0"] = image(root, "real_world_gt/001/001_1_0.png")
    train = {}
    for video, frame, place in (("000", "1", "0_0"), ("000", "1", "0_1"), ("000", "2", "0_0"), ("001", "7", "1_0")):
        stem = f"{video}-{frame}_{place}"
        train[stem] = {"gt": gt[place], "lq": image(root, f"real_world/{video}/{video}-{frame}/{stem}.png")}
    test = pairs(root, [(n, f"real_test_1000/gt/{n}gt.png", f"real_test_1000/rain/{n}.png") for n in ("000", "001")])
    return {"train": train, "test": test}


BUILDERS: dict[str, Callable[[Path], Expected]] = {
    "div2k": div2k,
    "flickr2k": flickr2k,
    "df2k": df2k,
    "ffhq": ffhq_tree("images1024x1024", decoy="thumbnails128x128"),
    "ffhq-thumbnails": ffhq_tree("thumbnails128x128", decoy="images1024x1024"),
    "gopro": gopro,
    "rain13k": rain13k,
    "sidd": sidd,
    "lol": lol,
    "istd": istd,
    "realblur-j": realblur("J"),
    "realblur-r": realblur("R"),
    "spa": spa,
}


def read_splits(out: Path) -> dict[str, dict[str, dict]]:
    """Every shard in ``out`` read with webdataset, by split (the file name before ``-NNNNNN.tar``)."""
    splits: dict[str, dict[str, dict]] = {}
    for path in sorted(out.glob("*.tar")):
        split = path.name.rsplit("-", 1)[0]
        for sample in wds.WebDataset(str(path), shardshuffle=False):
            splits.setdefault(split, {})[sample["__key__"]] = sample
    return splits


def run(argv: list[str]) -> int:
    return main([*argv, "--no-progress"])


# ----------------------------------------------------------------------------------------------
# Every preset on its miniature tree


def test_every_preset_has_a_miniature_tree() -> None:
    assert sorted(BUILDERS) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_preset_writes_each_split_with_matched_files(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = tmp_path / "download", tmp_path / "shards"
    expected = BUILDERS[name](root)
    assert run(["--preset", name, "--root", str(root), "--out", str(out)]) == 0
    written = read_splits(out)
    assert {split: sorted(keys) for split, keys in written.items()} == {
        split: sorted(keys) for split, keys in expected.items()
    }
    for split, samples in expected.items():
        for key, files in samples.items():
            sample = written[split][key]
            members = {member.split(".")[0]: member for member in sample if not member.startswith("__")}
            assert sorted(members) == sorted(files), (split, key)
            for role, path in files.items():
                assert members[role] == role + path.suffix.lower()
                assert sample[members[role]] == path.read_bytes(), (split, key, role, path)
    printed = capsys.readouterr().out
    assert f"data.init_args.train_shards: {out}/train-000000.tar" in printed


def test_collect_preset_gives_sorted_records(tmp_path: Path) -> None:
    expected = lol(tmp_path)
    samples = collect_preset("lol", tmp_path)
    assert [(s.split, s.key) for s in samples] == [("train", k) for k in sorted(expected["train"])] + [
        ("test", k) for k in sorted(expected["test"])
    ]
    assert all(s.gt == expected[s.split][s.key]["gt"] and s.lq == expected[s.split][s.key]["lq"] for s in samples)
    assert all(s.mask is None for s in samples)


def test_istd_shards_feed_the_datamodule_with_mask(tmp_path: Path) -> None:
    root, out = tmp_path / "ISTD_Dataset", tmp_path / "shards"
    expected = istd(root)
    assert run(["--preset", "istd", "--root", str(root), "--out", str(out)]) == 0
    datamodule = ShardDataModule(val_shards=str(out / "test-000000.tar"), num_workers=0, persistent_workers=False)
    datamodule.setup("validate")
    (batch,) = list(datamodule.val_dataloader())
    assert batch["__key__"] == ["90-1"]
    assert [tuple(batch[role].shape) for role in ("gt", "lq", "mask")] == [(1, 3, 6, 8), (1, 3, 6, 8), (1, 1, 6, 8)]
    for role in ("gt", "lq", "mask"):
        pixels = np.array(Image.open(expected["test"]["90-1"][role]))
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        reference = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(batch[role][0], reference, rtol=0, atol=1e-6)


def test_summary_offers_the_test_split_as_val_and_lists_test_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = tmp_path / "Datasets", tmp_path / "shards"
    rain13k(root)
    assert run(["--preset", "rain13k", "--root", str(root), "--out", str(out), "--prefix", "derain"]) == 0
    printed = capsys.readouterr().out
    assert "train: 3 samples in 1 shards" in printed and "test-rain100h: 2 samples in 1 shards" in printed
    assert f"data.init_args.val_shards: {out}/derain-test-rain100h-000000.tar" in printed
    assert printed.count("data.init_args.test_shards:") == 5
    names = sorted(path.name for path in out.iterdir())
    assert names[:2] == ["derain-test-rain100h-000000.tar", "derain-test-rain100l-000000.tar"]


def test_val_split_drawn_from_train_when_the_data_set_has_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = tmp_path / "Flickr2K", tmp_path / "shards"
    for index in range(1, 6):
        image(root, f"Flickr2K_HR/{index:06d}.png")
    assert run(["--preset", "flickr2k", "--root", str(root), "--out", str(out), "--val-keys", "000002,000004"]) == 0
    written = read_splits(out)
    assert sorted(written["train"]) == ["000001", "000003", "000005"] and sorted(written["val"]) == ["000002", "000004"]
    assert f"data.init_args.val_shards: {out}/val-000000.tar" in capsys.readouterr().out
    assert run(["--preset", "flickr2k", "--root", str(root), "--out", str(tmp_path / "again"), "--val-count", "2"]) == 0
    assert len(read_splits(tmp_path / "again")["val"]) == 2


# ----------------------------------------------------------------------------------------------
# Errors


def test_missing_folder_names_preset_path_and_expected_tree(tmp_path: Path) -> None:
    root = tmp_path / "GOPRO_Large"
    image(root, "train/GOPR0372_07_00/sharp/000047.png"), image(root, "train/GOPR0372_07_00/blur/000047.png")
    with pytest.raises(PresetError) as error:  # the test/ folder was never unpacked
        collect_preset("gopro", root)
    message = str(error.value)
    assert "'gopro'" in message and f"folder {root / 'test'}" in message
    assert all(line in message for line in get_preset("gopro").layout.splitlines())


def test_missing_role_folder_inside_a_sequence_is_named(tmp_path: Path) -> None:
    root = tmp_path / "GOPRO_Large"
    image(root, "train/GOPR0372_07_00/sharp/000047.png")  # no blur/
    image(root, "test/GOPR0384_11_00/sharp/000001.png"), image(root, "test/GOPR0384_11_00/blur/000001.png")
    with pytest.raises(PresetError, match=rf"folder {root / 'train/GOPR0372_07_00/blur'} not found"):
        collect_preset("gopro", root)


def test_lq_without_gt_is_named(tmp_path: Path) -> None:
    lol(tmp_path)
    image(tmp_path, "our485/low/9.png")
    with pytest.raises(PresetError, match=r"1 LQ images in .*our485/low have no GT partner .*: 9\.png") as error:
        collect_preset("lol", tmp_path)
    assert "no LQ partner" not in str(error.value)


def test_gt_without_lq_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lol(tmp_path)
    image(tmp_path, "eval15/high/7.png")
    assert run(["--preset", "lol", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preset 'lol': 1 GT images in") and "no LQ partner" in err and "7.png" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_name_rules_report_unmatched_files(tmp_path: Path) -> None:
    sidd(tmp_path)
    (tmp_path / "Data/0052_002_S6_01600_01000_5500_N/0052_GT_SRGB_011.PNG").unlink()
    with pytest.raises(PresetError, match=r"noisy images without GT: 0052_NOISY_SRGB_011\.PNG"):
        collect_preset("sidd", tmp_path)
    spa_root = tmp_path / "spa"
    spa(spa_root)
    image(spa_root, "real_world/002/002-3/002-3_5_5.png")  # its clean patch real_world_gt/002/002_5_5 is missing
    with pytest.raises(PresetError, match=r"002/002-3/002-3_5_5\.png .*real_world/V/V-F/V-F_X_Y"):
        collect_preset("spa", spa_root)


def test_realblur_list_naming_a_missing_file(tmp_path: Path) -> None:
    realblur("J")(tmp_path)
    listing = tmp_path / "RealBlur_J_test_list.txt"
    listing.write_text(
        listing.read_text() + "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene231/gt/gt_1.png "
        "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene231/blur/blur_1.png\n"
    )
    where = r"RealBlur_J_test_list\.txt, line 3 names the GT image .*scene231/gt/gt_1\.png"
    with pytest.raises(PresetError, match=where):
        collect_preset("realblur-j", tmp_path)


def test_unknown_preset_lists_the_valid_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PresetError, match="unknown preset 'gopr0'") as error:
        get_preset("gopr0")
    assert all(name in str(error.value) for name in PRESETS)
    assert run(["--preset", "gopr0", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'gopr0'" in err and "realblur-j" in err and "spa" in err


def test_option_conflicts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    div2k(tmp_path)
    out = str(tmp_path / "out")
    assert run(["--preset", "div2k", "--root", str(tmp_path), "--out", out, "--gt", str(tmp_path)]) == 2
    assert "--gt cannot be combined with --preset" in capsys.readouterr().err
    assert run(["--preset", "div2k", "--out", out]) == 2
    assert "--preset NAME and --root DIR go together" in capsys.readouterr().err
    assert run(["--preset", "div2k", "--root", str(tmp_path), "--out", out, "--val-count", "1"]) == 2
    assert "already has a val split" in capsys.readouterr().err
    assert run(["--out", out]) == 2
    assert "give --gt DIR" in capsys.readouterr().err


def test_ffhq_file_not_named_by_number(tmp_path: Path) -> None:
    ffhq_tree("images1024x1024", decoy="thumbnails128x128")(tmp_path)
    image(tmp_path, "images1024x1024/00000/face.png")
    with pytest.raises(PresetError, match=r"face\.png is not named by an FFHQ image number"):
        collect_preset("ffhq", tmp_path)


def test_keys_are_unique_and_stable(tmp_path: Path) -> None:
    for name, build in BUILDERS.items():
        root = tmp_path / name
        build(root)
        first, second = collect_preset(name, root), collect_preset(name, root)
        assert first == second
        keys = [(sample.split, sample.key) for sample in first]
        assert len(keys) == len(set(keys)) and all("." not in key and key for _, key in keys)
