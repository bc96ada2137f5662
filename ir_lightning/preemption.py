"""Alias kept for class paths: a user's YAML may name `ir_lightning.preemption.SlurmRequeue` (or
`FinalCheckpoint`) among the trainer's callbacks; they live in `ir_lightning.training.preemption`."""

from ir_lightning.training.preemption import FinalCheckpoint, SlurmRequeue

__all__ = ["FinalCheckpoint", "SlurmRequeue"]
