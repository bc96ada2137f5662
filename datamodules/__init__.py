"""Data modules: shards in, batches out (never imports a method), and the shard format both ways.

Write side (no torch, so ``ir-lightning shards`` starts at once): ``format`` (keys, members, what a
sample holds), ``folders`` (listing image files, pairing GT/LQ by stem), ``writer``, ``presets``.
Read side: ``reading`` (shard reads without hangs), ``decode``, ``transforms`` (crops, flips),
``stream`` (URLs, seeds, steps per epoch), ``stages`` (pipeline stages), ``shard_datamodule`` and
``adaptation`` (the LightningDataModules). ``datamodules.ShardDataModule`` and
``datamodules.AdaptationDataModule`` are imported on first use, as they import Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamodules.adaptation import AdaptationDataModule
    from datamodules.shard_datamodule import ShardDataModule

_HOMES = {"AdaptationDataModule": "datamodules.adaptation", "ShardDataModule": "datamodules.shard_datamodule"}
"""The data modules by name, and the module that defines each."""

__all__ = ["AdaptationDataModule", "ShardDataModule"]


def __getattr__(name: str) -> Any:
    """Import a data module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
