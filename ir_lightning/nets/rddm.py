"""Networks of RDDM (Liu et al., CVPR 2024): `forward(x, cond) -> (res_hat, eps_hat)`.

The input is x = concat([I_t, I_in]) (6 channels; 7 with the shadow mask of shadow removal);
the network predicts the residual I_res = I_in - I_0 and the noise eps, 3 channels each.
`cond` is one scalar per sample, shape (B,) (t / T, with `cond_dims=1`), or the two
coefficients (alpha_bar_t, beta_bar_t), shape (B, 2) (`cond_dims=2`), which partially
path-independent sampling needs (there the residual and the noise do not shrink together as
along the training schedule, so t alone does not say where a sample is). The official code
has three layouts; each is one class here, all built from the SR3 U-Net's blocks and halves
(`ir_lightning.nets.unet`):

- `TwoUNets`: two U-Nets, one for I_res and one for eps (official `share_encoder=0` /
  `num_unet=2`; the restoration experiments use it). 128.8 M parameters, 755 GFLOP.
- `SharedEncoderUNet`: one encoder, a residual decoder without skip connections and a noise
  decoder with them (official `share_encoder=1`). 91.9 M parameters, 582 GFLOP (101.6 M,
  643 GFLOP with skips in both decoders).
- `TwoHeadUNet`: one U-Net whose 6 output channels are split in two. 64.4 M parameters,
  378 GFLOP. The official single-U-Net option (`share_encoder=-1` / `num_unet=1`) predicts
  one quantity only, for the pred_res and pred_noise objectives; with `out_channels=3` and
  one of the two outputs ignored by the loss, this class is that option plus 3 unused
  output channels, so a recipe for those objectives may rather use `UNet` itself.

Costs at the paper's generic config (base 64 channels, multipliers 1, 2, 4, 8, two residual
blocks a level, GroupNorm 8, attention at level 3, `cond_dims=1`), for one 6 x 256 x 256
input, 2 FLOPs a multiply-add. A decoder with skips is larger than the encoder (37.2 M
against 27.1 M parameters: one more residual block a level, on concatenated skips); one
without skips has 27.5 M.

Differences from the official U-Net: it has linear attention at every level and full
attention at the bottleneck; here every network has full (softmax) self-attention at the
bottleneck and at the levels in `attn_levels` (default: level 3, the lowest resolution, 1/8 of
the input) and none elsewhere, since full attention at high resolution costs memory quadratic
in H * W. The residual blocks are SR3's (FiLM conditioning, GroupNorm, skip sums scaled by
1/sqrt(2)), not the official weight-standardised ones. The conditioning scalars are each
encoded like SR3's noise level (times 1000, sinusoidal: t / T with T = 1000 gives the
official code of the integer step t), concatenated, then one MLP 4 x base_channels wide (256,
as the official time MLP). No losses here: the method owns them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ir_lightning.nets.padding import pad_to_multiple
from ir_lightning.nets.unet import NoiseLevelEmbedding, UNet, UNetDecoder, UNetEncoder


class TwoUNets(nn.Module):
    """Layout 1: two independent U-Nets, `res_net` predicts I_res and `noise_net` predicts eps.

    The most parameters and compute of the three layouts (twice one U-Net); the predictions
    share nothing, each net has its own conditioning MLP.

    Args:
        in_channels: input channels: 6 = concat([I_t, I_in]), 7 with a shadow mask.
        out_channels: channels of each prediction (3).
        base_channels, channel_mults, num_res_blocks, attn_levels, dropout, norm_groups, emb_dim:
            as in `UNet`, for each of the two.
        cond_dims: 1 (t / T, shape (B,)) or 2 ((alpha_bar_t, beta_bar_t), shape (B, 2)).
        coefficient_per_net: with `cond_dims=2`, condition `res_net` on alpha_bar_t only and
            `noise_net` on beta_bar_t only, as the official path-independent generation code
            does; by default both nets see both coefficients.
    """

    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (3,),
        dropout: float = 0.0,
        norm_groups: int = 8,
        emb_dim: int | None = None,
        cond_dims: int = 1,
        coefficient_per_net: bool = False,
    ) -> None:
        super().__init__()
        if coefficient_per_net and cond_dims != 2:
            raise ValueError(f"TwoUNets: coefficient_per_net needs cond_dims=2 (alpha_bar, beta_bar), got {cond_dims}")
        self.coefficient_per_net = coefficient_per_net
        unet = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            attn_levels=attn_levels,
            dropout=dropout,
            norm_groups=norm_groups,
            emb_dim=emb_dim,
            cond_dims=1 if coefficient_per_net else cond_dims,
        )
        self.res_net = UNet(**unet)
        self.noise_net = UNet(**unet)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        if self.coefficient_per_net:
            if cond.ndim != 2 or cond.shape[1] != 2:
                raise ValueError(f"TwoUNets: cond of shape {tuple(cond.shape)}, expected (B, 2): (alpha_bar, beta_bar)")
            return self.res_net(x, cond[:, 0]), self.noise_net(x, cond[:, 1])
        return self.res_net(x, cond), self.noise_net(x, cond)


class SharedEncoderUNet(nn.Module):
    """Layout 2: one encoder (and one conditioning MLP) feeding a residual decoder and a noise decoder.

    The encoder runs once per forward and feeds both decoders, so both losses train it. As in
    the official code, the residual decoder has no skip connections (it sees the bottleneck
    features only) and the noise decoder has them; `res_decoder_skips=True` gives both decoders
    skips. Fewer parameters and less compute than `TwoUNets` (one encoder, and a decoder
    without skips is smaller), more than `TwoHeadUNet` (two decoders). Other arguments as in
    `TwoUNets`.
    """

    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (3,),
        dropout: float = 0.0,
        norm_groups: int = 8,
        emb_dim: int | None = None,
        cond_dims: int = 1,
        res_decoder_skips: bool = False,
    ) -> None:
        super().__init__()
        if cond_dims < 1:
            raise ValueError(f"SharedEncoderUNet: cond_dims must be at least 1, got {cond_dims}")
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
        self.encoder = UNetEncoder(in_channels, **levels)
        self.res_decoder = UNetDecoder(out_channels, **levels, use_skips=res_decoder_skips)
        self.noise_decoder = UNetDecoder(out_channels, **levels)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        h_in, w_in = x.shape[-2:]
        emb = self.embed(cond)
        h, skips = self.encoder(pad_to_multiple(x, self.factor), emb)
        res_hat = self.res_decoder(h, skips, emb)[..., :h_in, :w_in]
        eps_hat = self.noise_decoder(h, skips, emb)[..., :h_in, :w_in]
        return res_hat, eps_hat


class TwoHeadUNet(nn.Module):
    """Layout 3: one U-Net with 2 * out_channels outputs; the first half is I_res, the second eps.

    The cheapest layout (one U-Net; only the last conv is wider) and the one where the two
    predictions share the most. Arguments as in `TwoUNets`.
    """

    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (3,),
        dropout: float = 0.0,
        norm_groups: int = 8,
        emb_dim: int | None = None,
        cond_dims: int = 1,
    ) -> None:
        super().__init__()
        self.unet = UNet(
            in_channels=in_channels,
            out_channels=2 * out_channels,
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            attn_levels=attn_levels,
            dropout=dropout,
            norm_groups=norm_groups,
            emb_dim=emb_dim,
            cond_dims=cond_dims,
        )

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        res_hat, eps_hat = self.unet(x, cond).chunk(2, dim=1)
        return res_hat, eps_hat
