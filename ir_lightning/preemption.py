"""Surviving preemption and time limits on SLURM, and finding where to resume.

`SlurmRequeue` replaces Lightning's handler of SLURM's warning signal. Lightning's handler saves
the HPC checkpoint *inside* the signal handler: at whatever line the process was on, possibly
between the optimizer step and the bookkeeping of that step, and, under DDP, on each rank at a
different moment of a collective save. Here the handler only raises a flag; at the end of the
next training step the ranks agree (one tiny all-reduce), save `hpc_ckpt_<n>.ckpt` together and
stop; once fit has wound down (W&B run written), rank 0 asks SLURM to requeue the job. The requeued job resumes from the
newest checkpoint of its run (`--ckpt_path auto`, see `newest_checkpoint`), which holds the step
exactly: weights, EMA, optimizer, LR schedule and the data stream's position.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")
"""Lightning's name for preemption checkpoints in the run directory (`trainer.default_root_dir`)."""


def hpc_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The `hpc_ckpt_<n>.ckpt` files of `folder`, by increasing n."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / m.group(0)) for m in map(HPC_CHECKPOINT.match, os.listdir(folder)) if m]
    return [path for _, path in sorted(found)]


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` needs: `<array job>_<task>` for an array task, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(Callback):
    """On SLURM's warning signal (`#SBATCH --signal=USR1@90`): save an HPC checkpoint at the end
    of the current step on every rank, requeue the job, stop training.

    The IR-Lightning CLI adds this callback by itself when it runs under SLURM; add it by hand
    when building a Trainer in Python.

    Args:
        requeue: run `scontrol requeue` after saving (False: save and stop only, e.g. to leave the
            restart to a workflow manager).
    """

    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue
        self.signalled = False
        self.saved: Path | None = None
        self._signal: int | None = None
        self._previous: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment):
            # `setup` runs before `Trainer._run` registers signal handlers: with auto_requeue off,
            # Lightning registers none for this signal and ours stays in place
            environment.auto_requeue = False
        requeue_signal = getattr(environment, "requeue_signal", None) or signal.SIGUSR1
        self._signal = int(requeue_signal)
        self._previous = signal.signal(self._signal, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True  # nothing else here: the work is done between steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.signalled = False
        path = Path(trainer.default_root_dir) / f"hpc_ckpt_{self._next_number(trainer)}.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
        rank_zero_info(f"Preemption signal: saved {path} at step {trainer.global_step}; stopping to requeue")
        trainer.should_stop = True  # the requeue itself waits for `teardown`: SLURM kills the job at once

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._signal is not None:
            signal.signal(self._signal, self._previous if self._previous is not None else signal.SIG_DFL)
            self._signal = None
        if self.saved is not None and self.requeue and trainer.is_global_zero:
            # W&B writes its run (offline file or upload) when the run finishes: finish it
            # before SLURM kills the job, or the part of the run before preemption is lost
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger) and logger._experiment is not None:
                    logger.experiment.finish()
            self._requeue()
        self.saved = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # a failure after the HPC checkpoint was written (e.g. in the end-of-fit hooks) still requeues
        self.teardown(trainer, pl_module, "fit")

    def _next_number(self, trainer: pl.Trainer) -> int:
        # decided on rank 0 and broadcast: ranks must write the same file
        existing = hpc_checkpoints(trainer.default_root_dir) if trainer.is_global_zero else []
        number = int(HPC_CHECKPOINT.match(existing[-1].name).group(1)) + 1 if existing else 1
        return trainer.strategy.broadcast(number)

    @staticmethod
    def _requeue() -> None:
        job = slurm_job_id()
        if job is None:
            rank_zero_warn("Preemption signal outside a SLURM job: checkpoint saved, nothing to requeue")
            return
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            rank_zero_warn(f"could not requeue SLURM job {job}: {error}; resubmit it to resume")
            return
        if result.returncode != 0:
            rank_zero_warn(f"`scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}")
        else:
            rank_zero_info(f"Requeued SLURM job {job}")



def newest_checkpoint(trainer: pl.Trainer) -> Path | None:
    """Where a run resumes from: the furthest of its HPC checkpoints (in `default_root_dir`) and of
    the `last*.ckpt` of its ModelCheckpoint callbacks.

    A preempted job left an HPC checkpoint; a job killed without warning (node failure,
    `kill -9`) left only the periodic `last.ckpt`, possibly further than an old HPC checkpoint.
    Furthest = highest `global_step`; at equal steps (both written at the same step) the HPC
    checkpoint, then the most recently written.
    """
    hpc = hpc_checkpoints(trainer.default_root_dir)
    candidates = list(hpc)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and Path(callback.dirpath).is_dir():
            candidates += [p for p in Path(callback.dirpath).glob(f"{callback.CHECKPOINT_NAME_LAST}*.ckpt")]
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        return None
    return max(existing, key=lambda p: (_global_step(p), p in hpc, p.stat().st_mtime_ns))


def _global_step(path: Path) -> int:
    """The checkpoint's `global_step`, read lazily (memory-mapped: the tensors are not read); -1 if unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True).get("global_step", -1))
    except Exception:  # noqa: BLE001 - a checkpoint we cannot read is the last choice, not an error here
        return -1


def in_slurm_job() -> bool:
    """True inside a SLURM batch or srun job (Lightning's own test: not an interactive allocation)."""
    return SLURMEnvironment.detect()
