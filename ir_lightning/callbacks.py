"""Callbacks every method shares: image grids at validation, throughput, W&B summaries, and
writing predictions to disk. They talk to the method only through its step outputs and the
batch, so no method carries logging code of its own."""

from __future__ import annotations

import io
import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, EMAWeightAveraging
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor

from ir_lightning.degradations import bicubic_upsample
from ir_lightning.io import atomic_write_bytes
from ir_lightning.metrics import quantize


def to_uint8_hwc(img: Tensor) -> np.ndarray:
    """C×H×W float in [0, 1] -> H×W×C uint8 (round to nearest)."""
    return quantize(img.detach().float()).byte().permute(1, 2, 0).cpu().numpy()


def png_bytes(img: Tensor) -> bytes:
    """C×H×W float in [0, 1] -> PNG file bytes (grey for one channel)."""
    array = to_uint8_hwc(img)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def comparison_row(lq: Tensor, restored: Tensor, gt: Tensor | None, gap: int = 4) -> Tensor:
    """One row of panels for one image: LR (pixel-replicated) | bicubic | restored | HR.

    All tensors are C×H×W in [0, 1]; `lq` may be smaller than `restored`. Missing HR is left out.
    """
    size = restored.shape[-2:]
    lq = lq[None].float()
    panels = [
        F.interpolate(lq, size=size, mode="nearest")[0],
        bicubic_upsample(lq, size)[0],
        restored.float(),
    ]
    if gt is not None:
        panels.append(gt.float())
    spacer = torch.ones(restored.shape[0], size[0], gap, device=restored.device)
    row = [p for panel in panels for p in (panel, spacer)][:-1]
    return torch.cat(row, dim=-1)


def stack_rows(rows: list[Tensor], gap: int = 4) -> Tensor:
    """Stack rows of equal height vertically, padding narrower rows with white on the right."""
    width = max(r.shape[-1] for r in rows)
    padded = [F.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    spacer = torch.ones(rows[0].shape[0], gap, width, device=rows[0].device)
    return torch.cat([p for r in padded for p in (r, spacer)][:-1], dim=-2)


class EMA(EMAWeightAveraging):
    """Lightning's `EMAWeightAveraging`, safe to resume from the checkpoint written at the end of fit.

    At the end of training Lightning copies the EMA weights into the live model, and only then
    does `ModelCheckpoint` write `last.ckpt` (checkpoint callbacks run last), so that file's
    `current_model_state` holds the EMA weights instead of the trained ones, and a run resumed
    from it silently continues from the average. Here the trained weights are kept at that
    moment and written where they belong. Everything else (decay, update schedule, EMA weights
    in `state_dict`, validation with the EMA weights) is the parent's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trained_state: dict[str, Tensor] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trained_state = None
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the parent builds the average at `setup`, before the strategy moves the module to its
        # GPU: without this, every update would copy the weights to the CPU and average there
        if self._average_model is not None and self._device is None:
            self._average_model.to(pl_module.device)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trained_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._trained_state is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._trained_state


class ImageGridLogger(Callback):
    """Logs a grid LR | bicubic | restored | HR of the first `n_images` validation images.

    The grid goes to every W&B logger (key `val/samples`) and, as a PNG, to
    `<log_dir>/samples/val-step<global step>.png`.

    Args:
        n_images: how many validation images to show.
    """

    def __init__(self, n_images: int = 4) -> None:
        self.n_images = n_images
        self.rows: list[Tensor] = []
        self._log_dir: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._log_dir = trainer.log_dir  # a collective call: on every rank, here, not on rank 0 alone later

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx=0):
        if trainer.sanity_checking or not isinstance(outputs, dict) or "restored" not in outputs:
            return
        for i in range(outputs["restored"].shape[0]):
            if len(self.rows) >= self.n_images:
                return
            row = comparison_row(batch["lq"][i], outputs["restored"][i], batch["gt"][i] if "gt" in batch else None)
            self.rows.append(row.cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.rows or not trainer.is_global_zero:
            return
        grid = stack_rows([r for r in self.rows if r.shape[-2] == self.rows[0].shape[-2]])
        step = trainer.global_step
        if self._log_dir:
            atomic_write_bytes(Path(self._log_dir) / "samples" / f"val-step{step:07d}.png", png_bytes(grid))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/samples", images=[to_uint8_hwc(grid)], step=step,
                                 caption=["LR | bicubic | restored | HR"])


class Throughput(Callback):
    """Logs `train/images_per_sec`: training images per second of wall time (all ranks),
    over a sliding window of the last `window` batches, from the second batch on."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._ends: deque[float] = deque(maxlen=window + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._ends.append(time.perf_counter())
        if len(self._ends) < 2:
            return
        images = (len(self._ends) - 1) * batch["gt"].shape[0] * trainer.world_size
        pl_module.log("train/images_per_sec", images / (self._ends[-1] - self._ends[0]), rank_zero_only=True)


class WandbSummaries(Callback):
    """Makes the W&B run summary hold the best `val/psnr` and `val/ssim` (max), not the last."""

    BEST_MAX = ("val/psnr", "val/ssim")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key in self.BEST_MAX:
                    logger.experiment.define_metric(key, step_metric="trainer/global_step", summary="max")


class PredictionWriter(BasePredictionWriter):
    """Writes each restored image of `predict` to `<output_dir>/<key>.png`, atomically.

    Args:
        output_dir: folder for the restored images (created).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx, dataloader_idx):
        keys = prediction.get("__key__") or [f"{batch_idx:06d}_{i}" for i in range(len(prediction["restored"]))]
        for key, img in zip(keys, prediction["restored"]):
            atomic_write_bytes(self.output_dir / f"{key}.png", png_bytes(img))
