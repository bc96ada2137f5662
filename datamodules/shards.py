"""A LightningDataModule that streams image-restoration samples from WebDataset tar shards.

A shard sample is ``<key>.gt.png`` (or ``.jpg``/``.jpeg``/``.webp``), optionally ``<key>.lq.*``
(paired data), ``<key>.mask.png`` and ``<key>.meta.json``; with ``require_gt=False`` a training
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
(``http(s)://``, ``pipe:``) are read with a stall timeout and retries (``datamodules.streams``), and
loader workers die with their parent process. Synthetic degradations run on the device in
``on_after_batch_transfer``; loader workers only decode and crop.
"""

import glob
import itertools
import json
import math
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import braceexpand
import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.streams import ExitWithParent, ShardOpener, TarSamples
from ir_lightning.degradations import Pipeline, check_integer
from ir_lightning.errors import ConfigurationError, DataError
from ir_lightning.io import UnsafeKeyError, checked_key

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
"""Member extensions read as images, in the order they are looked for (all that ``ir_lightning.shards`` writes)."""

IMAGE_NAMES: tuple[str, ...] = ("gt", "lq", "mask")
"""Image members of a sample; ``mask`` is single-channel and lives on the GT grid."""

UINT8_PEAK: float = 255.0
"""Largest 8-bit pixel value: 8-bit images are divided by it."""

UINT16_PEAK: float = 65535.0
"""Largest 16-bit pixel value: 16-bit images are divided by it."""

SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
"""PIL modes of 16-bit greyscale images (PIL opens 16-bit PNGs as one of these)."""

REMOTE_URL = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")
"""Shard URLs that are streamed, not checked at setup: ``pipe:...``, ``http(s)://``, ``s3://``, ..."""

GLOB_MAGIC = re.compile(r"[*?\[]")
"""Characters that make a local path a glob pattern."""

SHARD_DRAWS, CROP_DRAWS, SHUFFLE_DRAWS, DEGRADATION_DRAWS = range(4)
"""Ids of the independent random streams derived from (seed, rank, epoch, worker) or (seed, rank, step)."""

STAGE_SHARDS: dict[str, tuple[str, ...]] = {
    "fit": ("train_shards", "val_shards"),
    "validate": ("val_shards",),
    "test": ("test_shards",),
    "predict": ("predict_shards",),
}
"""Shard arguments each Lightning stage reads; the first one of each stage is required."""


BRIEF_LIST = 5
"""Shard URLs an error message lists before it says how many more there are."""


UNREACHABLE_SHARDS_LIMIT = 8
"""Distinct training shards in a row that may stay unreachable through their retries before the stream
stops (fewer when the stream has fewer shards): a source that is down fails the run in minutes, while a
single bad shard among good ones is only skipped."""


class MissingShards(ConfigurationError, FileNotFoundError):
    """A local shard pattern matches no file (named): one line, exit status 2."""


class StreamStopped(DataError, RuntimeError):
    """A training stream gave no sample for ``max_consecutive_skips`` tries, or none of its shards could be
    read: the data is broken (the message names the shards)."""


class ImageTooSmall(ValueError):
    """A sample's image is smaller than the crop."""


class MissingImage(ValueError):
    """A training sample lacks an image that the configuration asks for."""


def brief(urls: Iterable[str]) -> str:
    """The first few of ``urls`` as a list, and how many more there are."""
    urls = list(urls)
    more = f" and {len(urls) - BRIEF_LIST} more" if len(urls) > BRIEF_LIST else ""
    return f"{urls[:BRIEF_LIST]}{more}"


def expand_shards(shards: str | list[str], argument: str) -> list[str]:
    """Expand brace patterns and globs into shard URLs; check that local shards exist.

    ``argument`` (e.g. ``data.train_shards``) names the setting in error messages. ``pipe:`` and
    ``scheme://`` URLs are passed through unchecked.
    """
    patterns = [shards] if isinstance(shards, str) else list(shards)
    if not patterns:
        raise ConfigurationError(f"{argument} is an empty list: give at least one shard pattern")
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(pattern):
            urls.extend(_local_or_remote(url, pattern, argument))
    return urls


def _local_or_remote(url: str, pattern: str, argument: str) -> list[str]:
    """Return ``[url]`` for a remote URL, or the existing local files ``url`` names."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif REMOTE_URL.match(url):
        return [url]
    if GLOB_MAGIC.search(url):
        matches = sorted(glob.glob(url))
        if not matches:
            raise MissingShards(f"{argument}: pattern {pattern!r} matches no file (glob {url!r})")
        return matches
    if not os.path.isfile(url):
        raise MissingShards(f"{argument}: pattern {pattern!r} matches no file (first missing: {url!r})")
    return [url]


def decode_image(data: bytes, channels: int) -> tuple[np.ndarray, float]:
    """Decode image bytes to integer pixels ``H x W x channels`` and the peak that maps them to [0, 1].

    Grey images are repeated to 3 channels, RGBA drops alpha, 16-bit greyscale keeps 16 bits
    (PIL reads 16-bit colour PNGs as 8-bit RGB).
    """
    with Image.open(BytesIO(data)) as image:
        image.load()
        if image.mode in SIXTEEN_BIT_MODES:
            pixels = np.asarray(image).astype(np.uint16)[..., None]
            return np.repeat(pixels, channels, axis=2), UINT16_PEAK
        converted = image.convert("RGB" if channels == 3 else "L")
        pixels = np.asarray(converted).reshape(converted.height, converted.width, channels)
        return pixels, UINT8_PEAK


def to_unit_tensor(image: tuple[np.ndarray, float]) -> torch.Tensor:
    """Integer pixels ``H x W x C`` and their peak -> float32 tensor ``C x H x W`` in [0, 1]."""
    pixels, peak = image
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw) / peak  # value / peak maps {0..peak} onto [0, 1]


def _member(raw: dict[str, Any], name: str) -> bytes | None:
    """The bytes of ``name.<ext>`` for the first image extension present, or None."""
    for extension in IMAGE_EXTENSIONS:
        data = raw.get(f"{name}.{extension}")
        if data is not None:
            return data
    return None


def sample_name(sample: dict[str, Any]) -> str:
    """``sample '<key>' of shard '<url>'`` for a raw or decoded sample (both carry ``__key__`` and ``__url__``)."""
    return f"sample {sample['__key__']!r} of shard {sample.get('__url__', '<unknown>')!r}"


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Decode a raw webdataset sample into ``__key__``, ``__url__``, images ``(pixels, peak)`` and ``meta``.

    Every error names the sample and its shard: a key that is not a plain file name (UnsafeKeyError,
    since keys become file names downstream, e.g. ``predict``'s ``<key>.png``), a member that does not
    decode, a sample with neither ``gt`` nor ``lq``.
    """
    url = raw.get("__url__", "<unknown>")
    sample: dict[str, Any] = {"__key__": checked_key(raw["__key__"], f"shard {url!r}"), "__url__": url}
    members = sorted(name for name in raw if not name.startswith("__"))
    for name in IMAGE_NAMES:
        data = _member(raw, name)
        if data is not None:
            sample[name] = _decoded(data, name, raw)
    if "meta.json" in raw:
        try:
            sample["meta"] = json.loads(raw["meta.json"])
        except ValueError as error:
            raise DataError(f"{sample_name(raw)}: its meta.json is not JSON ({error})") from error
    if "gt" not in sample and "lq" not in sample:
        raise DataError(f"{sample_name(raw)} has neither a gt nor an lq image (members: {members})")
    return sample


def _decoded(data: bytes, name: str, raw: dict[str, Any]) -> tuple[np.ndarray, float]:
    """``decode_image`` of member ``name``; a failure raises ValueError naming the sample and its shard."""
    try:
        return decode_image(data, channels=1 if name == "mask" else 3)
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds; all mean "not a readable image"
        detail = "not an image file PIL can read" if isinstance(error, UnidentifiedImageError) else repr(error)
        raise DataError(f"{sample_name(raw)}: its {name} image does not decode: {detail}") from error


def _grid(sample: dict[str, Any], scale: int) -> tuple[int, int, int]:
    """The crop grid ``(height, width, unit)``: LQ pixels (unit = scale) when paired, else GT pixels.

    A GT image may exceed ``scale`` times its LQ by fewer than ``scale`` pixels (no mod-crop).
    """
    if "lq" not in sample:
        height, width = sample["gt"][0].shape[:2]
        return height, width, 1
    height, width = sample["lq"][0].shape[:2]
    for name in ("gt", "mask"):
        if name in sample:
            big_h, big_w = sample[name][0].shape[:2]
            if (big_h // scale, big_w // scale) != (height, width):
                sizes = f"{name} is {big_h}x{big_w} but lq is {height}x{width}"
                raise DataError(f"{sample_name(sample)}: {sizes} at scale {scale}")
    return height, width, scale


def crop(sample: dict[str, Any], top: int, left: int, size: int, unit: int) -> dict[str, Any]:
    """Crop every image to ``size`` GT pixels at grid position (top, left); LQ gets ``size // unit``."""
    cropped = dict(sample)
    for name in IMAGE_NAMES:
        if name in sample:
            pixels, peak = sample[name]
            step = 1 if name == "lq" else unit  # grid cell -> pixels of this image
            extent = size // unit * step
            window = pixels[top * step : top * step + extent, left * step : left * step + extent]
            cropped[name] = (window, peak)
    return cropped


def _check_fits(sample: dict[str, Any], height: int, width: int, cells: int) -> None:
    """Raise ImageTooSmall unless a crop of ``cells`` grid cells fits in ``height x width``."""
    if height < cells or width < cells:
        raise ImageTooSmall(f"{sample_name(sample)}: {height}x{width} grid is smaller than the crop ({cells})")


def random_crop(sample: dict[str, Any], size: int, scale: int, rng: np.random.Generator) -> dict[str, Any]:
    """Crop at a uniform position drawn on the LQ grid (GT position = LQ position * scale)."""
    height, width, unit = _grid(sample, scale)
    cells = size // unit
    _check_fits(sample, height, width, cells)
    top = int(rng.integers(0, height - cells + 1))
    left = int(rng.integers(0, width - cells + 1))
    return crop(sample, top, left, size, unit)


def centre_crop(sample: dict[str, Any], size: int, scale: int) -> dict[str, Any]:
    """Crop the centre ``size x size`` GT pixels (and the matching LQ window)."""
    height, width, unit = _grid(sample, scale)
    cells = size // unit
    _check_fits(sample, height, width, cells)
    return crop(sample, (height - cells) // 2, (width - cells) // 2, size, unit)


def dihedral(sample: dict[str, Any], mirror: bool, quarter_turns: int) -> dict[str, Any]:
    """Mirror left-right (if ``mirror``), then rotate by ``quarter_turns`` x 90 degrees; same on every image."""
    moved = dict(sample)
    for name in IMAGE_NAMES:
        if name in sample:
            pixels, peak = sample[name]
            if mirror:
                pixels = pixels[:, ::-1]
            moved[name] = (np.rot90(pixels, quarter_turns, axes=(0, 1)), peak)
    return moved


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
            raise StreamStopped(f"{self.consecutive} training shard draws or samples in a row gave no sample "
                               f"(data.max_consecutive_skips: {self.max_consecutive}); last error: {error!r}"
                               f"{empty}") from error  # fmt: skip
        return True

    def shard_failed(self, error: BaseException) -> bool:
        """Count a shard draw that failed (a broken tar, or a streamed shard that stayed unreachable through
        its retries). When ``unreachable_limit`` distinct shards in a row could not be fetched at all, the
        source is down: stop now, naming them, instead of after ``max_consecutive`` slow draws."""
        url = getattr(error, "url", None)
        if getattr(error, "unreachable", False) and url is not None:
            self.unreachable[url] = None
            if len(self.unreachable) >= self.unreachable_limit:
                raise StreamStopped(f"{len(self.unreachable)} training shards in a row could not be read, retries "
                                    f"included: {brief(self.unreachable)}; last error: {error}") from error  # fmt: skip
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


def worker_role(skip: int) -> tuple[int, int]:
    """The calling loader worker's role and the number of workers (``(0, 1)`` in-process).

    The DataLoader takes batches from its workers in turn, starting with worker 0, so batch ``i``
    of a stream comes from worker ``i % n``. A stream resumed after ``skip`` batches must hand
    batch ``skip`` to worker 0: worker ``w`` plays the part of worker ``(w + skip) % n`` of the
    uninterrupted stream (its seeds and its share of the batches).
    """
    info = get_worker_info()
    if info is None:
        return 0, 1
    return (info.id + skip) % info.num_workers, info.num_workers


@dataclass(frozen=True)
class StreamSeed:
    """Deterministic seeds for the training stream of one (seed, rank, epoch) in every worker.

    ``skip``: batches the stream resumes after (see ``worker_role``).
    """

    seed: int
    rank: int
    epoch: int
    skip: int = 0

    def entropy(self, stream: int) -> list[int]:
        """Entropy words for random stream ``stream`` of the calling loader worker (0 in-process)."""
        role, _ = worker_role(self.skip)
        return [self.seed, self.rank, self.epoch, role, stream]

    def rng(self, stream: int) -> np.random.Generator:
        """A numpy generator for random stream ``stream`` of this worker."""
        return np.random.default_rng(self.entropy(stream))


class ShardDraws(IterableDataset):
    """Pipeline source: shard URLs drawn uniformly with replacement, endlessly, seeded per worker.

    (webdataset's ``ResampledShards`` also counts how often the object was iterated in the
    process into its seed, which differs between in-process and worker loading.)
    """

    def __init__(self, urls: list[str], seeds: StreamSeed) -> None:
        self.urls, self.seeds = urls, seeds

    def __iter__(self) -> Iterator[dict[str, str]]:
        rng = self.seeds.rng(SHARD_DRAWS)
        while True:
            yield {"url": self.urls[int(rng.integers(len(self.urls)))]}


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
    def of(cls, require_gt: bool, require_lq: bool | None, degradation: Pipeline | None) -> "TrainLayout":
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
        has_image = any(_member(raw, name) is not None for name in ("gt", "lq"))  # else decode_sample says so
        for name, reason in self.required.items():
            if has_image and _member(raw, name) is None:
                raise MissingImage(f"{sample_name(raw)} has no {name} image (members: {members}); {reason}")
        kept = dict(raw)
        for name, reason in self.ignored.items():
            dropped = [member for member in members if member.split(".")[0] == name]
            if dropped:
                skips.warn_once(f"ignored {name}", f"training ignores the shards' {name} images (warned once per "
                                                   f"worker): {reason}; first seen in {sample_name(raw)}")  # fmt: skip
                for member in dropped:
                    del kept[member]
        return kept


SKIP_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (ImageTooSmall, "too small"), (MissingImage, "incomplete"), (UnsafeKeyError, "unsafe key"),
)  # fmt: skip
"""How a training worker names the bad samples it skips, by error class (else "corrupt")."""


class TrainSamples:
    """Pipeline stage in a worker: select the images of ``layout``, decode, random crop, flip and rotate;
    skip and count bad samples (undecodable, too small, lacking a required image, an unsafe key)."""

    def __init__(
        self,
        crop_size: int,
        scale: int,
        flip: bool,
        rot90: bool,
        seeds: StreamSeed,
        skips: SkipCounter,
        layout: TrainLayout,
    ) -> None:
        self.crop_size, self.scale, self.flip, self.rot90 = crop_size, scale, flip, rot90
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
        """Decode, crop, then apply a random element of the flips/rotations allowed."""
        sample = random_crop(decode_sample(raw), self.crop_size, self.scale, rng)
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
                _grid(sample, self.scale)  # checks the GT/LQ sizes agree
            yield sample


def resize_sample(sample: dict[str, Any], size: int, scale: int) -> dict[str, Any]:
    """Every image resized to ``size x size`` (an LQ smaller than its GT to ``size // scale``):
    bicubic with antialiasing, clamped to the pixel range, kept as floats (no re-quantisation);
    a mask by nearest neighbour. The protocol of papers that score at a fixed size (RDDM: 256)."""
    resized = dict(sample)
    gt_shape = sample["gt"][0].shape[:2] if "gt" in sample else None
    for name in IMAGE_NAMES:
        if name not in sample:
            continue
        pixels, peak = sample[name]
        side = size // scale if name == "lq" and gt_shape is not None and pixels.shape[:2] != gt_shape else size
        image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]
        if name == "mask":
            out = torch.nn.functional.interpolate(image, size=(side, side), mode="nearest")
        else:
            out = torch.nn.functional.interpolate(image, size=(side, side), mode="bicubic", antialias=True,
                                                  align_corners=False).clamp(0, peak)  # fmt: skip
        resized[name] = (out[0].permute(1, 2, 0).numpy(), peak)
    return resized


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
            self.skips.warn_once("mixed masks", f"dropping the masks of batch {keys}: only some of its samples "
                                                "have one (warned once per worker)")  # fmt: skip
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


def worker_share(batches: int) -> int:
    """How many of a stream's first ``batches`` batches the calling worker's role produced."""
    role, num_workers = worker_role(batches)
    return max(0, math.ceil((batches - role) / num_workers))


class StepsPerEpoch:
    """The training loader: ``steps`` batches per epoch, each epoch a fresh stream seeded by its number.

    ``make_loader(epoch, skip)`` builds the loader of one epoch, dropping its first ``skip``
    batches. Lightning checkpoints ``state_dict()`` (the epoch and the batches the training loop
    has taken from it, read through ``batches_taken``) and, on resume, passes it back through
    ``load_state_dict`` before the first ``iter()``, which then continues that epoch where the
    interrupted run stopped. ``len()`` is ``steps`` (Lightning's epoch length).

    ``current_epoch`` gives the epoch of a new iterator (the trainer's); without it, epochs count
    the ``iter()`` calls.
    """

    def __init__(
        self,
        make_loader: Callable[[int, int], Iterable[dict[str, Any]]],
        steps: int,
        current_epoch: Callable[[], int] | None = None,
        batches_taken: Callable[[], int] | None = None,
    ) -> None:
        self.make_loader, self.steps = make_loader, steps
        self.current_epoch, self.batches_taken = current_epoch, batches_taken
        self.epoch = -1  # epoch of the live iterator
        self._resume: tuple[int, int] | None = None
        self._stream: Iterator[dict[str, Any]] | None = None
        self._yielded = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
        else:
            epoch = self.current_epoch() if self.current_epoch is not None else self.epoch + 1
            skip = 0
        self.close()
        self.epoch, self._yielded = epoch, skip
        self._stream = iter(self.make_loader(epoch, skip))
        return self._take(self._stream, self.steps - skip)

    def _take(self, stream: Iterator[dict[str, Any]], count: int) -> Iterator[dict[str, Any]]:
        for batch in itertools.islice(stream, count):
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The stream position: epoch and batches of it the training loop has taken."""
        taken = self.batches_taken() if self.batches_taken is not None else self._yielded
        return {"epoch": self.epoch, "batches": taken, "steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next ``iter()`` continue the stream at ``state``."""
        epoch, taken = int(state["epoch"]), int(state["batches"])
        if state.get("steps", self.steps) != self.steps:
            warnings.warn(
                f"data.steps_per_epoch changed from {state['steps']} to {self.steps} since the checkpoint: the "
                f"training stream restarts at epoch {epoch + 1} instead of continuing epoch {epoch} exactly",
                stacklevel=2,
            )
            epoch, taken = epoch + 1, 0
        if taken >= self.steps:  # saved at the end of an epoch: the next one starts from its beginning
            epoch, taken = epoch + 1, 0
        self._resume = (epoch, taken)

    def close(self) -> None:
        """Close the live iterator now, which stops its worker processes (merely dropping it would leave
        them to a later garbage collection, which joins each with a 5 s timeout)."""
        stream, self._stream = self._stream, None
        if hasattr(stream, "close"):
            stream.close()


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
        require_gt: bool = True,
        require_lq: bool | None = None,
        read_timeout: float = 120.0,
        retries: int = 3,
    ) -> None:
        super().__init__()
        _check_sizes(crop_size, scale, val_crop_size, seed)
        for argument, value, minimum in (
            ("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
            ("steps_per_epoch", steps_per_epoch, 1), ("num_workers", num_workers, 0),
            ("shuffle_buffer", shuffle_buffer, 0), ("max_consecutive_skips", max_consecutive_skips, 0),
            ("retries", retries, 0),
        ):  # fmt: skip
            check_integer(f"data.{argument}", value, minimum)
        seconds = isinstance(read_timeout, (int, float)) and not isinstance(read_timeout, bool)
        if not (seconds and 0 < read_timeout < math.inf):
            raise ValueError(f"data.read_timeout must be a number of seconds > 0, got {read_timeout!r}")
        if not require_gt and require_lq is False:
            raise ValueError("data.require_gt and data.require_lq are both false: a training sample would need no "
                             "image")
        self.shards = {
            "train_shards": train_shards,
            "val_shards": val_shards,
            "test_shards": test_shards,
            "predict_shards": predict_shards,
        }
        self.crop_size, self.scale, self.val_crop_size = crop_size, scale, val_crop_size
        if val_resize is not None and (val_resize < scale or val_resize % scale):
            raise ValueError(f"data.val_resize ({val_resize}) must be a positive multiple of data.scale ({scale})")
        self.val_resize = val_resize
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
            TrainSamples(crop_size, self.scale, self.flip, self.rot90, seeds, skips, self.layout),
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
        return wds.WebLoader(dataset, batch_size=None, num_workers=self.num_workers, persistent_workers=keep,
                             worker_init_fn=ExitWithParent())  # fmt: skip

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
            return _seeded_generator([self.seed, self.rank, self.trainer.global_step, DEGRADATION_DRAWS], device)
        keys_digest = zlib.crc32("\n".join(keys).encode())  # stable across processes, unlike hash()
        return _seeded_generator([self.seed, keys_digest, DEGRADATION_DRAWS], device)


def _seeded_generator(entropy: list[int], device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from a list of non-negative integers."""
    seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)


def _check_sizes(crop_size: int, scale: int, val_crop_size: int | None, seed: int) -> None:
    """Raise ValueError on crop sizes that the LQ grid cannot hold, or a negative seed."""
    if scale < 1 or crop_size < scale or crop_size % scale:
        raise ValueError(f"data.crop_size ({crop_size}) must be a positive multiple of data.scale ({scale})")
    if val_crop_size is not None and (val_crop_size < scale or val_crop_size % scale):
        raise ValueError(f"data.val_crop_size ({val_crop_size}) must be a positive multiple of data.scale ({scale})")
    if seed < 0:
        raise ValueError(f"data.seed must be >= 0, got {seed}")


