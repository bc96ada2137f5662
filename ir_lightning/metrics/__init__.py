"""Scores under the papers' protocols: PSNR and SSIM (`psnr_ssim`, whose names are re-exported here), LPIPS
(`lpips`), FID (`fid`), and the evaluation presets of `ir-lightning evaluate` (`protocols`).

The re-exports are imported on first use (PEP 562), so `protocols` (plain data) loads without torch."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ir_lightning.metrics.psnr_ssim import (
        PIXEL_MAX,
        RestorationMetrics,
        crop_border,
        psnr_per_image,
        quantize,
        rgb_to_y,
        ssim_per_image,
    )

__all__ = ["PIXEL_MAX", "RestorationMetrics", "crop_border", "psnr_per_image", "quantize", "rgb_to_y", "ssim_per_image"]


def __getattr__(name: str) -> Any:
    """`psnr_ssim`'s names, imported on first use."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module("ir_lightning.metrics.psnr_ssim"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
