"""Every bicubic resize of the suite, in one place: the data (crops resized to a fixed size), the synthetic
degradations (bicubic down-scaling), SR3's and RDDM's conditioning and the image grids (bicubic up-sampling),
the restored alpha channel, evaluation (MATLAB `imresize` of the GT) and DeqIR's bicubic operator.

Two kernels, both Keys' cubic convolution:

- torch's (`bicubic_resize`): `F.interpolate(mode="bicubic", align_corners=False)`, half-pixel centres,
  a = -0.75 (OpenCV's) without antialiasing; with `antialias=True` a = -0.5 (PIL's, MATLAB's) and the
  kernel widened by the factor on down-scaling, as PIL `BICUBIC`;
- MATLAB `imresize(x, 1/scale, 'bicubic')` exactly (`bicubic_matrix`, `matlab_bicubic_downsample`): a = -0.5
  (`cubic`), the kernel stretched by the scale, MATLAB's symmetric border. It agrees with torch's antialiased
  kernel away from the border (tests/diffusion/test_operators.py).

Plain torch, no kornia and no Lightning: the diffusion layer (DeqIR's operator) imports it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CUBIC_A: float = -0.5
"""Keys' cubic coefficient that MATLAB ``imresize`` and PIL use (OpenCV uses -0.75)."""

CUBIC_SUPPORT: float = 4.0
"""Width of the cubic kernel in input pixels at scale 1 (it is zero beyond |x| = 2)."""


# --- torch's kernel ------------------------------------------------------------------------------------------
def bicubic_resize(img: Tensor, size: Sequence[int], antialias: bool = False) -> Tensor:
    """`img` (B x C x H x W) resized to `size` (H', W') with torch's bicubic (see the module docstring); not clamped."""
    return F.interpolate(img, size=tuple(size), mode="bicubic", align_corners=False, antialias=antialias)


def bicubic_upsample(img: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic interpolation of a B x C x h x w batch to `size` (H, W), clamped to [0, 1]: the "bicubic"
    baseline of SR and the conditioning image of SR3."""
    return bicubic_resize(img, size).clamp(0, 1)


def bicubic_downsample(img: Tensor, scale: int, antialias: bool = True) -> Tensor:
    """Bicubic down-scaling of a B x C x H x W batch by an integer `scale` to exactly (H / scale, W / scale), as
    PIL `BICUBIC` with `antialias` (torch's aliasing a = -0.75 sampling without); `scale=1` is the identity.
    Sizes not divisible by the scale raise ValueError."""
    height, width = img.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"image of shape {tuple(img.shape)} has H, W not divisible by scale {scale}")
    if scale == 1:
        return img
    return bicubic_resize(img, (height // scale, width // scale), antialias=antialias)


# --- MATLAB's imresize ---------------------------------------------------------------------------------------
def cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5, zero for |x| >= 2."""
    a, ax = CUBIC_A, x.abs()
    near = ((a + 2) * ax - (a + 3)) * ax**2 + 1  # |x| <= 1
    far = (((ax - 5) * ax + 8) * ax - 4) * a  # 1 < |x| < 2
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(x)))


def bicubic_matrix(length: int, scale: int) -> Tensor:
    """The ``(length / scale) x length`` float64 matrix of 1-D bicubic down-sampling, as MATLAB ``imresize``.

    Output pixel i sits at input coordinate u = (i + 0.5) scale - 0.5; on down-sampling the cubic is
    stretched by `scale` (antialiasing), so its weights are cubic((u - j) / scale) over
    4 scale + 2 neighbours j, normalised to sum 1. Neighbours outside [0, length) are mirrored with
    the edge pixel repeated (MATLAB's symmetric border) and their weights added to the mirrored column.
    """
    if length % scale:
        raise ValueError(f"bicubic_matrix needs a length that is a multiple of scale {scale}, got {length}")
    out_length = length // scale
    u = (torch.arange(out_length, dtype=torch.float64) + 0.5) * scale - 0.5
    taps = math.ceil(CUBIC_SUPPORT * scale) + 2
    left = torch.floor(u - CUBIC_SUPPORT * scale / 2)
    neighbours = left[:, None] + torch.arange(taps, dtype=torch.float64)
    weights = cubic((u[:, None] - neighbours) / scale)
    weights = weights / weights.sum(dim=1, keepdim=True)
    period = neighbours.long() % (2 * length)  # mirror [0, n) -> [0, 2n) with the edge repeated
    columns = torch.where(period < length, period, 2 * length - 1 - period)
    matrix = torch.zeros(out_length, length, dtype=torch.float64)
    return matrix.scatter_add_(1, columns, weights)


def matlab_bicubic_downsample(img: Tensor, scale: int) -> Tensor:
    """MATLAB `imresize(img, 1/scale, 'bicubic')` of a ... x H x W image (H, W multiples of `scale`), in float64
    and not rounded: A_h X A_w^T with the 1-D matrices of `bicubic_matrix`."""
    height, width = img.shape[-2:]
    rows, cols = bicubic_matrix(height, scale), bicubic_matrix(width, scale)
    return rows.to(img.device) @ img.to(torch.float64) @ cols.to(img.device).mT
