"""The SR3 U-Net: sizes, shapes, conditioning on the noise level."""

from __future__ import annotations

import pytest
import torch

from ir_lightning.nets.unet import UNet

TINY = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), dropout=0.0, norm_groups=8)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts_of_recorded_configurations():
    # Recorded when the network was written; a change of architecture changes these on purpose only.
    public_16_128 = UNet(base_channels=64, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=2, attn_levels=(3,))
    demo = UNet(base_channels=32, channel_mults=(1, 2, 2, 4), num_res_blocks=1, attn_levels=(3,))
    assert n_params(public_16_128) == 102_682_115
    assert n_params(demo) == 3_359_203


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (17, 64)])
def test_any_input_size_gives_the_same_output_size(size):
    net = UNet(in_channels=6, out_channels=3, **TINY)
    out = net(torch.randn(2, 6, *size), torch.rand(2))
    assert out.shape == (2, 3, *size)


def test_output_depends_on_the_noise_level_per_sample():
    torch.manual_seed(0)
    net = UNet(**TINY).eval()
    x = torch.randn(1, 6, 16, 16).repeat(2, 1, 1, 1)
    out = net(x, torch.tensor([0.1, 0.9]))
    assert (out[0] - out[1]).abs().max() > 1e-3  # same image, different levels
    again = net(x[:1], torch.tensor([0.1]))
    torch.testing.assert_close(again[0], out[0], atol=1e-5, rtol=0)  # batch members are independent


def test_groupnorm_needs_divisible_channels():
    with pytest.raises(ValueError, match="not divisible"):
        UNet(base_channels=24, channel_mults=(1,), norm_groups=16, attn_levels=())
