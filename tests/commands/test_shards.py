"""Tests of ``ir-lightning shards`` (``ir_lightning.commands.shards``): sizes, the folder mode end to end,
the help text and errors. The presets' command line is tested in ``tests/datamodules/test_presets.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ir_lightning.commands.shards import main, parse_size
from tests.datamodules.test_folders import write_images
from tests.datamodules.test_writer import read_back


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
    argv = [
        "--gt",
        str(tmp_path / "hr"),
        "--lq",
        str(tmp_path / "lr"),
        "--lq-suffix",
        "x2",
        "--out",
        str(out),
        "--val-count",
        "1",
        "--maxcount",
        "2",
        "--no-progress",
    ]
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
    options = [
        "--gt",
        "--lq",
        "--lq-suffix",
        "--out",
        "--maxcount",
        "--maxsize",
        "--val-count",
        "--val-fraction",
        "--val-keys",
        "--seed",
        "--prefix",
        "--recursive",
        "--no-progress",
    ]
    assert all(option in text for option in options) and "examples:" in text


def test_main_reports_a_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_folder"
    assert main(["--gt", str(missing), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and str(missing) in captured.err and "Traceback" not in captured.err
