"""A callback for the resume tests: sends the process a signal at the start of a given step."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class Interrupt(pl.Callback):
    """At the start of training step `at_step` (when global_step == at_step), send `signal_name` to
    this process: SIGKILL dies at once, like a node failure; SIGUSR1 is SLURM's warning. 0 = never."""

    def __init__(self, at_step: int = 0, signal_name: str = "SIGKILL") -> None:
        self.at_step, self.signum = at_step, getattr(signal, signal_name)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.at_step and trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class Heartbeat(pl.Callback):
    """Writes the global step to `path` after every training step (atomically), so a test can
    wait until training is under way before it signals the job."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.is_global_zero:
            temporary = f"{self.path}.tmp"
            with open(temporary, "w") as handle:
                handle.write(str(trainer.global_step))
            os.replace(temporary, self.path)
