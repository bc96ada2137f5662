"""The two image ranges: batches carry [0, 1] images, the diffusion papers work in [-1, 1]."""

from __future__ import annotations

from torch import Tensor


def to_signed(x: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1]: 2 x - 1, the range the diffusion works in."""
    return x * 2 - 1


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]: (x + 1) / 2, clamped to [0, 1] (a sampler's output may overshoot)."""
    return ((x + 1) / 2).clamp(0, 1)
