"""Writing WebDataset tar shards: :func:`write_shards` streams :class:`~datamodules.format.ShardSample` objects
(a key plus file bytes) into ``prefix-000000.tar``, ``prefix-000001.tar``, ... (the format: ``datamodules.format``).

It knows nothing of folders (``datamodules.folders`` and ``datamodules.presets`` read them; the demo feeds it
PNG bytes made in memory). Every image member is fully decoded once with PIL as a check and a sample with
an unreadable image is skipped with a warning. Each shard is written under a hidden temporary name and
renamed into place when complete, so a crash never leaves a truncated file under a final ``.tar`` name.
Into a folder that already holds shards of the prefix, the new set is written into a hidden staging
folder beside them and swapped in only when complete (each file renamed over its old namesake, the old
shards beyond the new count deleted), so the prefix's pattern names exactly one data set and a crash
keeps the old set whole. :func:`refuse_existing_shards` lets a command refuse such a folder up front.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from datamodules.format import ShardError, ShardSample, check_key, is_image_member
from ir_lightning.io.atomic import host_tag, pid_alive

SHARD_DIGITS = 6
"""Width of the zero-padded shard index in file names: ``prefix-000000.tar``."""

MEMBER_MTIME = 0
"""Modification time stored for every member, so that the same input gives byte-identical shards."""

MEMBER_MODE = 0o644
"""Permission bits stored for every member (read for all, write for the owner)."""

TAR_FORMAT = tarfile.PAX_FORMAT
"""POSIX.1-2001 tar: plain ustar headers, plus pax records only for long or non-ASCII names."""

TAR_ENCODING = "utf-8"
"""Encoding of member names inside the tar headers."""


class UnreadableImageWarning(UserWarning):
    """An image could not be decoded; its sample was left out of the shards."""


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


def _all_images_decode(sample: ShardSample) -> bool:
    """Fully decode each image member; warn, naming the file, and return False at the first failure."""
    for name, data in sample.files.items():
        if not is_image_member(name):
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
