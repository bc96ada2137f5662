"""Linear degradation operators y = A x (+ sigma_y n) for training-free restoration (DDRM, DDNM, DeqIR).

Every operator acts on image batches ``B x C x H x W`` of float32 or float64 on any device and gives

- ``forward(x)`` = A x, ``adjoint(y)`` = A^T y and ``pinv(y)`` = A^+ y (Moore-Penrose pseudo-inverse),
- ``project(x0, y)`` = A^+ y + (I - A^+ A) x0, the range-null decomposition DDNM puts in each step,
- ``measure(x, sigma_y, generator)`` = A x + sigma_y n, a (seeded) noisy observation,
- ``output_shape(input_shape)``, the shape of y,
- ``spectral(fn, *images)`` = V fn(s, V^T x_1, ..., V^T x_n), a function of A's singular values applied
  in A's right singular basis (DDNM+'s noise-aware step and DDRM's per-singular-value weights),
  ``singular_values(input_shape)`` and ``noise_gain(input_shape)`` = |A^+|, what A^+ does to noise in y.

The pseudo-inverse is what makes ``project`` exact: A project(x0, y) = A A^+ y = y for any y in
the range of A, while the part of x0 that A cannot see is kept. Each operator applies A^+ in its
own closed form (a reshape, a pair of small SVDs, a division in Fourier space), never as a dense
matrix, so the cost is that of A itself.

The singular value decomposition A = U diag(s) V^T in `spectral` spans the WHOLE input space: V is
square, s = 0 on A's null space, and singular values an operator treats as zero in A^+ (its cut-off)
count as 0. So fn = (s, c) -> c gives the identity and fn = (s, c) -> (s > 0) c gives A^+ A. Each
operator applies V and V^T in closed form (separable SVD factors, the unitary 2-D DFT, or the split
into range and null space where A has a single non-zero singular value).

Constants (interpolation matrices, kernels, masks) are stored in float64 on the CPU and moved to the
image's device and dtype when applied, so one operator serves float32 and float64, CPU and GPU.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ir_lightning.degradations.resize import bicubic_matrix
from ir_lightning.diffusion.samplers import gaussian_like

Shape = tuple[int, ...]

RGB_CHANNELS: int = 3
"""Channels a colour image has; colorization averages them into one."""

SpectralFn = Callable[..., Tensor]
"""fn(s, c_1, ..., c_n) for `LinearOperator.spectral`: entrywise sum_k g_k(s) c_k, i.e. elementwise in the
singular values s (broadcast against the coefficients) and linear in each coefficient tensor c_k; it
returns coefficients shaped like the c_k. Coefficients may be complex (the circular blur's Fourier basis)."""


def _image_shape(shape: Shape, name: str) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"{name} must be B x C x H x W, got shape {tuple(shape)}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _like(constant: Tensor, image: Tensor) -> Tensor:
    """A stored float64 constant on the device and in the dtype of `image`."""
    return constant.to(device=image.device, dtype=image.dtype)


def _same_shapes(images: tuple[Tensor, ...]) -> Tensor:
    """The first of `images` (at least one, all of one shape): what `spectral` checks its inputs against."""
    if not images:
        raise ValueError("spectral needs at least one image")
    if any(x.shape != images[0].shape for x in images):
        raise ValueError(f"spectral needs images of one shape, got {[tuple(x.shape) for x in images]}")
    return images[0]


def _sorted_per_image(values: Tensor, batch: int) -> Tensor:
    """One image's singular values, all C x H x W of them, sorted descending and repeated for `batch` images."""
    return values.flatten().sort(descending=True).values.expand(batch, -1)


def _two_valued_spectral(fn: SpectralFn, images: tuple[Tensor, ...], s_range: float, range_part: Callable) -> Tensor:
    """V fn(s, V^T x) for an A whose non-zero singular values all equal `s_range`: fn(s_range, P x) + fn(0, (I - P) x).

    P = A^+ A = `range_part` is the projector onto A's row space. Exact, with no basis V at hand: fn is
    entrywise sum_k g_k(s) c_k, so on the block of V where s is the constant b it is V_b g_k(b) V_b^T x_k =
    g_k(b) P_b x_k, and the two blocks (s_range on the row space, 0 on the null space) add up.
    """
    like = _same_shapes(images)
    ranges = [range_part(x) for x in images]
    nulls = [x - r for x, r in zip(images, ranges, strict=True)]
    return fn(like.new_tensor(s_range), *ranges) + fn(like.new_tensor(0.0), *nulls)


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

    @abstractmethod
    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        """V fn(s, V^T x_1, ..., V^T x_n) with A = U diag(s) V^T over the whole input space (module docstring).

        fn(s, c_1, ..., c_n) must be entrywise sum_k g_k(s) c_k (`SpectralFn`); s comes in the images'
        dtype and device, shaped to broadcast against the coefficients. The result has the images' shape.
        """

    @abstractmethod
    def singular_values(self, input_shape: Shape) -> Tensor:
        """s of A for each image of `input_shape` (B x C x H x W): B x (C H W) in float64, descending, with a
        0 for every direction of A's null space and every singular value below the operator's cut-off."""

    def noise_gain(self, input_shape: Shape) -> float:
        """|A^+| = max over s > 0 of 1/s: how much A^+ (and so the projection) can amplify noise in y (0 if A = 0)."""
        s = self.singular_values(input_shape)
        positive = s[s > 0]
        return 1.0 / positive.min().item() if positive.numel() else 0.0

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

    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        """Two-valued: s = 1/scale on block-constant images (the rows of A), 0 elsewhere."""
        return _two_valued_spectral(fn, images, 1.0 / self.scale, lambda x: self.pinv(self.forward(x)))

    def singular_values(self, input_shape: Shape) -> Tensor:
        batch, channels, height, width = self.output_shape(input_shape)
        s = torch.zeros(math.prod(input_shape[1:]), dtype=torch.float64)
        s[: channels * height * width] = 1.0 / self.scale
        return s.expand(batch, -1)


def svd_pinv(matrix: Tensor, rcond: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(U, S, V, V S^+ U^T) of a matrix, with S^+ = 1/S where S > rcond max(S) and 0 elsewhere."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    kept = s > rcond * s.max()
    s_inv = torch.where(kept, 1.0 / torch.where(kept, s, torch.ones_like(s)), torch.zeros_like(s))
    v = vh.mT
    return u, s, v, (v * s_inv) @ u.mT


def _reciprocal(s: Tensor) -> Tensor:
    """1/s where s > 0, 0 where s = 0."""
    positive = s > 0
    return torch.where(positive, 1.0 / torch.where(positive, s, torch.ones_like(s)), torch.zeros_like(s))


@dataclass(frozen=True)
class AxisSVD:
    """One axis of a separable operator: its 1-D matrix M (m x n, m <= n) as U diag(s) V^T over all of R^n.

    Attributes:
        u: m x m, the left singular vectors.
        s: n singular values, descending: the m of M (those the cut-off drops set to 0), then n - m zeros for
            the directions M does not see.
        v: n x n, orthogonal: the right singular vectors completed to a basis of R^n.
    """

    u: Tensor
    s: Tensor
    v: Tensor

    @classmethod
    def of(cls, matrix: Tensor, kept: Callable[[Tensor], Tensor]) -> AxisSVD:
        """The full SVD of `matrix`, keeping the singular values where kept(s) is true (the others become 0)."""
        rows, cols = matrix.shape
        if rows > cols:
            raise ValueError(f"AxisSVD needs a matrix with no more rows than columns, got {rows} x {cols}")
        u, s, vh = torch.linalg.svd(matrix, full_matrices=True)
        padded = s.new_zeros(cols)
        padded[:rows] = torch.where(kept(s), s, torch.zeros_like(s))
        return cls(u, padded, vh.mT)


def _separable(rows: Tensor, image: Tensor, cols: Tensor) -> Tensor:
    """rows @ X @ cols^T on every B x C plane X of `image`: (rows (x) cols) acting on row-major pixels."""
    return _like(rows, image) @ image @ _like(cols, image).mT


def separable_spectral(fn: SpectralFn, images: tuple[Tensor, ...], v_h: Tensor, v_w: Tensor, s: Tensor) -> Tensor:
    """`LinearOperator.spectral` of an A whose right singular vectors are V = V_h (x) V_w on each channel plane.

    The coefficients V^T X = V_h^T X V_w are B x C x H x W; `s` (H x W, or C x H x W where the channels
    differ) holds the singular value of each entry.
    """
    like = _same_shapes(images)
    coefficients = [_separable(v_h.mT, x, v_w.mT) for x in images]
    return _separable(v_h, fn(_like(s, like), *coefficients), v_w)


def separable_singular_values(input_shape: Shape, s: Tensor) -> Tensor:
    """All C x H x W singular values per image, from `s` on the H x W coefficient grid (or C x H x W)."""
    batch, channels, height, width = _image_shape(input_shape, "a separable operator's input")
    return _sorted_per_image(s.expand(channels, height, width), batch)


class BicubicSR(LinearOperator):
    """Super-resolution by bicubic down-sampling, as a separable matrix per axis (DDRM's bicubic SR).

    A x = A_h X A_w^T per channel, with A_h and A_w the 1-D matrices of MATLAB ``imresize``
    (:func:`ir_lightning.degradations.resize.bicubic_matrix`, the suite's one bicubic kernel) for
    the image size ``size = (H, W)`` given here, so A knows its borders exactly. A^T uses the
    transposed matrices. A^+ = A_w^+ (x) A_h^+ because the pseudo-inverse of a Kronecker product is
    the product of the pseudo-inverses; each 1-D A^+ = V S^+ U^T comes from the SVD of its matrix
    with singular values below ``rcond`` times the largest treated as zero; `spectral` uses the same
    SVD completed to all of R^H and R^W (`axis_h`, `axis_w`).
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
        self.axis_h = AxisSVD.of(self.matrix_h, lambda s: s > rcond * s.max())
        self.axis_w = AxisSVD.of(self.matrix_w, lambda s: s > rcond * s.max())

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

    def forward(self, x: Tensor) -> Tensor:
        self.output_shape(x.shape)
        return _separable(self.matrix_h, x, self.matrix_w)

    def adjoint(self, y: Tensor) -> Tensor:
        self._check_measurement(y)
        return _separable(self.matrix_h.mT, y, self.matrix_w.mT)

    def pinv(self, y: Tensor) -> Tensor:
        self._check_measurement(y)
        return _separable(self.pinv_h, y, self.pinv_w)

    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        self.output_shape(_same_shapes(images).shape)
        return separable_spectral(fn, images, self.axis_h.v, self.axis_w.v, torch.outer(self.axis_h.s, self.axis_w.s))

    def singular_values(self, input_shape: Shape) -> Tensor:
        self.output_shape(input_shape)
        return separable_singular_values(input_shape, torch.outer(self.axis_h.s, self.axis_w.s))


class Blur(LinearOperator):
    """Convolution with a 2-D kernel and a circular border, diagonal in the 2-D FFT (deblurring).

    The kernel's centre is entry ``(kh // 2, kw // 2)``; y[i, j] = sum_ab k[a, b] x[i - a + kh // 2,
    j - b + kw // 2] with indices taken modulo H and W. In Fourier space A multiplies by the
    kernel's transfer function K, A^T by conj(K), and A^+ by 1/K where |K| > rcond max|K| and by 0
    elsewhere (frequencies the blur erases). A small rcond gives the exact pseudo-inverse; with a
    noisy y a larger one keeps noise from being amplified (DDRM's code zeroes the
    singular values of its 1-D blur matrices below 3e-2).

    Its SVD comes from the unitary 2-D DFT F: A = F^H diag(K) F = (F^H diag(K / |K|)) diag(|K|) F, so V = F^H,
    the coefficients V^H x are the orthonormal fft2 of x (complex), and s = |K| over the full H x W spectrum,
    0 where A^+ drops the frequency.
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

    def _centred_kernel(self, height: int, width: int) -> Tensor:
        """The kernel zero-padded to H x W with its centre moved to (0, 0)."""
        kh, kw = self.kernel.shape
        padded = self.kernel.new_zeros(height, width)
        padded[:kh, :kw] = self.kernel
        return padded.roll(shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))

    def transfer_function(self, height: int, width: int, like: Tensor) -> Tensor:
        """K = rfft2 of the kernel zero-padded to H x W with its centre moved to (0, 0)."""
        return torch.fft.rfft2(_like(self._centred_kernel(height, width), like))

    def _spectrum(self, height: int, width: int) -> Tensor:
        """s = |K| on the full H x W frequency grid (float64), 0 where |K| <= rcond max|K| (as in A^+)."""
        magnitude = torch.fft.fft2(self._centred_kernel(height, width)).abs()
        return torch.where(magnitude > self.rcond * magnitude.max(), magnitude, torch.zeros_like(magnitude))

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

    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        """ifft2(fn(|K|, fft2(x_1), ...)) with orthonormal transforms; the real part (the imaginary part is 0
        when fn's weights are real, since |K| is symmetric under f -> -f as the kernel is real)."""
        height, width = self.output_shape(_same_shapes(images).shape)[-2:]
        s = _like(self._spectrum(height, width), images[0])
        coefficients = [torch.fft.fft2(x, norm="ortho") for x in images]
        return torch.fft.ifft2(fn(s, *coefficients), norm="ortho").real

    def singular_values(self, input_shape: Shape) -> Tensor:
        batch, channels, height, width = self.output_shape(input_shape)
        return _sorted_per_image(self._spectrum(height, width).repeat(channels, 1), batch)


def _check_kernel_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer (so the kernel has a centre), got {size}")


def _offsets(size: int) -> Tensor:
    return torch.arange(size, dtype=torch.float64) - size // 2


def gaussian_taps(sigma: float, size: int) -> Tensor:
    """exp(-offset^2 / (2 sigma^2)) over the `size` offsets -size // 2 .. size // 2, normalised to sum 1 (float64)."""
    _check_kernel_size(size)
    if not sigma > 0.0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    g = torch.exp(-0.5 * (_offsets(size) / sigma) ** 2)
    return g / g.sum()


def gaussian_blur(sigma: float = 10.0, size: int = 5, rcond: float = 1e-6) -> Blur:
    """Isotropic Gaussian blur on a ``size x size`` square, normalised to sum 1.

    The defaults are DDRM's Gaussian deblurring setting (sigma 10 over 5 taps, nearly a box blur).
    """
    g = gaussian_taps(sigma, size)
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

    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        """Two-valued: s = 1 on the observed pixels, 0 on the missing ones."""
        return _two_valued_spectral(fn, images, 1.0, self.forward)

    def singular_values(self, input_shape: Shape) -> Tensor:
        batch, channels, height, width = self.output_shape(input_shape)
        mask = self.mask.expand(batch, channels, height, width).reshape(batch, -1)
        return mask.sort(dim=1, descending=True).values


class Colorization(LinearOperator):
    """Gray-scale observation: y = the mean of the 3 colour channels, ``B x 1 x H x W``.

    A = [1, 1, 1] / 3 per pixel, so A A^T = I / 3: A^T repeats y over the channels divided by 3 and
    A^+ = 3 A^T repeats it unchanged (the channel mean of a repeat is itself). Its one singular value per
    pixel is |[1, 1, 1] / 3| = 1 / sqrt(3).
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

    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        """Two-valued: s = 1/sqrt(3) on gray images (equal channels), 0 on those with channel mean 0."""
        return _two_valued_spectral(fn, images, 1.0 / math.sqrt(RGB_CHANNELS), lambda x: self.pinv(self.forward(x)))

    def singular_values(self, input_shape: Shape) -> Tensor:
        batch, _, height, width = self.output_shape(input_shape)
        s = torch.zeros(RGB_CHANNELS * height * width, dtype=torch.float64)
        s[: height * width] = 1.0 / math.sqrt(RGB_CHANNELS)
        return s.expand(batch, -1)


OPERATOR_NAMES: tuple[str, ...] = (
    "sr<k>",
    "bicubic<k>",
    "deblur_gauss",
    "deblur_uni",
    "deblur_aniso",
    "inpaint_box",
    "inpaint_random<p>",
    "colorization",
    "deblur_gauss_ddrm",
    "deblur_uni_ddrm",
    "deblur_aniso_ddrm",
    "deblur_gauss_sep",
    "deblur_uni_sep",
    "deblur_aniso_sep",
    "cs_wh<k>",
)
"""The names `make_operator` understands (<k>: an integer scale or compression ratio, <p>: a percentage of
missing pixels)."""


def make_operator(name: str, size: tuple[int, int], seed: int = 0) -> LinearOperator:
    """The operator a short name stands for, built for images of `size` = (H, W) (restoration by name,
    as on the command line: `--operator sr4`).

    - ``sr<k>``: average pooling by k (DDRM's SR); ``bicubic<k>``: MATLAB-style bicubic by k;
    - ``deblur_gauss``: Gaussian, sigma 10 over 5 x 5 (DDRM); ``deblur_uni``: 9 x 9 box (DDRM);
      ``deblur_aniso``: anisotropic Gaussian, sigmas 4 and 1 px at 45 degrees over 15 x 15 (a suite
      setting, not DDRM's);
    - ``inpaint_box``: the central square of half the side is missing; ``inpaint_random<p>``: p % of the
      pixels missing, drawn from `seed` (the same holes in every channel);
    - ``colorization``: the channel mean;
    - ``deblur_gauss_ddrm``, ``deblur_uni_ddrm``, ``deblur_aniso_ddrm``: the function DDRM's (and DDNM's,
      DeqIR's) deblurring code computes (`operators_svd.SeparableBlur`, channel_order "ddrm": zero border,
      truncated SVD, its singular values dealt per channel as that code does; 3 channels): Gaussian sigma 10
      over 5 taps, 9-tap box, Gaussians sigma 1 along H and 20 along W over 9 taps;
    - ``deblur_gauss_sep``, ``deblur_uni_sep``, ``deblur_aniso_sep``: the same three as the blurs DDRM meant
      (channel_order "kronecker": the 1-D blurs along H and W of every channel);
    - ``cs_wh<k>``: Walsh-Hadamard compressed sensing keeping 1 coefficient in k (DDRM's ``cs_walshhadamard``
      with deg_scale 1/k; DeqIR: k = 2), the coefficients drawn from `seed`; H and W powers of two.
    """
    from ir_lightning.diffusion import operators_svd  # builds on LinearOperator above

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
    ddrm_blurs = {
        "gauss": operators_svd.ddrm_gaussian_blur,
        "uni": operators_svd.ddrm_uniform_blur,
        "aniso": operators_svd.ddrm_anisotropic_blur,
    }
    kind, _, order = name.removeprefix("deblur_").partition("_")
    if name.startswith("deblur_") and kind in ddrm_blurs and order in ("ddrm", "sep"):
        return ddrm_blurs[kind](size, channel_order="ddrm" if order == "ddrm" else "kronecker")
    if name.startswith("cs_wh") and name[5:].isdigit():
        return operators_svd.WalshHadamardCS(int(name[5:]), size, seed=seed)
    raise ValueError(f"unknown operator {name!r}; valid: {', '.join(OPERATOR_NAMES)}")
