"""Linear degradation operators y = A x (+ sigma_y n) for training-free restoration (DDRM, DDNM, DeqIR).

Every operator acts on image batches ``B x C x H x W`` of float32 or float64 on any device and gives

- ``forward(x)`` = A x, ``adjoint(y)`` = A^T y and ``pinv(y)`` = A^+ y (Moore-Penrose pseudo-inverse),
- ``project(x0, y)`` = A^+ y + (I - A^+ A) x0, the range-null decomposition DDNM puts in each step,
- ``measure(x, sigma_y, generator)`` = A x + sigma_y n, a (seeded) noisy observation,
- ``output_shape(input_shape)``, the shape of y.

The pseudo-inverse is what makes ``project`` exact: A project(x0, y) = A A^+ y = y for any y in
the range of A, while the part of x0 that A cannot see is kept. Each operator applies A^+ in its
own closed form (a reshape, a pair of small SVDs, a division in Fourier space), never as a dense
matrix, so the cost is that of A itself.

Constants (interpolation matrices, kernels, masks) are stored in float64 on the CPU and moved to the
image's device and dtype when applied, so one operator serves float32 and float64, CPU and GPU.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ir_lightning.degradations.resize import bicubic_matrix
from ir_lightning.diffusion.samplers import gaussian_like

Shape = tuple[int, ...]

RGB_CHANNELS: int = 3
"""Channels a colour image has; colorization averages them into one."""


def _image_shape(shape: Shape, name: str) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"{name} must be B x C x H x W, got shape {tuple(shape)}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _like(constant: Tensor, image: Tensor) -> Tensor:
    """A stored float64 constant on the device and in the dtype of `image`."""
    return constant.to(device=image.device, dtype=image.dtype)


class LinearOperator(ABC):
    """A linear map A from images ``B x C x H x W`` to measurements, applied per image.

    Subclasses give A, A^T and A^+; the range-null projection and the noisy measurement are the
    same for all of them and live here.
    """

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """A x."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y, with <A x, y> = <x, A^T y>."""

    @abstractmethod
    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y, the Moore-Penrose pseudo-inverse: the least-norm x minimising |A x - y|."""

    @abstractmethod
    def output_shape(self, input_shape: Shape) -> Shape:
        """Shape of A x for an image batch of `input_shape` (raises ValueError if A does not apply)."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def project(self, x0: Tensor, y: Tensor) -> Tensor:
        """Replace the range-space part of x0 by the one y determines, keep its null-space part.

        A^+ y + (I - A^+ A) x0 (DDNM eq. 13) is computed as x0 + A^+ (y - A x0), one pseudo-inverse
        instead of two; the two are equal because A^+ is linear.
        """
        return x0 + self.pinv(y - self.forward(x0))

    def measure(self, x: Tensor, sigma_y: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """y = A x + sigma_y n with n ~ N(0, I) drawn only from `generator` (DDRM's noisy observation)."""
        if sigma_y < 0.0 or not math.isfinite(sigma_y):
            raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
        y = self.forward(x)
        if sigma_y == 0.0:
            return y
        return y + sigma_y * gaussian_like(y, generator)


class AveragePoolSR(LinearOperator):
    """Super-resolution by average pooling: each ``scale x scale`` block becomes its mean (DDRM's SR).

    The rows of A are disjoint boxes of weight 1/scale^2, so A A^T = I / scale^2: A^T is nearest
    up-sampling divided by scale^2 and A^+ = A^T (A A^T)^-1 is plain nearest up-sampling.
    """

    def __init__(self, scale: int = 4) -> None:
        if scale < 1:
            raise ValueError(f"scale must be an integer >= 1, got {scale}")
        self.scale = scale

    def output_shape(self, input_shape: Shape) -> Shape:
        batch, channels, height, width = _image_shape(input_shape, "AveragePoolSR input")
        if height % self.scale or width % self.scale:
            raise ValueError(
                f"AveragePoolSR(scale={self.scale}) needs H and W multiples of the scale, "
                f"got shape {tuple(input_shape)}"
            )
        return (batch, channels, height // self.scale, width // self.scale)

    def forward(self, x: Tensor) -> Tensor:
        self.output_shape(x.shape)
        return F.avg_pool2d(x, self.scale)

    def _upsample(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._upsample(y) / self.scale**2

    def pinv(self, y: Tensor) -> Tensor:
        return self._upsample(y)


def svd_pinv(matrix: Tensor, rcond: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(U, S, V, V S^+ U^T) of a matrix, with S^+ = 1/S where S > rcond max(S) and 0 elsewhere."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    kept = s > rcond * s.max()
    s_inv = torch.where(kept, 1.0 / torch.where(kept, s, torch.ones_like(s)), torch.zeros_like(s))
    v = vh.mT
    return u, s, v, (v * s_inv) @ u.mT


class BicubicSR(LinearOperator):
    """Super-resolution by bicubic down-sampling, as a separable matrix per axis (DDRM's bicubic SR).

    A x = A_h X A_w^T per channel, with A_h and A_w the 1-D matrices of MATLAB ``imresize``
    (:func:`ir_lightning.degradations.resize.bicubic_matrix`, the suite's one bicubic kernel) for
    the image size ``size = (H, W)`` given here, so A knows its borders exactly. A^T uses the
    transposed matrices. A^+ = A_w^+ (x) A_h^+ because the pseudo-inverse of a Kronecker product is
    the product of the pseudo-inverses; each 1-D A^+ = V S^+ U^T comes from the SVD of its matrix
    with singular values below ``rcond`` times the largest treated as zero.
    """

    def __init__(self, scale: int = 4, size: tuple[int, int] = (256, 256), rcond: float = 1e-6) -> None:
        if scale < 1:
            raise ValueError(f"scale must be an integer >= 1, got {scale}")
        if len(size) != 2 or any(s < 1 or s % scale for s in size):
            raise ValueError(f"size must be (H, W) with H and W positive multiples of scale {scale}, got {size}")
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"rcond must be in [0, 1), got {rcond}")
        self.scale = scale
        self.size = (int(size[0]), int(size[1]))
        self.rcond = rcond
        self.matrix_h = bicubic_matrix(self.size[0], scale)
        self.matrix_w = bicubic_matrix(self.size[1], scale)
        self.u_h, self.s_h, self.v_h, self.pinv_h = svd_pinv(self.matrix_h, rcond)
        self.u_w, self.s_w, self.v_w, self.pinv_w = svd_pinv(self.matrix_w, rcond)

    def output_shape(self, input_shape: Shape) -> Shape:
        batch, channels, height, width = _image_shape(input_shape, "BicubicSR input")
        if (height, width) != self.size:
            raise ValueError(f"BicubicSR was built for H, W = {self.size}, got an image of shape {tuple(input_shape)}")
        return (batch, channels, height // self.scale, width // self.scale)

    def _check_measurement(self, y: Tensor) -> None:
        expected = (self.size[0] // self.scale, self.size[1] // self.scale)
        if y.ndim != 4 or tuple(y.shape[-2:]) != expected:
            raise ValueError(
                f"BicubicSR expects measurements B x C x {expected[0]} x {expected[1]}, got {tuple(y.shape)}"
            )

    @staticmethod
    def _separable(rows: Tensor, image: Tensor, cols: Tensor) -> Tensor:
        # rows @ X @ cols^T on every B x C plane
        return _like(rows, image) @ image @ _like(cols, image).mT

    def forward(self, x: Tensor) -> Tensor:
        self.output_shape(x.shape)
        return self._separable(self.matrix_h, x, self.matrix_w)

    def adjoint(self, y: Tensor) -> Tensor:
        self._check_measurement(y)
        return self._separable(self.matrix_h.mT, y, self.matrix_w.mT)

    def pinv(self, y: Tensor) -> Tensor:
        self._check_measurement(y)
        return self._separable(self.pinv_h, y, self.pinv_w)


class Blur(LinearOperator):
    """Convolution with a 2-D kernel and a circular border, diagonal in the 2-D FFT (deblurring).

    The kernel's centre is entry ``(kh // 2, kw // 2)``; y[i, j] = sum_ab k[a, b] x[i - a + kh // 2,
    j - b + kw // 2] with indices taken modulo H and W. In Fourier space A multiplies by the
    kernel's transfer function K, A^T by conj(K), and A^+ by 1/K where |K| > rcond max|K| and by 0
    elsewhere (frequencies the blur erases). A small rcond gives the exact pseudo-inverse; with a
    noisy y a larger one keeps noise from being amplified (DDRM's code zeroes the
    singular values of its 1-D blur matrices below 3e-2).
    """

    def __init__(self, kernel: Tensor, rcond: float = 1e-6) -> None:
        kernel = torch.as_tensor(kernel).detach()
        if kernel.ndim != 2 or kernel.numel() == 0:
            raise ValueError(f"kernel must be a non-empty 2-D tensor (kh x kw), got shape {tuple(kernel.shape)}")
        if not bool(torch.isfinite(kernel).all()):
            raise ValueError("kernel must have finite entries")
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"rcond must be in [0, 1), got {rcond}")
        self.kernel = kernel.to(device="cpu", dtype=torch.float64)
        self.rcond = rcond

    def output_shape(self, input_shape: Shape) -> Shape:
        _, _, height, width = _image_shape(input_shape, "Blur input")
        kh, kw = self.kernel.shape
        if kh > height or kw > width:
            raise ValueError(f"Blur kernel of size {kh} x {kw} is larger than the image of shape {tuple(input_shape)}")
        return tuple(int(s) for s in input_shape)

    def transfer_function(self, height: int, width: int, like: Tensor) -> Tensor:
        """K = rfft2 of the kernel zero-padded to H x W with its centre moved to (0, 0)."""
        kh, kw = self.kernel.shape
        padded = self.kernel.new_zeros(height, width)
        padded[:kh, :kw] = self.kernel
        padded = padded.roll(shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
        return torch.fft.rfft2(_like(padded, like))

    def _filter(self, image: Tensor, gain: Callable[[Tensor], Tensor]) -> Tensor:
        """Multiply the image's spectrum by gain(K)."""
        height, width = self.output_shape(image.shape)[-2:]
        k = self.transfer_function(height, width, image)
        return torch.fft.irfft2(torch.fft.rfft2(image) * gain(k), s=(height, width))

    def _inverse_gain(self, k: Tensor) -> Tensor:
        magnitude = k.abs()
        kept = magnitude > self.rcond * magnitude.max()
        return torch.where(kept, 1.0 / torch.where(kept, k, torch.ones_like(k)), torch.zeros_like(k))

    def forward(self, x: Tensor) -> Tensor:
        return self._filter(x, lambda k: k)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._filter(y, torch.conj)

    def pinv(self, y: Tensor) -> Tensor:
        return self._filter(y, self._inverse_gain)


def _check_kernel_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer (so the kernel has a centre), got {size}")


def _offsets(size: int) -> Tensor:
    return torch.arange(size, dtype=torch.float64) - size // 2


def gaussian_blur(sigma: float = 10.0, size: int = 5, rcond: float = 1e-6) -> Blur:
    """Isotropic Gaussian blur on a ``size x size`` square, normalised to sum 1.

    The defaults are DDRM's Gaussian deblurring setting (sigma 10 over 5 taps, nearly a box blur).
    """
    _check_kernel_size(size)
    if not sigma > 0.0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    g = torch.exp(-0.5 * (_offsets(size) / sigma) ** 2)
    kernel = torch.outer(g, g)
    return Blur(kernel / kernel.sum(), rcond=rcond)


def uniform_blur(size: int = 9, rcond: float = 1e-6) -> Blur:
    """Box blur: the mean over a ``size x size`` square (DDRM's uniform deblurring uses 9 taps)."""
    _check_kernel_size(size)
    return Blur(torch.full((size, size), 1.0 / size**2, dtype=torch.float64), rcond=rcond)


def anisotropic_blur(sigma_x: float, sigma_y: float, angle: float, size: int, rcond: float = 1e-6) -> Blur:
    """Gaussian blur with standard deviations sigma_x, sigma_y along axes rotated by `angle` degrees.

    `angle` turns the sigma_x axis counter-clockwise from the image's W axis (with H pointing down,
    as images are stored). The kernel is exp(-(u^2 / sigma_x^2 + v^2 / sigma_y^2) / 2) in the rotated
    coordinates (u, v), normalised to sum 1.
    """
    _check_kernel_size(size)
    if not (sigma_x > 0.0 and sigma_y > 0.0):
        raise ValueError(f"sigma_x and sigma_y must be positive, got {sigma_x}, {sigma_y}")
    theta = math.radians(angle)
    row, col = torch.meshgrid(_offsets(size), _offsets(size), indexing="ij")
    up = -row  # rows grow downwards; turn them into a y axis that points up
    u = col * math.cos(theta) + up * math.sin(theta)
    v = -col * math.sin(theta) + up * math.cos(theta)
    kernel = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return Blur(kernel / kernel.sum(), rcond=rcond)


class Inpainting(LinearOperator):
    """Keep the observed pixels (mask 1), zero the missing ones (mask 0).

    y keeps the image's shape with zeros where pixels are missing, so A is the diagonal 0/1 matrix of
    the mask: an orthogonal projection, hence A^T = A^+ = A. The mask is ``B x 1 x H x W``,
    ``B x C x H x W`` or the same with batch 1 (one mask for the whole batch); it broadcasts over the
    channel and batch axes where it has size 1.
    """

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask).detach()
        if mask.ndim != 4:
            raise ValueError(f"mask must be (B or 1) x (1 or C) x H x W, got shape {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 (missing) and 1 (observed)")
        self.mask = mask.to(device="cpu", dtype=torch.float64)

    def output_shape(self, input_shape: Shape) -> Shape:
        batch, channels, height, width = _image_shape(input_shape, "Inpainting input")
        m_batch, m_channels, m_height, m_width = self.mask.shape
        if m_batch not in (1, batch) or m_channels not in (1, channels) or (m_height, m_width) != (height, width):
            raise ValueError(
                f"Inpainting mask of shape {tuple(self.mask.shape)} does not fit images of shape {tuple(input_shape)}"
            )
        return (batch, channels, height, width)

    def forward(self, x: Tensor) -> Tensor:
        self.output_shape(x.shape)
        return _like(self.mask, x) * x

    def adjoint(self, y: Tensor) -> Tensor:
        return self.forward(y)

    def pinv(self, y: Tensor) -> Tensor:
        return self.forward(y)


class Colorization(LinearOperator):
    """Gray-scale observation: y = the mean of the 3 colour channels, ``B x 1 x H x W``.

    A = [1, 1, 1] / 3 per pixel, so A A^T = I / 3: A^T repeats y over the channels divided by 3 and
    A^+ = 3 A^T repeats it unchanged (the channel mean of a repeat is itself).
    """

    def output_shape(self, input_shape: Shape) -> Shape:
        batch, channels, height, width = _image_shape(input_shape, "Colorization input")
        if channels != RGB_CHANNELS:
            raise ValueError(f"Colorization needs {RGB_CHANNELS} channels, got an image of shape {tuple(input_shape)}")
        return (batch, 1, height, width)

    @staticmethod
    def _check_measurement(y: Tensor) -> None:
        if y.ndim != 4 or y.shape[1] != 1:
            raise ValueError(f"Colorization expects gray measurements B x 1 x H x W, got shape {tuple(y.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self.output_shape(x.shape)
        return x.mean(dim=1, keepdim=True)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.pinv(y) / RGB_CHANNELS

    def pinv(self, y: Tensor) -> Tensor:
        self._check_measurement(y)
        return y.expand(-1, RGB_CHANNELS, -1, -1).clone()


OPERATOR_NAMES: tuple[str, ...] = (
    "sr<k>",
    "bicubic<k>",
    "deblur_gauss",
    "deblur_uni",
    "deblur_aniso",
    "inpaint_box",
    "inpaint_random<p>",
    "colorization",
)
"""The names `make_operator` understands (<k>: an integer scale, <p>: a percentage of missing pixels)."""


def make_operator(name: str, size: tuple[int, int], seed: int = 0) -> LinearOperator:
    """The operator a short name stands for, built for images of `size` = (H, W) (restoration by name,
    as on the command line: `--operator sr4`).

    - ``sr<k>``: average pooling by k (DDRM's SR); ``bicubic<k>``: MATLAB-style bicubic by k;
    - ``deblur_gauss``: Gaussian, sigma 10 over 5 x 5 (DDRM); ``deblur_uni``: 9 x 9 box (DDRM);
      ``deblur_aniso``: anisotropic Gaussian, sigmas 4 and 1 px at 45 degrees over 15 x 15 (a suite
      setting, not DDRM's);
    - ``inpaint_box``: the central square of half the side is missing; ``inpaint_random<p>``: p % of the
      pixels missing, drawn from `seed` (the same holes in every channel);
    - ``colorization``: the channel mean.
    """
    height, width = size
    if name.startswith("sr") and name[2:].isdigit():
        return AveragePoolSR(int(name[2:]))
    if name.startswith("bicubic") and name[7:].isdigit():
        return BicubicSR(int(name[7:]), (height, width))
    if name == "deblur_gauss":
        return gaussian_blur()
    if name == "deblur_uni":
        return uniform_blur()
    if name == "deblur_aniso":
        return anisotropic_blur(4.0, 1.0, 45.0, 15)
    if name == "inpaint_box":
        mask = torch.ones(1, 1, height, width, dtype=torch.float64)
        mask[..., height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = 0.0
        return Inpainting(mask)
    if name.startswith("inpaint_random") and name[14:].isdigit() and 0 <= int(name[14:]) <= 100:
        generator = torch.Generator().manual_seed(seed)
        missing = torch.rand(1, 1, height, width, generator=generator, dtype=torch.float64) < int(name[14:]) / 100
        return Inpainting((~missing).to(torch.float64))
    if name == "colorization":
        return Colorization()
    raise ValueError(f"unknown operator {name!r}; valid: {', '.join(OPERATOR_NAMES)}")
