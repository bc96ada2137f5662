"""Atomic file writes: a reader, a crash or a kill never sees a half-written file; the removal of the
temporary files killed writers left; the check that a key read from data is a plain file name; and where an
output file derived from an input's path lands (inside its output folder, never onto an input). No torch:
`ir-lightning shards` and the commands' --help read it."""

from __future__ import annotations

import os
import re
import secrets
import socket
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ir_lightning.errors import DataError

TEMP_NAME = re.compile(r"^\..+\.partial-(?P<host>[A-Za-z0-9_]*)-(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp$")
"""The name `temporary_path` gives, with the writer's host and pid."""


def host_tag() -> str:
    """This host's name as it appears in temporary file names (letters, digits and `_` only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32]


def temporary_path(target: Path) -> Path:
    """`.<name>.partial-<host>-<pid>-<random>.tmp` beside `target`: who wrote it is in the name, so a
    cleaner can tell a killed writer's leftover from a file being written
    (`clean_stale_temp_files`)."""
    return target.parent / f".{target.name}.partial-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file beside it (`temporary_path`), flushed to
    disk and renamed onto `path` when the block ends without an error, removed when it raises. The file
    gets the permissions a plain `open` would give (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it into place."""
    with atomic_writer(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def clean_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporary files that saves killed mid-write left in `directory`; returns the removed paths.

    Only files written from this host whose process is gone are removed: on shared storage a file
    from another host may belong to a save in progress there, and a live process's file is
    being written. A missing directory has nothing to clean.
    """
    directory = Path(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    host = host_tag()
    removed = []
    for name in names:
        match = TEMP_NAME.match(name)
        if match is None or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        stale = directory / name
        try:
            stale.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        except OSError as error:
            warnings.warn(f"could not remove the stale temporary checkpoint file {stale}: {error}", stacklevel=2)
            continue
        removed.append(stale)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (True where that cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) terminates the process on Windows: never clean there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists but belongs to another user
        return True
    return True


class UnsafeKeyError(DataError):
    """A sample key or file name from data that would not stay a plain name inside its output folder."""


def checked_key(key: object, where: str) -> str:
    """`key` (a sample key or file stem read from data: a shard member, a file name) if it names one file
    inside a folder, else `UnsafeKeyError` naming `where` (e.g. "shard data/val-000000.tar").

    Refused: anything but a non-empty string, `.` and `..`, and keys holding a path separator (`/`, `\\`),
    which covers a leading `/`, or a NUL. A path built as `folder / f"{key}.png"` then stays in `folder`.
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"{where}: sample key {key!r} is not a non-empty string")
    for bad, what in (("\0", "a NUL character"), ("/", "a '/'"), ("\\", "a '\\'")):
        if bad in key:
            raise UnsafeKeyError(f"{where}: sample key {key!r} holds {what}; a key must be a plain file name")
    if key in (".", ".."):
        raise UnsafeKeyError(f"{where}: sample key {key!r} names a folder, not a file")
    return key


def output_image_path(folder: Path, relative: Path, where: str) -> Path:
    """`folder/<relative with suffix .png>` for an image found at `relative` below an input folder.

    Every part of `relative` must be a plain name (`checked_key`, naming `where`), and the
    file must land inside `folder` once the symlinks on its way are resolved (a sub-folder of `folder` that
    is a link to elsewhere is refused); raises ValueError otherwise.
    """
    for part in relative.parts:
        checked_key(part, where)
    target = folder / relative.with_suffix(".png")
    if not resolved(target).is_relative_to(folder.resolve()):
        raise ValueError(
            f"{where}: its output {target} would be written outside {folder} (a symlinked folder on the way)"
        )
    return target


def resolved(path: Path) -> Path:
    """Where writing `path` creates its file: its folder with symlinks resolved, plus its name (a link at
    `path` itself is replaced by the atomic rename, not written through)."""
    return path.parent.resolve() / path.name


def lands_in(target: Path, inputs: Iterable[Path]) -> Path | None:
    """The first of `inputs` (files or folders) that writing `target` would replace or add a file to,
    symlinks resolved on both sides; None when it touches none of them."""
    real = resolved(target)
    return next((source for source in inputs if real.is_relative_to(source.resolve())), None)
