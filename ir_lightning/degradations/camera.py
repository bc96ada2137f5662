"""A camera-like noise model: signal-dependent, spatially correlated, optionally in a gamma space.

Denoising-as-Adaptation needs a "real" domain that differs *in kind* from the synthetic one
(additive white Gaussian noise), so that a restorer trained on the synthetic pairs alone does
not already handle it. Photos from a camera differ from AWGN in three ways, and
:class:`CameraNoise` models each one:

1. **Shot noise depends on the signal.** A pixel counts photo-electrons, a Poisson variable,
   so bright pixels are noisier in absolute terms than dark ones; the read-out electronics add
   signal-independent Gaussian noise on top (the Poisson-Gaussian model). The photon count at
   full scale (the sensor gain, i.e. the ISO setting) varies from shot to shot, so it is drawn
   per sample.
2. **The noise is spatially correlated.** Demosaicing interpolates each colour from
   neighbouring photosites and the ISP denoises and sharpens, so the noise in a processed
   photo is not independent from pixel to pixel. Blurring the noise field with a small
   Gaussian kernel reproduces this; the field is then divided by the kernel's L2 norm, which
   keeps the per-pixel variance of a flat region at its Poisson-Gaussian value (a blur alone
   would shrink it by ``sum(k^2)``), so the correlation changes the noise's texture, not its
   strength.
3. **Noise is added before the tone curve.** The sensor is linear; the ISP then applies a
   gamma (sRGB-like) curve, which stretches dark tones and so amplifies their noise. With
   ``gamma != 1`` the image is taken to linear light (``x ** gamma``), noised there and
   encoded back (``** (1 / gamma)``).

Sigmas of the read noise are on the 0-255 scale, like ``GaussianNoise``'s.
"""

from __future__ import annotations

import math

import torch
from kornia.filters import filter2d, get_gaussian_kernel2d
from torch import Tensor

from ir_lightning.degradations.basic import PIXEL_LEVELS, Degradation, check_odd_size, check_range, uniform


class CameraNoise(Degradation):
    """Poisson-Gaussian noise, spatially correlated by a Gaussian blur of the noise field.

    For an image ``x`` in [0, 1] (in linear light ``x ** gamma`` when ``gamma != 1``), per sample:

    - ``photons ~ logU(photons)``: expected photo-electrons at pixel value 1, drawn log-uniformly
      because sensor gains (ISO steps) are spaced geometrically;
    - shot noise ``Poisson(photons * x) / photons - x`` (mean 0, variance ``x / photons``);
    - read noise ``(read / 255) * N(0, 1)`` with ``read ~ U(read_noise)``;
    - the sum is filtered by a normalised Gaussian kernel ``k`` of std ``correlation ~ U(correlation)``
      pixels (``kernel_size`` square, reflect border) and divided by ``||k||_2``.

    On a flat region of level ``v`` (``gamma = 1``, away from the border) every pixel then has
    variance ``v / photons + (read / 255)^2`` and neighbours at distance ``d`` correlate by about
    ``exp(-d^2 / (4 correlation^2))``. Each colour channel has its own noise field. The result is
    not clamped unless ``gamma != 1`` (linear light is clamped at 0 before the ``1 / gamma`` power);
    :class:`~ir_lightning.degradations.Pipeline` clamps and quantises at the end.

    Args:
        photons: range of the photon count at full scale; fewer photons = stronger shot noise.
        read_noise: range of the read-noise sigma, 0-255 scale.
        correlation: range of the std (pixels) of the Gaussian that correlates the noise; > 0.
        kernel_size: side of that Gaussian's square support (odd); about ``6 * correlation[1]``.
        gamma: exponent of the tone curve; 1 = noise added to the pixel values directly, 2.2 =
            the usual display gamma (noise added in linear light).
    """

    def __init__(
        self,
        photons: tuple[float, float] = (15.0, 150.0),
        read_noise: tuple[float, float] = (2.0, 10.0),
        correlation: tuple[float, float] = (0.7, 1.2),
        kernel_size: int = 7,
        gamma: float = 1.0,
    ) -> None:
        check_range("photons", photons, 0.0, float("inf"))
        if photons[0] <= 0.0:
            raise ValueError(f"photons must be positive, got {photons}")
        check_range("read_noise", read_noise, 0.0, float("inf"))
        check_range("correlation", correlation, 0.0, float("inf"))
        if correlation[0] <= 0.0:
            raise ValueError(f"correlation must be positive (a white field needs no blur), got {correlation}")
        check_odd_size("kernel_size", kernel_size)
        if not (math.isfinite(gamma) and gamma > 0.0):
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.photons = tuple(photons)
        self.read_noise = tuple(read_noise)
        self.correlation = tuple(correlation)
        self.kernel_size = kernel_size
        self.gamma = gamma

    def sample_photons(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Per-sample photon counts at full scale, log-uniform in ``photons``, shape ``(B,)``."""
        low, high = self.photons
        log_photons = uniform((math.log(low), math.log(high)), batch_size, generator, device)
        return log_photons.exp()  # logU(low, high) = exp(U(log low, log high))

    def sample_read_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Per-sample read-noise sigmas on the 0-255 scale, shape ``(B,)``."""
        return uniform(self.read_noise, batch_size, generator, device)

    def sample_correlation(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Per-sample stds (pixels) of the Gaussian that correlates the noise, shape ``(B,)``."""
        return uniform(self.correlation, batch_size, generator, device)

    def correlate(self, noise: Tensor, correlation: Tensor) -> Tensor:
        """Blur each sample's noise field by its Gaussian and divide by the kernel's L2 norm, so a
        white field keeps its variance (the variance of ``sum_i k_i n_i`` is ``sum_i k_i^2``)."""
        sigma_yx = torch.stack([correlation, correlation], dim=1).to(noise.dtype)
        kernels = get_gaussian_kernel2d(self.kernel_size, sigma_yx, device=noise.device, dtype=noise.dtype)
        norms = kernels.square().sum(dim=(1, 2)).sqrt()  # ||k||_2 per sample
        return filter2d(noise, kernels, border_type="reflect") / norms[:, None, None, None]

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch = img.shape[0]
        photons = self.sample_photons(batch, generator, img.device).to(img.dtype)[:, None, None, None]
        read = self.sample_read_noise(batch, generator, img.device).to(img.dtype)[:, None, None, None] / PIXEL_LEVELS
        correlation = self.sample_correlation(batch, generator, img.device)
        linear = img.clamp(0.0, 1.0) ** self.gamma if self.gamma != 1.0 else img
        expected = photons * linear.clamp(min=0.0)  # Poisson rates must be >= 0
        shot = torch.poisson(expected, generator=generator) / photons - linear.clamp(min=0.0)
        gaussian = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
        noise = self.correlate(shot + read * gaussian, correlation)
        noisy = linear + noise
        if self.gamma == 1.0:
            return noisy
        return noisy.clamp(min=0.0) ** (1.0 / self.gamma)  # back through the tone curve
