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

Loading is Lightning's with `weights_only=True` forced (`safe_load`): a checkpoint whose pickle would run
code or build arbitrary objects is refused before anything in it runs, and so is every other file that
is no checkpoint of this suite (text, a shard, a truncated file, random bytes) and every checkpoint
whose hyperparameters name a class outside the suite's allow-list (`check_checkpoint`,
`ir_lightning.class_paths`): one `UnsafeCheckpointError` naming the file and the reason, never a
traceback. Every checkpoint of this suite loads that way (`read_checkpoint`).

A temporary file is named `.<target>.partial-<host>-<pid>-<random>.tmp`. A process killed with
SIGKILL cannot remove its own; `clean_stale_temp_files` removes those whose process is gone and
every save runs it on its directory first, so a crash-and-requeue loop does not fill the disk.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.core.saving import CHECKPOINT_PAST_HPARAMS_KEYS
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ir_lightning.errors import ConfigurationError
from ir_lightning.io import host_tag as _host_tag
from ir_lightning.io import temporary_path

_TEMP_NAME = re.compile(r"^\..+\.partial-(?P<host>[A-Za-z0-9_]*)-(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp$")
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


class UnsafeCheckpointError(ConfigurationError):
    """A file that is not a usable checkpoint of this suite (a `ConfigurationError`: the command line prints it
    in one line): refused by `torch.load(weights_only=True)`,
    not a checkpoint at all (text, a shard, truncated, random bytes), of another layout, or naming
    classes outside the allow-list. The message is one line naming the file and the reason."""


SETTINGS_KEYS: tuple[str, ...] = ("hyper_parameters", "datamodule_hyper_parameters", *CHECKPOINT_PAST_HPARAMS_KEYS)
"""Where a checkpoint keeps settings that Lightning hands to a constructor (the older keys are still merged
into the hyperparameters when a module loads)."""

RESUME_KEYS: tuple[str, ...] = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "global_step", "epoch")
"""What a training checkpoint holds beyond the weights, and `fit --ckpt_path` needs to resume."""

_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error:",
                 "In PyTorch 2.6", "You can use", "Re-running", "Do it only if", "weights_only=False")
"""Where torch's general advice starts in a load error (never repeated: retrying with weights_only=False
would run the file's code)."""

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (257, b"ustar", "a tar archive: a data shard, or torch's legacy .tar format, which cannot load safely"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"\x1f\x8b", "a gzip-compressed file"),
    (0, b"{", "a JSON or other text file"),
)
"""(offset, bytes, what) of files that are recognisably something else than a checkpoint."""


def load_failure_reason(error: Exception) -> str:
    """The informative line of a failed `torch.load(weights_only=True)`: the unpickler's reason (an
    unsupported global, an opcode of a file that is no pickle) without torch's general advice around it
    (never its suggestion to retry with weights_only=False: that would run the file's code)."""
    for line in (line.strip() for line in str(error).splitlines()):
        cut = min([line.find(marker) for marker in _TORCH_ADVICE if marker in line] + [len(line)])
        reason = line[:cut].strip()
        if reason:
            return f"{type(error).__name__}: {reason}"
    return type(error).__name__


def what_else(path: str | os.PathLike) -> str | None:
    """What a file is when it is recognisably no torch checkpoint (empty, a tar archive, an image, text,
    neither a zip archive nor a pickle); None when it may be one (a zip archive or a pickle)."""
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "the file is empty"
    for offset, magic, what in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return f"it is {what}"
    if head.startswith(b"PK\x03\x04") or head[0] == 0x80:  # a zip archive, or a pickle of protocol 2 or later
        return None
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return "it is neither a zip archive nor a pickle"


def _refusal(path: str | os.PathLike, reason: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{path}: refused, not a checkpoint of this suite ({reason}); nothing in it was run")


def safe_load(load: Any, path: str | os.PathLike) -> Any:
    """`load()` (a `torch.load(..., weights_only=True)` of `path`), with every way a file can fail to be a
    checkpoint (refused pickle, no pickle at all, truncated zip, legacy tar, random bytes) turned into
    `UnsafeCheckpointError` naming the file and the reason. A missing file stays `FileNotFoundError`;
    running out of memory, or a device error, stays what it is."""
    try:
        return load()
    except FileNotFoundError:
        raise
    except OSError as error:  # a folder, no permission, an I/O error: the file cannot be read
        raise UnsafeCheckpointError(f"{path}: cannot be read ({error.strerror or error})") from error
    except MemoryError:
        raise
    except RuntimeError as error:
        if any(word in str(error) for word in ("CUDA", "out of memory", "device")) and "PytorchStreamReader" not in str(error):
            raise  # a device or memory problem: not the file's fault
        raise _refusal(path, load_failure_reason(error)) from error
    except Exception as error:  # noqa: BLE001 - UnpicklingError, EOFError, KeyError, IndexError, struct.error, ...
        raise _refusal(path, load_failure_reason(error)) from error


def load_checkpoint_safely(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with the errors of `safe_load`, after a look at the file's first
    bytes refuses what is recognisably something else (`what_else`). `mmap`: tensors are mapped, not read,
    so looking at a large checkpoint's metadata is cheap (zip archives only; others are read)."""
    kind = safe_load(lambda: what_else(path), path)
    if kind is not None:
        raise _refusal(path, kind)
    mmap = mmap and _is_zip(path)
    return safe_load(lambda: torch.load(path, map_location=map_location, weights_only=True, mmap=mmap), path)


def check_settings(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise `UnsafeCheckpointError` naming the file unless its settings (`hyper_parameters`,
    `datamodule_hyper_parameters` and Lightning's older keys) are dicts of named settings in which every class path is allowed
    (`ir_lightning.class_paths`): nothing they name is imported either way."""
    from ir_lightning.class_paths import UntrustedClassPathError, check_class_paths

    for key in SETTINGS_KEYS:
        settings = checkpoint.get(key)
        if settings is None:
            continue
        if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
            raise _refusal(path, f"its {key} are not a dict of named settings")
        try:
            check_class_paths(settings, str(path), where=key)
        except UntrustedClassPathError as error:
            raise UnsafeCheckpointError(str(error)) from error


def check_checkpoint(checkpoint: Any, path: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """`checkpoint` (a loaded file) if it is laid out as a checkpoint of this suite (a dict with a `state_dict`
    of named tensors) and its settings pass `check_settings`; else `UnsafeCheckpointError` naming the file
    and what is wrong. `resume`: it must also hold the training state `fit --ckpt_path` resumes."""
    if not isinstance(checkpoint, dict):
        raise _refusal(path, f"it holds a {type(checkpoint).__name__}, not a dict of weights and settings")
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise _refusal(path, "no state_dict of named tensors")
    check_settings(checkpoint, path)
    if resume:
        missing = [key for key in RESUME_KEYS if key not in checkpoint]
        if missing:
            raise UnsafeCheckpointError(
                f"{path} holds weights only (no {', '.join(missing)}: an exported or imported checkpoint), so a run "
                f"cannot resume from it; to start a new run from its weights, drop --ckpt_path and give "
                f"--init_weights {path} (fit)"
            )
        if not isinstance(checkpoint["global_step"], int) or not isinstance(checkpoint["optimizer_states"], list):
            raise _refusal(path, "its training state (global_step, optimizer_states) is malformed")
    return checkpoint


def _is_zip(path: str | os.PathLike) -> bool:
    """Whether `path` reads as a zip archive (`zipfile.is_zipfile` raises on some broken central directories)."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def read_checkpoint(path: str | os.PathLike, resume: bool = False, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file of this suite, loaded without running or importing anything it names, and checked
    (`check_checkpoint`); every failure is one `UnsafeCheckpointError` naming the file."""
    return check_checkpoint(load_checkpoint_safely(path, mmap=mmap), path, resume=resume)


def _on_cpu(storage: Any, location: str) -> Any:
    """`map_location` that keeps every tensor on the CPU (Lightning's default for loading)."""
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic and durable and whose loads never run code from
    the file (`weights_only=True`, whatever the caller asks); removing is Lightning's.

    Install it with `Trainer(plugins=[AtomicCheckpointIO()])`.
    """

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        location = map_location if map_location is not None else _on_cpu  # Lightning's default: tensors stay on the CPU
        checkpoint = safe_load(lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, location, weights_only=True), path)
        if not isinstance(checkpoint, dict):
            raise _refusal(path, f"it holds a {type(checkpoint).__name__}, not a dict of weights and settings")
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
            warnings.warn(f"could not look for stale temporary checkpoint files in {directory}: {error}")
        _save_atomically(checkpoint, target)


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
    host = _host_tag()
    removed = []
    for name in names:
        match = _TEMP_NAME.match(name)
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
            warnings.warn(f"could not remove the stale temporary checkpoint file {stale}: {error}")
            continue
        removed.append(stale)
    return removed


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
        warnings.warn(f"could not remove the temporary checkpoint file {path}: {error}")


def pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) terminates the process on Windows: never clean there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists but belongs to another user
        return True
    return True


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
