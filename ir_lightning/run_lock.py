"""Alias kept for class paths: a user's YAML may name `ir_lightning.run_lock.RunLock` among the trainer's
callbacks; it lives in `ir_lightning.training.run_lock`."""

from ir_lightning.training.run_lock import RunDirectoryLocked, RunLock

__all__ = ["RunDirectoryLocked", "RunLock"]
