"""The shard format, shared by the writer (``datamodules.writer``) and the reader (``datamodules.decode``).

A shard is a plain POSIX tar file in which the members of one sample sit next to each other and share a
key: ``<key>.gt.png`` (or another of :data:`IMAGE_EXTENSIONS`), optionally ``<key>.lq.*`` (paired data),
``<key>.mask.png`` (single-channel, on the GT grid) and ``<key>.meta.json``. A sample may hold ``lq.*``
alone (real degraded images without a clean target). WebDataset splits a member name at the first dot
of its base name, so keys never contain a dot; keys become file names downstream, so a key must be a
plain file name (:func:`ir_lightning.io.atomic.checked_key`). See the data contract in DESIGN.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ir_lightning.io.atomic import UnsafeKeyError, checked_key

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
"""Image types, lower case, in the order a sample's members are looked for: the one list of the suite
(shard members written and read, image files listed in folders, ``ir-lightning restore``/``evaluate``)."""

IMAGE_SUFFIXES: tuple[str, ...] = tuple(f".{extension}" for extension in IMAGE_EXTENSIONS)
"""File suffixes of :data:`IMAGE_EXTENSIONS` (matched in any case)."""

IMAGE_NAMES: tuple[str, ...] = ("gt", "lq", "mask")
"""Image members of a sample; ``mask`` is single-channel and lives on the GT grid."""

META_MEMBER = "meta.json"
"""Optional member of a sample: a JSON object passed through to the batch (``meta``)."""


class ShardError(ValueError):
    """A problem with the user's input (folders, keys, split options), reported without a traceback."""


@dataclass(frozen=True)
class ShardSample:
    """One sample to write: a key without dots and its files by member name, e.g. ``{"gt.png": b"..."}``.

    ``sources`` optionally names where each file came from (a path), for warnings.
    """

    key: str
    files: dict[str, bytes]
    sources: dict[str, str] = field(default_factory=dict)


def check_key(key: str, where: str = "sample") -> None:
    """Raise :class:`ShardError` naming ``where`` the key came from unless ``key`` is a plain file name
    (:func:`ir_lightning.io.atomic.checked_key`: no ``/``, ``\\``, NUL, ``..``) without dots."""
    try:
        checked_key(key, where)
    except UnsafeKeyError as error:
        raise ShardError(str(error)) from None
    if "." in key:
        raise ShardError(f"{where}: bad sample key {key!r}: keys must be non-empty and contain no '.'")


def sanitise_key(stem: str) -> str:
    """Sample key of a relative path without extension: ``/``, ``\\``, ``.`` and NUL become ``_``, so the
    key is a plain file name (:func:`check_key`)."""
    return re.sub(r"[/\\.\0]", "_", stem)


def is_image_member(name: str) -> bool:
    """Whether member ``name`` (``gt.png``, ``meta.json``) holds an image, by its extension."""
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def image_member(raw: dict[str, Any], name: str) -> bytes | None:
    """The bytes of ``name.<ext>`` in a raw webdataset sample for the first image extension present, or None."""
    for extension in IMAGE_EXTENSIONS:
        data = raw.get(f"{name}.{extension}")
        if data is not None:
            return data
    return None


def sample_name(sample: dict[str, Any]) -> str:
    """``sample '<key>' of shard '<url>'`` for a raw or decoded sample (both carry ``__key__`` and ``__url__``)."""
    return f"sample {sample['__key__']!r} of shard {sample.get('__url__', '<unknown>')!r}"
