"""Data modules: shards in, batches out (never imports a method)."""

from datamodules.adaptation import AdaptationDataModule
from datamodules.shards import ShardDataModule

__all__ = ["AdaptationDataModule", "ShardDataModule"]
