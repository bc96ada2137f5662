"""The former home of ``ShardDataModule``, kept so that configs and checkpoints naming
``datamodules.shards.ShardDataModule`` still load. The code lives in ``datamodules.shard_datamodule``."""

from datamodules.shard_datamodule import ShardDataModule

__all__ = ["ShardDataModule"]
