"""Tiny networks for the methods' tests: each method takes its networks as required arguments, and these
are the smallest that run its whole code path in milliseconds on a CPU."""

from __future__ import annotations

from torch import nn

from ir_lightning.nets.diffir import CPEN, DIRformer, IPRDenoiser
from ir_lightning.nets.discriminator import UNetDiscriminatorSN
from ir_lightning.nets.rddm import TwoUNets
from ir_lightning.nets.restorer import ResidualUNet
from ir_lightning.nets.unet import UNet

TINY_UNET = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(), dropout=0.0, norm_groups=4)
"""A two-level U-Net without attention: inputs need sides divisible by 2."""

TINY_DIRFORMER = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))


def tiny_unet(in_channels: int, out_channels: int = 3, cond_dims: int = 1) -> UNet:
    """A noise predictor `net(x, level)` (SR3: 6 in; DeqIR's prior: 3 in; DA's D: 9 in)."""
    return UNet(in_channels=in_channels, out_channels=out_channels, cond_dims=cond_dims, **TINY_UNET)


def tiny_two_unets(in_channels: int = 6, cond_dims: int = 1) -> TwoUNets:
    """RDDM's `pred_res_noise` network: (I_res_hat, eps_hat)."""
    return TwoUNets(in_channels=in_channels, cond_dims=cond_dims, **TINY_UNET)


def tiny_diffir(scale: int = 4, stage: int = 2) -> dict[str, nn.Module]:
    """DiffIR's networks for stage 1 (restorer, cpen_s1) or stage 2 (and cpen_s2, denoiser)."""
    networks: dict[str, nn.Module] = {
        "restorer": DIRformer(scale=scale, **TINY_DIRFORMER),
        "cpen_s1": CPEN(scale, True, 1),
    }
    if stage >= 2:
        networks |= {"cpen_s2": CPEN(scale, False, 1), "denoiser": IPRDenoiser()}
    return networks


def tiny_discriminator() -> UNetDiscriminatorSN:
    return UNetDiscriminatorSN(base_channels=4)


def tiny_da() -> dict[str, nn.Module]:
    """Denoising as Adaptation's restorer R and diffusion network D (noisy target + two 3-channel conditions)."""
    return {"restorer": ResidualUNet(width=8, depth=2), "diffusion": tiny_unet(9)}
