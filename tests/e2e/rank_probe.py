"""A callback for the end-to-end DDP tests: each rank records where its weights started and ended."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


class RankState(pl.Callback):
    """Writes `<out_dir>/rank<r>.pt` on every rank at the end of fit: the world size, the step and the weights
    training started from (after a previous stage's weights or a resumed checkpoint loaded), the trained and the
    EMA weights after the last step, and every value the module logged under `train/` at every training batch
    (this rank's own, before any reduction)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.start_step = -1
        self.initial: dict[str, torch.Tensor] = {}
        self.trained: dict[str, torch.Tensor] = {}
        self.ema: dict[str, torch.Tensor] = {}
        self.logged: list[dict[str, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step, self.initial = trainer.global_step, _copy(pl_module.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and v.numel() == 1}
        self.logged.append(step)
        if trainer.global_step >= trainer.max_steps:  # the last step: the EMA callback (listed before) has updated
            self.trained = _copy(pl_module.state_dict())
            averaging = [c for c in trainer.callbacks if isinstance(c, WeightAveraging)]
            assert len(averaging) == 1, f"expected one weight-averaging callback, found {len(averaging)}"
            self.ema = _copy(averaging[0]._average_model.module.state_dict())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "start_step": self.start_step,
            "global_step": trainer.global_step,
            "initial": self.initial,
            "trained": self.trained,
            "ema": self.ema,
            "logged": self.logged,
        }
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}.pt")


def all_finite(logged: list[dict[str, float]]) -> bool:
    return all(math.isfinite(value) for step in logged for value in step.values())


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (the key sets must agree)."""
    assert a.keys() == b.keys()
    return [key for key in a if not torch.equal(a[key], b[key])]
