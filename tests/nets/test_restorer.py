"""The residual U-Net restorer: parameter count against the closed form of its layers, output =
input + residual, any size."""

from __future__ import annotations

import torch

from ir_lightning.nets.restorer import ResidualUNet


def conv(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + c_out


def closed_form(width: int, depth: int, channels: int = 3) -> int:
    widths = [width * 2**i for i in range(depth)]
    total = sum(conv(c_in, c_out) + conv(c_out, c_out) for c_in, c_out in zip([channels, *widths], widths))
    total += sum(
        conv(widths[i + 1], widths[i]) + conv(2 * widths[i], widths[i]) + conv(widths[i], widths[i])
        for i in range(depth - 1)
    )
    return total + conv(width, channels)


def test_parameter_count_matches_the_closed_form():
    assert sum(p.numel() for p in ResidualUNet().parameters()) == closed_form(64, 4) == 8_559_171
    assert sum(p.numel() for p in ResidualUNet(width=16, depth=3).parameters()) == closed_form(16, 3)


def test_output_is_input_plus_residual_for_any_size():
    net = ResidualUNet(width=8, depth=3)
    x = torch.rand(2, 3, 21, 34)
    torch.testing.assert_close(net(x), x + net.residual(x))
    torch.nn.init.zeros_(net.last.weight)
    torch.nn.init.zeros_(net.last.bias)
    torch.testing.assert_close(net(x), x)  # a zero residual is the identity
