"""The DDIM / SDEdit U-Net (the `Model` of ermongroup/ddim, `models/diffusion.py`), the CelebA-HQ prior of DeqIR
(caojiezhang/DeqIR @5ca8c9f, `models/diffusion.py`, `configs/celeba_hq.yml`), whose weights are SDEdit's
`celeba_hq.ckpt`, a raw state dict whose key names are this module's.

What makes it this network and not SR3's (`ir_lightning.nets.unet.UNet`) or ADM's
(`ir_lightning.nets.guided_diffusion.GuidedDiffusionUNet`):

- it is conditioned on the integer timestep t in {0, ..., T - 1}: sinusoids [sin(t f_i), cos(t f_i)] (sines
  first), f_i = 10000^(-i / (C/2 - 1)), i < C/2, then `Linear(C, 4C)-SiLU-Linear(4C, 4C)`;
- each residual block adds `Linear(SiLU(embedding))` as a per-channel bias after its first convolution, before
  the second GroupNorm (no FiLM); dropout sits before the second convolution; sums are not rescaled;
- GroupNorms have eps 1e-6; attention is single-head with softmax scale 1/sqrt(C) and a projection out;
- it down-samples by padding one zero row and column at the bottom and right, then a 3x3 stride-2 convolution
  without padding (average pooling without `resamp_with_conv`), and up-samples nearest x2 + 3x3 convolution;
- attention sits after each residual block of a level whose resolution (`resolution` halved per level) is in
  `attn_resolutions`, and between the two middle blocks.

DeqIR's method in this suite calls `net(x, sqrt(alpha_bar_t))`, while this network takes the integer timestep t:
wrap it in `ir_lightning.nets.timestep_prior.TimestepPrior`, which recovers t from the level.

Parameter count of the CelebA-HQ configuration (the defaults), measured with the official code on the meta
device, equal to this module's: 113,673,219.

Sizes: the official forward refuses any input whose H and W are not both `resolution`; the network itself is
convolutional and needs H and W divisible by 2**(levels - 1). Here other sizes are padded (reflect, bottom and
right, `pad_to_multiple`) and the output cropped back; at H = W = `resolution` the function is the official one.
The official `type: bayesian` (a learned `logvar` per timestep) and `conv_shortcut` are not built: the
CelebA-HQ prior uses neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.nets.padding import pad_to_multiple

EMBEDDING_WIDENING = 4
"""The timestep MLP's width, in multiples of `ch`."""

SINUSOID_BASE = 1e4
"""The timestep code's frequencies run from 1 down to 1/SINUSOID_BASE."""

NORM_EPS = 1e-6
"""GroupNorm's epsilon in the official network."""


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal code (B,) -> (B, dim): [sin(t f_i), cos(t f_i)], f_i = SINUSOID_BASE^(-i / (dim/2 - 1)),
    i < dim // 2, a zero column appended when `dim` is odd (DDPM's code: sines first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(SINUSOID_BASE) / (half - 1) * torch.arange(half, dtype=torch.float32))
    angles = t.float()[:, None] * freqs.to(t.device)[None]
    return F.pad(torch.cat([angles.sin(), angles.cos()], dim=1), (0, dim % 2))


def normalize(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class TimestepMLP(nn.Module):
    """`Linear(C, 4C)-SiLU-Linear(4C, 4C)` on the timestep code (the official `temb.dense`)."""

    def __init__(self, ch: int, temb_ch: int) -> None:
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])

    def forward(self, code: Tensor) -> Tensor:
        return self.dense[1](F.silu(self.dense[0](code)))


class ResnetBlock(nn.Module):
    """GN-SiLU-conv, + Linear(SiLU(temb)) per channel, GN-SiLU-dropout-conv; a 1x1 skip when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = normalize(in_ch, norm_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = normalize(out_ch, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, softmax(q^T k / sqrt(C)), with a 1x1 projection and a residual."""

    def __init__(self, channels: int, norm_groups: int) -> None:
        super().__init__()
        self.norm = normalize(channels, norm_groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (proj(normed).reshape(b, c, h * w) for proj in (self.q, self.k, self.v))
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=-1)
        attended = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, h, w)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Halves H and W: one zero row and column at the bottom and right, then a 3x3 stride-2 convolution (or 2x2
    average pooling without `with_conv`)."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Doubles H and W: nearest neighbour, then a 3x3 convolution with `with_conv`."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Level(nn.Module):
    """One resolution: residual blocks (`block`), each followed by attention (`attn`) when the level has it; the
    resampler (`downsample` / `upsample`) is attached by the network, under the official names."""

    def __init__(
        self, widths: Sequence[tuple[int, int]], attention: bool, temb_ch: int, dropout: float, norm_groups: int
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, temb_ch, dropout, norm_groups) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o, norm_groups) for _, o in widths) if attention else nn.ModuleList()

    def step(self, index: int, h: Tensor, temb: Tensor) -> Tensor:
        h = self.block[index](h, temb)
        return self.attn[index](h) if len(self.attn) else h


class Middle(nn.Module):
    """Residual block, attention, residual block at the coarsest resolution."""

    def __init__(self, channels: int, temb_ch: int, dropout: float, norm_groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, temb_ch, dropout, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, temb_ch, dropout, norm_groups)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h, temb)), temb)


class DDIMUNet(nn.Module):
    """The DDIM / SDEdit `Model`: `forward(x, t) -> eps`, `t` the integer timestep of shape (B,) (any dtype).

    Args:
        ch: channels at full resolution (`model.ch`; CelebA-HQ 128); also the width of the timestep code, which
            the MLP widens 4x.
        out_ch: output channels, the predicted noise (`model.out_ch`; 3).
        ch_mult: channel multiplier per level (`model.ch_mult`; CelebA-HQ 1-1-2-2-4-4).
        num_res_blocks: residual blocks per level on the way down, one more on the way up (`model.num_res_blocks`;
            2).
        attn_resolutions: resolutions (`resolution` halved per level) whose residual blocks are each followed by
            attention (`model.attn_resolutions`; CelebA-HQ 16).
        dropout: dropout before each residual block's second convolution (`model.dropout`; 0).
        in_channels: input channels (`model.in_channels`; 3).
        resolution: the training image size (`data.image_size`; CelebA-HQ 256); it places the attention.
        resamp_with_conv: learned convolutions in the down- and up-samplers (`model.resamp_with_conv`; True);
            False: average pooling down, nearest neighbour alone up.
        norm_groups: GroupNorm groups (32, fixed in the official code; smaller for tiny test widths).
    """

    def __init__(
        self,
        ch: int = 128,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        in_channels: int = 3,
        resolution: int = 256,
        resamp_with_conv: bool = True,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.ch, self.num_res_blocks = ch, num_res_blocks
        self.down_factor = 2 ** (len(ch_mult) - 1)
        temb_ch = ch * EMBEDDING_WIDENING
        widths = [ch * m for m in ch_mult]
        level_in = [ch, *widths[:-1]]
        attention = [resolution // 2**i in attn_resolutions for i in range(len(ch_mult))]
        common = dict(temb_ch=temb_ch, dropout=dropout, norm_groups=norm_groups)

        self.temb = TimestepMLP(ch, temb_ch)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(level_in, widths)):
            level = Level([(c_in, c_out)] + [(c_out, c_out)] * (num_res_blocks - 1), attention[i], **common)
            if i < len(ch_mult) - 1:
                level.downsample = Downsample(c_out, resamp_with_conv)
            self.down.append(level)
        self.mid = Middle(widths[-1], **common)
        self.up = nn.ModuleList()
        for i, c_out in enumerate(widths):
            c_in = widths[i + 1] if i < len(ch_mult) - 1 else widths[-1]
            skips = [c_out] * num_res_blocks + [level_in[i]]
            level = Level([(c_in + skips[0], c_out)] + [(c_out + s, c_out) for s in skips[1:]], attention[i], **common)
            if i > 0:
                level.upsample = Upsample(c_out, resamp_with_conv)
            self.up.append(level)
        self.norm_out = normalize(widths[0], norm_groups)
        self.conv_out = nn.Conv2d(widths[0], out_ch, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.temb(timestep_embedding(t, self.ch))
        out = self.unet(pad_to_multiple(x, self.down_factor), temb)
        return out[..., :h, :w]

    def unet(self, x: Tensor, temb: Tensor) -> Tensor:
        skips = [self.conv_in(x)]
        for level in self.down:
            for j in range(self.num_res_blocks):
                skips.append(level.step(j, skips[-1], temb))
            if hasattr(level, "downsample"):
                skips.append(level.downsample(skips[-1]))
        h = self.mid(skips[-1], temb)
        for level in reversed(self.up):
            for j in range(self.num_res_blocks + 1):
                h = level.step(j, torch.cat([h, skips.pop()], dim=1), temb)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
