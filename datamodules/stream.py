"""The training stream's bookkeeping: shard URLs, seeds, worker roles and epochs of a fixed length.

- :func:`expand_shards` turns brace patterns, globs, local paths and streamed URLs (``http(s)://``,
  ``pipe:``, other ``scheme://``) into shard URLs, checking that local shards exist.
- Every random draw of a training stream is a function of (seed, rank, epoch, worker) and of the
  position in the stream (:class:`StreamSeed`, seeded by ``ir_lightning.training.seeding``), never of
  process ids or the clock; the DataLoader takes batches from its workers in turn, so a stream resumed
  after ``skip`` batches gives each worker the role it had in the uninterrupted stream
  (:func:`worker_role`, :func:`worker_share`).
- :class:`StepsPerEpoch` is the training loader: ``steps`` batches per epoch, each epoch a fresh stream
  seeded by its number, checkpointed as two numbers (epoch, batches taken) and resumed exactly.
"""

from __future__ import annotations

import glob
import itertools
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import braceexpand
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ir_lightning.errors import ConfigurationError
from ir_lightning.training.seeding import SHARD_DRAWS, numpy_generator

REMOTE_URL = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")
"""Shard URLs that are streamed, not checked at setup: ``pipe:...``, ``http(s)://``, ``s3://``, ..."""

GLOB_MAGIC = re.compile(r"[*?\[]")
"""Characters that make a local path a glob pattern."""

BRIEF_LIST = 5
"""Shard URLs an error message lists before it says how many more there are."""


class MissingShards(ConfigurationError, FileNotFoundError):
    """A local shard pattern matches no file (named): one line, exit status 2."""


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
        return numpy_generator(self.entropy(stream))


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
