"""Synthetic degradations that run on the device, on whole batches (see `basic` for the contract).

- `basic`: bicubic down-scaling, Gaussian blur, Gaussian noise, JPEG, and the `Pipeline` a recipe names;
- `realesrgan`: the second-order real-world degradation model of Real-ESRGAN;
- `camera`: signal-dependent, spatially correlated camera noise (a "real" domain unlike AWGN);
- `resize`: every bicubic resize of the suite (torch's and MATLAB's `imresize`), for data, degradations,
  evaluation and DeqIR's operator alike.

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
    check_integer,
    check_odd_size,
    check_probability,
    check_range,
    uniform,
)
from ir_lightning.degradations.camera import CameraNoise
from ir_lightning.degradations.realesrgan import (
    KERNEL_TYPES,
    RealESRGANDegradation,
    filter_per_sample,
    gaussian_kernels,
    generalized_gaussian_kernels,
    plateau_kernels,
    poisson_noise,
    pulse_kernels,
    restrict_support,
    sinc_kernels,
)
from ir_lightning.degradations.resize import bicubic_upsample

__all__ = [
    "JPEG",
    "KERNEL_TYPES",
    "PIXEL_LEVELS",
    "RGB_CHANNELS",
    "BicubicDownsample",
    "CameraNoise",
    "Degradation",
    "GaussianBlur",
    "GaussianNoise",
    "Pipeline",
    "RealESRGANDegradation",
    "bicubic_upsample",
    "check_integer",
    "check_odd_size",
    "check_probability",
    "check_range",
    "filter_per_sample",
    "gaussian_kernels",
    "generalized_gaussian_kernels",
    "plateau_kernels",
    "poisson_noise",
    "pulse_kernels",
    "restrict_support",
    "sinc_kernels",
    "uniform",
]
