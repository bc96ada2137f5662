"""The suite's seeds: every random stream of a run is a function of integers (the global seed, the rank, the
step or the epoch and loader worker, and the stream's id below), never of process ids or the clock, so a
resumed run draws what an uninterrupted one would have.

One mixing function serves them all (`seed_sequence`: numpy's SeedSequence, so nearby words give unrelated
seeds); `derived_seed`, `torch_generator` and `numpy_generator` take their seeds from it. Plain numpy and
torch: `datamodules` imports this module, and nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# The stream ids: the last word of a stream's seed. Ids are unique among the streams whose words have the same
# shape; streams of different shapes never meet, so their ids may repeat (changing one changes every seed it
# gives, and the exact-resume and determinism tests compare bits).
# - a method's draws at a training step, words (seed, rank, step, id) (`methods.base`):
TRAINING_DRAWS = 0
"""The method's own draws (noise levels, noise), through its `training_generator`."""
GLOBAL_DRAWS = 1
"""torch's global generator (dropout and any other global draw of the step)."""
# - the training stream's draws, words (seed, rank, epoch, worker role, id) (`datamodules.stream.StreamSeed`):
SHARD_DRAWS = 0
"""Which shard each worker reads next."""
CROP_DRAWS = 1
"""Crop positions and flips."""
SHUFFLE_DRAWS = 2
"""The shuffle buffer."""
# - the data module's on-device degradation, words (seed, rank, step, id), or (seed, keys' digest, id) for
#   validation (`datamodules.shard_datamodule`); distinct from the method's ids at the same words:
DEGRADATION_DRAWS = 3
"""Synthetic degradations (kernels, noise, JPEG qualities)."""


def seed_sequence(words: Sequence[int]) -> np.random.SeedSequence:
    """The one mixing of a stream's words (non-negative integers) into a seed."""
    return np.random.SeedSequence([int(word) for word in words])


def _state64(words: Sequence[int]) -> int:
    return int(seed_sequence(words).generate_state(1, dtype=np.uint64)[0])


def derived_seed(*words: int) -> int:
    """A 63-bit seed mixed from non-negative integers (for `torch.manual_seed` and a method's generator)."""
    return _state64(words) >> 1


def torch_generator(words: Sequence[int], device: torch.device | str) -> torch.Generator:
    """A torch generator on `device` seeded with the 64-bit state mixed from `words`."""
    return torch.Generator(device=device).manual_seed(_state64(words))


def numpy_generator(words: Sequence[int]) -> np.random.Generator:
    """numpy's default generator seeded from `words` (`np.random.default_rng(words)` exactly)."""
    return np.random.default_rng(seed_sequence(words))
