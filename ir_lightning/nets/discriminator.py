"""U-Net discriminator with spectral normalisation, as in Real-ESRGAN (Wang et al., ICCVW 2021).

A real-SR generator produces local artefacts (ringing, over-sharpened edges, noise) in some
regions and clean texture in others, so the discriminator judges every pixel rather than the
whole image: a small U-Net that maps an image to one realness logit per pixel, at the input's
resolution. Spectral normalisation of the inner convolutions (each weight, reshaped to a matrix,
divided by its largest singular value) bounds their gain and keeps the training of this stronger
discriminator stable. DiffIR's real-SR GAN stage uses it unchanged (3 input channels, 64 base
channels, skip connections on).

Layout (C = `base_channels`, LeakyReLU(0.2) after every convolution except the last):

- `conv_in`: 3x3, in -> C, plain (no spectral norm), full resolution;
- `down`: three 4x4 stride-2 convolutions C -> 2C -> 4C -> 8C (1/2, 1/4, 1/8);
- `up`: three 3x3 convolutions 8C -> 4C -> 2C -> C, each after a bilinear 2x up-sampling and each
  followed by the addition of the encoder feature of the same resolution (when `skip_connection`);
- `refine`: two 3x3 convolutions C -> C;
- `conv_out`: 3x3, C -> 1, plain, with bias: the logits.

All spectrally normalised convolutions have no bias. Parameter count: 1068 C^2 + 37 C + 1
(4,376,897 for C = 64). This module knows nothing of losses; see `ir_lightning.losses.GANLoss`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

LEAKY_SLOPE = 0.2  # Real-ESRGAN: LeakyReLU(0.2) after every convolution but the last
DEPTH = 3  # down-sampling steps: the coarsest features are at 1/8 of the input


def sn_conv(in_ch: int, out_ch: int, kernel_size: int, stride: int) -> nn.Conv2d:
    """A bias-free convolution, padding 1, whose weight is divided by its largest singular value
    (estimated by one power iteration per training forward): 3x3/1 keeps the size, 4x4/2 halves it."""
    return spectral_norm(nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=1, bias=False))


class UNetDiscriminatorSN(nn.Module):
    """Per-pixel realness logits ``B x 1 x H x W`` for images ``B x in_channels x H x W``.

    Args:
        in_channels: channels of the judged image (3 for RGB).
        base_channels: width C of the full-resolution features; the encoder doubles it at each of
            its three down-sampling steps.
        skip_connection: add each encoder feature to the decoder feature of the same resolution
            (Real-ESRGAN and DiffIR: on).

    Any H x W works: the decoder up-samples to the exact size of the matching encoder feature, which
    for H and W divisible by 8 is the official 2x up-sampling.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.skip_connection = skip_connection
        widths = [base_channels * 2**i for i in range(DEPTH + 1)]  # C, 2C, 4C, 8C
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, 1, 1)
        self.down = nn.ModuleList(sn_conv(widths[i], widths[i + 1], 4, 2) for i in range(DEPTH))
        self.up = nn.ModuleList(sn_conv(widths[i + 1], widths[i], 3, 1) for i in reversed(range(DEPTH)))
        self.refine = nn.ModuleList(sn_conv(base_channels, base_channels, 3, 1) for _ in range(2))
        self.conv_out = nn.Conv2d(base_channels, 1, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        feat = F.leaky_relu(self.conv_in(x), LEAKY_SLOPE)
        skips = [feat]
        for conv in self.down:
            feat = F.leaky_relu(conv(feat), LEAKY_SLOPE)
            skips.append(feat)
        skips.pop()  # the coarsest feature is the decoder's input, not a skip
        for conv in self.up:
            skip = skips.pop()
            feat = F.interpolate(feat, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            feat = F.leaky_relu(conv(feat), LEAKY_SLOPE)
            if self.skip_connection:
                feat = feat + skip
        for conv in self.refine:
            feat = F.leaky_relu(conv(feat), LEAKY_SLOPE)
        return self.conv_out(feat)
