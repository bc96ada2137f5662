"""Image grids for people to look at: LR | bicubic | restored | HR rows, stacked, and grids of panels with column
titles drawn on them (`titled_grid`), as uint8 arrays or PNG bytes (the validation image logger and `ir-lightning
demo`). Plain torch and Pillow, no Lightning."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ir_lightning.degradations.resize import bicubic_upsample
from ir_lightning.metrics.psnr_ssim import quantize


def to_uint8_hwc(img: Tensor) -> np.ndarray:
    """C×H×W float in [0, 1] -> H×W×C uint8 (round to nearest)."""
    return quantize(img.detach().float()).byte().permute(1, 2, 0).cpu().numpy()


def png_bytes(img: Tensor) -> bytes:
    """C×H×W float in [0, 1] -> PNG file bytes (grey for one channel)."""
    array = to_uint8_hwc(img)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def comparison_row(lq: Tensor, restored: Tensor, gt: Tensor | None, gap: int = 4) -> Tensor:
    """One row of panels for one image: LR (pixel-replicated) | bicubic | restored | HR.

    All tensors are C×H×W in [0, 1]; `lq` may be smaller than `restored`. Missing HR is left out.
    """
    size = restored.shape[-2:]
    lq = lq[None].float()
    panels = [
        F.interpolate(lq, size=size, mode="nearest")[0],
        bicubic_upsample(lq, size)[0],
        restored.float(),
    ]
    if gt is not None:
        panels.append(gt.float())
    spacer = torch.ones(restored.shape[0], size[0], gap, device=restored.device)
    row = [p for panel in panels for p in (panel, spacer)][:-1]
    return torch.cat(row, dim=-1)


def stack_rows(rows: list[Tensor], gap: int = 4) -> Tensor:
    """Stack rows of equal height vertically, padding narrower rows with white on the right."""
    width = max(r.shape[-1] for r in rows)
    padded = [F.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    spacer = torch.ones(rows[0].shape[0], gap, width, device=rows[0].device)
    return torch.cat([p for r in padded for p in (r, spacer)][:-1], dim=-2)


TITLE_PAD = 4
"""Pixels of white around a title line: its band is the font's line height plus twice this."""
TITLE_INK = (0, 0, 0)
"""Colour of the titles (RGB, 8-bit)."""


def title_band_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> int:
    """Height in pixels of one title line of `titled_grid` in `font` (Pillow's default font when None)."""
    font = font or ImageFont.load_default()
    *_, bottom = font.getbbox("Ag")  # an ascender and a descender: the line's full height below the origin
    return int(bottom) + 2 * TITLE_PAD


def titled_grid(
    rows: list[list[Tensor]],
    titles: list[str],
    heading: str | None = None,
    gap: int = 4,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None,
) -> Tensor:
    """A grid of panels with a title drawn above each column (and an optional `heading` line above those), on
    white, as a 3 x H x W float tensor in [0, 1] (`png_bytes` writes it, `stack_rows` stacks grids).

    `rows[i][j]` is the panel of row i, column j (C x h x w in [0, 1], C = 1 or 3, any size); every row has one
    panel per title. A column is as wide as its widest panel, a row as tall as its tallest; each panel sits at the
    top left of its cell, cells `gap` pixels apart. Titles are centred over their column and cut at its edges;
    the heading starts at the left edge. Each title line is `title_band_height(font)` pixels high, drawn in
    Pillow's default font unless `font` is given (no font file needed)."""
    if not rows or any(len(row) != len(titles) for row in rows):
        raise ValueError(
            f"titled_grid needs rows of {len(titles)} panels (one per title), got {[len(r) for r in rows]}"
        )
    font = font or ImageFont.load_default()
    band = title_band_height(font)
    widths = [max(int(row[j].shape[-1]) for row in rows) for j in range(len(titles))]
    heights = [max(int(panel.shape[-2]) for panel in row) for row in rows]
    lefts = [sum(widths[:j]) + j * gap for j in range(len(titles))]
    top = band * (2 if heading else 1)
    canvas = Image.new("RGB", (lefts[-1] + widths[-1], top + sum(heights) + gap * (len(rows) - 1)), "white")
    draw = ImageDraw.Draw(canvas)
    if heading:
        draw.text((TITLE_PAD, TITLE_PAD), heading, fill=TITLE_INK, font=font)
    for left, width, title in zip(lefts, widths, titles):
        label = Image.new("RGB", (width, band), "white")  # drawn apart and pasted: a long title is cut at its column
        text_width = draw.textlength(title, font=font)
        ImageDraw.Draw(label).text(((width - text_width) / 2, TITLE_PAD), title, fill=TITLE_INK, font=font)
        canvas.paste(label, (left, top - band))
    y = top
    for row, height in zip(rows, heights):
        for left, panel in zip(lefts, row):
            pixels = to_uint8_hwc(panel.expand(3, -1, -1) if panel.shape[0] == 1 else panel)
            canvas.paste(Image.fromarray(pixels), (left, y))
        y += height + gap
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
