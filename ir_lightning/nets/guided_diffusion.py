"""The guided-diffusion U-Net (ADM: Dhariwal & Nichol, 2021), as Denoising as Adaptation's diffusion network D
uses it (KangLiao929/Noise-DA @47ecb49, `models/guided_diffusion_modules/unet.py`) and as OpenAI's released
ADM priors are built (openai/guided-diffusion, `guided_diffusion/unet.py`).

What makes it ADM's and not SR3's U-Net (`ir_lightning.nets.unet.UNet`):

- the conditioning scalar is encoded as [cos(v f), sin(v f)] with f = max_period^(-i / (C/2)), i < C/2
  (cosines first), then `Linear(C, 4C)-SiLU-Linear(4C, 4C)`;
- every residual block takes the embedding through `SiLU-Linear`, as a FiLM scale and shift after its second
  GroupNorm (`scale_shift_norm`) or as a bias before it; its second convolution starts at zero;
- with `resblock_updown` the down- and up-samplers are residual blocks that resize both paths after the first
  GroupNorm-SiLU (average pooling down, nearest up); otherwise a strided 3x3 convolution (or average pooling)
  down and nearest + 3x3 convolution (or nearest alone) up (`conv_resample`);
- attention has heads of `num_head_channels` channels (or `num_heads` heads), softmax(q k^T / sqrt(d)), a
  projection that starts at zero, and sits after each residual block whose down-sampling factor ds (1 at full
  resolution, doubled per level) is in `attention_ds`, and always in the middle;
- residual and attention sums are not rescaled.

`attention_ds` holds down-sampling factors, compared with ds exactly as the official code compares its
`attn_res`: Noise-DA's configurations give `attn_res: [16]` to a 4-level U-Net whose ds is 1, 2, 4 or 8, so D
has attention in the middle only; ADM's 256 px models give resolutions 32, 16, 8 that its script turns into
ds = 256 // resolution = 8, 16, 32.

Parameter counts (measured with the official code on the meta device, equal to this module's):

| configuration | parameters |
|---|---|
| Noise-DA's D (`*/configs/options_train.json`: 64, mults 1-2-4-8, 2 blocks, 9 in, 3 out, heads of 32) | 62,643,075 |
| ADM 256x256 unconditional (256, mults 1-1-2-2-4-4, 2 blocks, ds 8/16/32, heads of 64, 6 out) | 552,814,086 |

Sizes: the official network needs H and W divisible by 2**(levels - 1); other sizes are padded here (reflect,
bottom and right, `pad_to_multiple`) and the output cropped back. No losses or schedules here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ir_lightning.nets.init import kaiming_init
from ir_lightning.nets.padding import pad_to_multiple

EMBEDDING_WIDENING = 4
"""The level MLP's width, in multiples of `base_channels`."""

LevelInput = Literal["gamma", "sqrt_gamma"]
Init = Literal["adm", "kaiming"]
Resample = Literal["up", "down"]


def timestep_embedding(values: Tensor, dim: int, max_period: float = 1e4) -> Tensor:
    """Sinusoidal code (B,) -> (B, dim): [cos(v f_i), sin(v f_i)], f_i = max_period^(-i / (dim // 2)) for
    i < dim // 2, a zero column appended when `dim` is odd (ADM's and Noise-DA's order: cosines first)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=values.device) / half
    angles = values.float()[:, None] * torch.exp(-math.log(max_period) * steps)
    return F.pad(torch.cat([angles.cos(), angles.sin()], dim=1), (0, dim % 2))


def resize(x: Tensor, direction: Resample) -> Tensor:
    """Nearest-neighbour x2 up, or 2x2 average pooling down (the parameter-free resamplers)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest") if direction == "up" else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """GN-SiLU-(resize)-conv, the level embedding, GN-SiLU-dropout-conv, plus the skip (1x1 conv if the width changes).

    The embedding enters through `SiLU-Linear`: as `norm2(h) * (1 + scale) + shift` with `scale_shift`, else
    as a bias before `norm2`. `resample` ("up" / "down") resizes both the residual path (after the first
    SiLU) and the skip path: the block is then an up- or down-sampler.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float,
        groups: int,
        scale_shift: bool,
        resample: Resample | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift, self.resample = scale_shift, resample
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.level_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm1(x))
        if self.resample is not None:
            h, x = resize(h, self.resample), resize(x, self.resample)
        h = self.conv1(h)
        level = rearrange(self.level_proj(F.silu(emb)), "b c -> b c 1 1")
        if self.scale_shift:
            scale, shift = level.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + level)
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, `x + proj(attention(qkv(norm(x))))`.

    `legacy_order` reads the qkv channels head by head ([q, k, v] of head 0, then head 1, ...), as the official
    `QKVAttentionLegacy` (Noise-DA's D and ADM's released models); otherwise as all q, then all k, then all v
    (`QKVAttention`, `use_new_attention_order`). Both scale the logits by 1/sqrt(head width).
    """

    def __init__(self, channels: int, heads: int, groups: int, legacy_order: bool) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"AttentionBlock: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.layout = "b (heads three c) t" if legacy_order else "b (three heads c) t"
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        seq = rearrange(x, "b c h w -> b c (h w)")
        qkv = self.qkv(self.norm(seq))
        q, k, v = rearrange(qkv, f"{self.layout} -> three (b heads) t c", three=3, heads=self.heads)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "(b heads) t c -> b (heads c) t", heads=self.heads)
        return (seq + self.proj(out)).reshape(x.shape)


class Downsample(nn.Module):
    """A 3x3 stride-2 convolution (`conv_resample`), or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) if self.conv is not None else resize(x, "down")


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (`conv_resample`)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = resize(x, "up")
        return self.conv(x) if self.conv is not None else x


class Step(nn.Module):
    """One step of the encoder or decoder: a residual block, attention after it where asked, then a resampler
    where asked (a down-sampling step of the encoder has the resampler alone)."""

    def __init__(
        self, res: ResBlock | None = None, attention: AttentionBlock | None = None, resample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.res, self.attention, self.resample = res, attention, resample

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        if self.res is not None:
            h = self.res(h, emb)
        if self.attention is not None:
            h = self.attention(h)
        if isinstance(self.resample, ResBlock):
            return self.resample(h, emb)
        return h if self.resample is None else self.resample(h)


class Middle(nn.Module):
    """The bottleneck: residual block, attention, residual block."""

    def __init__(self, res1: ResBlock, attention: AttentionBlock, res2: ResBlock) -> None:
        super().__init__()
        self.res1, self.attention, self.res2 = res1, attention, res2

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.res2(self.attention(self.res1(h, emb)), emb)


class GuidedDiffusionUNet(nn.Module):
    """ADM's U-Net: `forward(x, level) -> output`, `level` of shape (B,) (or (B, 1)).

    Args:
        in_channels: input channels (D: 9 = noisy target + two 3-channel conditions; ADM: 3).
        out_channels: output channels (D: 3, the predicted noise; ADM with learned sigma: 6).
        base_channels: channels at full resolution (`inner_channel` / `num_channels`; D 64, ADM-256 256); also
            the width of the sinusoidal code, which the MLP widens 4x.
        channel_mults: channel multiplier per level (D 1-2-4-8; ADM-256 1-1-2-2-4-4).
        num_res_blocks: residual blocks per level on the way down (one more on the way up) (2).
        attention_ds: down-sampling factors ds (1, 2, 4, ...) after whose residual blocks attention sits, compared
            with ds as the official `attn_res` is (D's `[16]` never matches a 4-level ds, so D's attention is the
            middle one alone; ADM-256: 8, 16, 32).
        dropout: dropout before each block's second convolution (D 0.2; ADM-256 0).
        num_heads: heads per attention block when `num_head_channels` is None (1).
        num_head_channels: channels per head (D 32, ADM-256 64); None: `num_heads` heads.
        num_heads_upsample: heads of the decoder's attention when `num_head_channels` is None (None: `num_heads`).
        conv_resample: learned 3x3 convolutions in the resamplers when `resblock_updown` is False (True).
        scale_shift_norm: the embedding as a FiLM scale and shift after the second GroupNorm (True), else a bias.
        resblock_updown: residual blocks as the resamplers (True in D and ADM-256).
        legacy_attention_order: qkv channels read head by head (True: `QKVAttentionLegacy`, D's and ADM's
            released models); False: `use_new_attention_order`.
        norm_groups: GroupNorm groups (32, fixed in the official code).
        level_input: what the sinusoid embeds, given the `level` the caller passes (the suite's methods pass
            sqrt(gamma)): "gamma" embeds level**2 (Noise-DA's D is fed the raw gamma, `models/network.py:157`);
            "sqrt_gamma" embeds the level as given (so a caller that passes ADM's integer timesteps gets ADM's
            embedding).
        level_scale: factor on the embedded value (1: the official D, whose angles are at most 1 rad).
        max_period: the sinusoid's longest period (1e4).
        init: "adm": PyTorch's default initialisation with the zero-initialised convolutions of ADM
            (`zero_module`: each block's second convolution, each attention projection, the output convolution);
            "kaiming": Noise-DA's `init_type: kaiming` (`core/base_network.py`), Kaiming-normal (fan_in) weights
            and zero biases for every convolution and linear layer, which overwrites those zeros too.

    The defaults are Noise-DA's D (`*/configs/options_train.json`), but for `init` (the recipes set "kaiming").
    """

    def __init__(
        self,
        in_channels: int = 9,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_ds: Sequence[int] = (16,),
        dropout: float = 0.2,
        num_heads: int = 1,
        num_head_channels: int | None = 32,
        num_heads_upsample: int | None = None,
        conv_resample: bool = True,
        scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        legacy_attention_order: bool = True,
        norm_groups: int = 32,
        level_input: LevelInput = "gamma",
        level_scale: float = 1.0,
        max_period: float = 1e4,
        init: Init = "adm",
    ) -> None:
        super().__init__()
        if not channel_mults:
            raise ValueError("GuidedDiffusionUNet: channel_mults is empty; give one multiplier per level")
        if level_input not in ("gamma", "sqrt_gamma"):
            raise ValueError(f"GuidedDiffusionUNet: level_input must be 'gamma' or 'sqrt_gamma', got {level_input!r}")
        self.base_channels, self.level_input, self.level_scale = base_channels, level_input, level_scale
        self.max_period = max_period
        self.factor = 2 ** (len(channel_mults) - 1)
        self.emb_dim = EMBEDDING_WIDENING * base_channels
        self.block_args = dict(emb_dim=self.emb_dim, dropout=dropout, groups=norm_groups, scale_shift=scale_shift_norm)
        self.heads_args = dict(num_heads=num_heads, num_head_channels=num_head_channels, groups=norm_groups)
        self.legacy_attention_order = legacy_attention_order
        self.level_embed = nn.Sequential(
            nn.Linear(base_channels, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim)
        )
        self.input_conv = nn.Conv2d(in_channels, base_channels * channel_mults[0], 3, padding=1)
        skips = self.build_encoder(
            base_channels, channel_mults, num_res_blocks, attention_ds, resblock_updown, conv_resample
        )
        width = base_channels * channel_mults[-1]
        self.middle = Middle(self.res(width, width), self.attention(width, num_heads), self.res(width, width))
        width = self.build_decoder(
            skips,
            base_channels,
            channel_mults,
            num_res_blocks,
            attention_ds,
            resblock_updown,
            conv_resample,
            num_heads if num_heads_upsample is None else num_heads_upsample,
        )
        self.output = nn.Sequential(
            nn.GroupNorm(norm_groups, width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)
        )
        self.initialise(init)

    # --- construction -------------------------------------------------------------------------------
    def res(self, in_ch: int, out_ch: int, resample: Resample | None = None) -> ResBlock:
        return ResBlock(in_ch, out_ch, resample=resample, **self.block_args)

    def attention(self, channels: int, num_heads: int) -> AttentionBlock:
        head_width = self.heads_args["num_head_channels"]
        if head_width is not None and channels % head_width:
            raise ValueError(f"GuidedDiffusionUNet: {channels} channels do not split into heads of {head_width}")
        heads = num_heads if head_width is None else channels // head_width
        return AttentionBlock(channels, heads, self.heads_args["groups"], self.legacy_attention_order)

    def build_encoder(
        self,
        base: int,
        mults: Sequence[int],
        num_res_blocks: int,
        attention_ds: Sequence[int],
        resblock_updown: bool,
        conv_resample: bool,
    ) -> list[int]:
        """`self.encoder`; returns the widths of the skips it leaves (the input conv's first)."""
        width = base * mults[0]
        skips, steps = [width], []
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                res = self.res(width, base * mult)
                width = base * mult
                attention = self.attention(width, self.heads_args["num_heads"]) if 2**level in attention_ds else None
                steps.append(Step(res, attention))
                skips.append(width)
            if level < len(mults) - 1:
                down = self.res(width, width, "down") if resblock_updown else Downsample(width, conv_resample)
                steps.append(Step(resample=down))
                skips.append(width)
        self.encoder = nn.ModuleList(steps)
        return skips

    def build_decoder(
        self,
        skips: list[int],
        base: int,
        mults: Sequence[int],
        num_res_blocks: int,
        attention_ds: Sequence[int],
        resblock_updown: bool,
        conv_resample: bool,
        num_heads: int,
    ) -> int:
        """`self.decoder` (each residual block reads one skip, last in first out); returns its output width."""
        width, steps = base * mults[-1], []
        for level, mult in reversed(list(enumerate(mults))):
            for index in range(num_res_blocks + 1):
                res = self.res(width + skips.pop(), base * mult)
                width = base * mult
                attention = self.attention(width, num_heads) if 2**level in attention_ds else None
                up = None
                if level > 0 and index == num_res_blocks:
                    up = self.res(width, width, "up") if resblock_updown else Upsample(width, conv_resample)
                steps.append(Step(res, attention, up))
        self.decoder = nn.ModuleList(steps)
        return width

    def zero_initialised(self) -> list[nn.Module]:
        """The convolutions ADM starts at zero: each block's second convolution, each attention projection, the output."""
        zeroed: list[nn.Module] = [self.output[-1]]
        for module in self.modules():
            if isinstance(module, ResBlock):
                zeroed.append(module.conv2)
            elif isinstance(module, AttentionBlock):
                zeroed.append(module.proj)
        return zeroed

    def initialise(self, init: Init) -> None:
        if init == "kaiming":
            kaiming_init(self)
        elif init == "adm":
            for module in self.zero_initialised():
                for parameter in module.parameters():
                    nn.init.zeros_(parameter)
        else:
            raise ValueError(f"GuidedDiffusionUNet: init must be 'adm' or 'kaiming', got {init!r}")

    # --- the function -------------------------------------------------------------------------------
    def embedded_level(self, level: Tensor) -> Tensor:
        """The value the sinusoid sees, from the caller's `level` (see `level_input`, `level_scale`)."""
        if not (level.ndim == 1 or (level.ndim == 2 and level.shape[1] == 1)):
            raise ValueError(f"GuidedDiffusionUNet: level of shape {tuple(level.shape)}, expected (B,) or (B, 1)")
        level = level.reshape(-1).float()
        return (level**2 if self.level_input == "gamma" else level) * self.level_scale

    def forward(self, x: Tensor, level: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        emb = self.level_embed(timestep_embedding(self.embedded_level(level), self.base_channels, self.max_period))
        h = self.input_conv(pad_to_multiple(x, self.factor))
        skips = [h]
        for step in self.encoder:
            h = step(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for step in self.decoder:
            h = step(torch.cat([h, skips.pop()], dim=1), emb)
        return self.output(h)[..., :height, :width]


ADM_256_UNCOND = {
    "in_channels": 3,
    "out_channels": 6,  # learned sigma: eps, then the variance interpolation
    "base_channels": 256,
    "channel_mults": (1, 1, 2, 2, 4, 4),
    "num_res_blocks": 2,
    "attention_ds": (8, 16, 32),  # attention at 32, 16, 8 px of 256
    "dropout": 0.0,
    "num_head_channels": 64,
    "level_input": "sqrt_gamma",
}
"""OpenAI's `256x256_diffusion_uncond.pt` (DeqIR's ImageNet prior) as `GuidedDiffusionUNet` arguments: the flags of
guided-diffusion's README (552,814,086 parameters); its other settings are the class defaults."""
