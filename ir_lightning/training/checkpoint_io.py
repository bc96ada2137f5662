"""Checkpoint writes that never leave a truncated checkpoint behind, and that say why a save failed.

Lightning's `TorchCheckpointIO` serialises a checkpoint in memory and hands it to fsspec, which
writes a temporary file in the *system* temp directory and then moves it onto the target. When
the checkpoints live on another filesystem than /tmp (shared storage on a cluster), that move is a
copy into the target path: a job killed during the copy leaves a truncated `last.ckpt`, and the
resumed job dies on it. Nothing is fsynced either, and a full /tmp fails a save that the
checkpoint directory had room for.

`AtomicCheckpointIO` writes local checkpoints with `torch.save` straight into a temporary file in
the checkpoint's own directory, fsyncs it, renames it onto the target (`os.replace`, atomic
within a directory) and fsyncs the directory. At every moment the target is either the previous
checkpoint or the new one, whole. A failed write (full disk, quota, I/O error) removes the
temporary file, keeps the previous checkpoint, and raises `CheckpointWriteError`, which says how
much room was left. Remote URLs (s3://, gs://, ...) keep Lightning's implementation.

Loading is Lightning's with `weights_only=True` forced (`ir_lightning.io.weights.safe_load`): a checkpoint
whose pickle would run code or build arbitrary objects is refused before anything in it runs, and so is
every other file that is no checkpoint of this suite (text, a shard, a truncated file, random bytes) and
every checkpoint whose hyperparameters name a class outside the suite's allow-list (`check_settings`,
`ir_lightning.class_paths`): one `WeightsError` naming the file and the reason, never a traceback. Outside
the Trainer, every checkpoint of this suite loads through `ir_lightning.io.weights.read_checkpoint`.

A temporary file is named `.<target>.partial-<host>-<pid>-<random>.tmp`. A process killed with
SIGKILL cannot remove its own; `clean_stale_temp_files` removes those whose process is gone and
every save runs it on its directory first, so a crash-and-requeue loop does not fill the disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ir_lightning.io.atomic import clean_stale_temp_files, temporary_path
from ir_lightning.io.weights import check_settings, refusal, safe_load

# Errors from fsyncing a directory that mean "this filesystem does not do that", not "data lost".
_DIRECTORY_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; `errno` is the underlying error's, the message says what is on disk."""

    def __init__(self, message: str, os_errno: int | None, path: str) -> None:
        if os_errno is None:
            super().__init__(message)
        else:
            super().__init__(os_errno, message)  # str(): "[Errno 28] <message>", and `.errno` is set
        self.path = path


def _on_cpu(storage: Any, location: str) -> Any:
    """`map_location` that keeps every tensor on the CPU (Lightning's default for loading)."""
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic and durable and whose loads never run code from
    the file (`weights_only=True`, whatever the caller asks); removing is Lightning's.

    Install it with `Trainer(plugins=[AtomicCheckpointIO()])`.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        location = map_location if map_location is not None else _on_cpu  # Lightning's default: tensors stay on the CPU
        checkpoint = safe_load(
            lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, location, weights_only=True), path
        )
        if not isinstance(checkpoint, dict):
            raise refusal(path, f"it holds a {type(checkpoint).__name__}, not a dict of weights and settings")
        check_settings(checkpoint, path)
        return checkpoint

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        target = _local_path(path)
        if target is None or storage_options is not None:
            # Remote storage has no rename-in-place; Lightning's transaction is the right tool there (and
            # Lightning's method is the one that rejects `storage_options`, with its own message).
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        directory = target.parent
        directory.mkdir(parents=True, exist_ok=True)
        try:
            clean_stale_temp_files(directory)
        except OSError as error:  # the save itself may still succeed; cleaning is a courtesy
            warnings.warn(f"could not look for stale temporary checkpoint files in {directory}: {error}", stacklevel=2)
        _save_atomically(checkpoint, target)


def _save_atomically(checkpoint: dict[str, Any], target: Path) -> None:
    directory = target.parent
    previous_exists = target.exists()
    temp = temporary_path(target)
    sink: _RecordingWriter | None = None
    try:
        with _create_temp_file(temp) as file:
            sink = _RecordingWriter(file)
            torch.save(checkpoint, sink)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException as error:
        if sink is not None:  # the file was created: it is ours to remove
            _discard(temp)
        cause = _os_error_of(error, sink)
        if cause is None:
            raise
        raise _write_error(cause, checkpoint, target, previous_exists, replaced=False) from error
    try:
        _fsync_directory(directory)
    except OSError as error:
        raise _write_error(error, checkpoint, target, previous_exists, replaced=True) from error


class _RecordingWriter:
    """The file object `torch.save` writes to: passes writes on and keeps the first OSError of the file.

    torch's zip writer turns an OSError raised by `write` into a RuntimeError ("unexpected pos
    ..."), which drops the errno; kept here, a full disk is still reported as ENOSPC.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as error:
            self.error = self.error or error
            raise


def _create_temp_file(path: Path) -> BinaryIO:
    """Creates `path` (which must not exist) for writing, with the mode a normal file gets (0o666 minus umask).

    `tempfile.mkstemp` would give 0o600, and the checkpoint would keep that mode after the rename.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _discard(path)
        raise


def _os_error_of(error: BaseException, sink: _RecordingWriter | None) -> OSError | None:
    """The OSError behind a failed write, also when torch wrapped it in a RuntimeError; None for other failures."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, RuntimeError) and sink is not None:
        return sink.error
    return None


def _write_error(
    cause: OSError, checkpoint: Any, target: Path, previous_exists: bool, replaced: bool
) -> CheckpointWriteError:
    name = errno.errorcode.get(cause.errno, f"errno {cause.errno}") if cause.errno is not None else "no errno"
    reason = cause.strerror or str(cause)
    try:
        free = f"{_size(shutil.disk_usage(target.parent).free)} free"
    except OSError:
        free = "free space unknown"
    needed = _storage_bytes(checkpoint)
    size = f"the checkpoint holds about {_size(needed)} of tensors" if needed is not None else "its size is unknown"
    if replaced:
        state = (
            f"The new checkpoint is in place at {target}, but the rename may not survive a power loss "
            "(the directory could not be synced)."
        )
    elif previous_exists:
        state = f"The previous checkpoint at {target} is intact."
    else:
        state = f"No checkpoint existed at {target} before, and none was left behind."
    return CheckpointWriteError(
        f"could not {'sync the directory of' if replaced else 'write'} checkpoint {target}: {name} ({reason}); "
        f"{free} on the filesystem of {target.parent}; "
        f"{size}. {state}",
        cause.errno,
        str(target),
    )


def _local_path(path: str | os.PathLike) -> Path | None:
    """The absolute local path of `path` (a path or file:// URL); None for remote storage."""
    filesystem, local = fsspec.core.url_to_fs(str(path))
    return Path(local) if isinstance(filesystem, LocalFileSystem) else None


def _fsync_directory(directory: Path) -> None:
    """Makes the rename in `directory` durable, where the platform and filesystem can."""
    if os.name == "nt":  # Windows cannot open a directory as a file
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in _DIRECTORY_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:  # do not hide the error that made us discard it
        warnings.warn(f"could not remove the temporary checkpoint file {path}: {error}", stacklevel=2)


def _storage_bytes(obj: Any) -> int | None:
    """Bytes of the distinct tensor storages in a nested checkpoint (the bulk of its size); None if unknown."""
    seen: set[tuple[str, int]] = set()
    total = 0
    stack = [obj]
    try:
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                key = (str(item.device), storage.data_ptr())
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
    except (RuntimeError, NotImplementedError):  # sparse, meta or other storage-less tensors
        return None
    return total


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
