"""Restoring an image of any size by overlapping tiles blended with a smooth window.

The input is cut into tiles of `tile` x `tile` pixels that overlap by `overlap` pixels; tiles are
restored in batches of `batch` by any function `restore(lq_tiles) -> tiles` (a method's `restore`), whose
output may be `scale` times larger; every output tile is multiplied by a window and added into the
output, and the sum is divided by the summed windows. The output leaves in horizontal bands as soon
as no later tile reaches them (`restored_bands`), so peak memory is that of one batch of tiles and one
row of output tiles, whatever the height of the image.

The window of a tile is the product of two 1-D profiles. Along an edge the tile shares with a neighbour
it is 0 for the first `overlap / 4` pixels, rises as a raised cosine over the next `overlap / 2` and is 1
beyond; along an edge on the image border it is 1. So in every overlap the two windows cross smoothly
(no seam when tiles disagree, as stochastic samplers' tiles do), and a pixel closer than `overlap / 4`
to a tile's inner edge never counts: when the network's receptive field reaches at most `overlap / 4`
input pixels from the output pixel, tiled and whole-image restoration agree to rounding.

Tiles are clipped to the image: a 20000 x 16 image is cut into 256 x 16 tiles, never padded to 256 x 256.
An image (or tile) below the smallest size a method takes (a U-Net pads by reflection to a multiple of
its down-sampling factor, which needs more pixels than the padding) fails; `smallest_side` finds that
size by trying, so that the error can say it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

RestoreFn = Callable[[Tensor], Tensor]

SMALLEST_SIDE_TRIED = 64
"""A failed image with a side below this is checked against the smallest size the checkpoint restores."""

_smallest_sides: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its smallest side (or None)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering [0, length) with at least `overlap` shared."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def profile(length: int, overlap: int, ramp_start: bool, ramp_end: bool, dtype: torch.dtype = torch.float32) -> Tensor:
    """A 1-D window: 0 on the outer quarter of the overlap, a raised cosine over its middle half, else 1.
    `ramp_start`/`ramp_end`: whether that end borders another tile (else the window is 1 up to it)."""
    weights = torch.ones(length, dtype=torch.float64)
    margin, ramp = overlap // 4, overlap - 2 * (overlap // 4)
    if overlap > 0:
        # distance d (pixel centres) from the edge: 0 below margin, sin^2 ramp across [margin, margin + ramp]
        d = torch.arange(length, dtype=torch.float64) + 0.5
        rise = torch.sin(0.5 * math.pi * ((d - margin) / ramp).clamp(0, 1)) ** 2
        if ramp_start:
            weights = weights * rise
        if ramp_end:
            weights = weights * rise.flip(0)
    return weights.to(dtype)


def restore_tiled(
    restore: RestoreFn,
    lq: Tensor,
    tile: int,
    overlap: int,
    batch: int = 1,
    progress: bool = False,
) -> Tensor:
    """Restore `lq` (1 x C x H x W) tile by tile; returns 1 x C' x sH x sW, s the restoration's scale.

    The whole output at once: `restored_bands` gives it band by band, so that the output never has to
    be held in memory as a float image.
    """
    return torch.cat([band for _, band in restored_bands(restore, lq, tile, overlap, batch, progress)], dim=-2)


def restored_bands(
    restore: RestoreFn,
    lq: Tensor,
    tile: int,
    overlap: int,
    batch: int = 1,
    progress: bool = False,
) -> Iterator[tuple[int, Tensor]]:
    """Restore `lq` (1 x C x H x W) tile by tile and yield the output in horizontal bands, top to bottom:
    (first output row, 1 x C' x rows x sW), s the restoration's integer scale.

    An image no larger than one tile is restored whole (one band). `restore` receives N x C x h x w
    tiles (N <= `batch`, all of one size) and must return N x C' x sh x sw. Tiles run in row-major order;
    a band is yielded as soon as no later tile reaches it, so the float buffer spans one row of tiles
    (tile x s rows), never the whole output.
    """
    if lq.ndim != 4 or lq.shape[0] != 1:
        raise ValueError(f"restore_tiled takes one image, 1 x C x H x W; got shape {tuple(lq.shape)}")
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if batch < 1:
        raise ValueError(f"the tile batch must be at least 1, got {batch}")
    height, width = lq.shape[-2:]
    if height <= tile and width <= tile:
        yield 0, restore(lq)
        return
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    positions = [(y, x) for y in ys for x in xs]
    band = weights = None  # accumulators for output rows [band_top, band_top + th * scale)
    band_top, scale = 0, 0
    bar = tqdm(total=len(positions), desc="tiles", unit="tile", disable=not progress, leave=False)
    for first in range(0, len(positions), batch):
        chunk = positions[first : first + batch]
        restored = restore(torch.cat([lq[..., y : y + th, x : x + tw] for y, x in chunk]))
        if band is None:
            scale = restored.shape[-1] // tw
            if scale < 1 or restored.shape[-2:] != (th * scale, tw * scale):
                raise ValueError(
                    f"a {th} x {tw} tile came back {tuple(restored.shape[-2:])}: not an integer scale of it"
                )
            band = restored.new_zeros(1, restored.shape[1], th * scale, width * scale)
            weights = restored.new_zeros(1, 1, th * scale, width * scale)
        for (y, x), piece in zip(chunk, restored):
            top = y * scale
            if top > band_top:  # a new row of tiles: the rows above it are final
                done = top - band_top
                yield band_top, band[..., :done, :] / weights[..., :done, :]
                band, weights = _shift_up(band, done), _shift_up(weights, done)
                band_top = top
            window = _window(y, x, th, tw, height, width, overlap, scale, piece.dtype).to(piece.device)
            columns = slice(x * scale, (x + tw) * scale)
            band[..., columns] += window * piece
            weights[..., columns] += window
        bar.update(len(chunk))
    bar.close()
    yield band_top, band / weights


def _shift_up(buffer: Tensor, rows: int) -> Tensor:
    """The buffer moved up by `rows` (the top rows dropped), zeros below."""
    shifted = torch.zeros_like(buffer)
    shifted[..., : buffer.shape[-2] - rows, :] = buffer[..., rows:, :]
    return shifted


def _window(y: int, x: int, th: int, tw: int, height: int, width: int, overlap: int, scale: int, dtype) -> Tensor:
    """The output-space window of the tile at (y, x): ramps only on edges shared with another tile."""
    rows = profile(th * scale, overlap * scale, ramp_start=y > 0, ramp_end=y + th < height, dtype=dtype)
    cols = profile(tw * scale, overlap * scale, ramp_start=x > 0, ramp_end=x + tw < width, dtype=dtype)
    return rows[:, None] * cols[None, :]


def smallest_side(restore: RestoreFn, like: Tensor, limit: int) -> int | None:
    """The smallest n for which `restore` takes an n x n image of `like`'s channels, dtype and device (tried
    n = 1, 2, ..., `limit`), or None when it takes none of them. Any size from the first that works on is
    taken to work too, as it does for reflection padding to a multiple and for blur kernels."""
    for n in range(1, limit + 1):
        try:
            restore(like.new_full((1, like.shape[1], n, n), 0.5))
        except (RuntimeError, ValueError):
            continue
        return n
    return None


def size_problem(model: Any, height: int, width: int, tile: int, device: torch.device) -> str | None:
    """Why restoring an image of height x width pixels with `model` (a method: `restore`, `tileable`) failed when
    it is smaller than the smallest image the checkpoint restores (`smallest_side`, found once per model), as one
    line naming both sizes; None when its size is not the reason."""
    tiled = tile > 0 and model.tileable
    side = min(height, width, tile) if tiled else min(height, width)
    if side >= SMALLEST_SIDE_TRIED:
        return None
    if model not in _smallest_sides:

        def restore(lq: Tensor) -> Tensor:
            return model.restore(lq)

        with torch.no_grad():
            probe = torch.zeros(1, 3, 1, 1, device=device)
            _smallest_sides[model] = smallest_side(restore, probe, SMALLEST_SIDE_TRIED)
    smallest = _smallest_sides[model]
    if smallest is None or side >= smallest:
        return None
    minimum = f"{smallest} x {smallest} pixels"
    if min(height, width) >= smallest:
        return f"--tile {tile} is below the smallest tile this {type(model).__name__} checkpoint restores ({minimum})"
    return f"{height} x {width} pixels is too small: this {type(model).__name__} checkpoint restores images of at least {minimum}"
