"""One `fit` per run directory at a time.

Two `fit`s into one run directory both write `last.ckpt`, `step*.ckpt` and the W&B files, and the
second one's checkpoints silently replace the first one's. `RunLock` takes a lock on each folder a
run writes checkpoints into (the run directory and every `ModelCheckpoint` folder) when fit starts,
and stops a second run with a message naming the holder (host, pid, since when, command).

The lock is a file, `.ir-lightning.lock`, held with `flock`: the kernel (or the NFS lock manager)
releases it when the holder dies, `kill -9` included, so the lock of a crashed or preempted run
is taken over by the next one without anyone removing a file. Where the filesystem has no `flock`
(some parallel filesystems mounted without it), the file itself is the lock: created exclusively,
and taken over when it names a process of this host that no longer runs. The holder's host and pid
are written into the file either way, for the message.

Under DDP, rank 0 takes the lock and every rank learns the outcome (a broadcast), so all ranks stop
together.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ir_lightning.errors import ConfigurationError
from ir_lightning.io.atomic import pid_alive

LOCK_NAME = ".ir-lightning.lock"
"""The lock file in each locked folder."""

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
"""flock errors that mean "this filesystem does not lock", not "someone holds it"."""

try:
    import fcntl
except ImportError:  # Windows: the lock file alone
    fcntl = None  # type: ignore[assignment]


class RunDirectoryLocked(ConfigurationError):
    """Another live process holds the run directory."""


def _holder_text() -> str:
    return json.dumps(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:500],
        }
    )


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']} ({holder['command']})"
    except (ValueError, KeyError, TypeError):
        return "a process that left no name in the lock file"


class FolderLock:
    """An exclusive lock on one folder (see the module docstring); `acquire` raises `RunDirectoryLocked`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._owns_file = False

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is not None and self._acquire_flock():
            return
        self._acquire_file()

    def _acquire_flock(self) -> bool:
        """True when held by flock; False when the filesystem has no flock."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            held_by = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._locked(held_by) from None
            if error.errno in _NO_FLOCK:
                if not held_by:  # the empty file this attempt created: not a holder's
                    self.path.unlink(missing_ok=True)
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text().encode(), 0)
        self._fd = fd
        return True

    def _acquire_file(self) -> None:
        for _ in range(2):  # a second try after removing a dead holder's file
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                text = self.path.read_text(encoding="utf-8", errors="replace")
                if not self._holder_is_dead(text):
                    raise self._locked(text) from None
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, _holder_text().encode())
            os.close(fd)
            self._owns_file = True
            return
        raise self._locked(self.path.read_text(encoding="utf-8", errors="replace"))

    @staticmethod
    def _holder_is_dead(text: str) -> bool:
        """The file names a process of this host that is gone (a process of another host may still run)."""
        try:
            holder = json.loads(text)
            return holder["host"] == socket.gethostname() and not pid_alive(int(holder["pid"]))
        except (ValueError, KeyError, TypeError):
            return False

    def _locked(self, holder: str) -> RunDirectoryLocked:
        return RunDirectoryLocked(
            f"{self.folder} is in use by another run: {_describe(holder)}; wait for it to end, or give this run its "
            f"own --run_dir (lock file: {self.path})"
        )

    def release(self) -> None:
        if self._fd is not None:
            # unlock before closing: forked loader workers share the open file, and closing ours alone
            # would leave the lock held until they exit; the file stays for the next run
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._owns_file:
            self.path.unlink(missing_ok=True)
            self._owns_file = False


def lock_before_fit(trainer: pl.Trainer) -> bool:
    """Whether the lock may be taken before `fit` on this process: it is rank 0 and no other rank runs yet
    (one process, or Lightning will launch the others). Ranks started outside (SLURM tasks, torchrun) would
    wait in the process group for a rank 0 that stopped early: they learn of a refusal in `setup`."""
    if trainer.global_rank != 0:
        return False
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return trainer.world_size == 1 or environment is None or not environment.creates_processes_externally


def run_folders(trainer: pl.Trainer) -> list[Path]:
    """The folders a fit writes checkpoints into: the run directory, then every ModelCheckpoint's folder
    (each once; the run directory first, so that a refusal names it)."""
    folders = [Path(trainer.default_root_dir)]
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folders.append(Path(callback.dirpath))
    unique: dict[Path, Path] = {}
    for folder in folders:
        unique.setdefault(folder.resolve(), folder)
    return list(unique.values())


class RunLock(Callback):
    """Locks the run's folders for the whole of `fit` (see the module docstring). `RunDirectoryLocked` (a
    `ConfigurationError`) stops a second run before it writes.

    The IR-Lightning CLI adds it to every fit and, where no other rank has started yet (one process, or
    Lightning launching the others itself), calls `acquire` before `fit` starts, so that a refused run
    has not yet created its logger's run (Lightning creates it before any callback's `setup`). `setup`
    (and `on_fit_start`, for a checkpoint folder that ModelCheckpoint resolves in its own setup) lock
    what is left on rank 0 and tell every DDP rank whether rank 0 holds the lock, so that ranks started
    by SLURM or torchrun stop together.
    """

    def __init__(self) -> None:
        self.locks: list[FolderLock] = []

    def acquire(self, trainer: pl.Trainer) -> None:
        """Lock every folder of the run not locked yet; on refusal, release what this call took and raise."""
        held = {lock.folder.resolve() for lock in self.locks}
        taken: list[FolderLock] = []
        try:
            for folder in run_folders(trainer):
                if folder.resolve() not in held:
                    lock = FolderLock(folder)
                    lock.acquire()
                    taken.append(lock)
        except RunDirectoryLocked:
            for lock in reversed(taken):
                lock.release()
            raise
        self.locks += taken

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._acquire_on_rank_zero(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._acquire_on_rank_zero(trainer)  # checkpoint folders that ModelCheckpoint resolved in its own setup

    def _acquire_on_rank_zero(self, trainer: pl.Trainer) -> None:
        refusal = None
        if trainer.is_global_zero:
            try:
                self.acquire(trainer)
            except RunDirectoryLocked as error:
                self._release()
                refusal = str(error)
        refusal = trainer.strategy.broadcast(refusal)
        if refusal is not None:
            raise RunDirectoryLocked(refusal)

    def __getstate__(self) -> dict[str, Any]:
        """A copy (a spawned process's) holds no lock: the descriptors are this process's."""
        return {**self.__dict__, "locks": []}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []

    def state_dict(self) -> dict[str, Any]:
        return {}
