"""Atomic file writes: a reader, a crash or a kill never sees a half-written file."""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ir_lightning.errors import DataError


def host_tag() -> str:
    """This host's name as it appears in temporary file names (letters, digits and `_` only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32]


def temporary_path(target: Path) -> Path:
    """`.<name>.partial-<host>-<pid>-<random>.tmp` beside `target`: who wrote it is in the name, so a
    cleaner can tell a killed writer's leftover from a file being written
    (`checkpoint_io.clean_stale_temp_files`)."""
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
