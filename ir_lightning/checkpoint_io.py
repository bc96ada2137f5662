"""Alias kept for class paths: a user's YAML may name `ir_lightning.checkpoint_io.AtomicCheckpointIO` among the
trainer's plugins; it lives in `ir_lightning.training.checkpoint_io`, and the checkpoint reader with its one
error class (`UnsafeCheckpointError` here) in `ir_lightning.io.weights`."""

from ir_lightning.io.weights import WeightsError as UnsafeCheckpointError
from ir_lightning.training.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "UnsafeCheckpointError"]
