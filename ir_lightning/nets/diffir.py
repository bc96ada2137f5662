"""Networks of DiffIR (Xia et al., ICCV 2023): CPEN, DIRformer and the IPR denoiser.

DiffIR restores an image with a transformer (DIRformer) steered by a compact IR prior
representation (IPR), one 256-d vector per image:

- `CPEN` (compact IR prior extraction network) maps images to the IPR. Stage 1's CPEN sees the
  ground truth too (`with_gt=True`), stage 2's only the degraded input.
- `DIRformer` is a Restormer U-Net in which every block's attention (DMTA) and feed-forward
  (DGFN) is modulated by the IPR: after LayerNorm, `x * k1 + k2` with (k1, k2) = Linear(IPR).
  `scale > 1` adds the super-resolution tail (pixel-shuffle up-sampler plus a
  nearest-up-sampled copy of the input); `scale = 1` adds the input back (a residual).
  `unshuffle > 1` (the official real-SR x1 and x2 models) pixel-unshuffles the LQ before the
  embedding, so the U-Net runs on the GT / 4 grid, and up-samples by `scale x unshuffle` at the tail.
- `IPRDenoiser` is the MLP that predicts the clean IPR from a noisy one in stage 2's 4-step
  diffusion (`ir_lightning.diffusion.prior` holds the diffusion itself).

CPEN's inputs live on a grid 4 times coarser than the ground truth: the GT is
pixel-unshuffled by 4, the LQ (already `scale` times smaller) by 4 / scale, so stage 1 takes
concat(unshuffle(LQ, 4 / scale), unshuffle(GT, 4)): 96 channels for x1 tasks, 51 for x4, 60
for x2; stage 2 takes unshuffle(LQ, 4 / scale): 48, 3 or 12 channels.

Sizes: the DIRformer halves the LQ three times (after unshuffling it by `unshuffle`), so its input
H and W must be multiples of 8 x unshuffle; CPEN's LQ input must be a multiple of 4 / scale.
`input_multiple` gives the factor to pad to (8 for deblurring and x4, 16 for real-SR x2, 32 for x1,
the official inference script's `window_size`).
No losses here: the method owns them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

IPR_DIM: int = 256
"""Size of the IR prior representation (4 x CPEN's 64 features, as in the paper)."""

PRIOR_GRID: int = 4
"""CPEN works on a grid this many times coarser than the ground truth."""


def prior_unshuffle(scale: int) -> int:
    """How much CPEN pixel-unshuffles the LQ image so it lands on the GT / 4 grid."""
    if scale not in (1, 2, 4):
        raise ValueError(f"DiffIR supports scale 1, 2 or 4 (the LQ must reach the GT / 4 grid), got {scale}")
    return PRIOR_GRID // scale


def input_multiple(scale: int, levels: int = 3, unshuffle: int = 1) -> int:
    """H and W of the LQ image must be multiples of this: 2^levels (the DIRformer's halvings) times the
    DIRformer's own unshuffle factor, and the CPEN's unshuffle factor."""
    return math.lcm(2**levels * unshuffle, prior_unshuffle(scale))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of a B x C x H x W map (Restormer's).

    `bias_free` divides by the standard deviation without subtracting the mean (no bias): the
    real-SR configuration's choice.
    """

    def __init__(self, channels: int, bias_free: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.bias_free, self.eps = bias_free, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = None if bias_free else nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        variance = x.var(dim=1, keepdim=True, unbiased=False)
        centred = x if self.bias_free else x - x.mean(dim=1, keepdim=True)
        out = centred * torch.rsqrt(variance + self.eps) * self.weight[:, None, None]
        return out if self.bias is None else out + self.bias[:, None, None]


class IPRModulation(nn.Module):
    """x * k1 + k2 with (k1, k2) = Linear(IPR) (no bias): the IPR steers features channel-wise
    (DiffIR eq. 4, a plain product, not 1 + scale)."""

    def __init__(self, channels: int, ipr_dim: int = IPR_DIM) -> None:
        super().__init__()
        self.linear = nn.Linear(ipr_dim, 2 * channels, bias=False)

    def forward(self, x: Tensor, ipr: Tensor) -> Tensor:
        k1, k2 = self.linear(ipr)[:, :, None, None].chunk(2, dim=1)
        return x * k1 + k2


class DMTA(nn.Module):
    """Dynamic multi-head transposed attention: attention across channels, not pixels, so its cost
    is linear in H x W (Restormer's MDTA, modulated by the IPR)."""

    def __init__(self, channels: int, heads: int, bias: bool, ipr_dim: int = IPR_DIM) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"DMTA: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.modulation = IPRModulation(channels, ipr_dim)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=bias)
        self.qkv_dw = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels, bias=bias)
        self.project_out = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: Tensor, ipr: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        q, k, v = self.qkv_dw(self.qkv(self.modulation(x, ipr))).chunk(3, dim=1)
        q, k, v = (rearrange(a, "b (head c) h w -> b head c (h w)", head=self.heads) for a in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attention = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)  # C/heads x C/heads per head
        out = rearrange(attention @ v, "b head c (h w) -> b (head c) h w", h=height, w=width)
        return self.project_out(out)


class DGFN(nn.Module):
    """Dynamic gated feed-forward: 1x1 up to 2 x hidden, depthwise 3x3, GELU(x1) * x2, 1x1 down."""

    def __init__(self, channels: int, expansion: float, bias: bool, ipr_dim: int = IPR_DIM) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.modulation = IPRModulation(channels, ipr_dim)
        self.project_in = nn.Conv2d(channels, 2 * hidden, 1, bias=bias)
        self.dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: Tensor, ipr: Tensor) -> Tensor:
        x1, x2 = self.dw(self.project_in(self.modulation(x, ipr))).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class DIRBlock(nn.Module):
    """x + DMTA(LN(x)), then + DGFN(LN(x)), both steered by the IPR."""

    def __init__(
        self, channels: int, heads: int, expansion: float, bias: bool, bias_free_norm: bool, ipr_dim: int = IPR_DIM
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels, bias_free_norm)
        self.attention = DMTA(channels, heads, bias, ipr_dim)
        self.norm2 = LayerNorm2d(channels, bias_free_norm)
        self.feed_forward = DGFN(channels, expansion, bias, ipr_dim)

    def forward(self, x: Tensor, ipr: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), ipr)
        return x + self.feed_forward(self.norm2(x), ipr)


class DIRStage(nn.ModuleList):
    """A run of `DIRBlock`s at one resolution."""

    def __init__(
        self,
        n_blocks: int,
        channels: int,
        heads: int,
        expansion: float,
        bias: bool,
        bias_free_norm: bool,
        ipr_dim: int = IPR_DIM,
    ) -> None:
        super().__init__(DIRBlock(channels, heads, expansion, bias, bias_free_norm, ipr_dim) for _ in range(n_blocks))

    def forward(self, x: Tensor, ipr: Tensor) -> Tensor:
        for block in self:
            x = block(x, ipr)
        return x


def downsample(channels: int) -> nn.Sequential:
    """Half the resolution, twice the channels: conv3x3 to C/2, then pixel-unshuffle by 2."""
    return nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


def upsample(channels: int) -> nn.Sequential:
    """Twice the resolution, half the channels: conv3x3 to 2C, then pixel-shuffle by 2."""
    return nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), nn.PixelShuffle(2))


def sr_tail(channels: int, out_channels: int, scale: int) -> nn.Sequential:
    """Super-resolution tail: (conv3x3 to 4C + pixel-shuffle 2) per factor 2 (or one conv to 9C +
    shuffle 3), then conv3x3 to the output channels."""
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(channels, 9 * channels, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"DIRformer: scale must be a power of 2 or 3, got {scale}")
    return nn.Sequential(*layers, nn.Conv2d(channels, out_channels, 3, padding=1))


class DIRformer(nn.Module):
    """The restoration transformer: a 4-level Restormer U-Net of IPR-modulated blocks.

    Args:
        in_channels, out_channels: image channels.
        dim: channels at full resolution (doubled at each of the 3 lower levels).
        num_blocks: blocks at levels 1..4 (the decoder repeats levels 3..1).
        num_refinement_blocks: blocks after the decoder, at 2 x dim channels.
        heads: attention heads at levels 1..4.
        ffn_expansion: hidden width of the DGFN, as a multiple of the channels.
        bias: biases in the convolutions of the blocks, the skip reductions and the plain output conv (the
            official embedding conv has none whatever `bias` says: `OverlapPatchEmbed(inp_channels, dim)`,
            DiffIR-RealSR/DiffIR/archs/S2_arch.py:207, is built without it).
        layernorm: "with_bias" (deblurring) or "bias_free" (real SR).
        scale: output / input size; 1 = restoration at the same size (the input is added back),
            > 1 = super-resolution (the nearest-up-sampled input is added).
        unshuffle: pixel-unshuffle the LQ by this factor before the embedding (1: no; the official
            real-SR x1 model 4, x2 2, so the U-Net works on the GT / 4 grid as at x4). The tail then
            up-samples by `scale x unshuffle` (always 4 in the real-SR models); 1 with scale 1 is a
            plain output conv.
        ipr_dim: size of the IPR that modulates every block (256 in every official configuration).

    `forward(lq, ipr)`: lq B x C x H x W with H, W multiples of `8 x unshuffle`, ipr B x `ipr_dim`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (3, 5, 6, 6),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion: float = 2.0,
        bias: bool = False,
        layernorm: Literal["with_bias", "bias_free"] = "with_bias",
        scale: int = 1,
        unshuffle: int = 1,
        ipr_dim: int = IPR_DIM,
    ) -> None:
        super().__init__()
        if unshuffle < 1:
            raise ValueError(f"DIRformer: unshuffle must be >= 1 (1: none), got {unshuffle}")
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"DIRformer: num_blocks and heads need 4 entries (levels 1..4), got {num_blocks}, {heads}")
        if layernorm not in ("with_bias", "bias_free"):
            raise ValueError(f"DIRformer: layernorm must be 'with_bias' or 'bias_free', got {layernorm!r}")
        self.scale, self.unshuffle = scale, unshuffle
        width = [dim * 2**level for level in range(4)]
        bias_free = layernorm == "bias_free"

        def stage(n: int, level: int, channels: int | None = None) -> DIRStage:
            return DIRStage(n, channels or width[level], heads[level], ffn_expansion, bias, bias_free, ipr_dim)

        self.embed = nn.Conv2d(in_channels * unshuffle**2, dim, 3, padding=1, bias=False)  # officially never a bias
        self.encoders = nn.ModuleList(stage(num_blocks[level], level) for level in range(3))
        self.downs = nn.ModuleList(downsample(width[level]) for level in range(3))
        self.latent = stage(num_blocks[3], 3)
        self.ups = nn.ModuleList(upsample(width[level + 1]) for level in range(3))
        # levels 3 and 2 reduce the concatenated skip by a 1x1 conv; level 1 keeps 2 x dim channels
        self.reduce = nn.ModuleList(nn.Conv2d(2 * width[level], width[level], 1, bias=bias) for level in (1, 2))
        self.decoders = nn.ModuleList(
            [stage(num_blocks[0], 0, 2 * dim), stage(num_blocks[1], 1), stage(num_blocks[2], 2)]
        )
        self.refinement = stage(num_refinement_blocks, 0, 2 * dim)
        if scale * unshuffle == 1:
            self.output = nn.Conv2d(2 * dim, out_channels, 3, padding=1, bias=bias)
        else:
            self.output = sr_tail(2 * dim, out_channels, scale * unshuffle)

    def forward(self, lq: Tensor, ipr: Tensor) -> Tensor:
        x = self.embed(F.pixel_unshuffle(lq, self.unshuffle) if self.unshuffle > 1 else lq)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x, ipr)
            skips.append(x)
            x = down(x)
        x = self.latent(x, ipr)
        for level in (2, 1, 0):
            x = torch.cat([self.ups[level](x), skips[level]], dim=1)
            if level > 0:
                x = self.reduce[level - 1](x)
            x = self.decoders[level](x, ipr)
        x = self.output(self.refinement(x, ipr))
        if self.scale == 1:
            return x + lq
        return x + F.interpolate(lq, scale_factor=self.scale, mode="nearest")


class ResBlock(nn.Module):
    """conv3x3 - LeakyReLU(0.1) - conv3x3, plus the input (CPEN's body; no normalisation, no scaling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CPEN(nn.Module):
    """Compact IR prior extraction network: images -> IPR (B x 256).

    conv3x3 to 64 + LeakyReLU(0.1); `res_blocks` residual blocks; convs 64 -> 128 -> 128 -> 256 with
    LeakyReLU; global average pooling; 2 x [Linear 256 -> 256 + LeakyReLU].

    Args:
        scale: GT / LQ size ratio (1, 2 or 4): sets how the LQ is unshuffled onto the GT / 4 grid.
        with_gt: stage 1's CPEN (sees the ground truth: `forward(lq, gt)`); False: stage 2's
            (`forward(lq)`).
        res_blocks: residual blocks (5 for deblurring, 9 for real SR in the paper's configs).
        features: width of the convolutions (64; the IPR has 4 x features = 256 entries).
    """

    def __init__(self, scale: int = 1, with_gt: bool = True, res_blocks: int = 5, features: int = 64) -> None:
        super().__init__()
        self.unshuffle_lq, self.with_gt = prior_unshuffle(scale), with_gt
        in_channels = 3 * self.unshuffle_lq**2 + (3 * PRIOR_GRID**2 if with_gt else 0)
        act = nn.LeakyReLU(0.1, inplace=True)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, features, 3, padding=1),
            act,
            *(ResBlock(features) for _ in range(res_blocks)),
            nn.Conv2d(features, 2 * features, 3, padding=1),
            act,
            nn.Conv2d(2 * features, 2 * features, 3, padding=1),
            act,
            nn.Conv2d(2 * features, 4 * features, 3, padding=1),
            act,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.mlp = nn.Sequential(nn.Linear(4 * features, 4 * features), act, nn.Linear(4 * features, 4 * features), act)

    def inputs(self, lq: Tensor, gt: Tensor | None) -> Tensor:
        """The LQ (and GT) on the GT / 4 grid, concatenated along channels."""
        parts = [F.pixel_unshuffle(lq, self.unshuffle_lq)]
        if self.with_gt:
            if gt is None:
                raise ValueError("stage 1's CPEN (with_gt=True) needs the ground truth")
            parts.append(F.pixel_unshuffle(gt, PRIOR_GRID))
        return torch.cat(parts, dim=1)

    def forward(self, lq: Tensor, gt: Tensor | None = None) -> Tensor:
        return self.mlp(self.body(self.inputs(lq, gt)))


class IPRDenoiser(nn.Module):
    """Predicts the clean IPR from concat(c, t / (10 T), z_t) (2 x 256 + 1 inputs).

    Linear 513 -> 256 + LeakyReLU(0.1), then `hidden_layers` x [Linear 256 -> 256 + LeakyReLU].
    `c` is stage 2's CPEN output for the LQ image; `t` the integer step 0..T-1.
    """

    def __init__(self, ipr_dim: int = IPR_DIM, hidden_layers: int = 1, n_steps: int = 4) -> None:
        super().__init__()
        self.time_scale = 10 * n_steps  # the step enters as t / (10 T)
        layers: list[nn.Module] = [nn.Linear(2 * ipr_dim + 1, ipr_dim), nn.LeakyReLU(0.1, inplace=True)]
        for _ in range(hidden_layers):
            layers += [nn.Linear(ipr_dim, ipr_dim), nn.LeakyReLU(0.1, inplace=True)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, z_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        time = (t.to(z_t.dtype) / self.time_scale).reshape(-1, 1).expand(z_t.shape[0], 1)
        return self.mlp(torch.cat([c, time, z_t], dim=1))
