"""Tests of ``datamodules.folders``: the one image listing, pairing by stem, collect_pairs and the
validation split."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.folders import (
    StemPair,
    clashing,
    collect_pairs,
    image_files_below,
    images_by_stem,
    pair_by_stem,
    pair_samples,
    split_keys,
    suffix_rule,
)
from datamodules.format import IMAGE_EXTENSIONS, IMAGE_SUFFIXES
from ir_lightning.commands import evaluate
from ir_lightning.io import images
from tests.datamodules.test_writer import encode, noise

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


# ----------------------------------------------------------------------------------------------
# the one listing and the one pairing


def test_every_image_list_of_the_suite_is_the_formats_one() -> None:
    assert IMAGE_SUFFIXES == tuple(f".{extension}" for extension in IMAGE_EXTENSIONS)
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} == set(IMAGE_SUFFIXES)
    assert images.IMAGE_SUFFIXES is IMAGE_SUFFIXES and images.image_files_below is image_files_below
    assert evaluate.IMAGE_SUFFIXES is IMAGE_SUFFIXES


def test_listing_by_suffix_in_any_case_sorted_with_hidden_and_recursive_switches(tmp_path: Path) -> None:
    names = ["b.PNG", "a.jpg", "notes.txt", ".hidden.png", "sub/c.webp", ".cache/d.png", "sub/e.tiff"]
    write_images(tmp_path, [name for name in names if name != "notes.txt"])
    (tmp_path / "notes.txt").write_text("not an image")
    relative = lambda paths: [path.relative_to(tmp_path).as_posix() for path in paths]  # noqa: E731
    assert relative(image_files_below(tmp_path)) == [
        ".cache/d.png",
        ".hidden.png",
        "a.jpg",
        "b.PNG",
        "sub/c.webp",
        "sub/e.tiff",
    ]
    assert relative(image_files_below(tmp_path, hidden=False)) == ["a.jpg", "b.PNG", "sub/c.webp", "sub/e.tiff"]
    assert relative(image_files_below(tmp_path, recursive=False, hidden=False)) == ["a.jpg", "b.PNG"]
    write_images(tmp_path, ["sub/c.png"])
    groups = images_by_stem(tmp_path, hidden=False)
    assert list(groups) == ["a", "b", "sub/c", "sub/e"] and clashing(groups) == [
        tmp_path / "sub/c.png",
        tmp_path / "sub/c.webp",
    ]


def test_pair_by_stem_matches_by_rule_and_reports_both_sides_in_order() -> None:
    gt = {stem: Path(f"gt/{stem}.png") for stem in ("a", "a_b", "c", "d")}
    lq = {stem: Path(f"lq/{stem}.png") for stem in ("a_bx4", "ax4", "b", "cx4", "zx4")}
    pairing = pair_by_stem(gt, lq, suffix_rule("x4"))
    assert [(pair.gt_stem, pair.lq_stem) for pair in pairing.pairs] == [("a", "ax4"), ("a_b", "a_bx4"), ("c", "cx4")]
    assert all(pair.gt == gt[pair.gt_stem] and pair.lq == lq[pair.lq_stem] for pair in pairing.pairs)
    assert pairing.lonely_gt == [gt["d"]]  # GT order
    assert pairing.lonely_lq == [lq["b"], lq["zx4"]]  # LQ order: b lacks the suffix, z has no GT
    assert pair_by_stem(gt, {"c": Path("c.png")}).pairs == [StemPair("c", "c", gt["c"], Path("c.png"))]
    frames = {"v/1_p": Path("1.png"), "v/2_p": Path("2.png")}  # two LQ frames share one GT (SPA)
    shared = pair_by_stem({"p": Path("p.png")}, frames, lambda stem: stem.split("_")[-1])
    assert [pair.lq_stem for pair in shared.pairs] == ["v/1_p", "v/2_p"] and not shared.lonely_gt


def test_the_writer_the_presets_and_evaluate_pair_alike(tmp_path: Path) -> None:
    """The three callers of the one pairing agree on a paired folder with a suffix rule."""
    write_images(tmp_path / "hr", ["0001.png", "0002.png", "sub/0003.png"])
    write_images(tmp_path / "lr", ["0001x2.png", "0002x2.png", "sub/0003x2.png"])
    writer = collect_pairs(tmp_path / "hr", tmp_path / "lr", lq_suffix="x2", recursive=True)
    scored = evaluate.pair_files(tmp_path / "hr", tmp_path / "lr", "x2")
    assert [(pair.gt, pair.lq) for pair in writer] == [(pair.gt, pair.lq) for pair in scored]
    assert [pair.key for pair in writer] == ["0001", "0002", "sub_0003"]
    assert [pair.name for pair in scored] == ["0001", "0002", "sub/0003"]
