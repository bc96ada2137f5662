"""The official RDDM network (Liu et al., CVPR 2024) in its three layouts, called `net(x, cond)` as the suite's
RDDM method calls a network (`ir_lightning.methods.rddm`), so that the official weights load and compute what
the official code computes.

The official code (`experiments/*/src/residual_denoising_diffusion_pytorch.py`, classes `Unet` and `UnetRes`)
uses the U-Net of lucidrains' `denoising-diffusion-pytorch`; `OfficialUNet` is that network, written anew:

- a 7 x 7 `init_conv` to `dim` channels; levels of widths dim * dim_mults ([64, 64, 128, 256] at the official
  dim 64), a middle of width dim * dim_mults[-1] (512);
- each encoder level: two residual blocks, a linear attention, then the channel change in the down-sampler
  (a 4 x 4 stride-2 conv; a 3 x 3 conv at the last level, which keeps the size); each decoder level: two residual
  blocks on the features concatenated with a skip, a linear attention, then the up-sampler (nearest x2, 3 x 3 conv;
  a 3 x 3 conv at the last level); the middle: residual block, full attention, residual block;
- a residual block: two blocks of weight-standardised 3 x 3 conv -> GroupNorm -> SiLU, the first with the FiLM
  scale and shift of the time embedding before its SiLU; the sum with the input (1 x 1 conv where widths differ)
  is not rescaled;
- linear attention (`heads` x `dim_head`, softmax over features for q and over positions for k) and full attention
  (the same width) each behind a channel LayerNorm (no bias), added to their input; the linear attention's output
  conv is followed by a second channel LayerNorm;
- the `init_conv` output concatenated before a final residual block and a 1 x 1 conv;
- time: the official time (below) -> sinusoid of width `dim` (frequencies 10000^(-i / (dim/2 - 1))) -> Linear,
  GELU, Linear to 4 * dim.

Layouts (official `UnetRes`):
- `OfficialTwoUNets`: one U-Net for I_res, one for eps (`share_encoder=0` / `num_unet=2`; every experiment's
  default). 72.5 M parameters at the official size.
- `OfficialSharedEncoderUNet`: one encoder (and one time embedding) feeding a residual decoder without skips and a
  noise decoder with skips (`share_encoder=1`, experiment 2 only; conditioned on t only). 52.0 M parameters.
- `OfficialSingleUNet`: one U-Net predicting one quantity (`share_encoder=-1` / `num_unet=1`), for the pred_res
  and pred_noise objectives (experiment 3, low-light, ends on pred_res).

The official time. The method's schedule arrays have T + 1 entries, index 0 the clean image, so its t runs over
1..T; the official buffers have T entries and hold at index k what ours hold at k + 1 (`alphas_cumsum[k]` is the sum
of the first k + 1 alphas, our alpha_bar[k + 1]). The official training draws k in {0..T-1} (ours t in {1..T}), its
sampler visits k = T-1, ... (`linspace(-1, T-1, S+1)`) where ours visits t = T, ... . So for `condition: t` (cond =
t / T) the official U-Net receives the integer k = t - 1 = round(cond * `time_scale`) + `step_offset`, with
`time_scale` = T and `step_offset` = -1 (rounded: the official step is an integer, and t / T * T in float32 may miss
it by an ulp). For `condition: coefficients` (cond = (alpha_bar_t, beta_bar_t), experiment 0, partially
path-independent generation) the residual U-Net receives `alphas_cumsum[k] * T` = alpha_bar_t * `time_scale` and the
noise U-Net `betas_cumsum[k] * T` = beta_bar_t * `time_scale` (beta_bar, not its square), unrounded; a single U-Net
receives the one of them that `coefficient` names (official `num_unet=1`: alpha_bar for pred_res, beta_bar for
pred_noise).

The input. The method passes x = concat([I_t, I_in]) (+ the shadow mask as one channel in [-1, 1]). The official
network sees concat([I_t, I_in]) (`condition=True`), I_t alone (generation, `condition=False`: the method's I_in = 0
channels are dropped, `sees_input=False`), or concat([I_t, I_in, mask]) with the mask read as an RGB image, three
equal channels normalised to [-1, 1] like the images (shadow removal, `input_condition=True`, 9 input channels):
`mask_input=True` repeats the method's mask channel three times, which is that input exactly, so the official
9-channel `init_conv` weights apply unchanged. Inputs whose sides are not multiples of 2^(len(dim_mults) - 1) are
padded (reflect, bottom and right) and the outputs cropped back (the official code needs multiples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ir_lightning.nets.padding import pad_to_multiple

NORM_EPS = 1e-5
"""The epsilon of the weight standardisation and of the channel LayerNorm for float32 inputs (the official value)."""
NORM_EPS_LOW_PRECISION = 1e-3
"""The same for half-precision inputs (the official code switches on the input's dtype)."""
MAX_PERIOD = 10_000.0
"""The longest period of the sinusoidal time embedding."""


def norm_eps(x: Tensor) -> float:
    return NORM_EPS if x.dtype == torch.float32 else NORM_EPS_LOW_PRECISION


class WeightStandardizedConv2d(nn.Conv2d):
    """A conv whose kernel is standardised per output channel (zero mean, unit variance) before use (Qiao et al.,
    2019)."""

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), unbiased=False, keepdim=True)
        weight = (self.weight - mean) * (var + norm_eps(x)).rsqrt()
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel, with a gain and no bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var + norm_eps(x)).rsqrt() * self.gain[:, None, None]


class ConvBlock(nn.Module):
    """Weight-standardised 3 x 3 conv -> GroupNorm -> (FiLM: x * (1 + scale) + shift) -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.conv = WeightStandardizedConv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        h = self.norm(self.conv(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            h = h * (scale + 1) + shift
        return F.silu(h)


class ResBlock(nn.Module):
    """Two `ConvBlock`s, the first modulated by the time embedding, plus the input (1 x 1 conv where widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.film = nn.Linear(emb_dim, 2 * out_channels)
        self.block1 = ConvBlock(in_channels, out_channels, groups)
        self.block2 = ConvBlock(out_channels, out_channels, groups)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = rearrange(self.film(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        return self.block2(self.block1(x, (scale, shift))) + self.skip(x)


class LinearAttention(nn.Module):
    """x + LayerNorm(conv(linear attention(LayerNorm(x)))): attention linear in the number of positions
    (Shen et al., 2021): q normalised over each head's features, k over the positions."""

    def __init__(self, channels: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * heads * dim_head, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, channels, 1)
        self.out_norm = ChannelLayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        qkv = self.to_qkv(self.norm(x))
        q, k, v = rearrange(qkv, "b (three heads d) y x -> three b heads d (y x)", three=3, heads=self.heads)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (height * width)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        out = rearrange(out, "b heads e (y x) -> b (heads e) y x", y=height, x=width)
        return x + self.out_norm(self.to_out(out))


class Attention(nn.Module):
    """x + conv(multi-head softmax attention over all positions (LayerNorm(x)))."""

    def __init__(self, channels: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * heads * dim_head, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        qkv = self.to_qkv(self.norm(x))
        q, k, v = rearrange(qkv, "b (three heads d) y x -> three b heads (y x) d", three=3, heads=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        return x + self.to_out(rearrange(out, "b heads (y x) d -> b (heads d) y x", y=height, x=width))


class TimeEmbedding(nn.Module):
    """The official time (a step, or a coefficient times T) -> sinusoid of width `dim` -> Linear, GELU, Linear
    (4 * dim wide)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"TimeEmbedding: dim must be even and at least 4, got {dim}")
        self.half = dim // 2
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, 4 * dim))

    def forward(self, time: Tensor) -> Tensor:
        step = math.log(MAX_PERIOD) / (self.half - 1)
        freqs = torch.exp(torch.arange(self.half, device=time.device) * -step)
        angles = time.float()[:, None] * freqs[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class Level(nn.Module):
    """One resolution of the encoder or decoder: two residual blocks, a linear attention, and the resampler
    (down- or up-sampler) that changes the width."""

    def __init__(
        self, block_in: int, width: int, emb_dim: int, resample: nn.Module, groups: int, heads: int, dim_head: int
    ) -> None:
        super().__init__()
        self.block1 = ResBlock(block_in, width, emb_dim, groups)
        self.block2 = ResBlock(block_in, width, emb_dim, groups)
        self.attn = LinearAttention(width, heads, dim_head)
        self.resample = resample


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3 x 3 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def level_widths(dim: int, dim_mults: Sequence[int]) -> list[tuple[int, int]]:
    """(width of a level, width after its resampler) per level, top first: [(64, 64), (64, 128), (128, 256),
    (256, 512)] at dim 64, mults (1, 2, 4, 8)."""
    if not dim_mults:
        raise ValueError("dim_mults must name at least one level")
    return list(pairwise([dim, *(dim * m for m in dim_mults)]))


class Encoder(nn.Module):
    """`init_conv`, the time embedding, the encoder levels and the middle: (features, skips, time embedding)."""

    def __init__(
        self, in_channels: int, dim: int, dim_mults: Sequence[int], groups: int, heads: int, dim_head: int
    ) -> None:
        super().__init__()
        emb_dim = 4 * dim
        self.init_conv = nn.Conv2d(in_channels, dim, 7, padding=3)
        self.time_embedding = TimeEmbedding(dim)
        widths = level_widths(dim, dim_mults)
        self.levels = nn.ModuleList()
        for i, (width, out) in enumerate(widths):
            last = i == len(widths) - 1
            down = nn.Conv2d(width, out, 3, padding=1) if last else nn.Conv2d(width, out, 4, stride=2, padding=1)
            self.levels.append(Level(width, width, emb_dim, down, groups, heads, dim_head))
        mid = widths[-1][1]
        self.mid_block1 = ResBlock(mid, mid, emb_dim, groups)
        self.mid_attn = Attention(mid, heads, dim_head)
        self.mid_block2 = ResBlock(mid, mid, emb_dim, groups)

    def forward(self, x: Tensor, time: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        emb = self.time_embedding(time)
        h = self.init_conv(x)
        skips = [h]
        for level in self.levels:
            h = level.block1(h, emb)
            skips.append(h)
            h = level.attn(level.block2(h, emb))
            skips.append(h)
            h = level.resample(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
        return h, skips, emb


class Decoder(nn.Module):
    """The decoder levels, a final residual block and a 1 x 1 conv. With `skips`, each residual block sees the
    features concatenated with the encoder's skip (last in, first out), and the final block the `init_conv` output;
    without (the shared encoder's residual decoder), the bottleneck features alone."""

    def __init__(
        self,
        out_channels: int,
        dim: int,
        dim_mults: Sequence[int],
        groups: int,
        heads: int,
        dim_head: int,
        skips: bool = True,
    ) -> None:
        super().__init__()
        emb_dim = 4 * dim
        self.skips = skips
        widths = level_widths(dim, dim_mults)[::-1]
        self.levels = nn.ModuleList()
        for i, (out, width) in enumerate(widths):
            last = i == len(widths) - 1
            up = nn.Conv2d(width, out, 3, padding=1) if last else Upsample(width, out)
            block_in = width + out if skips else width
            self.levels.append(Level(block_in, width, emb_dim, up, groups, heads, dim_head))
        self.final_block = ResBlock(2 * dim if skips else dim, dim, emb_dim, groups)
        self.final_conv = nn.Conv2d(dim, out_channels, 1)

    def forward(self, h: Tensor, skips: list[Tensor], emb: Tensor) -> Tensor:
        skips = list(skips)  # popped here; the caller's list may feed another decoder
        for level in self.levels:
            h = level.block1(self._join(h, skips), emb)
            h = level.attn(level.block2(self._join(h, skips), emb))
            h = level.resample(h)
        return self.final_conv(self.final_block(self._join(h, skips), emb))

    def _join(self, h: Tensor, skips: list[Tensor]) -> Tensor:
        return torch.cat([h, skips.pop()], dim=1) if self.skips else h


class OfficialUNet(nn.Module):
    """The official U-Net (`Unet`), called with the official time (see the module docstring) on inputs whose sides
    are multiples of 2^(len(dim_mults) - 1). The layouts below wrap it for the method.

    Args:
        in_channels: input channels (official: 3 per image it sees: 6 for restoration, 9 with the shadow mask, 3 for
            generation).
        out_channels: output channels (3).
        dim: width of the first level and of the sinusoid; the time MLP is 4 * dim wide (official 64).
        dim_mults: width of each level / dim (official (1, 2, 4, 8)); the last one gives the middle's width.
        resnet_block_groups: GroupNorm groups of the residual blocks (official 8).
        heads, dim_head: attention heads and their width, for the linear and the full attention (official 4, 32).
    """

    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 3,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        resnet_block_groups: int = 8,
        heads: int = 4,
        dim_head: int = 32,
    ) -> None:
        super().__init__()
        architecture = (dim, dim_mults, resnet_block_groups, heads, dim_head)
        self.encoder = Encoder(in_channels, *architecture)
        self.decoder = Decoder(out_channels, *architecture)

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        return self.decoder(*self.encoder(x, time))


# --- from the method's call to the official one ---------------------------------------------------------------


@dataclass(frozen=True)
class OfficialInput:
    """The method's input x -> the official network's input (see the module docstring)."""

    image_channels: int
    sees_input: bool
    mask_input: bool

    def __post_init__(self) -> None:
        if self.mask_input and not self.sees_input:
            raise ValueError("mask_input needs sees_input: the official network sees the mask beside I_in")

    @property
    def method_channels(self) -> int:
        """What the method passes: I_t and I_in (zeros for generation), and the mask channel."""
        return 2 * self.image_channels + int(self.mask_input)

    @property
    def official_channels(self) -> int:
        return self.image_channels * (1 + int(self.sees_input) + int(self.mask_input))

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.method_channels:
            raise ValueError(
                f"official RDDM network: input of shape {tuple(x.shape)}, expected B x {self.method_channels} x H x W "
                f"(I_t, I_in{', mask' if self.mask_input else ''})"
            )
        c = self.image_channels
        if not self.sees_input:
            return x[:, :c]
        if self.mask_input:
            return torch.cat([x[:, : 2 * c], x[:, 2 * c :].expand(-1, c, -1, -1)], dim=1)
        return x


@dataclass(frozen=True)
class OfficialTime:
    """The method's cond -> (the residual U-Net's time, the noise U-Net's time) (see the module docstring)."""

    condition: str
    time_scale: float
    step_offset: float

    def __post_init__(self) -> None:
        if self.condition not in ("t", "coefficients"):
            raise ValueError(f"condition must be 't' or 'coefficients', got {self.condition!r}")

    def __call__(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        if self.condition == "t":
            if cond.ndim != 1:
                raise ValueError(f"condition 't' takes cond = t / T of shape (B,), got {tuple(cond.shape)}")
            step = torch.round(cond.float() * self.time_scale) + self.step_offset
            return step, step
        if cond.ndim != 2 or cond.shape[1] != 2:
            raise ValueError(
                f"condition 'coefficients' takes cond = (alpha_bar, beta_bar) of shape (B, 2), got {tuple(cond.shape)}"
            )
        scaled = cond.float() * self.time_scale
        return scaled[:, 0], scaled[:, 1]


class _OfficialLayout(nn.Module):
    """What the layouts share: the input and time conversions, the padding to the U-Net's multiple, the crop back."""

    def _convert(
        self,
        image_channels: int,
        sees_input: bool,
        mask_input: bool,
        condition: str,
        time_scale: float,
        step_offset: float,
        dim_mults: Sequence[int],
    ) -> int:
        """Sets the conversions; returns the official input channels."""
        self.inputs = OfficialInput(image_channels, sees_input, mask_input)
        self.time = OfficialTime(condition, time_scale, step_offset)
        self.factor = 2 ** (len(dim_mults) - 1)
        return self.inputs.official_channels

    def forward(self, x: Tensor, cond: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        height, width = x.shape[-2:]
        res_time, noise_time = self.time(cond)
        out = self.predict(pad_to_multiple(self.inputs(x), self.factor), res_time, noise_time)
        if isinstance(out, Tensor):
            return out[..., :height, :width]
        return tuple(o[..., :height, :width] for o in out)

    def predict(self, x: Tensor, res_time: Tensor, noise_time: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError


class OfficialTwoUNets(_OfficialLayout):
    """Two official U-Nets: `res_unet` predicts I_res, `noise_unet` eps (official `share_encoder=0` /
    `num_unet=2`, keys `unet0`, `unet1`). Returns (I_res_hat, eps_hat).

    Args:
        dim, dim_mults, resnet_block_groups, heads, dim_head: as in `OfficialUNet`, for each U-Net.
        image_channels: channels of an image (3).
        sees_input: the network sees I_in (official `condition=True`, restoration); False for generation
            (`condition=False`): the method's I_in = 0 channels are dropped.
        mask_input: the method passes a mask channel, which the network sees as 3 channels (official
            `input_condition=True`, shadow removal: 9 input channels).
        condition: what the method's cond holds, as its `condition`: `t` (t / T, shape (B,)) or `coefficients`
            ((alpha_bar_t, beta_bar_t), shape (B, 2); experiment 0: the residual U-Net sees alpha_bar_t, the noise
            U-Net beta_bar_t).
        time_scale: T, the official number of steps (1000): t / T -> t, alpha_bar -> alpha_bar * T.
        step_offset: added to the scaled step under `condition: t`: -1, the official index of the method's t.
    """

    def __init__(
        self,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        resnet_block_groups: int = 8,
        heads: int = 4,
        dim_head: int = 32,
        image_channels: int = 3,
        sees_input: bool = True,
        mask_input: bool = False,
        condition: Literal["t", "coefficients"] = "t",
        time_scale: float = 1000.0,
        step_offset: float = -1.0,
    ) -> None:
        super().__init__()
        in_channels = self._convert(
            image_channels, sees_input, mask_input, condition, time_scale, step_offset, dim_mults
        )
        unet = dict(
            in_channels=in_channels,
            out_channels=image_channels,
            dim=dim,
            dim_mults=dim_mults,
            resnet_block_groups=resnet_block_groups,
            heads=heads,
            dim_head=dim_head,
        )
        self.res_unet = OfficialUNet(**unet)
        self.noise_unet = OfficialUNet(**unet)

    def predict(self, x: Tensor, res_time: Tensor, noise_time: Tensor) -> tuple[Tensor, Tensor]:
        return self.res_unet(x, res_time), self.noise_unet(x, noise_time)


class OfficialSharedEncoderUNet(_OfficialLayout):
    """One official encoder feeding a residual decoder without skips and a noise decoder with skips (official
    `share_encoder=1`, experiment 2). Returns (I_res_hat, eps_hat). Conditioned on t only: the official layout has
    one time embedding, and no experiment conditions it on coefficients. Arguments as in `OfficialTwoUNets`.
    """

    def __init__(
        self,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        resnet_block_groups: int = 8,
        heads: int = 4,
        dim_head: int = 32,
        image_channels: int = 3,
        sees_input: bool = True,
        mask_input: bool = False,
        time_scale: float = 1000.0,
        step_offset: float = -1.0,
    ) -> None:
        super().__init__()
        in_channels = self._convert(image_channels, sees_input, mask_input, "t", time_scale, step_offset, dim_mults)
        architecture = (dim, dim_mults, resnet_block_groups, heads, dim_head)
        self.encoder = Encoder(in_channels, *architecture)
        self.res_decoder = Decoder(image_channels, *architecture, skips=False)
        self.noise_decoder = Decoder(image_channels, *architecture, skips=True)

    def predict(self, x: Tensor, res_time: Tensor, noise_time: Tensor) -> tuple[Tensor, Tensor]:
        h, skips, emb = self.encoder(x, res_time)
        return self.res_decoder(h, skips, emb), self.noise_decoder(h, skips, emb)


class OfficialSingleUNet(_OfficialLayout):
    """One official U-Net predicting one quantity, for the pred_res and pred_noise objectives (official
    `share_encoder=-1` / `num_unet=1`, key `unet0`; experiment 3). Returns one tensor.

    Args:
        coefficient: under `condition: coefficients`, which one the U-Net sees: `alpha_bar` (official, for
            pred_res) or `beta_bar` (for pred_noise). Other arguments as in `OfficialTwoUNets`.
    """

    def __init__(
        self,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        resnet_block_groups: int = 8,
        heads: int = 4,
        dim_head: int = 32,
        image_channels: int = 3,
        sees_input: bool = True,
        mask_input: bool = False,
        condition: Literal["t", "coefficients"] = "t",
        time_scale: float = 1000.0,
        step_offset: float = -1.0,
        coefficient: Literal["alpha_bar", "beta_bar"] = "alpha_bar",
    ) -> None:
        super().__init__()
        if coefficient not in ("alpha_bar", "beta_bar"):
            raise ValueError(f"coefficient must be 'alpha_bar' or 'beta_bar', got {coefficient!r}")
        self.coefficient = coefficient
        in_channels = self._convert(
            image_channels, sees_input, mask_input, condition, time_scale, step_offset, dim_mults
        )
        self.unet = OfficialUNet(in_channels, image_channels, dim, dim_mults, resnet_block_groups, heads, dim_head)

    def predict(self, x: Tensor, res_time: Tensor, noise_time: Tensor) -> Tensor:
        return self.unet(x, res_time if self.coefficient == "alpha_bar" else noise_time)
