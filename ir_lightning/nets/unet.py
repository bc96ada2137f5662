"""Noise-level-conditioned U-Net of SR3 (Saharia et al., 2021), built from reusable blocks.

The network sees the continuous noise level sqrt(gamma) of the diffusion (not an integer
step), so a model trained on one schedule samples with any other. Blocks follow the paper's
description: BigGAN-style residual blocks (GroupNorm, SiLU, dropout) with the noise level
added as a FiLM scale and shift in every block, self-attention at the chosen levels, and
residual connections scaled by 1/sqrt(2). Other methods of the suite reuse the blocks, the
embedding of several conditioning scalars (`NoiseLevelEmbedding(n_inputs=k)`, `UNet(cond_dims=k)`)
and the two halves of the U-Net (`UNet.encode`/`decode`, `UNetEncoder`, `UNetDecoder`: one
encoder can feed several decoders). This module knows nothing of losses or schedules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ir_lightning.nets.padding import pad_to_multiple

SKIP_SCALE = 1.0 / math.sqrt(2.0)  # SR3 / BigGAN: residual sums scaled by 1/sqrt(2)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with `groups` groups, or fewer when the channel count is small."""
    groups = min(groups, channels)
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by {groups} groups")
    return nn.GroupNorm(groups, channels)


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal encoding of k continuous scalars per sample, concatenated, then a 2-layer MLP.

    SR3 conditions on one scalar (the noise level); RDDM on one (t / T) or on two (alpha_bar_t,
    beta_bar_t), the latter so that the residual and the noise can be removed along different paths.
    Each scalar gets its own `dim`-wide code, so k = 1 keeps SR3's parameter shapes.

    Args:
        dim: width of the code of one scalar; the MLP maps the k codes to `4 * dim`.
        scale: the scalars are multiplied by this before the encoding, so values in [0, 1]
            span many periods of the highest frequency (transformer-style positional code).
        n_inputs: scalars per sample (k); `forward` takes shape (B,) when k = 1, else (B, k).
    """

    def __init__(self, dim: int, scale: float = 1000.0, n_inputs: int = 1) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"NoiseLevelEmbedding: dim must be even, got {dim}")
        if n_inputs < 1:
            raise ValueError(f"NoiseLevelEmbedding: n_inputs must be at least 1, got {n_inputs}")
        self.scale = scale
        self.half = dim // 2
        self.n_inputs = n_inputs
        self.mlp = nn.Sequential(nn.Linear(dim * n_inputs, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim * 4))
        self.out_dim = dim * 4

    def forward(self, level: Tensor) -> Tensor:
        if level.ndim == 1 and self.n_inputs == 1:
            level = level[:, None]
        if level.ndim != 2 or level.shape[1] != self.n_inputs:
            expected = "(B,) or (B, 1)" if self.n_inputs == 1 else f"(B, {self.n_inputs})"
            raise ValueError(f"NoiseLevelEmbedding: conditioning of shape {tuple(level.shape)}, expected {expected}")
        # frequencies 1 .. 1e-4 on a geometric grid (Vaswani et al., sec. 3.5); computed here, not
        # held as a buffer, so DDP has no buffers to broadcast at every forward
        freqs = torch.exp(-math.log(1e4) * torch.arange(self.half, device=level.device) / self.half)
        angles = (level.float() * self.scale)[:, :, None] * freqs  # (B, k, dim / 2)
        return self.mlp(rearrange([angles.sin(), angles.cos()], "sc b k f -> b (k sc f)"))


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


def skip_channels(base_channels: int, channel_mults: Sequence[int], num_res_blocks: int) -> list[int]:
    """Channels of the encoder's skip tensors, in the order the encoder stores them.

    One after the head, one after every residual block, one after every down-sampler; the
    decoder takes them back last-in, first-out, one per residual block.
    """
    skips = [base_channels]
    for i, mult in enumerate(channel_mults):
        skips += [base_channels * mult] * num_res_blocks
        if i < len(channel_mults) - 1:
            skips.append(base_channels * mult)
    return skips


class EncoderPath:
    """The contracting half of the U-Net: head conv, one `Level` and a down-sampler per level, bottleneck.

    A mixin, so that `UNet` holds these modules directly (the state-dict keys `head.`, `down.`,
    `downsample.`, `mid.` of the SR3 checkpoints) and `UNetEncoder` holds the same ones alone.
    """

    head: nn.Conv2d
    down: nn.ModuleList
    downsample: nn.ModuleList
    mid: Level

    def build_encoder(
        self,
        in_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        attn_levels: Sequence[int],
        dropout: float,
        norm_groups: int,
        emb_dim: int,
    ) -> None:
        self.head = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = base_channels
        for i, mult in enumerate(channel_mults):
            w = base_channels * mult
            chans = [(ch if j == 0 else w, w) for j in range(num_res_blocks)]
            self.down.append(Level(chans, emb_dim, i in attn_levels, dropout, norm_groups))
            ch = w
            self.downsample.append(Downsample(ch) if i < len(channel_mults) - 1 else nn.Identity())
        self.mid = Level([(ch, ch), (ch, ch)], emb_dim, True, dropout, norm_groups)

    def encode(self, x: Tensor, emb: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x (H, W multiples of 2**(levels-1)) and the conditioning embedding -> (bottleneck features, skips)."""
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
        return h, skips


class DecoderPath:
    """The expanding half of the U-Net: one `Level` and an up-sampler per level, then the output conv.

    A mixin for the same reason as `EncoderPath` (state-dict keys `up.`, `upsample.`, `tail.`).
    Each residual block reads one of the encoder's skips (concatenated), unless the decoder is
    built with `use_skips=False`: then it sees the bottleneck features only.
    """

    up: nn.ModuleList
    upsample: nn.ModuleList
    tail: nn.Sequential
    use_skips: bool = True

    def build_decoder(
        self,
        out_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        attn_levels: Sequence[int],
        dropout: float,
        norm_groups: int,
        emb_dim: int,
        use_skips: bool = True,
    ) -> None:
        self.use_skips = use_skips
        skips = skip_channels(base_channels, channel_mults, num_res_blocks) if use_skips else []
        ch = base_channels * channel_mults[-1]  # the bottleneck's width
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            w = base_channels * mult
            chans = []
            for _ in range(num_res_blocks + 1):
                chans.append((ch + (skips.pop() if use_skips else 0), w))
                ch = w
            self.up.append(Level(chans, emb_dim, i in attn_levels, dropout, norm_groups))
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())
        self.tail = nn.Sequential(group_norm(ch, norm_groups), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def decode(self, h: Tensor, skips: Sequence[Tensor], emb: Tensor) -> Tensor:
        """Bottleneck features, the encoder's skips (left untouched: two decoders may read them) -> output."""
        skips = list(skips)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1) if self.use_skips else h, emb))
            h = up(h)
        return self.tail(h)


def check_channel_mults(channel_mults: Sequence[int]) -> None:
    if not channel_mults:
        raise ValueError("U-Net: channel_mults is empty; give one multiplier per level, e.g. [1, 2, 4, 8]")


class UNetEncoder(EncoderPath, nn.Module):
    """The encoder half alone, `forward(x, emb) -> (h, skips)`, for networks with one encoder and several decoders.

    The conditioning embedding is computed outside (by the network that owns the encoder), so
    that the encoder and its decoders see the same one. Arguments as in `UNet`; `emb_dim` is
    the width of the embedding itself (`NoiseLevelEmbedding.out_dim`).
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        attn_levels: Sequence[int],
        dropout: float,
        norm_groups: int,
        emb_dim: int,
    ) -> None:
        super().__init__()
        check_channel_mults(channel_mults)
        self.build_encoder(
            in_channels, base_channels, channel_mults, num_res_blocks, attn_levels, dropout, norm_groups, emb_dim
        )

    def forward(self, x: Tensor, emb: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.encode(x, emb)


class UNetDecoder(DecoderPath, nn.Module):
    """The decoder half alone, `forward(h, skips, emb) -> output`, matching a `UNetEncoder` of the same arguments.

    `use_skips=False` builds a decoder without skip connections (its blocks see the bottleneck
    features only; `forward` ignores `skips`), as the residual decoder of RDDM's shared-encoder layout.
    """

    def __init__(
        self,
        out_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        attn_levels: Sequence[int],
        dropout: float,
        norm_groups: int,
        emb_dim: int,
        use_skips: bool = True,
    ) -> None:
        super().__init__()
        check_channel_mults(channel_mults)
        self.build_decoder(
            out_channels,
            base_channels,
            channel_mults,
            num_res_blocks,
            attn_levels,
            dropout,
            norm_groups,
            emb_dim,
            use_skips,
        )

    def forward(self, h: Tensor, skips: Sequence[Tensor], emb: Tensor) -> Tensor:
        return self.decode(h, skips, emb)


class UNet(EncoderPath, DecoderPath, nn.Module):
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
        emb_dim: width of the sinusoidal code of one conditioning scalar (the MLP widens it 4x).
        cond_dims: conditioning scalars per sample: 1 (SR3's noise level; `noise_level` of shape
            (B,)) or more (shape (B, cond_dims), e.g. RDDM's (alpha_bar_t, beta_bar_t)).

    Inputs of any size work: they are padded (reflect) to a multiple of 2**(levels-1) and the
    output is cropped back. `encode` and `decode` run the two halves separately; the modules sit
    directly on the U-Net (not under `encoder.`/`decoder.`) so SR3 checkpoints keep loading.
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
        cond_dims: int = 1,
    ) -> None:
        super().__init__()
        check_channel_mults(channel_mults)
        if cond_dims < 1:
            raise ValueError(f"UNet: cond_dims must be at least 1 (conditioning scalars per sample), got {cond_dims}")
        self.factor = 2 ** (len(channel_mults) - 1)
        self.embed = NoiseLevelEmbedding(emb_dim or base_channels, n_inputs=cond_dims)
        levels = dict(
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            attn_levels=attn_levels,
            dropout=dropout,
            norm_groups=norm_groups,
            emb_dim=self.embed.out_dim,
        )
        self.build_encoder(in_channels, **levels)
        self.build_decoder(out_channels, **levels)

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        h_in, w_in = x.shape[-2:]
        emb = self.embed(noise_level)
        h, skips = self.encode(pad_to_multiple(x, self.factor), emb)
        return self.decode(h, skips, emb)[..., :h_in, :w_in]
