"""Data modules: shards in, batches out (never imports a method)."""

from datamodules.shards import ShardDataModule

__all__ = ["ShardDataModule"]
