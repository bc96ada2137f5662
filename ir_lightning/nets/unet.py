"""Noise-level-conditioned U-Net of SR3 (Saharia et al., 2021), built from reusable blocks.

The network sees the continuous noise level sqrt(gamma) of the diffusion (not an integer
step), so a model trained on one schedule samples with any other. Blocks follow the paper's
description: BigGAN-style residual blocks (GroupNorm, SiLU, dropout) with the noise level
added as a FiLM scale and shift in every block, self-attention at the chosen levels, and
residual connections scaled by 1/sqrt(2). Other methods of the suite reuse `ResBlock`,
`SelfAttention` and `NoiseLevelEmbedding`; this module knows nothing of losses or schedules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

SKIP_SCALE = 1.0 / math.sqrt(2.0)  # SR3 / BigGAN: residual sums scaled by 1/sqrt(2)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with `groups` groups, or fewer when the channel count is small."""
    groups = min(groups, channels)
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by {groups} groups")
    return nn.GroupNorm(groups, channels)


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal encoding of a continuous scalar (the noise level), then a 2-layer MLP.

    Args:
        dim: width of the embedding.
        scale: the scalar is multiplied by this before the encoding, so levels in [0, 1]
            span many periods of the highest frequency (transformer-style positional code).
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"NoiseLevelEmbedding: dim must be even, got {dim}")
        self.scale = scale
        self.half = dim // 2
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim * 4))
        self.out_dim = dim * 4

    def forward(self, level: Tensor) -> Tensor:
        # frequencies 1 .. 1e-4 on a geometric grid (Vaswani et al., sec. 3.5); computed here, not
        # held as a buffer, so DDP has no buffers to broadcast at every forward
        freqs = torch.exp(-math.log(1e4) * torch.arange(self.half, device=level.device) / self.half)
        angles = (level.float() * self.scale)[:, None] * freqs[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    """Residual block with the noise embedding applied as FiLM (x * (1 + scale) + shift) after the second norm."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.film(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (h + self.skip(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Single-head spatial self-attention over all H*W positions (fused scaled-dot-product kernel)."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)
        return (x + self.proj(out)) * SKIP_SCALE


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """Residual blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, chans: Sequence[tuple[int, int]], emb_dim: int, attention: bool, dropout: float, groups: int):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(i, o, emb_dim, dropout, groups) for i, o in chans)
        self.attns = nn.ModuleList(SelfAttention(o, groups) if attention else nn.Identity() for _, o in chans)


class UNet(nn.Module):
    """SR3 U-Net: `forward(x, noise_level) -> eps_hat`.

    Args:
        in_channels: input channels (SR3: 6 = bicubic-upsampled LR and the noisy target).
        out_channels: output channels (3: the predicted noise).
        base_channels: channels at the first level.
        channel_mults: channel multiplier per level; level i works at 1/2**i of the input size.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_levels: indices of the levels with self-attention (e.g. 3 = 16x16 for a 128x128 input).
        dropout: dropout inside the residual blocks.
        norm_groups: GroupNorm groups (32 in the paper).
        emb_dim: width of the sinusoidal noise-level code (the MLP widens it 4x).

    Inputs of any size work: they are padded (reflect) to a multiple of 2**(levels-1) and the
    output is cropped back.
    """

    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 8, 8),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (3,),
        dropout: float = 0.2,
        norm_groups: int = 32,
        emb_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.factor = 2 ** (len(channel_mults) - 1)
        self.embed = NoiseLevelEmbedding(emb_dim or base_channels)
        e = self.embed.out_dim
        widths = [base_channels * m for m in channel_mults]
        self.head = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        skips, ch = [base_channels], base_channels
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            chans = [(ch if j == 0 else w, w) for j in range(num_res_blocks)]
            self.down.append(Level(chans, e, i in attn_levels, dropout, norm_groups))
            ch = w
            skips += [w] * num_res_blocks
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else Downsample(ch))
            if not last:
                skips.append(ch)

        self.mid = Level([(ch, ch), (ch, ch)], e, True, dropout, norm_groups)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            chans = []
            for _ in range(num_res_blocks + 1):
                chans.append((ch + skips.pop(), w))
                ch = w
            self.up.append(Level(chans, e, i in attn_levels, dropout, norm_groups))
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())

        self.tail = nn.Sequential(group_norm(ch, norm_groups), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        h_in, w_in = x.shape[-2:]
        pad_h, pad_w = (-h_in) % self.factor, (-w_in) % self.factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        emb = self.embed(noise_level)

        h = self.head(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)

        for block, attn in zip(self.mid.blocks, self.mid.attns):
            h = attn(block(h, emb))

        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = up(h)

        return self.tail(h)[..., :h_in, :w_in]
