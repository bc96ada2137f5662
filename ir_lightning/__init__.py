"""ir-lightning: a PyTorch Lightning training suite for diffusion-based image restoration.

From Python: `model = ir_lightning.load("model.ckpt")`, then `model.restore(image)` (`ir_lightning.api`). The API
is imported on first use, so `import ir_lightning` stays light (the commands' --help starts at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RestorationModel", "__version__", "load"]

if TYPE_CHECKING:
    from ir_lightning.api import RestorationModel, load

_API = ("load", "RestorationModel")


def __getattr__(name: str) -> Any:
    """`load` and `RestorationModel`, imported from `ir_lightning.api` when first asked for."""
    if name in _API:
        from ir_lightning import api

        return getattr(api, name)
    raise AttributeError(f"module 'ir_lightning' has no attribute {name!r}")
