"""The second-order degradation model of Real-ESRGAN (Wang et al., 2021), batched on the device.

Real-world low-quality images went through several unknown degradations, one after another
(camera blur and noise, then resizing and JPEG by an editor, then again by a website). Real-ESRGAN
models this by running the classical chain *blur -> resize -> noise -> JPEG* twice with random
settings, then a final resize to the LQ size with a 2-D sinc filter (ringing and overshoot
artifacts) and JPEG in a random order. DiffIR's real-SR x4 recipes train on exactly this chain.

The facts here (kernel families and their probabilities, ranges, order of operations) follow the
official code: ``basicsr/data/degradations.py`` (kernel formulas, noise),
``basicsr/data/realesrgan_dataset.py`` (kernel sampling), ``basicsr/models/realesrgan_model.py``
(the two stages), and the configs ``Real-ESRGAN/options/train_realesrnet_x4plus.yml`` and
``DiffIR-RealSR/options/train_DiffIRS1_x4.yml``, whose degradation settings are identical.

Kernel helpers (:func:`gaussian_kernels`, :func:`generalized_gaussian_kernels`,
:func:`plateau_kernels`, :func:`sinc_kernels`, :func:`pulse_kernels`) return a batch ``B x K x K``
of kernels that each sum to 1, one per sample, so a whole batch is filtered by one
``kornia.filters.filter2d`` call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from kornia.filters import filter2d
from torch import Tensor

from ir_lightning.degradations.basic import (
    JPEG,
    PIXEL_LEVELS,
    RGB_CHANNELS,
    Degradation,
    GaussianNoise,
    check_integer,
    check_probability,
    check_range,
    uniform,
)

KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
"""Blur-kernel families in the order of ``kernel_prob``: even indices are isotropic, odd anisotropic."""

RESIZE_DIRECTIONS: tuple[str, ...] = ("up", "down", "keep")
"""Random-resize directions in the order of ``resize_prob``."""

RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
"""Interpolation modes a random resize draws from, uniformly (``realesrgan_model.py``)."""

LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""BT.601 RGB -> gray weights (torchvision's ``rgb_to_grayscale``) for gray Poisson noise."""


# ---------------------------------------------------------------- kernels


def kernel_grid(
    size: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Pixel offsets ``(x, y)`` from the centre of an odd ``size x size`` kernel; x runs along columns."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    offsets = torch.arange(size, device=device, dtype=dtype) - size // 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    return x, y


def _per_sample(values: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, 1)`` to broadcast against a kernel batch."""
    return values[:, None, None]


def _normalise(kernels: Tensor) -> Tensor:
    """Scale each ``K x K`` kernel to sum 1, so filtering keeps the mean brightness."""
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def mahalanobis_squared(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, size: int) -> Tensor:
    """``x^T Sigma^-1 x`` on the kernel grid, ``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``.

    ``sigma_x`` is the spread along the axis at angle ``theta`` (radians, from the column axis
    towards the row axis), ``sigma_y`` across it. All three are ``(B,)`` tensors; the result is
    ``B x size x size``. The generalized-Gaussian and plateau kernels are functions of it too.
    """
    x, y = kernel_grid(size, sigma_x.device, sigma_x.dtype)
    cos, sin = _per_sample(torch.cos(theta)), _per_sample(torch.sin(theta))
    along, across = cos * x + sin * y, -sin * x + cos * y  # (along, across) = R^T (x, y)
    return (along / _per_sample(sigma_x)) ** 2 + (across / _per_sample(sigma_y)) ** 2


def generalized_gaussian_kernels(
    sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor, size: int = 21
) -> Tensor:
    """Generalized Gaussian ``exp(-(x^T Sigma^-1 x)^beta / 2)``, normalised: ``beta < 1`` gives heavier
    tails, ``beta > 1`` a flatter top with a sharper fall, ``beta = 1`` the Gaussian."""
    q = mahalanobis_squared(sigma_x, sigma_y, theta, size)
    return _normalise(torch.exp(-0.5 * q ** _per_sample(beta)))


def gaussian_kernels(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, size: int = 21) -> Tensor:
    """Anisotropic Gaussian ``exp(-x^T Sigma^-1 x / 2)``, normalised; ``sigma_x == sigma_y`` is isotropic."""
    return generalized_gaussian_kernels(sigma_x, sigma_y, theta, torch.ones_like(sigma_x), size)


def plateau_kernels(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor, size: int = 21) -> Tensor:
    """Plateau-shaped ``1 / (1 + (x^T Sigma^-1 x)^beta)``, normalised: a flat top with a slow decay,
    as out-of-focus blur."""
    q = mahalanobis_squared(sigma_x, sigma_y, theta, size)
    return _normalise(1.0 / (1.0 + q ** _per_sample(beta)))


def sinc_kernels(cutoff: Tensor, size: int = 21) -> Tensor:
    """Circular low-pass ("2-D sinc") kernels, normalised, one per cutoff ``omega_c`` (radians per pixel).

    The ideal low-pass filter that keeps spatial frequencies with ``|omega| < omega_c`` has the
    impulse response ``omega_c J1(omega_c r) / (2 pi r)`` (``J1`` the Bessel function of the first
    kind), ``omega_c^2 / (4 pi)`` at ``r = 0``. Truncated to ``size`` it rings, which is the point:
    it imitates the ringing and overshoot of real resamplers and codecs.
    """
    x, y = kernel_grid(size, cutoff.device, cutoff.dtype)
    radius = torch.hypot(x, y)
    safe_radius = torch.where(radius > 0, radius, torch.ones_like(radius))
    omega = _per_sample(cutoff)
    response = omega * torch.special.bessel_j1(omega * safe_radius) / (2 * math.pi * safe_radius)
    centre = omega**2 / (4 * math.pi)  # the limit of the response as r -> 0
    return _normalise(torch.where(radius > 0, response, centre))


def pulse_kernels(batch_size: int, size: int = 21, device: torch.device | None = None) -> Tensor:
    """Identity kernels (1 at the centre): filtering with them leaves the image unchanged."""
    kernels = torch.zeros(batch_size, size, size, device=device)
    kernels[:, size // 2, size // 2] = 1.0
    return kernels


def restrict_support(kernels: Tensor, support: Tensor) -> Tensor:
    """Zero each kernel outside its centred ``support x support`` window (odd, ``(B,)``) and renormalise.

    This equals computing the kernel on the small grid and zero-padding it to the batch's size, so
    kernels of random sizes stack into one tensor.
    """
    x, y = kernel_grid(kernels.shape[-1], kernels.device, kernels.dtype)
    half = _per_sample(support.to(kernels.dtype) // 2)
    inside = (x.abs() <= half) & (y.abs() <= half)
    return _normalise(kernels * inside)


def filter_per_sample(img: Tensor, kernels: Tensor) -> Tensor:
    """Filter each sample of ``img`` (``B x C x H x W``) with its own kernel (``B x K x K``).

    The border is reflected as in the official code. An image too small for that (side <= K // 2,
    which happens only on tiny smoke-test crops after a strong down-scaling) is padded by
    replicating its edge instead, so small inputs still run.
    """
    half = kernels.shape[-1] // 2
    border = "reflect" if min(img.shape[-2:]) > half else "replicate"
    return filter2d(img, kernels, border_type=border)


def resize(img: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize to ``size`` (H, W) with one of :data:`RESIZE_MODES`, without antialiasing (as the official code)."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    return F.interpolate(img, size=size, mode=mode)


# ---------------------------------------------------------------- noise


def _distinct_levels(levels: Tensor) -> Tensor:
    """Number of distinct 8-bit values in each sample of ``levels`` (integers 0..255 as floats), ``(B,)``."""
    index = levels.flatten(1).long()
    present = torch.zeros(levels.shape[0], int(PIXEL_LEVELS) + 1, device=levels.device)
    return present.scatter_(1, index, 1.0).sum(dim=1)


def _poisson_residual(img: Tensor, generator: torch.Generator | None) -> Tensor:
    """``Poisson(v q) / v - q`` with ``q`` the image rounded to 8 bits and ``v`` per sample.

    As the official code (after scikit-image), ``v`` is the number of distinct 8-bit values of the
    sample rounded up to a power of two, so the noise variance is ``q / v``: brighter pixels and
    images with fewer grey levels get stronger shot noise.
    """
    levels = (img * PIXEL_LEVELS).round().clamp(0.0, PIXEL_LEVELS)
    photons = 2.0 ** torch.ceil(torch.log2(_distinct_levels(levels))).to(img.dtype)
    quantized = levels / PIXEL_LEVELS
    photons = photons[:, None, None, None]
    return torch.poisson(quantized * photons, generator=generator) / photons - quantized


def poisson_noise(img: Tensor, scale: Tensor, gray: Tensor, generator: torch.Generator | None) -> Tensor:
    """Shot noise for ``img`` (``B x C x H x W`` in [0, 1]): ``scale * (Poisson(v q) / v - q)`` per sample.

    ``scale`` is ``(B,)``; where ``gray`` (``(B,)`` bool) is set, the noise is drawn once on the
    BT.601 luma of an RGB image and shared by the channels. Both colour and gray noise are always
    drawn, so the generator advances the same way whatever ``gray`` is.
    """
    color = _poisson_residual(img, generator)
    if img.shape[1] == RGB_CHANNELS:
        weights = img.new_tensor(LUMA_WEIGHTS)[None, :, None, None]
        luma = (img * weights).sum(dim=1, keepdim=True)
        shared = _poisson_residual(luma, generator).expand_as(img)
    else:
        shared = color
    noise = torch.where(gray[:, None, None, None], shared, color)
    return scale.to(img.dtype)[:, None, None, None] * noise


# ---------------------------------------------------------------- the model


class StageSettings(NamedTuple):
    """Settings of one of the two degradation stages."""

    blur_prob: float
    kernel_prob: tuple[float, ...]
    sinc_prob: float
    blur_sigma: tuple[float, float]
    betag_range: tuple[float, float]
    betap_range: tuple[float, float]
    resize_prob: tuple[float, ...]
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]


def _check_weights(name: str, weights: tuple[float, ...], count: int) -> None:
    finite = all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights)
    if len(weights) != count or not finite or sum(weights) <= 0:
        raise ValueError(f"{name} must be {count} non-negative weights with a positive sum, got {weights}")


def _check_around_one(name: str, value_range: tuple[float, float]) -> None:
    """Ranges that the official code splits at 1 (resize factors, kernel shape betas) must contain 1."""
    check_range(name, value_range, 0.0, float("inf"))
    if not (value_range[0] > 0.0 and value_range[0] <= 1.0 <= value_range[1]):
        raise ValueError(f"{name} must satisfy 0 < low <= 1 <= high, got {value_range}")


def _two_sided(
    value_range: tuple[float, float], batch_size: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """With probability 1/2 ``U(low, 1)``, else ``U(1, high)``: both sides of 1 equally often, however
    wide each side is (the official draw of the generalized-Gaussian and plateau betas)."""
    low, high = value_range
    below = uniform((low, 1.0), batch_size, generator, device)
    above = uniform((1.0, high), batch_size, generator, device)
    return torch.where(torch.rand(batch_size, generator=generator, device=device) < 0.5, below, above)


class RealESRGANDegradation(Degradation):
    """Real-ESRGAN's second-order degradation, ``B x C x H x W -> B x C x H/scale x W/scale``.

    Order (``basicsr/models/realesrgan_model.py``)::

        1st stage: blur (kernel1) -> random resize -> Gaussian or Poisson noise -> JPEG(jpeg_range)
        2nd stage: blur (kernel2, with probability second_blur_prob) -> random resize to
                   (H/scale, W/scale) x factor -> Gaussian or Poisson noise
        final:     with probability final_resize_first_prob
                       [resize to (H/scale, W/scale) -> sinc] -> JPEG(jpeg_range2)
                   else JPEG(jpeg_range2) -> [resize to (H/scale, W/scale) -> sinc]

    Blur kernels: a size drawn from the odd sizes in ``kernel_sizes``, then with probability
    ``sinc_prob`` a sinc kernel (cutoff from ``sinc_cutoff_small`` below ``sinc_small_below`` taps,
    else ``sinc_cutoff_large``), otherwise one of :data:`KERNEL_TYPES` by ``kernel_prob`` with
    ``sigma_x, sigma_y ~ U(blur_sigma)``, angle ``~ U(rotation_range)`` and the shape beta drawn
    below or above 1 with probability 1/2 each. The final sinc filter (probability
    ``final_sinc_prob``, cutoff ``~ U(final_sinc_cutoff)``) is the identity otherwise. Kernels,
    noise settings and JPEG qualities are drawn per sample; resize factors, interpolation modes and
    the final order per batch, since a batch must keep one size. Each stage clamps to [0, 1] after
    its noise, as the official code; the output is neither clamped nor rounded: :class:`Pipeline`
    does that at the end.

    Defaults are the official x4 settings: the degradation blocks of Real-ESRGAN's
    ``options/train_realesrnet_x4plus.yml`` and DiffIR's ``DiffIR-RealSR/options/train_DiffIRS1_x4.yml``
    (and ``train_DiffIRS2_GAN_x4.yml``) are identical; hard-coded values come from ``basicsr/data/realesrgan_dataset.py`` (kernel sizes
    7-21, sinc cutoffs, rotation range) and ``realesrgan_model.py`` (the final order probability).

    Differences from the official code:

    - It runs on the device per batch with ``torch.Generator`` draws, not numpy in loader workers,
      so sample-level draws differ in stream (not in distribution) from the official ones.
    - Gaussian versus Poisson noise and the second blur are chosen per sample (officially one coin
      per batch), and gray Gaussian noise is drawn per sample (officially one gray map shared by the
      batch): more variety inside a batch, the same marginal distribution per image.
    - JPEG is kornia's differentiable codec (:class:`~ir_lightning.degradations.JPEG`), close to but
      not bit-exact with libjpeg.
    - Left out: unsharp-mask sharpening of the GT (DiffIR's real-SR configs turn it off:
      ``gt_usm: False`` in stage 1, ``l1/percep/gan_gt_usm: False`` in the GAN stage; and a
      degradation only maps GT to LQ), the training-pair pool (``queue_size``), which shuffles
      pairs across batches to vary the per-batch resize; and the 400-pixel crop-or-pad of the GT.
    - Reflect padding falls back to edge replication on images too small to reflect (see
      :func:`filter_per_sample`); the official code would fail there.
    """

    def __init__(
        self,
        scale: int = 4,
        # kernel sizes 7, 9, ..., 21, padded to 21 (realesrgan_dataset.py)
        kernel_sizes: tuple[int, int] = (7, 21),
        # kernel angle, radians (realesrgan_dataset.py)
        rotation_range: tuple[float, float] = (-math.pi, math.pi),
        # sinc cutoff omega_c for kernels smaller than 13 taps / from 13 taps (realesrgan_dataset.py)
        sinc_small_below: int = 13,
        sinc_cutoff_small: tuple[float, float] = (math.pi / 3, math.pi),
        sinc_cutoff_large: tuple[float, float] = (math.pi / 5, math.pi),
        # ---- first stage (train_realesrnet_x4plus.yml = train_DiffIRS1_x4.yml)
        kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob: float = 0.1,
        blur_sigma: tuple[float, float] = (0.2, 3.0),
        betag_range: tuple[float, float] = (0.5, 4.0),
        betap_range: tuple[float, float] = (1.0, 2.0),
        resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1),  # up, down, keep
        resize_range: tuple[float, float] = (0.15, 1.5),
        gaussian_noise_prob: float = 0.5,
        noise_range: tuple[float, float] = (1.0, 30.0),  # sigma on the 0-255 scale
        poisson_scale_range: tuple[float, float] = (0.05, 3.0),
        gray_noise_prob: float = 0.4,
        jpeg_range: tuple[float, float] = (30.0, 95.0),
        # ---- second stage (same files)
        second_blur_prob: float = 0.8,
        kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob2: float = 0.1,
        blur_sigma2: tuple[float, float] = (0.2, 1.5),
        betag_range2: tuple[float, float] = (0.5, 4.0),
        betap_range2: tuple[float, float] = (1.0, 2.0),
        resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3),  # up, down, keep
        resize_range2: tuple[float, float] = (0.3, 1.2),
        gaussian_noise_prob2: float = 0.5,
        noise_range2: tuple[float, float] = (1.0, 25.0),
        poisson_scale_range2: tuple[float, float] = (0.05, 2.5),
        gray_noise_prob2: float = 0.4,
        jpeg_range2: tuple[float, float] = (30.0, 95.0),
        # ---- final sinc filter (config: final_sinc_prob; cutoff from realesrgan_dataset.py)
        final_sinc_prob: float = 0.8,
        final_sinc_cutoff: tuple[float, float] = (math.pi / 3, math.pi),
        # [resize + sinc] before JPEG rather than after (realesrgan_model.py)
        final_resize_first_prob: float = 0.5,
    ) -> None:
        check_integer("scale", scale, 1)
        odd = all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 and k % 2 == 1 for k in kernel_sizes)
        if len(kernel_sizes) != 2 or not odd or kernel_sizes[0] > kernel_sizes[1]:
            raise ValueError(f"kernel_sizes must be odd sizes 1 <= low <= high, got {kernel_sizes}")
        check_integer("sinc_small_below", sinc_small_below, 1)
        check_range("rotation_range", rotation_range, -float("inf"), float("inf"))
        for name, cutoff in (
            ("sinc_cutoff_small", sinc_cutoff_small),
            ("sinc_cutoff_large", sinc_cutoff_large),
            ("final_sinc_cutoff", final_sinc_cutoff),
        ):
            check_range(name, cutoff, 0.0, math.pi)
        for name, prob in (
            ("second_blur_prob", second_blur_prob),
            ("final_sinc_prob", final_sinc_prob),
            ("final_resize_first_prob", final_resize_first_prob),
        ):
            check_probability(name, prob)
        self.scale = scale
        self.kernel_sizes = tuple(kernel_sizes)
        self.rotation_range = tuple(rotation_range)
        self.sinc_small_below = sinc_small_below
        self.sinc_cutoff_small = tuple(sinc_cutoff_small)
        self.sinc_cutoff_large = tuple(sinc_cutoff_large)
        self.kernel_prob = tuple(kernel_prob)
        self.sinc_prob = sinc_prob
        self.blur_sigma = tuple(blur_sigma)
        self.betag_range = tuple(betag_range)
        self.betap_range = tuple(betap_range)
        self.resize_prob = tuple(resize_prob)
        self.resize_range = tuple(resize_range)
        self.gaussian_noise_prob = gaussian_noise_prob
        self.noise_range = tuple(noise_range)
        self.poisson_scale_range = tuple(poisson_scale_range)
        self.gray_noise_prob = gray_noise_prob
        self.jpeg_range = tuple(jpeg_range)
        self.second_blur_prob = second_blur_prob
        self.kernel_prob2 = tuple(kernel_prob2)
        self.sinc_prob2 = sinc_prob2
        self.blur_sigma2 = tuple(blur_sigma2)
        self.betag_range2 = tuple(betag_range2)
        self.betap_range2 = tuple(betap_range2)
        self.resize_prob2 = tuple(resize_prob2)
        self.resize_range2 = tuple(resize_range2)
        self.gaussian_noise_prob2 = gaussian_noise_prob2
        self.noise_range2 = tuple(noise_range2)
        self.poisson_scale_range2 = tuple(poisson_scale_range2)
        self.gray_noise_prob2 = gray_noise_prob2
        self.jpeg_range2 = tuple(jpeg_range2)
        self.final_sinc_prob = final_sinc_prob
        self.final_sinc_cutoff = tuple(final_sinc_cutoff)
        self.final_resize_first_prob = final_resize_first_prob
        for stage in (1, 2):
            self._check_stage(stage)

    # ------------------------------------------------------------ settings

    def stage(self, stage: int) -> StageSettings:
        """The settings of degradation stage 1 or 2 (the second stage's arguments end in ``2``)."""
        if stage == 1:
            return StageSettings(
                1.0,
                self.kernel_prob,
                self.sinc_prob,
                self.blur_sigma,
                self.betag_range,
                self.betap_range,
                self.resize_prob,
                self.resize_range,
                self.gaussian_noise_prob,
                self.noise_range,
                self.poisson_scale_range,
                self.gray_noise_prob,
                self.jpeg_range,
            )
        if stage == 2:
            return StageSettings(
                self.second_blur_prob,
                self.kernel_prob2,
                self.sinc_prob2,
                self.blur_sigma2,
                self.betag_range2,
                self.betap_range2,
                self.resize_prob2,
                self.resize_range2,
                self.gaussian_noise_prob2,
                self.noise_range2,
                self.poisson_scale_range2,
                self.gray_noise_prob2,
                self.jpeg_range2,
            )
        raise ValueError(f"stage must be 1 or 2, got {stage}")

    def _check_stage(self, stage: int) -> None:
        """Validate one stage's settings; errors name the argument as the constructor spells it."""
        settings, suffix = self.stage(stage), "" if stage == 1 else "2"
        _check_weights("kernel_prob" + suffix, settings.kernel_prob, len(KERNEL_TYPES))
        _check_weights("resize_prob" + suffix, settings.resize_prob, len(RESIZE_DIRECTIONS))
        for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            check_probability(name + suffix, getattr(settings, name))
        check_range("blur_sigma" + suffix, settings.blur_sigma, 0.0, float("inf"))
        if settings.blur_sigma[0] <= 0.0:
            raise ValueError(f"blur_sigma{suffix} must be positive, got {settings.blur_sigma}")
        _check_around_one("betag_range" + suffix, settings.betag_range)
        _check_around_one("betap_range" + suffix, settings.betap_range)
        _check_around_one("resize_range" + suffix, settings.resize_range)
        check_range("noise_range" + suffix, settings.noise_range, 0.0, float("inf"))
        check_range("poisson_scale_range" + suffix, settings.poisson_scale_range, 0.0, float("inf"))
        check_range("jpeg_range" + suffix, settings.jpeg_range, 0.0, 100.0)

    # ------------------------------------------------------------ draws (public, for replay)

    def sample_kernel_sizes(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Per-sample odd kernel sizes, uniform over ``kernel_sizes[0], kernel_sizes[0] + 2, ..., kernel_sizes[1]``."""
        low, high = self.kernel_sizes
        index = torch.randint(0, (high - low) // 2 + 1, (batch_size,), generator=generator, device=device)
        return low + 2 * index

    def sample_blur_kernels(
        self, stage: int, batch_size: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """Per-sample blur kernels of ``stage`` (1 or 2), ``B x K x K`` with ``K = kernel_sizes[1]``.

        In stage 2 a sample keeps its kernel with probability ``second_blur_prob`` and gets the
        identity otherwise. Every parameter of every family is drawn for every sample, whichever
        family it gets, so the generator advances the same way each call and a replay with the same
        seed is exact.
        """
        settings, size = self.stage(stage), self.kernel_sizes[1]
        support = self.sample_kernel_sizes(batch_size, generator, device)
        weights = torch.tensor(settings.kernel_prob, dtype=torch.float32, device=device)
        family = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        sigma_x = uniform(settings.blur_sigma, batch_size, generator, device)
        sigma_y = uniform(settings.blur_sigma, batch_size, generator, device)
        theta = uniform(self.rotation_range, batch_size, generator, device)
        beta_g = _two_sided(settings.betag_range, batch_size, generator, device)
        beta_p = _two_sided(settings.betap_range, batch_size, generator, device)
        cutoff = torch.where(
            support < self.sinc_small_below,
            uniform(self.sinc_cutoff_small, batch_size, generator, device),
            uniform(self.sinc_cutoff_large, batch_size, generator, device),
        )
        is_sinc = torch.rand(batch_size, generator=generator, device=device) < settings.sinc_prob
        is_blurred = torch.rand(batch_size, generator=generator, device=device) < settings.blur_prob

        isotropic = family % 2 == 0  # iso, generalized_iso, plateau_iso
        sigma_y = torch.where(isotropic, sigma_x, sigma_y)
        theta = torch.where(isotropic, torch.zeros_like(theta), theta)
        is_plateau = family >= KERNEL_TYPES.index("plateau_iso")
        is_gaussian = family < KERNEL_TYPES.index("generalized_iso")
        beta = torch.where(is_gaussian, torch.ones_like(beta_g), torch.where(is_plateau, beta_p, beta_g))
        bell = generalized_gaussian_kernels(sigma_x, sigma_y, theta, beta, size)  # beta = 1: plain Gaussian
        plateau = plateau_kernels(sigma_x, sigma_y, theta, beta, size)
        kernels = torch.where(_per_sample(is_plateau), plateau, bell)
        kernels = torch.where(_per_sample(is_sinc), sinc_kernels(cutoff, size), kernels)
        kernels = restrict_support(kernels, support)
        return torch.where(_per_sample(is_blurred), kernels, pulse_kernels(batch_size, size, device))

    def sample_final_sinc_kernels(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """Per-sample final filters: a sinc kernel with probability ``final_sinc_prob``, else the identity."""
        size = self.kernel_sizes[1]
        support = self.sample_kernel_sizes(batch_size, generator, device)
        cutoff = uniform(self.final_sinc_cutoff, batch_size, generator, device)
        use_sinc = torch.rand(batch_size, generator=generator, device=device) < self.final_sinc_prob
        kernels = restrict_support(sinc_kernels(cutoff, size), support)
        return torch.where(_per_sample(use_sinc), kernels, pulse_kernels(batch_size, size, device))

    def sample_resize(self, stage: int, generator: torch.Generator | None, device: torch.device) -> tuple[float, str]:
        """One ``(factor, mode)`` for the batch: up ``U(1, high)``, down ``U(low, 1)`` or keep, by ``resize_prob``."""
        settings = self.stage(stage)
        weights = torch.tensor(settings.resize_prob, dtype=torch.float32, device=device)
        direction = torch.multinomial(weights, 1, generator=generator)
        u = torch.rand(1, generator=generator, device=device)
        mode = torch.randint(0, len(RESIZE_MODES), (1,), generator=generator, device=device)
        direction, u, mode = int(direction), float(u), int(mode)  # one host sync for the batch's size
        low, high = settings.resize_range
        factor = {"up": 1.0 + (high - 1.0) * u, "down": low + (1.0 - low) * u, "keep": 1.0}
        return factor[RESIZE_DIRECTIONS[direction]], RESIZE_MODES[mode]

    def sample_final_resize(self, generator: torch.Generator | None, device: torch.device) -> tuple[bool, str]:
        """``(resize_first, mode)`` for the batch: whether [resize + sinc] comes before the last JPEG."""
        u = torch.rand(1, generator=generator, device=device)
        mode = torch.randint(0, len(RESIZE_MODES), (1,), generator=generator, device=device)
        return float(u) < self.final_resize_first_prob, RESIZE_MODES[int(mode)]

    # ------------------------------------------------------------ steps

    def add_noise(self, img: Tensor, generator: torch.Generator | None, stage: int) -> Tensor:
        """Per sample, Gaussian noise (probability ``gaussian_noise_prob``) or Poisson noise, clamped to [0, 1].

        Both kinds are drawn for the whole batch and each sample keeps one, so the generator
        advances the same way whatever the coins say.
        """
        settings = self.stage(stage)
        batch = img.shape[0]
        gaussian = GaussianNoise(settings.noise_range, settings.gray_noise_prob)(img, generator=generator)
        scale = uniform(settings.poisson_scale_range, batch, generator, img.device)
        gray = torch.rand(batch, generator=generator, device=img.device) < settings.gray_noise_prob
        poisson = img + poisson_noise(img, scale, gray, generator)
        use_gaussian = torch.rand(batch, generator=generator, device=img.device) < settings.gaussian_noise_prob
        return torch.where(use_gaussian[:, None, None, None], gaussian, poisson).clamp(0.0, 1.0)

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, _, height, width = img.shape
        if height % self.scale or width % self.scale:
            raise ValueError(f"image of shape {tuple(img.shape)} has H, W not divisible by scale {self.scale}")
        device, lq_size = img.device, (height // self.scale, width // self.scale)

        # first stage: blur -> resize -> noise -> JPEG
        out = filter_per_sample(img, self.sample_blur_kernels(1, batch, generator, device))
        factor, mode = self.sample_resize(1, generator, device)
        out = resize(out, (int(height * factor), int(width * factor)), mode)
        out = self.add_noise(out, generator, stage=1)
        out = JPEG(self.jpeg_range)(out, generator=generator)

        # second stage: blur -> resize around the LQ size -> noise
        out = filter_per_sample(out, self.sample_blur_kernels(2, batch, generator, device))
        factor, mode = self.sample_resize(2, generator, device)
        out = resize(out, (int(height / self.scale * factor), int(width / self.scale * factor)), mode)
        out = self.add_noise(out, generator, stage=2)

        # final: [resize to the LQ size + sinc] and JPEG, in a random order
        sinc = self.sample_final_sinc_kernels(batch, generator, device)
        resize_first, mode = self.sample_final_resize(generator, device)
        jpeg = JPEG(self.jpeg_range2)
        if resize_first:
            return jpeg(filter_per_sample(resize(out, lq_size, mode), sinc), generator=generator)
        return filter_per_sample(resize(jpeg(out, generator=generator), lq_size, mode), sinc)
