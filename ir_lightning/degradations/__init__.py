"""Synthetic degradations that run on the device, on whole batches (see `basic` for the contract).

- `basic`: bicubic down-scaling, Gaussian blur, Gaussian noise, JPEG, and the `Pipeline` a recipe names;
- `realesrgan`: the second-order real-world degradation model of Real-ESRGAN.

Recipes name classes by their path in this package (`ir_lightning.degradations.Pipeline`).
"""

from ir_lightning.degradations.basic import (
    JPEG,
    PIXEL_LEVELS,
    RGB_CHANNELS,
    BicubicDownsample,
    Degradation,
    GaussianBlur,
    GaussianNoise,
    Pipeline,
    bicubic_upsample,
    check_range,
    uniform,
)

__all__ = [
    "JPEG",
    "PIXEL_LEVELS",
    "RGB_CHANNELS",
    "BicubicDownsample",
    "Degradation",
    "GaussianBlur",
    "GaussianNoise",
    "Pipeline",
    "bicubic_upsample",
    "check_range",
    "uniform",
]
