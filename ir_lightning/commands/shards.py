"""``ir-lightning shards``: pack an image folder (and its degraded twin), or a known data set as downloaded,
into WebDataset tar shards. The command line only: folders are listed and paired by ``datamodules.folders``,
data sets read by ``datamodules.presets`` and shards written by ``datamodules.writer``.

It refuses, before writing anything, to write a prefix of which ``--out`` already holds shards (a
``train-*.tar`` glob would mix two data sets) unless ``--overwrite`` asks to replace that set.

Example::

    ir-lightning shards --gt DIV2K_train_HR --lq DIV2K_train_LR_bicubic/X4 --lq-suffix x4 \\
        --out shards/div2k --val-count 100 --maxsize 500MB
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from datamodules.folders import collect_pairs, pair_samples, split_keys
from datamodules.format import ShardError, ShardSample
from datamodules.presets import (
    PRESETS,
    PresetError,
    by_split,
    collect_preset,
    get_preset,
    hold_out_val,
    preset_shard_samples,
)
from datamodules.writer import ShardStats, refuse_existing_shards, write_shards

DEFAULT_PREFIX = "train"
"""Shard name prefix when no validation split is asked for."""

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}  # decimal units (kB = 1000 B) and binary units (KiB = 1024 B), case-insensitive


def parse_size(text: str) -> int:
    """Bytes from ``"500MB"``, ``"2GB"``, ``"1.5GiB"`` or ``"1000000"`` (kB = 1000 B, KiB = 1024 B)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and _SIZE_UNITS.get(match.group(2).lower())
    if not unit:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 500MB, 2GB, 1GiB or plain bytes)")
    size = int(float(match.group(1)) * unit)
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def human_bytes(size: int) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


_EPILOG = """\
examples:
  # paired DIV2K x4, 100 validation images, shards of at most 500 MB
  ir-lightning shards --gt DIV2K_train_HR --lq DIV2K_train_LR_bicubic/X4 --lq-suffix x4 \\
      --out shards/div2k-x4 --val-count 100 --maxsize 500MB

  # a known data set as downloaded (train and test splits from its own folders)
  ir-lightning shards --preset gopro --root /data/GOPRO_Large --out shards/gopro

  # clean images only (degradations are synthesised on the GPU), 5% held out, sub-folders too
  ir-lightning shards --gt ffhq --recursive --out shards/ffhq --val-fraction 0.05 --seed 1

The summary ends with the brace patterns to paste into a recipe, e.g.
  data.init_args.train_shards: shards/div2k-x4/train-{000000..000003}.tar
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ir-lightning shards",
        description="Pack an image folder (and optionally its degraded twin) into WebDataset tar shards: "
        "each sample holds gt.<ext> and, if --lq is given, lq.<ext>, stored as the original bytes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gt", type=Path, metavar="DIR", help="folder of clean (ground-truth) images (or --preset)")
    parser.add_argument(
        "--lq",
        type=Path,
        metavar="DIR",
        help="folder of degraded images, matched to --gt by file name without extension",
    )
    parser.add_argument(
        "--lq-suffix",
        default="",
        metavar="TEXT",
        help="remove this from LQ names before matching, e.g. x4 for DIV2K's 0001x4.png",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the shards (created)")
    parser.add_argument(
        "--maxcount", type=int, default=1000, metavar="N", help="at most N samples a shard (default 1000)"
    )
    parser.add_argument(
        "--maxsize",
        type=parse_size,
        default=1 << 30,
        metavar="SIZE",
        help="at most SIZE bytes a shard file: 500MB, 2GB, 1GiB or plain bytes (default 1GiB)",
    )
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-count", type=int, metavar="N", help="hold out N random samples as val-*.tar")
    split.add_argument("--val-fraction", type=float, metavar="F", help="hold out a fraction F (0 < F < 1) as val-*.tar")
    split.add_argument(
        "--val-keys", metavar="A,B,...", help="hold out these sample keys (comma-separated) as val-*.tar"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random validation split (default 0)")
    parser.add_argument(
        "--prefix",
        metavar="NAME",
        help=f"shard name without split: NAME-000000.tar (default {DEFAULT_PREFIX}); "
        "with a split: NAME-train-* and NAME-val-*",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="also search sub-folders; keys come from relative paths, e.g. a/0001 -> a_0001",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the shards of the same prefix already in --out (removed once the new set is "
        "complete; without it such a folder is refused)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a known data set read from --root as downloaded, instead of --gt/--lq: {', '.join(PRESETS)}",
    )
    parser.add_argument("--root", type=Path, metavar="DIR", help="with --preset: the data set's folder as unpacked")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ir-lightning shards``; returns 0 on success, 2 on bad input, 1 on a file-system error."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse has already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return _run(args)
    except ShardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.preset is not None or args.root is not None:
        return _run_preset(args)
    if args.gt is None:
        raise ShardError("give --gt DIR (a folder of clean images) or --preset NAME --root DIR")
    pairs = collect_pairs(args.gt, args.lq, args.lq_suffix, recursive=args.recursive)
    train, val = split_keys([pair.key for pair in pairs], args.val_count, args.val_fraction, _val_keys(args), args.seed)
    by_key = {pair.key: pair for pair in pairs}
    splits = {name: [by_key[key] for key in keys] for name, keys in _named_splits(args.prefix, train, val)}
    results = _write_splits(args, {name: (pair_samples(chosen), len(chosen)) for name, chosen in splits.items()})
    print(_summary(results, val_present=bool(val)))
    return 0


def _run_preset(args: argparse.Namespace) -> int:
    """``--preset NAME --root DIR --out DIR [...]``: write every split of the preset."""
    _check_preset_options(args)
    splits = by_split(collect_preset(args.preset, args.root))
    splits = hold_out_val(splits, args.val_count, args.val_fraction, _val_keys(args), args.seed)
    names = {split: f"{args.prefix}-{split}" if args.prefix else split for split in splits}
    results = _write_splits(
        args, {names[split]: (preset_shard_samples(samples), len(samples)) for split, samples in splits.items()}
    )
    print(preset_summary({split: results[names[split]] for split in splits}))
    return 0


def _check_preset_options(args: argparse.Namespace) -> None:
    if args.preset is None or args.root is None:
        raise PresetError("--preset NAME and --root DIR go together")
    clashing = [
        option
        for option, value in (
            ("--gt", args.gt),
            ("--lq", args.lq),
            ("--lq-suffix", args.lq_suffix),
            ("--recursive", args.recursive),
        )
        if value
    ]
    if clashing:
        raise PresetError(f"{', '.join(clashing)} cannot be combined with --preset: the preset knows the folders")
    get_preset(args.preset)


def _val_keys(args: argparse.Namespace) -> list[str] | None:
    return [key.strip() for key in args.val_keys.split(",") if key.strip()] if args.val_keys else None


def _write_splits(
    args: argparse.Namespace, splits: dict[str, tuple[Iterable[ShardSample], int]]
) -> dict[str, ShardStats]:
    """Write each split (shard prefix -> samples and their count) into ``--out``; the prefixes ``--out``
    already holds are refused before anything is written, unless ``--overwrite``."""
    if not args.overwrite:
        refuse_existing_shards(args.out, splits)
    results = {}
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        for name, (samples, total) in splits.items():
            results[name] = write_shards(
                samples, args.out, name, args.maxcount, args.maxsize, progress=not args.no_progress, total=total
            )
    return results


def _named_splits(prefix: str | None, train: list[str], val: list[str]) -> list[tuple[str, list[str]]]:
    """Shard prefixes with their keys: one split named ``prefix``, or ``[prefix-]train`` and ``[prefix-]val``."""
    if not val:
        return [(prefix or DEFAULT_PREFIX, train)]
    lead = f"{prefix}-" if prefix else ""
    return [(f"{lead}train", train), (f"{lead}val", val)]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Print a warning as one line that does not tear the progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _split_lines(results: dict[str, ShardStats]) -> list[str]:
    """One line a split: what was written."""
    return [
        f"{split}: {stats.samples} samples in {stats.shards} shards, {human_bytes(stats.bytes)}, "
        f"{stats.skipped} skipped"
        for split, stats in results.items()
    ]


def _summary(results: dict[str, ShardStats], val_present: bool) -> str:
    lines = _split_lines(results)
    lines.append("paste into a recipe:")
    names = ("train_shards", "val_shards") if val_present else ("train_shards",)
    lines += [f"  data.init_args.{name}: {stats.pattern}" for name, stats in zip(names, results.values())]
    return "\n".join(lines)


def preset_summary(results: dict[str, ShardStats]) -> str:
    """One line a split, then the recipe lines: train and val shards (the test split stands in for
    val where the data set has none, as the deblurring and deraining papers validate on it)."""
    lines = _split_lines(results)
    tests = [split for split in results if split.startswith("test")]
    lines.append("paste into a recipe:")
    lines.append(f"  data.init_args.train_shards: {results['train'].pattern}")
    if "val" in results:
        lines.append(f"  data.init_args.val_shards: {results['val'].pattern}")
    elif tests:
        note = f"the {tests[0]} split (the data set has no val split)"
        lines.append(f"  data.init_args.val_shards: {results[tests[0]].pattern}  # {note}")
    else:
        lines.append("  # no val split: add --val-count N to hold some training samples out")
    lines += [f"  data.init_args.test_shards: {results[split].pattern}  # {split}" for split in tests]
    return "\n".join(lines)
