"""Shared fixtures: small WebDataset shards made from scikit-image's bundled photos."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.format import ShardSample
from datamodules.writer import write_shards

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def photo_crops(n: int, size: int, seed: int) -> list[np.ndarray]:
    """`n` RGB crops of `size`x`size` from scikit-image's astronaut and coffee photos."""
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crops.append(np.ascontiguousarray(photo[y : y + size, x : x + size]))
    return crops


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def sr_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Training shards of uneven sizes (5, 2, 1 samples) and one validation shard of 2 samples."""
    out = tmp_path_factory.mktemp("shards")
    train = photo_crops(8, 64, seed=0)
    groups = [train[:5], train[5:7], train[7:]]
    for g, group in enumerate(groups):
        samples = [ShardSample(key=f"t{g}_{i}", files={"gt.png": png(a)}) for i, a in enumerate(group)]
        write_shards(samples, out, f"part{g}", progress=False)
    val = write_shards(
        [ShardSample(key=f"v{i}", files={"gt.png": png(a)}) for i, a in enumerate(photo_crops(2, 64, seed=1))],
        out,
        "val",
        progress=False,
    )
    return {"train": str(out / "part{0..2}-000000.tar"), "val": val.pattern}


@pytest.fixture(scope="module")
def wandb_service_stopped():
    """For a module whose tests make W&B runs in this process: W&B's service process, which the first run starts,
    is stopped with the module, and with it the `WANDB_SERVICE` variable that would send a later test's
    subprocess runs to that service (tests/datamodules/test_hostile_data.py counts the processes a test leaves)."""
    yield
    import wandb

    wandb.teardown()
