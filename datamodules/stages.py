"""The stages of the shard pipelines, in the order they run in a loader worker.

Training: ``ShardDraws`` (``datamodules.stream``) -> ``TarSamples`` (``datamodules.reading``) ->
:class:`TrainSamples` (select the images the configuration asks for, decode, random crop, flip and
rotate) -> :class:`WorkerShuffle` -> :class:`Batches` (collated with :class:`Collate`). A bad sample or
shard is skipped and counted by a :class:`SkipCounter`, and ``max_consecutive_skips`` in a row stop the
stream. Which images a training sample must hold, and which of the shards' images training ignores,
follows from the configuration (:class:`TrainLayout`), never from the data.

Validation, test and predict: shard list -> ``TarSamples`` -> :class:`EvalShare` (this rank's samples) ->
:class:`EvalSamples` (decode, resize or centre-crop) -> :class:`Batches`; any data error stops the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from datamodules.decode import decode_sample, to_unit_tensor
from datamodules.format import image_member, sample_name
from datamodules.stream import StreamSeed, brief, worker_share
from datamodules.transforms import ImageTooSmall, centre_crop, crop_grid, dihedral, random_crop, resize_sample
from ir_lightning.degradations import Pipeline
from ir_lightning.errors import ConfigurationError, DataError
from ir_lightning.io.atomic import UnsafeKeyError, checked_key
from ir_lightning.training.seeding import CROP_DRAWS, SHUFFLE_DRAWS

UNREACHABLE_SHARDS_LIMIT = 8
"""Distinct training shards in a row that may stay unreachable through their retries before the stream
stops (fewer when the stream has fewer shards): a source that is down fails the run in minutes, while a
single bad shard among good ones is only skipped."""


class StreamStopped(DataError, RuntimeError):
    """A training stream gave no sample for ``max_consecutive_skips`` tries, or none of its shards could be
    read: the data is broken (the message names the shards)."""


class MissingImage(ValueError):
    """A training sample lacks an image that the configuration asks for."""


class SkipCounter:
    """Counts what a training worker dropped (samples, and shard draws that gave no sample); a webdataset
    ``handler`` that never re-raises.

    ``take()`` returns the count since its previous call (one per batch). After ``max_consecutive``
    skips without a good sample in between the data is declared broken, with an error that names the
    last failure and every shard seen to hold no sample.
    """

    def __init__(self, max_consecutive: int, shards: int | None = None) -> None:
        self.max_consecutive = max_consecutive
        self.since_batch = 0
        self.consecutive = 0
        self.warned: set[str] = set()
        self.empty_shards: dict[str, None] = {}  # an ordered set
        self.unreachable: dict[str, None] = {}  # distinct shards unreachable since the last good sample
        self.unreachable_limit = min(shards or UNREACHABLE_SHARDS_LIMIT, UNREACHABLE_SHARDS_LIMIT)

    def skip(self, error: BaseException, kind: str = "corrupt") -> bool:
        """Count one dropped sample or shard; warn on the first of each ``kind``; True = go on."""
        self.since_batch += 1
        self.consecutive += 1
        self.warn_once(kind, f"skipping {kind} training data (warned once per worker): {error!r}")
        if self.consecutive > self.max_consecutive:
            empty = f"; shards with no sample: {brief(self.empty_shards)}" if self.empty_shards else ""
            raise StreamStopped(
                f"{self.consecutive} training shard draws or samples in a row gave no sample "
                f"(data.max_consecutive_skips: {self.max_consecutive}); last error: {error!r}"
                f"{empty}"
            ) from error
        return True

    def shard_failed(self, error: BaseException) -> bool:
        """Count a shard draw that failed (a broken tar, or a streamed shard that stayed unreachable through
        its retries). When ``unreachable_limit`` distinct shards in a row could not be fetched at all, the
        source is down: stop now, naming them, instead of after ``max_consecutive`` slow draws."""
        url = getattr(error, "url", None)
        if getattr(error, "unreachable", False) and url is not None:
            self.unreachable[url] = None
            if len(self.unreachable) >= self.unreachable_limit:
                raise StreamStopped(
                    f"{len(self.unreachable)} training shards in a row could not be read, retries "
                    f"included: {brief(self.unreachable)}; last error: {error}"
                ) from error
        return self.skip(error, kind="corrupt or unreadable shard")

    def empty_shard(self, url: str) -> bool:
        """Count a shard draw that gave no sample (a tar without members, or none named ``<key>.<ext>``)."""
        self.empty_shards[url] = None
        return self.skip(ValueError(f"shard {url!r} holds no sample"), kind="empty shard")

    def warn_once(self, kind: str, message: str) -> None:
        """Warn with ``message`` unless a warning of ``kind`` was already given."""
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(message[:500], stacklevel=3)

    def good(self) -> None:
        """Record a sample that decoded and cropped."""
        self.consecutive = 0
        self.unreachable.clear()

    def take(self) -> int:
        """Skips since the previous call."""
        count, self.since_batch = self.since_batch, 0
        return count


@dataclass(frozen=True)
class TrainLayout:
    """The images a training sample must hold and those of the shards that training ignores, decided by
    the configuration, never by the data: ``required`` and ``ignored`` map an image name to the reason.

    - ``gt`` is required with ``require_gt``; without it (an LQ-only stream) the shards' ``gt`` is ignored.
    - ``lq`` is required with ``require_lq`` true and in an LQ-only stream; it is ignored with
      ``require_lq`` false, or left at None when a ``degradation`` makes it on the device (so every
      sample is used). Else (None, no degradation: paired data sets and gt-only methods such as RDDM
      generation or DeqIR's prior both look like this) the shards' ``lq`` is used as they hold it, and
      ``alike`` names it: samples with and without it in one stream stop training with an error that
      asks for ``data.require_lq``, instead of a guess from the first sample.
    - ``mask`` and ``meta`` are not part of it: only the method knows whether it reads a mask (RDDM's
      ``model.use_mask``); ``Collate`` keeps a mask when every sample of the batch has one.
    """

    required: dict[str, str]
    ignored: dict[str, str]
    alike: tuple[str, ...] = ()

    @classmethod
    def of(cls, require_gt: bool, require_lq: bool | None, degradation: Pipeline | None) -> TrainLayout:
        required, ignored, alike = {}, {}, ()
        if require_gt:
            required["gt"] = "data.require_gt is true: LQ-only training data needs data.require_gt: false"
        else:
            ignored["gt"] = "data.require_gt is false (an LQ-only stream)"
        if require_lq is False:
            ignored["lq"] = "data.require_lq is false"
        elif require_lq:
            required["lq"] = "data.require_lq is true"
        elif not require_gt:
            required["lq"] = "an LQ-only stream (data.require_gt: false) trains on the shards' lq"
        elif degradation is not None:
            ignored["lq"] = "data.degradation makes lq"
        else:
            alike = ("lq",)
        return cls(required, ignored, alike)

    def check_alike(self, sample: dict[str, Any], seen: dict[tuple[str, bool], str]) -> None:
        """Raise DataError when ``sample`` holds an ``alike`` image that an earlier sample lacked, or the
        reverse; ``seen`` maps ``(name, present)`` to the first sample of each kind (updated here)."""
        for name in self.alike:
            seen.setdefault((name, name in sample), sample_name(sample))
            if (name, name not in sample) in seen:
                with_it, without = seen[(name, True)], seen[(name, False)]
                raise DataError(
                    f"the training shards mix samples with and without {name} ({with_it} has one, {without} has "
                    f"none) and data.require_{name} is not set: set it to true to skip samples without {name}, or "
                    f"to false to ignore the shards' {name} (a data.degradation also makes it)"
                )

    def select(self, raw: dict[str, Any], skips: SkipCounter) -> dict[str, Any]:
        """``raw`` without its ignored images (warned once per worker); MissingImage if it lacks a required one."""
        checked_key(raw["__key__"], f"shard {raw.get('__url__', '<unknown>')!r}")  # an unsafe key first
        members = sorted(name for name in raw if not name.startswith("__"))
        has_image = any(image_member(raw, name) is not None for name in ("gt", "lq"))  # else decode_sample says so
        for name, reason in self.required.items():
            if has_image and image_member(raw, name) is None:
                raise MissingImage(f"{sample_name(raw)} has no {name} image (members: {members}); {reason}")
        kept = dict(raw)
        for name, reason in self.ignored.items():
            dropped = [member for member in members if member.split(".")[0] == name]
            if dropped:
                skips.warn_once(
                    f"ignored {name}",
                    f"training ignores the shards' {name} images (warned once per "
                    f"worker): {reason}; first seen in {sample_name(raw)}",
                )
                for member in dropped:
                    del kept[member]
        return kept


SKIP_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (ImageTooSmall, "too small"),
    (MissingImage, "incomplete"),
    (UnsafeKeyError, "unsafe key"),
)
"""How a training worker names the bad samples it skips, by error class (else "corrupt")."""


class TrainSamples:
    """Pipeline stage in a worker: select the images of ``layout``, decode, random crop (or, with ``resize``, resize
    the whole image to the crop size), flip and rotate; skip and count bad samples (undecodable, too small, lacking
    a required image, an unsafe key)."""

    def __init__(
        self,
        crop_size: int,
        scale: int,
        flip: bool,
        rot90: bool,
        seeds: StreamSeed,
        skips: SkipCounter,
        layout: TrainLayout,
        resize: bool = False,
    ) -> None:
        self.crop_size, self.scale, self.flip, self.rot90 = crop_size, scale, flip, rot90
        self.resize = resize
        self.seeds, self.skips, self.layout = seeds, skips, layout
        self.seen: dict[tuple[str, bool], str] = {}

    def __call__(self, raws: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = self.seeds.rng(CROP_DRAWS)
        for raw in raws:
            try:
                sample = self.transform(self.layout.select(raw, self.skips), rng)
            except Exception as error:  # noqa: BLE001 - any bad sample is counted, never fatal
                kind = next((name for kind, name in SKIP_KINDS if isinstance(error, kind)), "corrupt")
                self.skips.skip(error, kind=kind)
                continue
            self.layout.check_alike(sample, self.seen)  # a configuration question: raises, never skips
            self.skips.good()
            yield sample

    def transform(self, raw: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Decode, crop (or resize), then apply a random element of the flips/rotations allowed."""
        sample = decode_sample(raw)
        if not self.resize:
            sample = random_crop(sample, self.crop_size, self.scale, rng)
        elif "gt" in sample:
            sample = resize_sample(sample, self.crop_size, self.scale)
        else:  # an LQ-only sample: the size a paired sample's LQ gets
            sample = resize_sample(sample, self.crop_size // self.scale, 1)
        mirror = self.flip and bool(rng.integers(2))  # P(mirror) = 1/2
        quarter_turns = int(rng.integers(4)) if self.rot90 else 0  # uniform over 0, 90, 180, 270 degrees
        return dihedral(sample, mirror, quarter_turns)


class WorkerShuffle:
    """Pipeline stage: shuffle through a buffer of ``size`` samples, seeded per worker."""

    def __init__(self, size: int, seeds: StreamSeed) -> None:
        self.size, self.seeds = size, seeds

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if self.size < 2:
            return iter(samples)
        seed = int(self.seeds.rng(SHUFFLE_DRAWS).integers(2**31))
        return wds.shuffle(self.size, initial=self.size, seed=seed)(iter(samples))


class EvalShare:
    """Pipeline stage: keep this rank's samples (index % world_size == rank), in order.

    Inside a loader with several workers, each worker keeps every ``num_workers``-th block of
    ``batch_size`` samples, so the DataLoader's round-robin over workers restores the order. Every rank
    and worker reads every sample before taking its share, so one that sees no sample at all knows
    the set is empty: it raises ValueError naming ``shards`` (the argument and its URLs).
    """

    def __init__(self, rank: int, world_size: int, batch_size: int, shards: str = "the shards") -> None:
        self.rank, self.world_size, self.batch_size, self.shards = rank, world_size, batch_size, shards

    def __call__(self, raws: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        seen = 0
        for seen, raw in enumerate(raws, start=1):
            index, rank = divmod(seen - 1, self.world_size)
            if rank == self.rank and (index // self.batch_size) % num_workers == worker:
                yield raw
        if seen == 0:
            raise DataError(f"{self.shards} hold no sample: the evaluation set is empty")


class EvalSamples:
    """Pipeline stage: decode, resize (if ``resize``) or centre-crop (if ``crop_size``); errors name
    the sample and its shard, and raise."""

    def __init__(self, crop_size: int | None, scale: int, resize: int | None = None) -> None:
        self.crop_size, self.scale, self.resize = crop_size, scale, resize

    def __call__(self, raws: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for raw in raws:
            sample = decode_sample(raw)
            if self.resize is not None:
                sample = resize_sample(sample, self.resize, self.scale)
            elif self.crop_size is not None:
                sample = centre_crop(sample, self.crop_size, self.scale)
            elif "lq" in sample and "gt" in sample:
                crop_grid(sample, self.scale)  # checks the GT/LQ sizes agree
            yield sample


class Collate:
    """Stack a list of samples into a batch dict; ``n_skipped`` comes from the worker's counter.

    The samples must hold the same of ``gt`` and ``lq``. A batch has ``mask`` when all its samples
    have one (else the masks are dropped, warned once per worker) and ``meta`` when any has one
    (``{}`` for the others).
    """

    def __init__(self, skips: SkipCounter) -> None:
        self.skips = skips

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        keys = [sample["__key__"] for sample in samples]
        images = [name for name in ("gt", "lq") if name in samples[0]]
        if any([name for name in ("gt", "lq") if name in sample] != images for sample in samples):
            shards = brief(dict.fromkeys(sample.get("__url__", "<unknown>") for sample in samples))
            raise DataError(f"samples {keys} of shards {shards} do not all have the same images (gt, lq)")
        with_mask = [sample for sample in samples if "mask" in sample]
        if with_mask and len(with_mask) < len(samples):
            self.skips.warn_once(
                "mixed masks",
                f"dropping the masks of batch {keys}: only some of its samples have one (warned once per worker)",
            )
        elif with_mask:
            images.append("mask")
        batch: dict[str, Any] = {"__key__": keys}
        for name in images:
            batch[name] = self._stack([to_unit_tensor(sample[name]) for sample in samples], name, keys)
        if any("meta" in sample for sample in samples):
            batch["meta"] = [sample.get("meta", {}) for sample in samples]
        batch["n_skipped"] = torch.tensor(self.skips.take(), dtype=torch.int64)
        return batch

    @staticmethod
    def _stack(images: list[torch.Tensor], name: str, keys: list[str]) -> torch.Tensor:
        """Stack into ``B x C x H x W``, with a hint when whole images differ in size."""
        if len({image.shape for image in images}) > 1:
            raise ConfigurationError(
                f"{name} images of {keys} differ in size; set data.val_crop_size or data.val_batch_size: 1"
            )
        return torch.stack(images)


class Batches:
    """Pipeline stage: collate every ``size`` samples as soon as they are in (``partial``: also the rest).

    Collating at once (not when the next sample arrives) makes ``n_skipped`` count exactly the
    skips before this batch's last sample.

    ``skip``: batches of the loader (all workers together) to build and drop first, to resume a
    stream part-way; the worker playing role ``r`` (see ``worker_role``) made batches
    ``r, r + n, ...`` of them and drops its first ``ceil((skip - r) / n)``.
    """

    def __init__(self, size: int, collate: Collate, partial: bool, skip: int = 0) -> None:
        self.size, self.collate, self.partial, self.skip = size, collate, partial, skip

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        pending: list[dict[str, Any]] = []
        to_drop = worker_share(self.skip)
        for sample in samples:
            pending.append(sample)
            if len(pending) == self.size:
                batch = self.collate(pending)
                pending = []
                if to_drop:
                    to_drop -= 1
                    continue
                yield batch
        if pending and self.partial:
            yield self.collate(pending)
