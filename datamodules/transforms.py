"""Crops, flips, rotations and resizing of decoded samples (``datamodules.decode``), the same on every image.

A paired crop is drawn on the LQ grid and scaled to the GT grid, so the two stay aligned: a grid cell is
one LQ pixel and ``scale`` x ``scale`` GT (and mask) pixels. A GT image may exceed ``scale`` times its LQ
by fewer than ``scale`` pixels (no mod-crop).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.format import IMAGE_NAMES, sample_name
from ir_lightning.degradations.resize import bicubic_resize
from ir_lightning.errors import DataError


class ImageTooSmall(ValueError):
    """A sample's image is smaller than the crop."""


def crop_grid(sample: dict[str, Any], scale: int) -> tuple[int, int, int]:
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
    height, width, unit = crop_grid(sample, scale)
    cells = size // unit
    _check_fits(sample, height, width, cells)
    top = int(rng.integers(0, height - cells + 1))
    left = int(rng.integers(0, width - cells + 1))
    return crop(sample, top, left, size, unit)


def centre_crop(sample: dict[str, Any], size: int, scale: int) -> dict[str, Any]:
    """Crop the centre ``size x size`` GT pixels (and the matching LQ window)."""
    height, width, unit = crop_grid(sample, scale)
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


def resize_sample(sample: dict[str, Any], size: int, scale: int) -> dict[str, Any]:
    """Every image resized to ``size x size`` (an LQ smaller than its GT to ``size // scale``): bicubic with
    antialiasing (``ir_lightning.degradations.resize``), clamped to the pixel range, kept as floats (no
    re-quantisation); a mask by nearest neighbour. The protocol of papers that score at a fixed size (RDDM: 256)."""
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
            out = bicubic_resize(image, (side, side), antialias=True).clamp(0, peak)
        resized[name] = (out[0].permute(1, 2, 0).numpy(), peak)
    return resized
