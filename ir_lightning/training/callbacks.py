"""Callbacks every method shares: image grids at validation, throughput, W&B summaries, writing
predictions to disk, and progressive patch training. They talk to the method only through its step
outputs and the batch, so no method carries logging or data-schedule code of its own."""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, EMAWeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ir_lightning.io.atomic import atomic_write_bytes, checked_key
from ir_lightning.training.image_grid import comparison_row, png_bytes, stack_rows, to_uint8_hwc


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
        # the parent's own (private) state: the averaged copy, and the device it was asked to keep it on
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
        shown = outputs.get("lq")  # the method's input (a training-free method measures it from the GT)
        shown = batch["lq"] if shown is None else shown
        for i in range(outputs["restored"].shape[0]):
            if len(self.rows) >= self.n_images:
                return
            row = comparison_row(shown[i], outputs["restored"][i], batch["gt"][i] if "gt" in batch else None)
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
                logger.log_image(
                    key="val/samples", images=[to_uint8_hwc(grid)], step=step, caption=["LR | bicubic | restored | HR"]
                )


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

    A key is data (a shard member's name): one that is not a plain file name (`..`, `/`, `\\`, NUL)
    stops the run with `UnsafeKeyError` before anything of its batch is written, so no file lands outside
    `output_dir`. (The shard reader refuses such keys first, naming the shard.)

    Args:
        output_dir: folder for the restored images (created).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx, dataloader_idx):
        keys = prediction.get("__key__") or [f"{batch_idx:06d}_{i}" for i in range(len(prediction["restored"]))]
        keys = [checked_key(key, f"predict batch {batch_idx}") for key in keys]
        for key, img in zip(keys, prediction["restored"]):
            atomic_write_bytes(self.output_dir / f"{key}.png", png_bytes(img))


class ProgressivePatches(Callback):
    """Progressive patch training (Restormer's, which DiffIR uses on GoPro): the training crop grows
    and the per-device batch shrinks at batch milestones, so early training takes many small
    patches and late training few large ones.

    Restormer loads every batch at the largest patch and batch size and crops and subsamples it in
    the training step, so the loader decodes and holds the last phase's data all along (a known
    out-of-memory source). Here the data module builds each epoch's stream with that epoch's own
    sizes, asking this callback through its ``train_sizes`` hook (installed in ``setup``, before
    Lightning requests the training loader, also on resume). Phases therefore switch at epoch
    boundaries: each milestone must be a multiple of ``data.steps_per_epoch``. An epoch's batches
    depend only on (seed, rank, epoch, worker) and its sizes, so a resumed run continues with the
    same batches as an uninterrupted one. The method sees nothing but batches of other shapes.

    Phase ``i`` covers training batches ``[milestones[i - 1], milestones[i])`` (from 0 for the
    first; the last phase runs to the end of training). Milestones count training batches on each
    device, which are trainer steps with one optimizer and ``accumulate_grad_batches: 1`` (as in
    Restormer and DiffIR, whose per-phase ``iters`` count both); with accumulation ``k`` milestone
    ``m`` is optimizer step ``m / k``. Milestones are the running sums of Restormer's ``iters``
    without the last entry; DiffIR's GoPro stage 1 (``iters: [92000, 80000, 38000, 33000, 33000,
    24000]``) reads::

        - class_path: ir_lightning.callbacks.ProgressivePatches
          init_args:
            milestones: [92000, 172000, 210000, 243000, 276000]
            crop_sizes: [192, 256, 320, 384, 464, 512]
            batch_sizes: [8, 4, 2, 2, 1, 1]

    with ``data.steps_per_epoch`` a divisor of 1000, the milestones' greatest common divisor.
    Logs ``train/crop_size`` and ``train/batch_size`` at every step.

    Args:
        milestones: training batches at which the next phase starts, strictly increasing, > 0.
        crop_sizes: GT crop side of each phase (one more than milestones), multiples of ``data.scale``.
        batch_sizes: per-device batch size of each phase (one more than milestones), >= 1.
    """

    def __init__(self, milestones: list[int], crop_sizes: list[int], batch_sizes: list[int]) -> None:
        _check_schedule(list(milestones), list(crop_sizes), list(batch_sizes))
        self.milestones, self.crop_sizes, self.batch_sizes = list(milestones), list(crop_sizes), list(batch_sizes)
        self.steps_per_epoch: int | None = None  # of the data module, known at setup

    def sizes_at(self, batch: int) -> tuple[int, int]:
        """``(crop_size, batch_size)`` of the phase that training batch ``batch`` (0-based) falls in."""
        phase = bisect.bisect_right(self.milestones, batch)
        return self.crop_sizes[phase], self.batch_sizes[phase]

    def epoch_sizes(self, epoch: int) -> tuple[int, int]:
        """``(crop_size, batch_size)`` of epoch ``epoch`` (the data module's ``train_sizes`` hook)."""
        if self.steps_per_epoch is None:
            raise RuntimeError("ProgressivePatches.epoch_sizes called before setup: steps_per_epoch is unknown")
        return self.sizes_at(epoch * self.steps_per_epoch)  # an epoch lies in one phase: milestones are multiples

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        data = trainer.datamodule
        if data is None or not all(hasattr(data, name) for name in ("train_sizes", "steps_per_epoch", "scale")):
            raise ValueError(
                "ProgressivePatches needs a data module with a train_sizes hook, steps_per_epoch and scale "
                f"(datamodules.ShardDataModule); got {type(data).__name__}"
            )
        _check_against_data(self.milestones, self.crop_sizes, int(data.steps_per_epoch), int(data.scale))
        if trainer.accumulate_grad_batches != 1:
            rank_zero_warn(
                f"ProgressivePatches.milestones count training batches: with trainer.accumulate_grad_batches "
                f"{trainer.accumulate_grad_batches} the phases start at optimizer steps "
                f"{[m // trainer.accumulate_grad_batches for m in self.milestones]}"
            )
        self.steps_per_epoch = int(data.steps_per_epoch)
        data.train_sizes = self.epoch_sizes

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if stage == "fit" and data is not None and getattr(data, "train_sizes", None) == self.epoch_sizes:
            data.train_sizes = None  # a later validate/test/fit with this data module uses its own sizes

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # epochs map to batches through steps_per_epoch: a shorter epoch would shift every phase
        if trainer.num_training_batches != self.steps_per_epoch:
            raise ValueError(
                f"ProgressivePatches needs epochs of data.steps_per_epoch ({self.steps_per_epoch}) batches, but "
                f"trainer.limit_train_batches ({trainer.limit_train_batches}) makes them "
                f"{trainer.num_training_batches}: drop limit_train_batches and set data.steps_per_epoch instead"
            )

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        crop_size, batch_size = self.epoch_sizes(trainer.current_epoch)
        for name, value in (("train/crop_size", crop_size), ("train/batch_size", batch_size)):
            pl_module.log(name, float(value), on_step=True, on_epoch=False, batch_size=batch_size, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # called after setup; a resumed stream with another epoch length would map epochs to other batches
        saved = state_dict.get("steps_per_epoch")
        if saved is not None and self.steps_per_epoch is not None and saved != self.steps_per_epoch:
            raise ValueError(
                f"ProgressivePatches: the checkpoint was trained with data.steps_per_epoch {saved}, this run has "
                f"{self.steps_per_epoch}; the schedule maps epochs to batches through it, so resume with "
                f"data.steps_per_epoch: {saved}"
            )


def _check_schedule(milestones: list[int], crop_sizes: list[int], batch_sizes: list[int]) -> None:
    """Raise ValueError, naming the ProgressivePatches argument, on a schedule that is not well formed."""
    for index, milestone in enumerate(milestones):
        if milestone <= 0 or (index and milestone <= milestones[index - 1]):
            raise ValueError(f"ProgressivePatches.milestones must be > 0 and strictly increasing, got {milestones}")
    for name, values in (("crop_sizes", crop_sizes), ("batch_sizes", batch_sizes)):
        if len(values) != len(milestones) + 1:
            raise ValueError(
                f"ProgressivePatches.{name} needs one entry per phase, len(milestones) + 1 = {len(milestones) + 1}, "
                f"got {len(values)}: {values}"
            )
        if any(value < 1 for value in values):
            raise ValueError(f"ProgressivePatches.{name} must all be >= 1, got {values}")


def _check_against_data(milestones: list[int], crop_sizes: list[int], steps_per_epoch: int, scale: int) -> None:
    """Raise ValueError unless every milestone is a multiple of the epoch and every crop of the scale."""
    for crop_size in crop_sizes:
        if crop_size % scale:
            raise ValueError(
                f"ProgressivePatches.crop_sizes ({crop_sizes}): {crop_size} is not a multiple of data.scale ({scale})"
            )
    off_epoch = [milestone for milestone in milestones if milestone % steps_per_epoch]
    if off_epoch:
        divisor = math.gcd(*milestones)
        raise ValueError(
            f"ProgressivePatches.milestones {off_epoch} are not multiples of data.steps_per_epoch ({steps_per_epoch}): "
            f"phases switch at epoch boundaries; set data.steps_per_epoch to a divisor of {divisor} "
            f"(the milestones' greatest common divisor), e.g. {_largest_divisor_up_to(divisor, steps_per_epoch)}"
        )


def _largest_divisor_up_to(number: int, bound: int) -> int:
    """The largest divisor of ``number`` that is at most ``bound`` (epochs no longer than asked for)."""
    return max(d for d in range(1, min(number, bound) + 1) if number % d == 0)
