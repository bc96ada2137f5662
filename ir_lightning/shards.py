"""Pack image folders, or samples held in memory, into WebDataset tar shards.

This is the ``ir-lightning shards`` command. A shard is a plain POSIX (pax) tar file in which
the members of one sample sit next to each other and share a key: ``0001.gt.png``,
``0001.lq.png``. WebDataset splits a member name at the first dot of its base name, so keys
never contain a dot (see the data contract in DESIGN.md).

Three layers, usable on their own:

- :func:`write_shards` streams :class:`ShardSample` objects (a key plus file bytes) into
  ``prefix-000000.tar``, ``prefix-000001.tar``, ... It knows nothing of folders; the demo feeds
  it PNG bytes made in memory. Every image member is fully decoded once with PIL as a check and
  a sample with an unreadable image is skipped with a warning. Each shard is written under a
  hidden temporary name and renamed into place when complete, so a crash never leaves a
  truncated file under a final ``.tar`` name. Into a folder that already holds shards of the
  prefix, the new set is written into a hidden staging folder beside them and swapped in only
  when complete (each file renamed over its old namesake, the old shards beyond the new count
  deleted), so the prefix's pattern names exactly one data set and a crash keeps the old set whole.
- :func:`collect_pairs` matches clean (GT) and degraded (LQ) files of two folders by stem and
  :func:`pair_samples` reads them as samples; :func:`split_keys` draws a reproducible
  validation split.
- :func:`main` is the command line on top of both. It refuses, before writing anything, to write
  a prefix of which ``--out`` already holds shards (a ``train-*.tar`` glob would mix two data sets)
  unless ``--overwrite`` asks to replace that set.

Example::

    ir-lightning shards --gt DIV2K_train_HR --lq DIV2K_train_LR_bicubic/X4 --lq-suffix x4 \\
        --out shards/div2k --val-count 100 --maxsize 500MB
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import shutil
import sys
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ir_lightning.io import UnsafeKeyError, checked_key, host_tag

IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""File extensions taken as images, both when listing folders and when checking members."""

SHARD_DIGITS = 6
"""Width of the zero-padded shard index in file names: ``prefix-000000.tar``."""

MAX_LISTED = 20
"""How many offending names an error message lists before it only gives the count."""

MEMBER_MTIME = 0
"""Modification time stored for every member, so that the same input gives byte-identical shards."""

MEMBER_MODE = 0o644
"""Permission bits stored for every member (read for all, write for the owner)."""

TAR_FORMAT = tarfile.PAX_FORMAT
"""POSIX.1-2001 tar: plain ustar headers, plus pax records only for long or non-ASCII names."""

TAR_ENCODING = "utf-8"
"""Encoding of member names inside the tar headers."""

DEFAULT_PREFIX = "train"
"""Shard name prefix when no validation split is asked for."""

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # decimal units (kB = 1000 B) and binary units (KiB = 1024 B), case-insensitive


class ShardError(ValueError):
    """A problem with the user's input (folders, keys, split options), reported without a traceback."""


class UnreadableImageWarning(UserWarning):
    """An image could not be decoded; its sample was left out of the shards."""


@dataclass(frozen=True)
class ShardSample:
    """One sample: a key without dots and its files by member name, e.g. ``{"gt.png": b"..."}``.

    ``sources`` optionally names where each file came from (a path), for warnings.
    """

    key: str
    files: dict[str, bytes]
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class ShardStats:
    """What :func:`write_shards` wrote: counts, total bytes on disk, the shard paths in order,
    the brace pattern that expands to exactly those paths, and how many samples were skipped."""

    samples: int = 0
    shards: int = 0
    bytes: int = 0
    paths: list[Path] = field(default_factory=list)
    pattern: str = ""
    skipped: int = 0


@dataclass(frozen=True)
class ImagePair:
    """A clean image and, for a paired data set, its degraded counterpart, under one key."""

    key: str
    gt: Path
    lq: Path | None = None


# ----------------------------------------------------------------------------------------------
# Writing shards


def write_shards(
    samples: Iterable[ShardSample],
    out_dir: Path,
    prefix: str,
    maxcount: int = 1000,
    maxsize: int = 1 << 30,
    progress: bool = True,
    *,
    total: int | None = None,
) -> ShardStats:
    """Write ``samples`` to ``out_dir/prefix-000000.tar``, ``prefix-000001.tar``, ...

    A new shard starts when adding the next sample would make the current one hold more than
    ``maxcount`` samples or make its file larger than ``maxsize`` bytes; a single sample larger
    than ``maxsize`` gets a shard of its own. ``total`` only sizes the progress bar.
    Shards of ``prefix`` already in ``out_dir`` are replaced by the new set once it is complete
    (:func:`_swap_in`); until then they stay untouched.
    Raises :class:`ShardError` for a key that is not a plain name without dots, a repeated key or a
    bad member name.
    """
    _check_limits(prefix, maxcount, maxsize)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out_dir, prefix)
    old = existing_shards(out_dir, prefix)
    staging = out_dir / f".{prefix}.staging-{host_tag()}-{os.getpid()}" if old else None
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)  # a leftover of an earlier process with our pid
        staging.mkdir()
    stats, seen, writer = ShardStats(), set(), None
    try:
        for sample in tqdm(samples, total=total, disable=not progress, desc=prefix, unit="sample"):
            members = _tar_members(sample, seen)
            if not _all_images_decode(sample):
                stats.skipped += 1
                continue
            size = sum(_member_bytes(info) for info, _ in members)
            if writer is not None and not writer.fits(size, maxcount, maxsize):
                _commit(writer, stats)
                writer = None
            if writer is None:
                writer = _ShardWriter(shard_path(staging or out_dir, prefix, stats.shards))
            writer.add(members, size)
            stats.samples += 1
        if writer is not None:
            _commit(writer, stats)
    except BaseException:
        if writer is not None:
            writer.abort()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if staging is not None:
        _swap_in(staging, out_dir, stats, old)
    stats.pattern = shard_pattern(out_dir, prefix, stats.shards)
    return stats


def existing_shards(out_dir: Path, prefix: str) -> list[Path]:
    """The ``prefix-NNNNNN.tar`` files in ``out_dir``, sorted (none if the folder does not exist)."""
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{{SHARD_DIGITS}}}\.tar")
    if not Path(out_dir).is_dir():
        return []
    return sorted(path for path in Path(out_dir).iterdir() if pattern.fullmatch(path.name))


def refuse_existing_shards(out_dir: Path, prefixes: Iterable[str]) -> None:
    """Raise :class:`ShardError` naming the folder, the prefix and a few of its files when ``out_dir``
    already holds shards of one of ``prefixes``: new shards beside them would mix two data sets."""
    for prefix in prefixes:
        old = [path.name for path in existing_shards(out_dir, prefix)]
        if old:
            shown = ", ".join(old[:3]) + (f" and {len(old) - 3} more" if len(old) > 3 else "")
            raise ShardError(
                f"--out {out_dir} already holds shards with the prefix {prefix!r} ({shown}); new shards beside "
                "them would mix two data sets under one pattern: choose another --out or --prefix, or pass "
                "--overwrite to replace that set"
            )


def _swap_in(staging: Path, out_dir: Path, stats: ShardStats, old: list[Path]) -> None:
    """Move the complete new set from ``staging`` into ``out_dir`` (each file renamed over its old
    namesake), delete the old shards it does not replace, then the staging folder."""
    for path in stats.paths:
        os.replace(path, out_dir / path.name)
    stats.paths = [out_dir / path.name for path in stats.paths]
    kept = {path.name for path in stats.paths}
    for path in old:
        if path.name not in kept:
            path.unlink(missing_ok=True)
    staging.rmdir()


def _remove_dead_staging(out_dir: Path, prefix: str) -> None:
    """Delete the staging folders of ``prefix`` that killed runs on this host left in ``out_dir``."""
    pattern = re.compile(rf"\.{re.escape(prefix)}\.staging-{re.escape(host_tag())}-(\d+)")
    for path in out_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir():
            from ir_lightning.checkpoint_io import pid_alive  # imports torch: only once a staging folder is found

            if not pid_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)


def shard_path(out_dir: Path, prefix: str, index: int) -> Path:
    """Final path of shard number ``index``: ``out_dir/prefix-000007.tar``."""
    return Path(out_dir) / f"{prefix}-{index:0{SHARD_DIGITS}d}.tar"


def shard_pattern(out_dir: Path, prefix: str, shards: int) -> str:
    """Brace pattern naming shards ``0 .. shards-1`` (the one file name when there is one shard)."""
    if shards == 0:
        return ""
    if shards == 1:
        return str(shard_path(out_dir, prefix, 0))
    first, last = f"{0:0{SHARD_DIGITS}d}", f"{shards - 1:0{SHARD_DIGITS}d}"
    return str(Path(out_dir) / f"{prefix}-{{{first}..{last}}}.tar")


class _ShardWriter:
    """One shard in progress: a tar under a hidden temporary name, renamed into place by ``commit``."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temporary = final.with_name(f".{final.name}.{os.getpid()}.part")
        self.count = 0
        self.content = 0  # bytes of headers and padded data written so far
        self._file = open(self.temporary, "xb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=TAR_FORMAT, encoding=TAR_ENCODING)

    def fits(self, size: int, maxcount: int, maxsize: int) -> bool:
        """Whether a sample of ``size`` member bytes can join without passing either limit."""
        return self.count < maxcount and _archive_bytes(self.content + size) <= maxsize

    def add(self, members: list[tuple[tarfile.TarInfo, bytes]], size: int) -> None:
        for info, data in members:
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.content += size

    def commit(self) -> int:
        """Finish the tar, flush it to disk, rename it to its final name and return its size."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temporary, self.final)
        return self.final.stat().st_size

    def abort(self) -> None:
        """Drop the unfinished shard: close the file and delete the temporary name."""
        self._file.close()
        self.temporary.unlink(missing_ok=True)


def _commit(writer: _ShardWriter, stats: ShardStats) -> None:
    stats.bytes += writer.commit()
    stats.paths.append(writer.final)
    stats.shards += 1


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _member_bytes(info: tarfile.TarInfo) -> int:
    """Bytes one member takes in the tar: its header blocks and its data padded to whole blocks."""
    header = info.tobuf(TAR_FORMAT, TAR_ENCODING, "surrogateescape")
    return len(header) + _round_up(info.size, tarfile.BLOCKSIZE)


def _archive_bytes(content: int) -> int:
    """File size of a finished tar: members, two zero blocks ending the archive, padding to a record."""
    return _round_up(content + 2 * tarfile.BLOCKSIZE, tarfile.RECORDSIZE)  # tarfile.TarFile.close


def _tar_members(sample: ShardSample, seen: set[str]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Check the key and member names, then build one tar header per file: ``key.name``."""
    check_key(sample.key, f"sample from {', '.join(sample.sources.values())}" if sample.sources else "sample")
    if sample.key in seen:
        raise ShardError(f"key {sample.key!r} occurs twice; keys must be unique")
    seen.add(sample.key)
    members = []
    for name, data in sample.files.items():
        if not name or name.startswith(".") or "/" in name:
            raise ShardError(f"sample {sample.key!r}: bad member name {name!r} (want e.g. 'gt.png')")
        info = tarfile.TarInfo(f"{sample.key}.{name}")
        info.size, info.mtime, info.mode = len(data), MEMBER_MTIME, MEMBER_MODE
        members.append((info, data))
    return members


def check_key(key: str, where: str = "sample") -> None:
    """Raise :class:`ShardError` naming ``where`` the key came from unless ``key`` is a plain file name
    (:func:`ir_lightning.io.checked_key`: no ``/``, ``\\``, NUL, ``..``) without dots."""
    try:
        checked_key(key, where)
    except UnsafeKeyError as error:
        raise ShardError(str(error)) from None
    if "." in key:
        raise ShardError(f"{where}: bad sample key {key!r}: keys must be non-empty and contain no '.'")


def _all_images_decode(sample: ShardSample) -> bool:
    """Fully decode each image member; warn, naming the file, and return False at the first failure."""
    for name, data in sample.files.items():
        if "." + name.rsplit(".", 1)[-1].lower() not in IMAGE_EXTS:
            continue
        error = _decode_error(data)
        if error is not None:
            source = sample.sources.get(name, f"{sample.key}.{name}")
            warnings.warn(
                f"skipping sample {sample.key!r}: cannot decode {source}: {error}",
                UnreadableImageWarning,
                stacklevel=3,
            )
            return False
    return True


def _decode_error(data: bytes) -> Exception | None:
    """The exception PIL raises while decoding ``data`` completely, or None if it decodes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        return ValueError("not an image format PIL recognises")
    except Exception as error:  # PIL reports corrupt data as OSError, SyntaxError, ValueError, EOFError, ...
        return error
    return None


def _check_limits(prefix: str, maxcount: int, maxsize: int) -> None:
    if not re.fullmatch(r"[\w-][\w.-]*", prefix):
        raise ShardError(f"bad shard prefix {prefix!r}: use letters, digits, '_', '-' and '.'")
    if maxcount < 1 or maxsize < 1:
        raise ShardError(f"maxcount and maxsize must be positive, got {maxcount} and {maxsize}")


# ----------------------------------------------------------------------------------------------
# Reading folders


def collect_pairs(
    gt_dir: Path,
    lq_dir: Path | None = None,
    lq_suffix: str = "",
    exts: Sequence[str] = IMAGE_EXTS,
    recursive: bool = False,
) -> list[ImagePair]:
    """Match the images of ``gt_dir`` with those of ``lq_dir`` by relative path without extension.

    ``lq_suffix`` is stripped from LQ stems first (DIV2K names its x4 inputs ``0001x4.png``).
    Keys are the relative paths without extension, with ``/``, ``\\`` and ``.`` turned into ``_``.
    Hidden files and folders (names starting with a dot) are ignored. Raises :class:`ShardError`
    for a missing folder, no images, unmatched files on either side, or two files with one key.
    Returns the pairs sorted by key.
    """
    exts = tuple(ext.lower() for ext in exts)
    gt = _index_images(Path(gt_dir), exts, recursive, suffix="")
    if lq_dir is None:
        pairs = [ImagePair(sanitise_key(stem), path) for stem, path in gt.items()]
    else:
        lq = _index_images(Path(lq_dir), exts, recursive, suffix=lq_suffix)
        _check_matched(gt, lq, gt_dir, lq_dir, lq_suffix)
        pairs = [ImagePair(sanitise_key(stem), path, lq[stem]) for stem, path in gt.items()]
    _check_unique_keys(pairs)
    return sorted(pairs, key=lambda pair: pair.key)


def sanitise_key(stem: str) -> str:
    """Sample key of a relative path without extension: ``/``, ``\\``, ``.`` and NUL become ``_``, so the
    key is a plain file name (:func:`check_key`)."""
    return re.sub(r"[/\\.\0]", "_", stem)


def _index_images(folder: Path, exts: tuple[str, ...], recursive: bool, suffix: str) -> dict[str, Path]:
    """Map each image's relative path without extension (and without ``suffix``) to its path.

    A file whose stem lacks ``suffix`` is kept under its full stem prefixed with ``\\0`` so it
    can never match and shows up as unmatched.
    """
    if not folder.is_dir():
        raise ShardError(f"not a folder: {folder}")
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        relative = path.relative_to(folder)
        if not path.is_file() or path.suffix.lower() not in exts or _is_hidden(relative):
            continue
        stem = relative.with_suffix("").as_posix()
        stem = stem[: len(stem) - len(suffix)] if stem.endswith(suffix) else "\0" + stem
        index.setdefault(stem, []).append(path)
    if not index:
        raise ShardError(f"no images ({', '.join(exts)}) in {folder}" + ("" if recursive else " (try --recursive)"))
    clashes = [str(path) for paths in index.values() if len(paths) > 1 for path in paths]
    if clashes:
        raise ShardError(f"{len(clashes)} files share a name up to the extension: {_listing(clashes)}")
    return {stem: paths[0] for stem, paths in index.items()}


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _check_matched(gt: dict[str, Path], lq: dict[str, Path], gt_dir: Path, lq_dir: Path, suffix: str) -> None:
    """Raise :class:`ShardError` listing GT files without LQ partner and LQ files without GT partner."""
    lonely_gt = [gt[stem].relative_to(gt_dir).as_posix() for stem in gt.keys() - lq.keys()]
    lonely_lq = [lq[stem].relative_to(lq_dir).as_posix() for stem in lq.keys() - gt.keys()]
    problems = []
    if lonely_gt:
        problems.append(f"{len(lonely_gt)} GT images in {gt_dir} have no LQ partner: {_listing(sorted(lonely_gt))}")
    if lonely_lq:
        problems.append(f"{len(lonely_lq)} LQ images in {lq_dir} have no GT partner: {_listing(sorted(lonely_lq))}")
    if problems:
        raise ShardError("; ".join(problems) + f" (LQ stems are matched after removing lq_suffix={suffix!r})")


def _check_unique_keys(pairs: list[ImagePair]) -> None:
    by_key: dict[str, list[str]] = {}
    for pair in pairs:
        by_key.setdefault(pair.key, []).append(str(pair.gt))
    clashes = [f"{' and '.join(paths)} -> {key}" for key, paths in sorted(by_key.items()) if len(paths) > 1]
    if clashes:
        raise ShardError(f"{len(clashes)} keys are given by more than one file: {_listing(clashes)}")


def _listing(items: Sequence[str]) -> str:
    """The first :data:`MAX_LISTED` items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown if len(items) <= MAX_LISTED else f"{shown}, ... ({len(items) - MAX_LISTED} more)"


def pair_samples(pairs: Iterable[ImagePair]) -> Iterator[ShardSample]:
    """Read each pair's files as they are on disk (no re-encoding): ``gt.<ext>`` and ``lq.<ext>``,
    the extension as on disk in lower case."""
    for pair in pairs:
        files, sources = {}, {}
        for role, path in (("gt", pair.gt), ("lq", pair.lq)):
            if path is not None:
                name = role + path.suffix.lower()
                files[name], sources[name] = path.read_bytes(), str(path)
        yield ShardSample(pair.key, files, sources)


# ----------------------------------------------------------------------------------------------
# Train / validation split


def split_keys(
    keys: Iterable[str],
    val_count: int | None = None,
    val_fraction: float | None = None,
    val_keys: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Split ``keys`` into sorted (train, val) lists; at most one of the three options may be given.

    ``val_count`` / ``val_fraction`` take the first keys of the sorted keys shuffled with
    ``random.Random(seed)``, so the split depends only on the set of keys and the seed. A fraction
    is rounded to the nearest count (at least one). ``val_keys`` names the validation keys.
    """
    ordered = sorted(set(keys))
    if sum(option is not None for option in (val_count, val_fraction, val_keys)) > 1:
        raise ShardError("give at most one of val_count, val_fraction and val_keys")
    if val_keys is not None:
        val = _named_keys(ordered, val_keys)
    elif val_count is None and val_fraction is None:
        return ordered, []
    else:
        count = val_count if val_count is not None else _fraction_count(val_fraction, len(ordered))
        if not 0 <= count < len(ordered):
            raise ShardError(f"validation count {count} must be in [0, {len(ordered)}) for {len(ordered)} samples")
        shuffled = list(ordered)
        random.Random(seed).shuffle(shuffled)
        val = set(shuffled[:count])
    return [key for key in ordered if key not in val], [key for key in ordered if key in val]


def _fraction_count(fraction: float, total: int) -> int:
    if not 0.0 < fraction < 1.0:
        raise ShardError(f"val_fraction must be in (0, 1), got {fraction}")
    return max(1, round(fraction * total))


def _named_keys(ordered: list[str], val_keys: Sequence[str]) -> set[str]:
    unknown = sorted(set(val_keys) - set(ordered))
    if unknown:
        raise ShardError(f"{len(unknown)} validation keys are not in the data: {_listing(unknown)}")
    if len(set(val_keys)) >= len(ordered):
        raise ShardError("val_keys name every sample; nothing is left to train on")
    return set(val_keys)


# ----------------------------------------------------------------------------------------------
# Command line


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
    parser.add_argument("--lq", type=Path, metavar="DIR",
                        help="folder of degraded images, matched to --gt by file name without extension")
    parser.add_argument("--lq-suffix", default="", metavar="TEXT",
                        help="remove this from LQ names before matching, e.g. x4 for DIV2K's 0001x4.png")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the shards (created)")
    parser.add_argument("--maxcount", type=int, default=1000, metavar="N",
                        help="at most N samples a shard (default 1000)")
    parser.add_argument("--maxsize", type=parse_size, default=1 << 30, metavar="SIZE",
                        help="at most SIZE bytes a shard file: 500MB, 2GB, 1GiB or plain bytes (default 1GiB)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-count", type=int, metavar="N", help="hold out N random samples as val-*.tar")
    split.add_argument("--val-fraction", type=float, metavar="F", help="hold out a fraction F (0 < F < 1) as val-*.tar")
    split.add_argument("--val-keys", metavar="A,B,...",
                       help="hold out these sample keys (comma-separated) as val-*.tar")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random validation split (default 0)")
    parser.add_argument("--prefix", metavar="NAME",
                        help=f"shard name without split: NAME-000000.tar (default {DEFAULT_PREFIX}); "
                        "with a split: NAME-train-* and NAME-val-*")
    parser.add_argument("--recursive", action="store_true",
                        help="also search sub-folders; keys come from relative paths, e.g. a/0001 -> a_0001")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the shards of the same prefix already in --out (removed once the new set is "
                        "complete; without it such a folder is refused)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from ir_lightning.shard_presets import PRESETS  # builds on this module, so imported late

    parser.add_argument("--preset", metavar="NAME",
                        help=f"a known data set read from --root as downloaded, instead of --gt/--lq: {', '.join(PRESETS)}")
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
        from ir_lightning.shard_presets import run_preset

        return run_preset(args)
    if args.gt is None:
        raise ShardError("give --gt DIR (a folder of clean images) or --preset NAME --root DIR")
    pairs = collect_pairs(args.gt, args.lq, args.lq_suffix, recursive=args.recursive)
    val_keys = [key.strip() for key in args.val_keys.split(",") if key.strip()] if args.val_keys else None
    train, val = split_keys([pair.key for pair in pairs], args.val_count, args.val_fraction, val_keys, args.seed)
    by_key = {pair.key: pair for pair in pairs}
    splits = _named_splits(args.prefix, train, val)
    if not args.overwrite:
        refuse_existing_shards(args.out, [split for split, _ in splits])
    results = {}
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        for split, keys in splits:
            chosen = [by_key[key] for key in keys]
            results[split] = write_shards(
                pair_samples(chosen), args.out, split, args.maxcount, args.maxsize,
                progress=not args.no_progress, total=len(chosen),
            )
    print(_summary(results, val_present=bool(val)))
    return 0


def _named_splits(prefix: str | None, train: list[str], val: list[str]) -> list[tuple[str, list[str]]]:
    """Shard prefixes with their keys: one split named ``prefix``, or ``[prefix-]train`` and ``[prefix-]val``."""
    if not val:
        return [(prefix or DEFAULT_PREFIX, train)]
    lead = f"{prefix}-" if prefix else ""
    return [(f"{lead}train", train), (f"{lead}val", val)]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Print a warning as one line that does not tear the progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _summary(results: dict[str, ShardStats], val_present: bool) -> str:
    lines = [
        f"{split}: {stats.samples} samples in {stats.shards} shards, {human_bytes(stats.bytes)}, "
        f"{stats.skipped} skipped"
        for split, stats in results.items()
    ]
    lines.append("paste into a recipe:")
    names = ("train_shards", "val_shards") if val_present else ("train_shards",)
    lines += [f"  data.init_args.{name}: {stats.pattern}" for name, stats in zip(names, results.values())]
    return "\n".join(lines)


if __name__ == "__main__":
    from ir_lightning.shards import main as package_main  # one ShardError class here and in shard_presets

    raise SystemExit(package_main())
