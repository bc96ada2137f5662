"""A LightningDataModule that streams image-restoration samples from WebDataset tar shards.

A shard sample (``datamodules.format``) is ``<key>.gt.png`` (or ``.jpg``/``.jpeg``/``.webp``, ...), optionally
``<key>.lq.*`` (paired data), ``<key>.mask.png`` and ``<key>.meta.json``; with ``require_gt=False`` a training
sample may hold ``lq.*`` alone (real degraded images without a clean target: SIDD noisy, SPA rainy,
RealBlur blurry used unpaired), cropped and flipped like clean-only samples. Keys become file names
downstream, so a key that is not a plain file name (``..``, a ``/``, a NUL) is refused by name. Which
images a training sample must hold, and which of the shards' images training ignores, follows from
the configuration (``TrainLayout``: ``require_gt``, ``require_lq``, ``degradation``), never from the
data. A batch is a dict
with float tensors in [0, 1] of shape ``B x C x H x W`` (``gt``, ``lq``, ``mask`` with C = 1),
``__key__`` (list of str), ``meta`` (list of dict, when the samples carry ``meta.json``) and
``n_skipped`` (0-dim int64: samples and shard draws the worker dropped since its previous batch).

Training is a stream of ``steps_per_epoch`` batches per epoch, so all DDP ranks run the same number
of steps whatever the shard sizes. In epoch ``e`` every (rank, worker) draws its own seeded sequence
of shards with replacement, decodes, crops at random (a paired crop is drawn on the LQ grid and
scaled to the GT grid, so the two stay aligned), flips and rotates, shuffles in a buffer and batches
inside the worker. Every random draw is a function of (seed, rank, epoch, worker) and of the position
in the stream, never of process ids or the clock, so the loader can be checkpointed as two numbers
(epoch, batches taken) and a resumed run replays the epoch up to that point in its workers and then
continues with exactly the batches an uninterrupted run would have seen. In training a bad sample or
shard (corrupt, unreadable, empty, an unsafe key) is skipped and counted, and ``max_consecutive_skips``
in a row stop the run. Validation, test and predict read every sample once, in order, and split
samples (not shards) across ranks; there any data error stops the run with a message naming the
shard and, where there is one, the sample key, and an empty set is an error. Streamed shards
(``http(s)://``, ``pipe:``) are read with a stall timeout and retries (``datamodules.reading``), and
loader workers die with their parent process. Synthetic degradations run on the device in
``on_after_batch_transfer``; loader workers only decode and crop.
"""

import math
import zlib
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import webdataset as wds

from datamodules.reading import ExitWithParent, ShardOpener, TarSamples
from datamodules.stages import (
    Batches,
    Collate,
    EvalSamples,
    EvalShare,
    SkipCounter,
    TrainLayout,
    TrainSamples,
    WorkerShuffle,
)
from datamodules.stream import ShardDraws, StepsPerEpoch, StreamSeed, brief, expand_shards
from ir_lightning.degradations import Pipeline, check_integer
from ir_lightning.errors import ConfigurationError
from ir_lightning.training.seeding import DEGRADATION_DRAWS, torch_generator

STAGE_SHARDS: dict[str, tuple[str, ...]] = {
    "fit": ("train_shards", "val_shards"),
    "validate": ("val_shards",),
    "test": ("test_shards",),
    "predict": ("predict_shards",),
}
"""Shard arguments each Lightning stage reads; the first one of each stage is required."""


class ShardDataModule(pl.LightningDataModule):
    """Image-restoration batches from WebDataset shards (see the module docstring for the format).

    Args:
        train_shards: training shards: a brace pattern (``data/train-{000000..000009}.tar``), a
            local path, a glob, an ``https://`` URL, a ``pipe:`` command (``pipe:aws s3 cp
            s3://bucket/x.tar -``), or a list of these. Read with replacement, endlessly; a shard draw
            that gives no sample (an empty tar) is skipped and counted like a bad sample.
        val_shards: validation shards, same forms; None = no validation loader.
        test_shards: test shards, same forms.
        predict_shards: predict shards, same forms; their samples may hold ``lq`` without ``gt``.
        crop_size: side of the random training crop, in GT pixels. Must be divisible by ``scale``.
            A ``train_sizes`` hook (see below) replaces it and ``batch_size`` epoch by epoch.
        scale: GT/LQ size ratio of paired shards (1 for unpaired or same-size pairs). The LQ crop is
            ``crop_size // scale`` LQ pixels at the matching position.
        batch_size: training samples per batch, per device (batched inside each worker).
        val_batch_size: samples per batch for val/test/predict, per device.
        val_crop_size: side of the centre crop for val/test/predict, in GT pixels (divisible by
            ``scale``); None = whole images, which needs ``val_batch_size: 1`` unless all images
            share one size.
        steps_per_epoch: training batches per epoch on every rank, whatever the shard sizes. Each
            epoch's stream is seeded by its number; resuming mid-epoch rebuilds that epoch's batches
            up to the checkpoint in the loader workers (loading only, no training) before training
            goes on, so keep an epoch to a few minutes of loading.
        num_workers: loader worker processes per device (0 = decode in the main process). On Linux a
            worker is killed when the process that started it dies.
        shuffle_buffer: training samples (decoded crops) held per worker for shuffling; 0 or 1 = off.
        flip: mirror training crops left-right with probability 1/2.
        rot90: rotate training crops by a uniform multiple of 90 degrees (with ``flip``: a uniform
            element of the 8 symmetries of the square).
        seed: base seed (>= 0) of every random draw: shard order, crops, shuffling, degradations.
        degradation: synthetic degradation applied on the device to ``gt`` to make ``lq`` when a
            batch has no ``lq``. Training draws from a generator seeded by (seed, rank, step); val,
            test and predict reseed from ``seed`` and the batch keys, so their LQ images are the
            same every epoch.
        persistent_workers: keep val/test/predict workers alive between epochs (only when
            ``num_workers > 0``); the training stream keeps its workers for the whole fit.
        max_consecutive_skips: training samples or shard draws that may fail in a row (corrupt,
            undecodable, smaller than the crop, lacking an image, an unsafe key, an unreadable or empty
            shard) before the data is declared broken (the error names the empty shards).
        val_resize: resize every val/test/predict image to this side (GT; a smaller LQ to
            ``val_resize // scale``) instead of cropping: the fixed-size protocol of papers that
            score resized images (RDDM's official code: 256). None = no resizing.
        train_resize: resize every whole training image to ``crop_size`` (a smaller LQ to ``crop_size // scale``)
            instead of cropping it: RDDM's official training (``crop_patch=False``: whole images at 256). The
            images are seen whole but their aspect ratio changes; flips and rotations still apply.
        require_gt: training samples must hold ``gt``. False admits LQ-only training samples (real
            degraded data without clean targets, for unpaired training such as
            ``datamodules.AdaptationDataModule``'s real stream): they are cropped on their own grid
            to ``crop_size // scale`` pixels, the LQ crop a paired sample would give, and flipped
            and rotated like clean-only samples; training then ignores the shards' ``gt`` and needs
            ``lq``. A sample that lacks an image training needs is skipped and counted in
            ``n_skipped``, with a warning that names the image and the setting that asks for it.
        require_lq: training samples must hold ``lq`` (True: others are skipped and counted), or
            training ignores the shards' ``lq`` (False: gt-only training, e.g. RDDM generation or
            DeqIR's prior). None: ignored when ``degradation`` makes ``lq`` (warned once per worker, so
            every sample is used), required in an LQ-only stream (``require_gt: false``), else used as
            the shards hold it, which must be alike: a stream that mixes samples with and without
            ``lq`` stops with an error naming one of each and asking for this setting.
        read_timeout: seconds an ``http(s)://`` or ``pipe:`` shard may send no byte before its read
            fails (a ``pipe:`` command is then killed); also the HTTP connection timeout.
        retries: retries of an ``http(s)://`` or ``pipe:`` shard read after a transient failure (refused
            or reset connection, HTTP 5xx, a stall, a failed command), after waits of 1, 2, 4, ... s
            (at most 30); a retry continues at the byte where the failed read stopped. Then the read
            fails with an error naming the URL: a skipped shard in training, the end of the run in
            validation, test and predict.

    Attributes:
        train_sizes: a hook, not an argument: ``epoch -> (crop_size, batch_size)`` of that epoch's
            training stream, asked each time an epoch's stream is built (also when a resumed run
            rebuilds one), so sizes change at epoch boundaries and exact resume holds. Installed by a
            callback (``ir_lightning.callbacks.ProgressivePatches``: progressive patch training) in its
            ``setup``, before Lightning requests the training loader. None = ``crop_size`` and
            ``batch_size`` in every epoch.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        predict_shards: str | list[str] | None = None,
        crop_size: int = 256,
        scale: int = 1,
        batch_size: int = 16,
        val_batch_size: int = 1,
        val_crop_size: int | None = None,
        steps_per_epoch: int = 1000,
        num_workers: int = 2,
        shuffle_buffer: int = 500,
        flip: bool = True,
        rot90: bool = True,
        seed: int = 0,
        degradation: Pipeline | None = None,
        persistent_workers: bool = True,
        max_consecutive_skips: int = 1000,
        val_resize: int | None = None,
        train_resize: bool = False,
        require_gt: bool = True,
        require_lq: bool | None = None,
        read_timeout: float = 120.0,
        retries: int = 3,
    ) -> None:
        super().__init__()
        _check_sizes(crop_size, scale, val_crop_size, seed)
        for argument, value, minimum in (
            ("batch_size", batch_size, 1),
            ("val_batch_size", val_batch_size, 1),
            ("steps_per_epoch", steps_per_epoch, 1),
            ("num_workers", num_workers, 0),
            ("shuffle_buffer", shuffle_buffer, 0),
            ("max_consecutive_skips", max_consecutive_skips, 0),
            ("retries", retries, 0),
        ):
            check_integer(f"data.{argument}", value, minimum)
        seconds = isinstance(read_timeout, (int, float)) and not isinstance(read_timeout, bool)
        if not (seconds and 0 < read_timeout < math.inf):
            raise ValueError(f"data.read_timeout must be a number of seconds > 0, got {read_timeout!r}")
        if not require_gt and require_lq is False:
            raise ValueError(
                "data.require_gt and data.require_lq are both false: a training sample would need no image"
            )
        self.shards = {
            "train_shards": train_shards,
            "val_shards": val_shards,
            "test_shards": test_shards,
            "predict_shards": predict_shards,
        }
        self.crop_size, self.scale, self.val_crop_size = crop_size, scale, val_crop_size
        if val_resize is not None and (val_resize < scale or val_resize % scale):
            raise ValueError(f"data.val_resize ({val_resize}) must be a positive multiple of data.scale ({scale})")
        self.val_resize, self.train_resize = val_resize, train_resize
        self.batch_size, self.val_batch_size, self.steps_per_epoch = batch_size, val_batch_size, steps_per_epoch
        self.num_workers, self.shuffle_buffer, self.persistent_workers = num_workers, shuffle_buffer, persistent_workers
        self.flip, self.rot90, self.seed = flip, rot90, seed
        self.degradation = degradation
        self.max_consecutive_skips = max_consecutive_skips
        self.require_gt, self.require_lq = require_gt, require_lq
        self.layout = TrainLayout.of(require_gt, require_lq, degradation)
        self.opener = ShardOpener(read_timeout, retries)
        self.rank, self.world_size = 0, 1
        self.urls: dict[str, list[str]] = {}
        self._train_epochs: StepsPerEpoch | None = None
        self.train_sizes: Callable[[int], tuple[int, int]] | None = None

    def setup(self, stage: str) -> None:
        """Read rank and world size from the trainer and expand (and check) this stage's shards."""
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        required, *optional = STAGE_SHARDS[stage]
        if self.shards[required] is None:
            raise ConfigurationError(f"data.{required} is required for stage {stage!r}")
        for argument in (required, *optional):
            if self.shards[argument] is not None:
                self.urls[argument] = expand_shards(self.shards[argument], f"data.{argument}")

    def teardown(self, stage: str) -> None:
        """Stop the training stream's workers after fit."""
        if stage == "fit" and self._train_epochs is not None:
            self._train_epochs.close()
            self._train_epochs = None

    def _urls(self, argument: str) -> list[str] | None:
        """Expanded URLs of ``argument`` (expanded now if ``setup`` has not run), None if unset."""
        if argument not in self.urls and self.shards[argument] is not None:
            self.urls[argument] = expand_shards(self.shards[argument], f"data.{argument}")
        return self.urls.get(argument)

    def train_dataset(self, epoch: int = 0, skip: int = 0) -> wds.DataPipeline:
        """This rank's endless, per-worker batched training pipeline of ``epoch``, minus its first ``skip`` batches."""
        urls = self._urls("train_shards")
        if urls is None:
            raise ConfigurationError("data.train_shards is required for training")
        seeds = StreamSeed(self.seed, self.rank, epoch, skip)
        skips = SkipCounter(self.max_consecutive_skips, shards=len(set(urls)))
        sizes = self.train_sizes
        crop_size, batch_size = (self.crop_size, self.batch_size) if sizes is None else sizes(epoch)
        if sizes is not None:
            _check_sizes(crop_size, self.scale, None, self.seed)
            check_integer(f"the batch size of data.train_sizes({epoch})", batch_size, 1)
        return wds.DataPipeline(
            ShardDraws(urls, seeds),
            TarSamples(self.opener, skips.shard_failed, skips.empty_shard),
            TrainSamples(crop_size, self.scale, self.flip, self.rot90, seeds, skips, self.layout, self.train_resize),
            WorkerShuffle(self.shuffle_buffer, seeds),
            Batches(batch_size, Collate(skips), partial=False, skip=skip),
        )

    def eval_dataset(self, argument: str) -> wds.DataPipeline:
        """This rank's share of ``argument``'s samples, once each, in order, batched."""
        urls = self._urls(argument)
        if urls is None:
            raise ConfigurationError(f"data.{argument} is not set")
        return wds.DataPipeline(
            wds.SimpleShardList(urls),
            TarSamples(self.opener, wds.reraise_exception),
            EvalShare(self.rank, self.world_size, self.val_batch_size, f"data.{argument} {brief(urls)}"),
            EvalSamples(self.val_crop_size, self.scale, self.val_resize),
            Batches(self.val_batch_size, Collate(SkipCounter(0)), partial=True),
        )

    def _loader(self, dataset: wds.DataPipeline, persistent: bool) -> wds.WebLoader:
        """A WebLoader over a dataset that already yields batches; its workers die with this process."""
        keep = persistent and self.num_workers > 0
        return wds.WebLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=keep,
            worker_init_fn=ExitWithParent(),
        )

    def train_dataloader(self) -> StepsPerEpoch:
        """``steps_per_epoch`` batches per epoch, each epoch's stream seeded by its number; resumable."""
        trainer = self.trainer

        def make_loader(epoch: int, skip: int) -> wds.WebLoader:
            return self._loader(self.train_dataset(epoch, skip), persistent=False)

        def current_epoch() -> int:
            return trainer.current_epoch

        def batches_taken() -> int:
            # batches the fit loop has fetched in this epoch (ModelCheckpoint saves after the step)
            return trainer.fit_loop.epoch_loop.batch_progress.current.ready

        self._train_epochs = StepsPerEpoch(
            make_loader,
            self.steps_per_epoch,
            current_epoch=None if trainer is None else current_epoch,
            batches_taken=batches_taken if isinstance(trainer, pl.Trainer) else None,
        )
        return self._train_epochs

    def val_dataloader(self) -> wds.WebLoader | list:
        """Validation batches, or ``[]`` (no validation) when ``val_shards`` is None."""
        if self.shards["val_shards"] is None:
            return []
        return self._loader(self.eval_dataset("val_shards"), self.persistent_workers)

    def test_dataloader(self) -> wds.WebLoader:
        """Test batches."""
        return self._loader(self.eval_dataset("test_shards"), self.persistent_workers)

    def predict_dataloader(self) -> wds.WebLoader:
        """Predict batches."""
        return self._loader(self.eval_dataset("predict_shards"), self.persistent_workers)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Make ``lq`` from ``gt`` on the device with ``degradation`` when the batch has none."""
        if self.degradation is None or "lq" in batch or "gt" not in batch:
            return batch
        gt = batch["gt"]
        batch["lq"] = self.degradation(gt, generator=self._degradation_generator(batch["__key__"], gt.device))
        return batch

    def _degradation_generator(self, keys: list[str], device: torch.device) -> torch.Generator:
        """In training, a generator seeded from (seed, rank, global step): every step draws anew, and a
        resumed run draws what an uninterrupted one would. Else one seeded from ``seed`` and the keys."""
        if self.trainer is not None and self.trainer.training:
            return torch_generator([self.seed, self.rank, self.trainer.global_step, DEGRADATION_DRAWS], device)
        keys_digest = zlib.crc32("\n".join(keys).encode())  # stable across processes, unlike hash()
        return torch_generator([self.seed, keys_digest, DEGRADATION_DRAWS], device)


def _check_sizes(crop_size: int, scale: int, val_crop_size: int | None, seed: int) -> None:
    """Raise ValueError on crop sizes that the LQ grid cannot hold, or a negative seed."""
    if scale < 1 or crop_size < scale or crop_size % scale:
        raise ValueError(f"data.crop_size ({crop_size}) must be a positive multiple of data.scale ({scale})")
    if val_crop_size is not None and (val_crop_size < scale or val_crop_size % scale):
        raise ValueError(f"data.val_crop_size ({val_crop_size}) must be a positive multiple of data.scale ({scale})")
    if seed < 0:
        raise ValueError(f"data.seed must be >= 0, got {seed}")
