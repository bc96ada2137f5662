"""Tiled restoration: equal to whole-image restoration when the receptive field fits the window's margin,
seamless when tiles disagree, tiles of the asked size in batches of the asked size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ir_lightning.inference.tiling import profile, restore_tiled, tile_starts


def local_sr_net(seed: int = 0) -> nn.Module:
    """Two 3 x 3 convolutions (receptive radius 2 input pixels) and a x2 pixel shuffle, zero padding."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2)
    ).double()


def test_tiles_cover_the_image_with_at_least_the_overlap():
    assert tile_starts(10, 16, 4) == [0]
    starts = tile_starts(50, 16, 8)
    assert starts[0] == 0 and starts[-1] == 50 - 16
    assert all(b - a <= 16 - 8 for a, b in zip(starts, starts[1:]))


def test_window_profile_is_zero_on_the_margin_and_one_inside():
    w = profile(32, 8, ramp_start=True, ramp_end=False, dtype=torch.float64)
    assert w[:2].abs().max() == 0 and (w[6:] == 1).all()  # margin 8 / 4 = 2, ramp over 4 pixels
    assert bool((w[1:] >= w[:-1]).all())
    assert (profile(32, 8, ramp_start=False, ramp_end=False) == 1).all()


@pytest.mark.parametrize(("tile", "overlap", "batch"), [(16, 8, 1), (16, 8, 5), (20, 12, 3)])
def test_tiled_equals_whole_when_the_receptive_field_fits_the_margin(tile, overlap, batch):
    net = local_sr_net()
    lq = torch.rand(1, 3, 50, 37, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = []

    def restore(tiles):
        seen.append(tuple(tiles.shape))
        return net(tiles)

    with torch.no_grad():
        whole, tiled = net(lq), restore_tiled(restore, lq, tile, overlap, batch)
    assert tiled.shape == whole.shape == (1, 3, 100, 74)
    assert (tiled - whole).abs().max() < 1e-10  # radius 2 <= overlap / 4
    assert all(n <= batch and (h, w) == (tile, tile) for n, _, h, w in seen) and len(seen) > 1


def test_without_the_margin_tiles_differ_from_whole_but_blend_without_a_seam():
    """Each tile gets its own offset (as tiles of a stochastic sampler get their own noise): the
    blended offset field changes by at most offset * pi / (2 ramp) between neighbouring pixels, while a
    hard cut between tiles would jump by up to the whole offset difference."""
    lq = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    offsets = iter(torch.rand(100, generator=torch.Generator().manual_seed(2), dtype=torch.float64).tolist())

    def restore(tiles):
        return torch.stack([tile + next(offsets) for tile in tiles])

    overlap = 16
    out = restore_tiled(restore, lq, tile=24, overlap=overlap, batch=2)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    ramp = overlap - 2 * (overlap // 4)
    jump = max(out.diff(dim=-1).abs().max().item(), out.diff(dim=-2).abs().max().item())
    assert 0 < jump <= math.pi / (2 * ramp) + 1e-12


def test_a_single_tile_image_is_restored_whole_and_bad_settings_are_named():
    calls = []
    lq = torch.rand(1, 3, 8, 8)
    out = restore_tiled(lambda t: calls.append(t.shape) or t * 2, lq, tile=16, overlap=4)
    assert calls == [lq.shape] and torch.equal(out, lq * 2)
    with pytest.raises(ValueError, match="overlap < tile, got tile=8, overlap=8"):
        restore_tiled(lambda t: t, lq, tile=8, overlap=8)
    with pytest.raises(ValueError, match="one image"):
        restore_tiled(lambda t: t, torch.rand(2, 3, 8, 8), tile=4, overlap=2)
    with pytest.raises(ValueError, match="not an integer scale"):
        restore_tiled(lambda t: t[..., :-1], torch.rand(1, 3, 20, 20), tile=8, overlap=4)
