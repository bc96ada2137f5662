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
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ir_lightning.errors import ConfigurationError
from ir_lightning.io.weights import WeightsError, read_checkpoint

HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")
"""Lightning's name for preemption checkpoints in the run directory (`trainer.default_root_dir`)."""


def hpc_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The `hpc_ckpt_<n>.ckpt` files of `folder`, by increasing n."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / m.group(0)) for m in map(HPC_CHECKPOINT.match, os.listdir(folder)) if m]
    return [path for _, path in sorted(found)]


class SlurmRequeue(Callback):
    """On SLURM's warning signal (`#SBATCH --signal=USR1@90`): save an HPC checkpoint at the end
    of the current step on every rank, requeue the job, stop training.

    The IR-Lightning CLI adds this callback by itself when it runs under SLURM, and gives every
    `SlurmRequeue` of a run the job's id (`ir_lightning.cli.slurm_job_id`, read from SLURM's
    environment there); add it by hand, with the id, when building a Trainer in Python.

    Args:
        requeue: run `scontrol requeue` after saving (False: save and stop only, e.g. to leave the
            restart to a workflow manager).
        job_id: the id `scontrol requeue` takes (`<array job>_<task>` for an array task); None: not
            known, the checkpoint is saved and nothing is requeued.
    """

    def __init__(self, requeue: bool = True, job_id: str | None = None) -> None:
        self.requeue = requeue
        self.job_id = job_id
        self.signalled = False
        self.saved: Path | None = None
        self._signal: int | None = None
        self._previous: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # private: the cluster environment whose `auto_requeue` Lightning's signal handling reads; only parallel
        # strategies expose it publicly (`strategy.cluster_environment`), a single-device run's is not reachable
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
                # private: whether a W&B run was started; the public `experiment` would start one
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

    def _requeue(self) -> None:
        job = self.job_id
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
    """Where a run resumes from: the furthest complete checkpoint among its HPC checkpoints (in
    `default_root_dir`) and every `*.ckpt` in the folders of its ModelCheckpoint callbacks.

    A preempted job left an HPC checkpoint; a job killed without warning (node failure, `kill -9`)
    left the periodic checkpoints, and a kill between ModelCheckpoint's two saves of one step leaves
    `step<N>.ckpt` further than `last.ckpt`. Furthest = highest `global_step`; at equal steps the HPC
    checkpoint, then the most recently written. A file that does not read as a checkpoint to resume
    (truncated by a copy, say, or an export) is passed over with a warning; if no file reads, `ConfigurationError` names them
    all rather than silently starting afresh over them.
    """
    hpc = hpc_checkpoints(trainer.default_root_dir)
    candidates = list(hpc)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and Path(callback.dirpath).is_dir():
            candidates += sorted(Path(callback.dirpath).glob(f"*{callback.FILE_EXTENSION}"))
    steps = {path: _global_step(path) for path in dict.fromkeys(candidates) if path.is_file()}
    unreadable = [str(path) for path, step in steps.items() if step is None]
    readable = {path: step for path, step in steps.items() if step is not None}
    if unreadable and readable:
        rank_zero_warn(f"--ckpt_path auto passes over files that are no resumable checkpoints: {', '.join(unreadable)}")
    if unreadable and not readable:
        raise ConfigurationError(
            f"--ckpt_path auto: no checkpoint of this run reads as one to resume ({', '.join(unreadable)}); move them away to start "
            "afresh, or give --ckpt_path a file"
        )
    if not readable:
        return None
    return max(readable, key=lambda p: (readable[p], p in hpc, p.stat().st_mtime_ns))


def _global_step(path: Path) -> int | None:
    """The checkpoint's `global_step`, read lazily (memory-mapped: the tensors are not read); None if the file
    is not a checkpoint that reads and holds a training state to resume (an export does not)."""
    try:
        step = read_checkpoint(path, resume=True, mmap=True).get("global_step")
    except (WeightsError, OSError):
        return None
    return step if isinstance(step, int) else None


class FinalCheckpoint(Checkpoint):
    """Saves the state at the end of training when the last step is not in a checkpoint yet, into
    `last.ckpt` in the folder of every ModelCheckpoint that has not saved it, so that the
    steps after the last periodic save are not lost and `--ckpt_path auto` with a larger `max_steps`
    goes on from the end. The IR-Lightning CLI adds it to every fit.

    It is a `Checkpoint` callback, which Lightning runs after all others: the EMA callback has put
    the average in place by then, as it has for ModelCheckpoint's own saves.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any(isinstance(c, SlurmRequeue) and c.saved is not None for c in trainer.callbacks):
            return  # preempted: the HPC checkpoint of this step is written, and SLURM's grace time is short
        step = trainer.global_step
        # private: ModelCheckpoint's record of the step it last saved; no public API says or sets it
        behind = [
            c
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.dirpath and getattr(c, "_last_global_step_saved", -1) != step
        ]
        for folder in dict.fromkeys(Path(c.dirpath) for c in behind):
            target = folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
            trainer.save_checkpoint(target)
            rank_zero_info(f"Training ended at step {step}, after the last checkpoint: saved {target}")
        for callback in behind:
            callback._last_global_step_saved = step  # Lightning's record of its last save: no second save of this step
