"""The SR3 network of the public re-implementation (Janspiry/Image-Super-Resolution-via-Iterative-Refinement,
`model/sr3_modules/unet.py` @01d27a7), computing the function its released weights were trained with.

It is not the paper's network (`ir_lightning.nets.unet.UNet`); what differs:

- the noise level sqrt(gamma) in [0, 1] is encoded by sinusoids without any scaling (angles of at most
  1 rad), then `Linear(C, 4C)-SiLU-Linear(4C, C)`: the embedding is C wide, not 4C;
- each residual block adds `Linear(embedding)` as a per-channel bias after its first convolution, before the
  second GroupNorm (no SiLU on the embedding, no scale: the official `use_affine_level=False`);
- residual and attention sums are not scaled by 1/sqrt(2); the attention's qkv convolution has no bias;
- the middle has attention after its first residual block only;
- attention levels are named by resolution (`attn_res`, compared with `image_size` halved per level);
- weights start orthogonal with zero biases (`model/networks.py`, `init_type='orthogonal'`).

As ours: 3x3 stride-2 convolution down, nearest x2 + 3x3 convolution up, dropout before the second
convolution of a block, GroupNorm-SiLU-conv head out, single-head attention with softmax scale 1/sqrt(C).

Sizes: the official network needs H and W divisible by 2**(levels - 1) (its skip concatenations fail
otherwise). Here other sizes are padded (reflect, bottom and right, `pad_to_multiple`) and the output cropped
back, as `UNet` does; on divisible sizes nothing is padded and the function is the official one.

Parameter counts of the official configurations (state-dict keys of the network alone; the released files
add 12 schedule buffers under `GaussianDiffusion`):

| configuration | parameters | keys |
|---|---|---|
| 16 -> 128 faces (`config/sr_sr3_16_128.json`, the defaults) | 97,807,491 | 362 |
| 64 -> 512 faces (`config/sr_sr3_64_512.json`) | 155,334,339 | 229 |
| 128 px unconditional (`config/sample_sr3_128.json`, 3 input channels) | 97,805,763 | 362 |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ir_lightning.nets.padding import pad_to_multiple
from ir_lightning.nets.unet import (
    Downsample,
    EncoderPath,
    Upsample,
    check_channel_mults,
    group_norm,
    skip_channels,
)

SINUSOID_BASE = 1e4
"""The frequencies of the noise-level code run from 1 down to 1/SINUSOID_BASE (Vaswani et al., sec. 3.5)."""

EMBEDDING_WIDENING = 4
"""The noise-level MLP's hidden width, in multiples of `inner_channel`."""

Init = Literal["orthogonal", "pytorch"]


class NoiseLevelMLP(nn.Module):
    """sqrt(gamma) -> sinusoidal code of width C (the raw level times the frequencies) -> Linear-SiLU-Linear, C wide."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"SR3ReferenceUNet: inner_channel must be even (sine and cosine halves), got {channels}")
        self.half = channels // 2
        hidden = EMBEDDING_WIDENING * channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))

    def forward(self, level: Tensor) -> Tensor:
        if not (level.ndim == 1 or (level.ndim == 2 and level.shape[1] == 1)):
            raise ValueError(f"SR3ReferenceUNet: noise level of shape {tuple(level.shape)}, expected (B,) or (B, 1)")
        level = level.reshape(-1).float()
        steps = torch.arange(self.half, dtype=level.dtype, device=level.device) / self.half
        angles = level[:, None] * torch.exp(-math.log(SINUSOID_BASE) * steps)  # no scaling of the level
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    """GN-SiLU-conv, plus `Linear(embedding)` as a bias per channel, GN-SiLU-dropout-conv; `h + skip(x)`, unscaled."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.noise_bias = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + rearrange(self.noise_bias(emb), "b c -> b c 1 1")
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """One head over all C channels and H*W positions, softmax(q k^T / sqrt(C)); qkv without bias; `x + out`."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b 1 (h w) c -> b c h w", h=h, w=w)
        return x + self.proj(out)


class Level(nn.Module):
    """Residual blocks at one resolution, each followed by attention where `attention` says so."""

    def __init__(
        self, chans: Sequence[tuple[int, int]], attention: Sequence[bool], emb_dim: int, dropout: float, groups: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(i, o, emb_dim, dropout, groups) for i, o in chans)
        self.attns = nn.ModuleList(
            SelfAttention(o, groups) if a else nn.Identity() for (_, o), a in zip(chans, attention)
        )


def attention_levels(image_size: int, n_levels: int, attn_res: Sequence[int]) -> tuple[list[bool], list[bool]]:
    """(attention at each level on the way down, on the way up), level 0 the finest.

    Officially a level has attention when its resolution is in `attn_res`: `image_size` floor-halved per level
    on the way down, and on the way up the coarsest resolution doubled per level, so both agree when
    `image_size` is divisible by 2**(levels - 1).
    """
    down = [image_size // 2**i for i in range(n_levels)]
    up = [down[-1] * 2 ** (n_levels - 1 - i) for i in range(n_levels)]
    return [r in attn_res for r in down], [r in attn_res for r in up]


def official_init(module: nn.Module) -> None:
    """Orthogonal weights (gain 1) and zero biases for every convolution and linear layer (`model/networks.py`);
    GroupNorm keeps its ones and zeros."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class SR3ReferenceUNet(EncoderPath, nn.Module):
    """The re-implementation's SR3 U-Net: `forward(x, level) -> eps_hat`, `level` = sqrt(gamma) of shape (B,) or (B, 1).

    Arguments carry the official config's names (`model.unet` and `model.diffusion.image_size`); the defaults
    are the 16 -> 128 configuration (`config/sr_sr3_16_128.json`).

    Args:
        in_channel: input channels: 6 for super-resolution (bicubic-upsampled LR and the noisy HR,
            concatenated in that order), 3 for the unconditional model.
        out_channel: output channels (3: the predicted noise).
        inner_channel: C, the channels of the first level and the width of the noise-level embedding (64).
        norm_groups: GroupNorm groups (32; 16 in the 64 -> 512 configuration). Fewer where a layer has
            fewer channels (the official code fails there).
        channel_mults: channel multiplier per level; level i works at 1/2**i of the input size
            ([1, 2, 4, 8, 8]; [1, 2, 4, 8, 16] at 64 -> 512).
        attn_res: resolutions (in pixels of an `image_size` input) of the levels with self-attention ([16];
            none at 64 -> 512). The middle always has attention after its first block.
        res_blocks: residual blocks per level on the way down, one more on the way up (2; 1 at 64 -> 512).
        dropout: dropout before the second convolution of each residual block (0.2; 0 at 64 -> 512).
        image_size: the training image side, used only to place `attn_res` (128; 512 at 64 -> 512).
        init: "orthogonal" (the official initialisation) or "pytorch" (PyTorch's default of each layer).
    """

    def __init__(
        self,
        in_channel: int = 6,
        out_channel: int = 3,
        inner_channel: int = 64,
        norm_groups: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4, 8, 8),
        attn_res: Sequence[int] = (16,),
        res_blocks: int = 2,
        dropout: float = 0.2,
        image_size: int = 128,
        init: Init = "orthogonal",
    ) -> None:
        super().__init__()
        check_channel_mults(channel_mults)
        if init not in ("orthogonal", "pytorch"):
            raise ValueError(f"SR3ReferenceUNet: init must be orthogonal or pytorch, got {init!r}")
        self.factor = 2 ** (len(channel_mults) - 1)
        self.noise_level = NoiseLevelMLP(inner_channel)
        self.head = nn.Conv2d(in_channel, inner_channel, 3, padding=1)
        widths = [inner_channel * mult for mult in channel_mults]
        attn_down, attn_up = attention_levels(image_size, len(channel_mults), attn_res)
        level = dict(emb_dim=inner_channel, dropout=dropout, groups=norm_groups)
        self.build_encoder(inner_channel, widths, res_blocks, attn_down, level)
        self.mid = Level([(widths[-1], widths[-1])] * 2, [True, False], **level)
        self.build_decoder(skip_channels(inner_channel, channel_mults, res_blocks), widths, res_blocks, attn_up, level)
        self.tail = nn.Sequential(
            group_norm(widths[0], norm_groups), nn.SiLU(), nn.Conv2d(widths[0], out_channel, 3, padding=1)
        )
        if init == "orthogonal":
            official_init(self)

    def build_encoder(self, ch: int, widths: list[int], res_blocks: int, attention: list[bool], level: dict) -> None:
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            chans = [(ch if j == 0 else w, w) for j in range(res_blocks)]
            self.down.append(Level(chans, [attention[i]] * res_blocks, **level))
            ch = w
            self.downsample.append(Downsample(w) if i < len(widths) - 1 else nn.Identity())

    def build_decoder(
        self, skips: list[int], widths: list[int], res_blocks: int, attention: list[bool], level: dict
    ) -> None:
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        ch = widths[-1]
        for i in reversed(range(len(widths))):
            chans = []
            for _ in range(res_blocks + 1):
                chans.append((ch + skips.pop(), widths[i]))
                ch = widths[i]
            self.up.append(Level(chans, [attention[i]] * (res_blocks + 1), **level))
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())

    def decode(self, h: Tensor, skips: list[Tensor], emb: Tensor) -> Tensor:
        """Every block of the way up reads one skip, last in first out."""
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = up(h)
        return self.tail(h)

    def forward(self, x: Tensor, level: Tensor) -> Tensor:
        h_in, w_in = x.shape[-2:]
        emb = self.noise_level(level)
        h, skips = self.encode(pad_to_multiple(x, self.factor), emb)
        return self.decode(h, skips, emb)[..., :h_in, :w_in]
