"""A small residual U-Net restorer: output = x + R(x) (the default restorer of Denoising as Adaptation).

R is a 4-level U-Net: at each level two 3x3 convolutions with LeakyReLU(0.2); average pooling down;
bilinear up-sampling followed by a 3x3 convolution up; the skip concatenated and two convolutions;
a last 3x3 convolution to the output channels. Predicting the residual keeps an untrained restorer
close to the identity, and lets Denoising as Adaptation build its negatives by swapping residuals
between domains (`residual` returns R(x) for that). Any H and W work (each up-sampling matches its
skip's size); multiples of 2^(depth - 1) (`pad_multiple`) lose no border pixel to pooling. No losses here.

The official `RestorationNet` (KangLiao929/Noise-DA `models/net/UNet.py`) is this network: its keys map by
renaming (`down_path.i.block` -> `down.i`, `up_path.i.conv_up` -> `up.i.up`, `up_path.i.conv_block.block` ->
`up.i.block`). It starts from Kaiming-normal weights (`init="kaiming"`, `core/base_network.py`): far from the
identity, its first residual on a uniform random 128 px image has a std of about 0.9, against about 0.02 with
PyTorch's default initialisation (width 64, depth 4, five seeds).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.nets.init import kaiming_init

Init = Literal["pytorch", "kaiming"]


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
        init: "pytorch" (PyTorch's default initialisation of each layer) or "kaiming" (the official code's:
            `kaiming_init`; the Denoising-as-Adaptation recipes set it).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 64,
        depth: int = 4,
        slope: float = 0.2,
        init: Init = "pytorch",
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
        if init == "kaiming":
            kaiming_init(self)
        elif init != "pytorch":
            raise ValueError(f"ResidualUNet: init must be 'pytorch' or 'kaiming', got {init!r}")

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
