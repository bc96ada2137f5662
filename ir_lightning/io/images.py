"""Reading and writing the image files `ir-lightning restore` works on, without losing what the network
does not see: the bit depth (8 or 16), whether the image was grey, and its alpha channel.

PNG files of 16 bits are read with pypng (Pillow reads 16-bit colour PNGs as 8 bits); every other input
(8-bit PNG, JPEG, WebP, BMP, TIFF, palette images) goes through Pillow. Outputs are PNGs written by
pypng row by row, so a restored image is never held whole as a float array. Where an output goes is
decided by `ir_lightning.io.atomic` (`output_image_path`, `lands_in`): inside its output folder, never onto an
input.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image, ImageOps
from torch import Tensor

from datamodules.folders import image_files_below  # noqa: F401  (the one folder listing, re-exported)
from datamodules.format import IMAGE_SUFFIXES  # noqa: F401  (the one list of image types: what `read_image` reads)
from ir_lightning.degradations.resize import bicubic_resize
from ir_lightning.io.atomic import atomic_writer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class ImageFile:
    """An image as the networks see it, plus what they do not.

    `rgb`: 3 x H x W float32 in [0, 1] (a grey image repeated to three channels); `alpha`: H x W integer
    values, or None; `bit_depth`: 8 or 16 (the peak is 2^bit_depth - 1); `grey`: the file had one colour
    channel.
    """

    rgb: Tensor
    alpha: np.ndarray | None
    bit_depth: int
    grey: bool

    @property
    def peak(self) -> int:
        return (1 << self.bit_depth) - 1


def png_bit_depth(data: bytes) -> int | None:
    """The bit depth in a PNG's header, or None for another format."""
    if data[:8] != PNG_SIGNATURE or len(data) < 26:
        return None
    return data[24]


def read_image(path: str | os.PathLike) -> ImageFile:
    """Read an image file; raises OSError / ValueError (Pillow's UnidentifiedImageError is an OSError)."""
    data = Path(path).read_bytes()
    if png_bit_depth(data) == 16:
        try:
            width, height, rows, info = png.Reader(bytes=data).asDirect()
            planes = info["planes"]
            pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
        except png.Error as error:  # a truncated or corrupt 16-bit PNG
            raise ValueError(f"not a readable 16-bit PNG ({error})") from error
        return _split(pixels, has_alpha=info["alpha"], bit_depth=16)
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)  # as viewers show it: the PNG written carries no EXIF
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey outside PNG (TIFF)
            return _split(np.asarray(image).astype(np.uint16)[..., None], has_alpha=False, bit_depth=16)
        # an alpha channel, or a transparent colour (tRNS) in a palette, grey or RGB image
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        grey = image.mode in ("L", "LA", "1")
        mode = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
        pixels = np.asarray(image.convert(mode))
    return _split(pixels.reshape(*pixels.shape[:2], -1), has_alpha=has_alpha, bit_depth=8)


def _split(pixels: np.ndarray, has_alpha: bool, bit_depth: int) -> ImageFile:
    """H x W x planes integers -> ImageFile."""
    colour = pixels[..., :-1] if has_alpha else pixels
    alpha = pixels[..., -1].copy() if has_alpha else None
    grey = colour.shape[-1] == 1
    chw = torch.from_numpy(np.ascontiguousarray(colour.transpose(2, 0, 1), dtype=np.float32)) / ((1 << bit_depth) - 1)
    return ImageFile(
        rgb=chw.expand(3, -1, -1).contiguous() if grey else chw, alpha=alpha, bit_depth=bit_depth, grey=grey
    )


Bands = Iterable[tuple[int, Tensor]]
"""(first row, 1 x 3 x rows x W) pieces of a restored image in [0, 1], top to bottom
(`ir_lightning.inference.tiling.restored_bands`)."""


def png_rows(bands: Bands, like: ImageFile, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The rows of the PNG of a restored image of `size` (H', W'), with `like`'s bit depth, grey-ness
    and alpha, one band at a time.

    A grey input gives a grey output (the mean of the three restored channels). The alpha channel is
    copied untouched when the size is unchanged; when restoration changed the size it is resized
    (bicubic, clamped), the only way to carry it.
    """
    peak = like.peak
    dtype = np.uint16 if like.bit_depth == 16 else np.uint8
    alpha = None if like.alpha is None else _resized_alpha(like.alpha, size, peak)
    for top, band in bands:
        colour = band[0].detach().float().cpu().clamp(0, 1)
        if like.grey:
            colour = colour.mean(0, keepdim=True)
        planes = np.rint(colour.numpy() * peak).astype(dtype)
        if alpha is not None:
            planes = np.concatenate([planes, alpha[None, top : top + planes.shape[1]]])
        yield from planes.transpose(1, 2, 0).reshape(planes.shape[1], -1)  # rows of W' x planes values


def write_png(
    path: str | os.PathLike, restored: Tensor | Bands, like: ImageFile, size: tuple[int, int] | None = None
) -> Path:
    """Write a restored image (3 x H' x W' in [0, 1], or its bands with their total `size`) as a PNG with
    `like`'s bit depth, grey-ness and alpha, streamed row by row into a temporary file beside `path` that
    is renamed onto it at the end (an interrupted write leaves no `path`)."""
    if isinstance(restored, Tensor):
        size, bands = tuple(restored.shape[-2:]), [(0, restored[None])]
    elif size is None:
        raise ValueError("write_png needs the output size when given bands")
    else:
        bands = restored
    height, width = size
    planes = (1 if like.grey else 3) + (like.alpha is not None)
    writer = png.Writer(width, height, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=like.bit_depth)
    with atomic_writer(path) as f:
        writer.write(f, png_rows(bands, like, size))
    return Path(path)


def encode_png(restored: Tensor, like: ImageFile) -> bytes:
    """`write_png` into memory: the PNG bytes of `restored` (3 x H' x W')."""
    buffer = io.BytesIO()
    height, width = restored.shape[-2:]
    planes = (1 if like.grey else 3) + (like.alpha is not None)
    writer = png.Writer(width, height, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=like.bit_depth)
    writer.write(buffer, png_rows([(0, restored[None])], like, (height, width)))
    return buffer.getvalue()


def _resized_alpha(alpha: np.ndarray, size: tuple[int, int], peak: int) -> np.ndarray:
    if alpha.shape == size:
        return alpha
    values = torch.from_numpy(alpha.astype(np.float32))[None, None] / peak
    resized = bicubic_resize(values, size).clamp(0, 1)[0, 0]
    return np.rint(resized.numpy() * peak).astype(alpha.dtype)
