"""The suite's bicubic resizes (`ir_lightning.degradations.resize`): Keys' cubic against its closed form and
partition of unity, MATLAB's imresize against an independent numpy reference (symmetric border, stretched
kernel), torch's antialiased kernel agreeing with it away from the border, and the shapes and clamps of the
up- and down-sampling every layer uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ir_lightning.degradations.resize import (
    bicubic_downsample,
    bicubic_matrix,
    bicubic_resize,
    bicubic_upsample,
    cubic,
    matlab_bicubic_downsample,
)


def cubic_reference(x: np.ndarray) -> np.ndarray:
    """Keys' cubic with a = -0.5 (MATLAB imresize's 'bicubic')."""
    ax = np.abs(x)
    return np.where(
        ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1, np.where(ax < 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0)
    )


def matlab_downscale_axis(x: np.ndarray, scale: int, axis: int) -> np.ndarray:
    """imresize along one axis by 1/scale: the cubic stretched by `scale`, taps beyond the border mirrored
    with the edge pixel repeated (np.pad 'symmetric'), weights normalised per output pixel."""
    x = np.moveaxis(x, axis, 0)
    n, pad = x.shape[0], 4 * scale
    padded = np.pad(x, [(pad, pad)] + [(0, 0)] * (x.ndim - 1), mode="symmetric")
    out = []
    for i in range(n // scale):
        centre = (i + 0.5) * scale - 0.5  # MATLAB: u = i / (1/s) + 0.5 (1 - s), 1-based
        taps = np.arange(int(np.floor(centre - 2 * scale)), int(np.floor(centre + 2 * scale)) + 2)
        w = cubic_reference((centre - taps) / scale)
        w /= w.sum()
        out.append(np.tensordot(w, padded[taps + pad], axes=(0, 0)))
    return np.moveaxis(np.stack(out), 0, axis)


def test_keys_cubic_is_the_closed_form_and_sums_to_one_over_integer_shifts():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    torch.testing.assert_close(cubic(x), torch.from_numpy(cubic_reference(x.numpy())), rtol=0, atol=1e-13)
    assert cubic(torch.tensor([0.0, 1.0, 2.0, -1.5], dtype=torch.float64)).tolist() == [1.0, 0.0, 0.0, -0.0625]
    offsets = torch.linspace(0, 1, 11, dtype=torch.float64)
    shifts = torch.arange(-3, 4, dtype=torch.float64)
    sums = cubic(offsets[:, None] - shifts[None, :]).sum(dim=1)  # interpolation reproduces constants
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matlab_imresize_matches_the_numpy_reference(scale):
    image = np.random.default_rng(scale).random((2, 6 * scale, 8 * scale))
    expected = matlab_downscale_axis(matlab_downscale_axis(image, scale, 1), scale, 2)
    ours = matlab_bicubic_downsample(torch.from_numpy(image), scale)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)
    rows = bicubic_matrix(image.shape[1], scale)
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(rows.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)


def test_bicubic_matrix_needs_a_multiple_of_the_scale():
    with pytest.raises(ValueError, match="multiple of scale 4, got 10"):
        bicubic_matrix(10, 4)


@pytest.mark.parametrize("scale", [2, 4])
def test_torchs_antialiased_kernel_is_matlabs_away_from_the_border(scale):
    """Same kernel (a = -0.5, stretched by the scale): the two differ only where MATLAB mirrors the border."""
    n = 32 * scale
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    image = (torch.sin(6 * ramp)[:, None] * torch.cos(4 * ramp)[None, :])[None, None]
    matlab = matlab_bicubic_downsample(image, scale)
    ours = bicubic_resize(image, (n // scale, n // scale), antialias=True)
    inner = slice(3, -3)
    torch.testing.assert_close(ours[..., inner, inner], matlab[..., inner, inner], rtol=0, atol=1e-6)


def test_up_and_down_sampling_shapes_clamps_and_identity():
    image = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    up = bicubic_upsample(image, (16, 24))
    assert up.shape == (2, 3, 16, 24) and up.min() >= 0 and up.max() <= 1  # overshoot clamped
    assert bicubic_resize(image, (16, 24)).max() > 1 or bicubic_resize(image, (16, 24)).min() < 0  # ... which there is
    assert bicubic_downsample(image, 4).shape == (2, 3, 2, 3)
    assert torch.equal(bicubic_downsample(image, 1), image)
    with pytest.raises(ValueError, match="not divisible by scale 3"):
        bicubic_downsample(image, 3)
