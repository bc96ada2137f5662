"""Synthetic degradations that run on the device, on whole batches.

A batch image is a float tensor ``B x C x H x W`` in [0, 1]. The data module calls
``batch["lq"] = pipeline(batch["gt"], generator=g)`` in ``on_after_batch_transfer``, so loader
workers only decode and crop and the degradation runs on the GPU with torch and kornia.

Every degradation is a plain class with a typed ``__init__`` of simple defaults, so a recipe
names it by ``class_path`` and LightningCLI (jsonargparse) builds it; a recipe names a
:class:`Pipeline` whose ``steps`` are a list of such entries. Each ``__call__`` takes the batch and
an optional ``torch.Generator`` on the image's device; every random draw comes from that
generator, so the same seed gives the same output. Per-sample parameters (blur sigma, noise
sigma, JPEG quality) are drawn uniformly from a ``(low, high)`` range by a public ``sample_*``
method, so a caller (or a test) can replay the draw with an identically seeded generator.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod

import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import gaussian_blur2d
from torch import Tensor

from ir_lightning.degradations.resize import bicubic_downsample

PIXEL_LEVELS: float = 255.0
"""Largest 8-bit pixel value: noise sigmas are given on this scale and stored LQ images are uint8."""

RGB_CHANNELS: int = 3
"""Channels the JPEG codec encodes (RGB converted to YCbCr)."""


def uniform(
    value_range: tuple[float, float],
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Draw ``batch_size`` values uniformly in ``[low, high]`` (float32); ``(s, s)`` gives exactly ``s``."""
    low, high = value_range
    u = torch.rand(batch_size, generator=generator, device=device)
    return low + (high - low) * u  # U(low, high) by an affine map of U(0, 1)


def check_range(name: str, value_range: tuple[float, float], lowest: float, highest: float) -> None:
    """Raise ValueError unless ``value_range`` is a pair of finite numbers with ``lowest <= low <= high <= highest``."""
    if len(value_range) != 2 or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in value_range):
        raise ValueError(f"{name} must be a (low, high) pair of finite numbers, got {value_range}")
    low, high = value_range
    if not lowest <= low <= high <= highest:
        raise ValueError(f"{name} must satisfy {lowest} <= low <= high <= {highest}, got {value_range}")


def check_integer(name: str, value: object, minimum: int) -> None:
    """Raise ValueError unless ``value`` is an integer (not a bool) ``>= minimum``; the message names ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_odd_size(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is a positive odd integer (a kernel's side)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer, got {value!r}")


def check_probability(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is a number in [0, 1]."""
    if not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


class Degradation(ABC):
    """A batch-wise degradation ``B x C x H x W -> B x C x H' x W'`` on the image's device.

    ``repr`` lists the instance attributes, which subclasses name exactly as their ``__init__``
    arguments, so it reads as the constructor call that built the object.
    """

    @abstractmethod
    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Degrade ``img``; all randomness comes from ``generator``."""

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({settings})"


class BicubicDownsample(Degradation):
    """Bicubic down-scaling by an integer ``scale``, as MATLAB ``imresize`` and PIL ``BICUBIC``.

    With ``antialias=True`` torch widens the cubic kernel by ``scale`` on down-scaling and uses the
    Keys coefficient a = -0.5, as PIL and MATLAB do. With ``antialias=False`` torch samples the
    cubic with a = -0.75 (OpenCV's) at the output grid, which aliases. ``scale=1`` is the identity.
    The output has the exact size ``(H / scale, W / scale)``; sizes not divisible raise ValueError.
    """

    def __init__(self, scale: int = 4, antialias: bool = True) -> None:
        check_integer("scale", scale, 1)
        self.scale = scale
        self.antialias = antialias

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return bicubic_downsample(img, self.scale, self.antialias)


class GaussianBlur(Degradation):
    """Isotropic Gaussian blur with ``sigma ~ U(sigma)`` drawn per sample, reflect border.

    The kernel is the sampled Gaussian ``exp(-(x^2 + y^2) / (2 sigma^2))`` on a ``kernel_size``
    square, normalised to sum 1. ``kernel_size`` must be odd, and the reflect padding needs
    ``H, W > kernel_size // 2``.
    """

    def __init__(self, sigma: tuple[float, float] = (0.2, 3.0), kernel_size: int = 21) -> None:
        check_range("sigma", sigma, 0.0, float("inf"))
        if sigma[0] <= 0.0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        check_odd_size("kernel_size", kernel_size)
        self.sigma = tuple(sigma)
        self.kernel_size = kernel_size

    def sample_sigma(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Per-sample blur sigmas (pixels), shape ``(B,)``."""
        return uniform(self.sigma, batch_size, generator, device)

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        sigma = self.sample_sigma(img.shape[0], generator, img.device)
        sigma_yx = torch.stack([sigma, sigma], dim=1)  # isotropic: the same sigma along H and W
        return gaussian_blur2d(img, self.kernel_size, sigma_yx, border_type="reflect")


class GaussianNoise(Degradation):
    """Additive white Gaussian noise, ``y = x + (sigma / 255) n``, ``sigma ~ U(sigma)`` per sample.

    ``sigma`` is on the 0-255 scale. With probability ``gray_prob`` a sample gets one noise map
    shared by all channels (gray noise), otherwise independent noise per channel. The result is
    not clamped; :class:`Pipeline` clamps at the end.
    """

    def __init__(self, sigma: tuple[float, float] = (1.0, 30.0), gray_prob: float = 0.0) -> None:
        check_range("sigma", sigma, 0.0, float("inf"))
        check_probability("gray_prob", gray_prob)
        self.sigma = tuple(sigma)
        self.gray_prob = gray_prob

    def sample_sigma(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Per-sample noise sigmas on the 0-255 scale, shape ``(B,)``."""
        return uniform(self.sigma, batch_size, generator, device)

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, channels, height, width = img.shape
        sigma = self.sample_sigma(batch, generator, img.device).to(img.dtype) / PIXEL_LEVELS
        is_gray = torch.rand(batch, generator=generator, device=img.device) < self.gray_prob
        color = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
        gray = torch.randn((batch, 1, height, width), generator=generator, device=img.device, dtype=img.dtype)
        noise = torch.where(is_gray[:, None, None, None], gray.expand(-1, channels, -1, -1), color)
        return img + sigma[:, None, None, None] * noise  # y = x + sigma n, n ~ N(0, I)


class JPEG(Degradation):
    """JPEG compression with ``quality ~ U(quality)`` per sample, by kornia's differentiable codec.

    ``kornia.enhance.jpeg_codec_differentiable`` (kornia 0.9) encodes RGB as YCbCr with 4:2:0
    chroma subsampling and the standard quantisation tables scaled by quality as libjpeg does.
    It pads H and W to multiples of 16 itself (replicating the bottom and right edge) and crops
    back, so any size works. Its rounding is the smooth ``round(x) + (x - round(x))^3``, so the
    output is close to, not bit-exact with, a libjpeg round trip. The input is clamped to [0, 1]
    (the codec reads 8-bit pixels) and so is the output (the codec clips softly). A single-channel
    image is coded as gray RGB (zero chroma, so lossless in Cb/Cr) and averaged back.
    """

    def __init__(self, quality: tuple[float, float] = (30.0, 95.0)) -> None:
        check_range("quality", quality, 0.0, 100.0)
        self.quality = tuple(quality)

    def sample_quality(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Per-sample JPEG qualities in [0, 100], shape ``(B,)``."""
        return uniform(self.quality, batch_size, generator, device)

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        channels = img.shape[1]
        if channels not in (1, RGB_CHANNELS):
            raise ValueError(f"JPEG codes 1- or 3-channel images, got shape {tuple(img.shape)}")
        quality = self.sample_quality(img.shape[0], generator, img.device)
        rgb = img.clamp(0.0, 1.0).expand(-1, RGB_CHANNELS, -1, -1)
        coded = jpeg_codec_differentiable(rgb, quality).clamp(0.0, 1.0)
        return coded.mean(dim=1, keepdim=True) if channels == 1 else coded


class Pipeline(Degradation):
    """Apply ``steps`` in order, then clamp to [0, 1] and round to multiples of 1/255.

    The rounding (``quantize``) matches stored LQ images, which are uint8. This is the class a
    recipe names: ``class_path: ir_lightning.degradations.Pipeline`` with ``init_args.steps`` a
    list of ``class_path`` entries. The generator is passed to every step in turn.
    """

    def __init__(self, steps: list[Degradation], quantize: bool = True, clamp: bool = True) -> None:
        for index, step in enumerate(steps):
            if not callable(step):
                raise ValueError(f"steps[{index}] must be a degradation (a callable), got {step!r}")
        self.steps = list(steps)
        self.quantize = quantize
        self.clamp = clamp

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for step in self.steps:
            img = step(img, generator=generator)
        if self.clamp:
            img = img.clamp(0.0, 1.0)
        if self.quantize:
            img = torch.round(img * PIXEL_LEVELS) / PIXEL_LEVELS  # uint8 levels k / 255
        return img
