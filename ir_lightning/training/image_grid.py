"""Image grids for people to look at: LR | bicubic | restored | HR rows, stacked, as uint8 arrays or PNG bytes
(the validation image logger and `ir-lightning demo`). Plain torch and Pillow, no Lightning."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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
