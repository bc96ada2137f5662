"""Operators built from their SVD as DDRM's code builds them (``functions/svd_operators.py`` of DDRM, shared
by DDNM and DeqIR): zero-boundary separable blurs with truncated singular values, and Walsh-Hadamard
compressed sensing. `ir_lightning.diffusion.operators.make_operator` builds them by name
(``deblur_*_ddrm``, ``deblur_*_sep``, ``cs_wh<k>``); the interface (forward, adjoint, pinv, spectral,
...) is `LinearOperator`'s.

Unlike the suite's circular `Blur`, the blurs follow that code: the 1-D blur matrix has a zero border
and leaves out the kernel's last tap, and its singular values below `DDRM_CUTOFF` are zeroed in A
itself, which both measures and restores. DDRM's code then deals the 2-D singular values to the wrong
basis images per channel (`ddrm_channel_spectrum`): ``*_ddrm`` computes that function, as the papers'
numbers did, ``*_sep`` the blur it meant.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ir_lightning.diffusion.operators import (
    RGB_CHANNELS,
    AxisSVD,
    LinearOperator,
    Shape,
    SpectralFn,
    _image_shape,
    _like,
    _reciprocal,
    _same_shapes,
    _separable,
    _sorted_per_image,
    gaussian_taps,
    separable_singular_values,
    separable_spectral,
)

DDRM_CUTOFF: float = 3e-2
"""1-D singular values of DDRM's blur matrices below this (absolute) are set to 0 in A (`Deblurring`'s ZERO)."""


def ddrm_blur_matrix(kernel: Tensor, n: int) -> Tensor:
    """DDRM's n x n 1-D blur matrix: row i holds kernel[a] at column i + a - len // 2, zero outside 0..n-1.

    Only the taps a < 2 (len // 2) enter (offsets -len // 2 .. len // 2 - 1): for the odd kernels DDRM uses,
    the last tap is left out (4 of 5, 8 of 9), as DDRM's loop stops one column short; the kernel's
    normalisation is not redone, so an inner row sums to 1 - kernel[-1].
    """
    kernel = torch.as_tensor(kernel).detach().to(device="cpu", dtype=torch.float64)
    if kernel.ndim != 1 or kernel.numel() == 0:
        raise ValueError(f"kernel must be a non-empty 1-D tensor, got shape {tuple(kernel.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    centre = kernel.numel() // 2
    matrix = torch.zeros(n, n, dtype=torch.float64)
    for tap in range(2 * centre):
        offset = tap - centre  # column minus row
        if abs(offset) < n:
            matrix += torch.diag(kernel[tap].expand(n - abs(offset)), offset)
    return matrix


ChannelOrder = Literal["kronecker", "ddrm"]


def ddrm_channel_spectrum(kronecker: Tensor, channels: int, ranking: Tensor | None = None) -> Tensor:
    """The singular values DDRM's ``Deblurring`` code applies: channels x H x W, from s_h[i] s_w[j] (H x W).

    That code ranks the H W products in descending order (`ranking`: the flat indices, best first) and lists
    the transform coefficients channel-interleaved (rank k of channel c at position C k + c), but its
    singular values channel after channel (position p holds the value of rank p mod H W). So the coefficient
    of rank k in channel c is scaled by the value of rank (C k + c) mod H W: the same values as the blur,
    dealt to other basis images, differently per channel. Where products tie (s_h[i] s_w[j] = s_h[j] s_w[i]
    for one kernel on both axes; the zeros) the result depends on their ranking, which DDRM takes from an
    unstable sort; None ranks ties by flat index (a stable sort).
    """
    values = kronecker.flatten()
    if ranking is None:
        ranking = values.sort(descending=True, stable=True).indices
    ranking = torch.as_tensor(ranking).to(device="cpu", dtype=torch.long)
    if not torch.equal(ranking.sort().values, torch.arange(values.numel())):
        raise ValueError(f"ranking must hold each of 0 .. {values.numel() - 1} once, got shape {tuple(ranking.shape)}")
    ranked = values[ranking]
    if bool((ranked[1:] > ranked[:-1]).any()):
        raise ValueError("ranking must order the singular values s_h[i] s_w[j] from the largest down")
    rank = torch.arange(values.numel())
    dealt = ranked[(channels * rank[None] + torch.arange(channels)[:, None]) % values.numel()]
    spectrum = torch.empty_like(dealt)
    spectrum[:, ranking] = dealt
    return spectrum.unflatten(1, kronecker.shape)


class SeparableBlur(LinearOperator):
    """DDRM's deblurring: a zero-boundary blur along H and one along W (`ddrm_blur_matrix`), through their SVDs.

    Each 1-D matrix A_1 = U diag(s) V^T has its singular values below `cutoff` set to 0 (absolute, as DDRM's
    ``Deblurring`` and ``Deblurring2D``), and the truncated matrices are A itself: forward, adjoint and
    pseudo-inverse all use them. On each channel plane A = (U_h (x) U_w) diag(sigma) (V_h (x) V_w)^T, so
    A X = U_h (sigma * (V_h^T X V_w)) U_w^T and A^+ Y = V_h (sigma^+ * (U_h^T Y U_w)) V_w^T, with

    - ``channel_order="kronecker"``: sigma[i, j] = s_h[i] s_w[j], the blur A_h X A_w^T of every channel (a
      product of two kept values may fall below the cut-off and is kept, as in DDRM);
    - ``channel_order="ddrm"``: what DDRM's code computes (and DDNM's, DeqIR's, which copy it): the same
      values dealt to other basis images in each of the 3 channels (`ddrm_channel_spectrum`), a mismatch
      between its channel layouts that makes A no blur; it is the A those codes' deblurring numbers came from.

    Args:
        kernel_h: 1-D kernel along H (the image's rows), normalised by the caller.
        kernel_w: 1-D kernel along W.
        size: (H, W) of the images, which the matrices are built for.
        cutoff: 1-D singular values below it become 0 (DDRM: 3e-2).
        channel_order: "kronecker" (a blur) or "ddrm" (DDRM's code, 3 channels).
        ranking: for "ddrm", the descending order of the products s_h[i] s_w[j] (flat indices) that decides
            how ties are dealt; None sorts stably (DDRM's own order is its platform's unstable sort).
    """

    def __init__(
        self,
        kernel_h: Tensor,
        kernel_w: Tensor,
        size: tuple[int, int],
        cutoff: float = DDRM_CUTOFF,
        channel_order: ChannelOrder = "kronecker",
        ranking: Tensor | None = None,
    ) -> None:
        if len(size) != 2 or any(s < 1 for s in size):
            raise ValueError(f"size must be (H, W) with H, W >= 1, got {size}")
        if not cutoff >= 0.0:
            raise ValueError(f"cutoff must be >= 0, got {cutoff}")
        if channel_order not in ("kronecker", "ddrm"):
            raise ValueError(f"channel_order must be kronecker or ddrm, got {channel_order!r}")
        if ranking is not None and channel_order != "ddrm":
            raise ValueError("ranking applies only to channel_order='ddrm'")
        self.size, self.cutoff, self.channel_order = (int(size[0]), int(size[1])), cutoff, channel_order
        self.axis_h = AxisSVD.of(ddrm_blur_matrix(kernel_h, self.size[0]), lambda s: s >= cutoff)
        self.axis_w = AxisSVD.of(ddrm_blur_matrix(kernel_w, self.size[1]), lambda s: s >= cutoff)
        kronecker = torch.outer(self.axis_h.s, self.axis_w.s)
        self.sigma = (
            kronecker if channel_order == "kronecker" else ddrm_channel_spectrum(kronecker, RGB_CHANNELS, ranking)
        )

    def output_shape(self, input_shape: Shape) -> Shape:
        _, channels, height, width = _image_shape(input_shape, "SeparableBlur input")
        if (height, width) != self.size:
            raise ValueError(
                f"SeparableBlur was built for H, W = {self.size}, got an image of shape {tuple(input_shape)}"
            )
        if self.sigma.ndim == 3 and channels != self.sigma.shape[0]:
            raise ValueError(
                f"SeparableBlur with channel_order='ddrm' needs {self.sigma.shape[0]} channels, "
                f"got an image of shape {tuple(input_shape)}"
            )
        return tuple(int(s) for s in input_shape)

    def _through(self, left: tuple[Tensor, Tensor], gain: Tensor, right: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        """left_h (gain * (right_h^T X right_w)) left_w^T on every channel plane."""
        self.output_shape(x.shape)
        inner = _separable(right[0].mT, x, right[1].mT)
        return _separable(left[0], _like(gain, x) * inner, left[1])

    def forward(self, x: Tensor) -> Tensor:
        return self._through((self.axis_h.u, self.axis_w.u), self.sigma, (self.axis_h.v, self.axis_w.v), x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._through((self.axis_h.v, self.axis_w.v), self.sigma, (self.axis_h.u, self.axis_w.u), y)

    def pinv(self, y: Tensor) -> Tensor:
        return self._through((self.axis_h.v, self.axis_w.v), _reciprocal(self.sigma), (self.axis_h.u, self.axis_w.u), y)

    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        self.output_shape(_same_shapes(images).shape)
        return separable_spectral(fn, images, self.axis_h.v, self.axis_w.v, self.sigma)

    def singular_values(self, input_shape: Shape) -> Tensor:
        self.output_shape(input_shape)
        return separable_singular_values(input_shape, self.sigma)


def ddrm_gaussian_blur(
    size: tuple[int, int],
    channel_order: ChannelOrder = "ddrm",
    ranking: Tensor | None = None,
    sigma: float = 10.0,
    taps: int = 5,
) -> SeparableBlur:
    """DDRM's ``deblur_gauss``: the Gaussian of `sigma` over `taps` on both axes (DDRM: sigma 10, 5 taps);
    `channel_order` and `ranking` as `SeparableBlur`'s."""
    kernel = gaussian_taps(sigma, taps)
    return SeparableBlur(kernel, kernel, size, channel_order=channel_order, ranking=ranking)


def ddrm_uniform_blur(
    size: tuple[int, int], channel_order: ChannelOrder = "ddrm", ranking: Tensor | None = None, taps: int = 9
) -> SeparableBlur:
    """DDRM's ``deblur_uni``: the mean over `taps` on both axes (DDRM: 9)."""
    if taps < 1:
        raise ValueError(f"taps must be >= 1, got {taps}")
    kernel = torch.full((taps,), 1.0 / taps, dtype=torch.float64)
    return SeparableBlur(kernel, kernel, size, channel_order=channel_order, ranking=ranking)


def ddrm_anisotropic_blur(
    size: tuple[int, int],
    channel_order: ChannelOrder = "ddrm",
    ranking: Tensor | None = None,
    sigma_h: float = 1.0,
    sigma_w: float = 20.0,
    taps: int = 9,
) -> SeparableBlur:
    """DDRM's ``deblur_aniso``: Gaussians of `sigma_h` along H and `sigma_w` along W over `taps` each
    (DDRM: 1 and 20 over 9, a nearly uniform horizontal blur)."""
    kernels = gaussian_taps(sigma_h, taps), gaussian_taps(sigma_w, taps)
    return SeparableBlur(*kernels, size, channel_order=channel_order, ranking=ranking)


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def walsh_hadamard_matrix(n: int) -> Tensor:
    """Sylvester's n x n Hadamard matrix / sqrt(n) (n a power of two), entry (i, j) = (-1)^popcount(i & j) / sqrt(n):
    orthonormal and symmetric, so it is its own inverse (natural order, as DDRM's fast transform)."""
    if not is_power_of_two(n):
        raise ValueError(f"the Walsh-Hadamard transform needs a power of two, got {n}")
    sign = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < n:
        matrix = torch.kron(sign, matrix)
    return matrix / math.sqrt(n)


class WalshHadamardCS(LinearOperator):
    """Compressed sensing: y = H W / ratio of the orthonormal Walsh-Hadamard coefficients of each channel,
    those at `permutation`[: H W / ratio] (DDRM's ``cs_walshhadamard``; DeqIR: ratio 2).

    The transform of the row-major pixels of a plane X is the Sylvester matrix of size H W, which is the
    Kronecker product of those of sizes H and W, so it is applied as T X T' (`walsh_hadamard_matrix`), and
    H, W must be powers of two (DDRM's code: square images). A's rows are orthonormal (A A^T = I), so
    A^+ = A^T (zeros in the unmeasured coefficients, then the transform, its own inverse), its singular
    values are 1 (H W / ratio per channel) and 0, and V^T x is the transform itself.

    Args:
        ratio: keep 1 coefficient in `ratio` (DDRM: round(1 / deg_scale)); must divide H W.
        size: (H, W), powers of two.
        seed: draws the permutation of the H W coefficients (a torch.Generator), one for all channels.
        permutation: the permutation itself, overriding `seed` (a tensor of the H W indices).

    Measurements are ``B x C x (H W / ratio) x 1``, in the permutation's order.
    """

    def __init__(self, ratio: int, size: tuple[int, int], seed: int = 0, permutation: Tensor | None = None) -> None:
        if len(size) != 2 or not all(is_power_of_two(int(s)) for s in size):
            raise ValueError(f"WalshHadamardCS needs H and W powers of two, got size {tuple(size)}")
        pixels = int(size[0]) * int(size[1])
        if ratio < 1 or pixels % ratio:
            raise ValueError(f"ratio must be an integer >= 1 dividing H W = {pixels}, got {ratio}")
        if permutation is None:
            permutation = torch.randperm(pixels, generator=torch.Generator().manual_seed(seed))
        permutation = torch.as_tensor(permutation).detach().to(device="cpu", dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(pixels)):
            raise ValueError(
                f"permutation must hold each of 0 .. {pixels - 1} once, got shape {tuple(permutation.shape)}"
            )
        self.ratio, self.size, self.permutation = ratio, (int(size[0]), int(size[1])), permutation
        self.measured = permutation[: pixels // ratio]
        self.transform_h, self.transform_w = walsh_hadamard_matrix(self.size[0]), walsh_hadamard_matrix(self.size[1])

    def output_shape(self, input_shape: Shape) -> Shape:
        batch, channels, height, width = _image_shape(input_shape, "WalshHadamardCS input")
        if (height, width) != self.size:
            raise ValueError(
                f"WalshHadamardCS was built for H, W = {self.size}, got an image of shape {tuple(input_shape)}"
            )
        return (batch, channels, self.measured.numel(), 1)

    def _transform(self, x: Tensor) -> Tensor:
        return _separable(self.transform_h, x, self.transform_w)

    def forward(self, x: Tensor) -> Tensor:
        self.output_shape(x.shape)
        coefficients = self._transform(x).flatten(-2)
        return coefficients[..., self.measured.to(x.device)].unsqueeze(-1)

    def adjoint(self, y: Tensor) -> Tensor:
        if y.ndim != 4 or tuple(y.shape[-2:]) != (self.measured.numel(), 1):
            raise ValueError(
                f"WalshHadamardCS expects measurements B x C x {self.measured.numel()} x 1, got {tuple(y.shape)}"
            )
        coefficients = y.new_zeros(*y.shape[:2], self.size[0] * self.size[1])
        coefficients[..., self.measured.to(y.device)] = y[..., 0]
        return self._transform(coefficients.unflatten(-1, self.size))

    def pinv(self, y: Tensor) -> Tensor:
        return self.adjoint(y)

    def _spectrum(self) -> Tensor:
        """s on the H x W grid of transform coefficients: 1 where measured, 0 elsewhere (float64)."""
        s = torch.zeros(self.size[0] * self.size[1], dtype=torch.float64)
        s[self.measured] = 1.0
        return s.unflatten(0, self.size)

    def spectral(self, fn: SpectralFn, *images: Tensor) -> Tensor:
        self.output_shape(_same_shapes(images).shape)
        s = _like(self._spectrum(), images[0])
        return self._transform(fn(s, *[self._transform(x) for x in images]))

    def singular_values(self, input_shape: Shape) -> Tensor:
        batch, channels, _, _ = self.output_shape(input_shape)
        return _sorted_per_image(self._spectrum().repeat(channels, 1), batch)
