"""Decoding shard samples: member bytes to integer pixels and their peak, and pixels to float tensors.

A raw webdataset sample (``__key__``, ``__url__``, members by name) becomes a dict with ``__key__``,
``__url__``, each image of :data:`~datamodules.format.IMAGE_NAMES` present as ``(pixels, peak)`` (integer
``H x W x C`` pixels, C = 1 for ``mask``, and the value that maps them to 1) and ``meta``. Every error
names the sample and its shard.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from datamodules.format import IMAGE_NAMES, META_MEMBER, image_member, sample_name
from ir_lightning.errors import DataError
from ir_lightning.io.atomic import checked_key

UINT8_PEAK: float = 255.0
"""Largest 8-bit pixel value: 8-bit images are divided by it."""

UINT16_PEAK: float = 65535.0
"""Largest 16-bit pixel value: 16-bit images are divided by it."""

SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
"""PIL modes of 16-bit greyscale images (PIL opens 16-bit PNGs as one of these)."""


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
        data = image_member(raw, name)
        if data is not None:
            sample[name] = _decoded(data, name, raw)
    if META_MEMBER in raw:
        try:
            sample["meta"] = json.loads(raw[META_MEMBER])
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
