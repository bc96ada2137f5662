"""Alias kept for class paths: recipes and users' YAML name the callbacks `ir_lightning.callbacks.<Callback>`;
they live in `ir_lightning.training.callbacks`."""

from ir_lightning.training.callbacks import (
    EMA,
    ImageGridLogger,
    PredictionWriter,
    ProgressivePatches,
    Throughput,
    WandbSummaries,
)

__all__ = ["EMA", "ImageGridLogger", "PredictionWriter", "ProgressivePatches", "Throughput", "WandbSummaries"]
