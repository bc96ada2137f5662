"""A small residual U-Net restorer: output = x + R(x) (the default restorer of Denoising as Adaptation).

R is a 4-level U-Net: at each level two 3x3 convolutions with LeakyReLU(0.2); average pooling down;
bilinear up-sampling followed by a 3x3 convolution up; the skip concatenated and two convolutions;
a last 3x3 convolution to the output channels. Predicting the residual keeps an untrained restorer
close to the identity, and lets Denoising as Adaptation build its negatives by swapping residuals
between domains (`residual` returns R(x) for that). Any H and W work (each up-sampling matches its
skip's size); multiples of 2^(depth - 1) (`pad_multiple`) lose no border pixel to pooling. No losses here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int, slope: float) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by LeakyReLU(slope)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.LeakyReLU(slope, inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.LeakyReLU(slope, inplace=True),
    )


class UpBlock(nn.Module):
    """Bilinear x2, conv3x3 to the skip's width, concatenate the skip, two convolutions."""

    def __init__(self, in_channels: int, out_channels: int, slope: float) -> None:
        super().__init__()
        self.up = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.block = conv_block(2 * out_channels, out_channels, slope)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True))
        return self.block(torch.cat([x, skip], dim=1))


class ResidualUNet(nn.Module):
    """`forward(x) = x + residual(x)`.

    Args:
        in_channels, out_channels: image channels (equal, for the residual).
        width: channels at full resolution, doubled at each lower level (64 in the paper's code).
        depth: levels (4).
        slope: LeakyReLU slope (0.2).
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 3, width: int = 64, depth: int = 4, slope: float = 0.2
    ):
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(
                f"ResidualUNet adds its input back: in_channels ({in_channels}) must equal out_channels ({out_channels})"
            )
        if depth < 1:
            raise ValueError(f"ResidualUNet: depth must be >= 1, got {depth}")
        widths = [width * 2**level for level in range(depth)]
        self.pad_multiple = 2 ** (depth - 1)
        self.down = nn.ModuleList(conv_block(c_in, c_out, slope) for c_in, c_out in zip([in_channels, *widths], widths))
        self.up = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], slope) for level in reversed(range(depth - 1))
        )
        self.last = nn.Conv2d(width, out_channels, 3, padding=1)

    def residual(self, x: Tensor) -> Tensor:
        """R(x), the correction the restorer adds to its input."""
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < len(self.down) - 1:
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for block in self.up:
            x = block(x, skips.pop())
        return self.last(x)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual(x)
