"""Tests of CameraNoise: determinism, the Poisson-Gaussian variance by Monte Carlo, spatial
correlation against its closed form and against AWGN, the gamma path, argument checks, config."""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser

from ir_lightning.degradations import CameraNoise, GaussianNoise, Pipeline

SEED = 1234
BORDER = 8
"""Pixels dropped on each side before measuring noise: the reflect padding changes the border."""


def seeded(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def interior_noise(noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The noise field away from the border."""
    return (noisy - clean)[..., BORDER:-BORDER, BORDER:-BORDER]


def lag1_correlation(noise: torch.Tensor) -> float:
    """Pearson correlation of horizontally neighbouring noise samples, over the whole batch."""
    left, right = noise[..., :, :-1].flatten().double(), noise[..., :, 1:].flatten().double()
    return float(torch.corrcoef(torch.stack([left, right]))[0, 1])


def test_same_seed_same_output_and_other_seed_differs():
    degradation = CameraNoise()
    img = torch.rand(2, 3, 24, 24, generator=seeded(0))
    first = degradation(img, seeded())
    assert torch.equal(first, degradation(img, seeded()))
    assert not torch.equal(first, degradation(img, seeded(SEED + 1)))


@pytest.mark.parametrize(("level", "photons", "read"), [(0.4, 50.0, 5.0), (0.8, 200.0, 2.0), (0.05, 20.0, 8.0)])
def test_flat_image_variance_matches_the_poisson_gaussian_closed_form(level, photons, read):
    """On a flat image of level v each pixel's noise has mean 0 and variance v / photons + (read/255)^2:
    the blur's correlation rescaling (division by ||k||_2) makes the variance factor exactly 1."""
    degradation = CameraNoise(photons=(photons, photons), read_noise=(read, read), correlation=(0.8, 0.8))
    flat = torch.full((4, 3, 160, 160), level)
    noise = interior_noise(degradation(flat, seeded()), flat)
    expected = level / photons + (read / 255.0) ** 2  # Var[Poisson(p v) / p] + Var[read N(0, 1)]
    # ~ 1.7e5 samples, correlated over ~ 4 pi sigma^2 ~ 8 pixels: relative standard error of the variance ~ 1 %
    assert float(noise.var()) == pytest.approx(expected, rel=0.05)
    assert abs(float(noise.mean())) < 0.05 * math.sqrt(expected)


def test_per_sample_parameters_replay_from_the_sample_methods():
    """Drawing photons and read noise with an identically seeded generator gives each sample's
    own closed-form variance (the draws happen first, in the order photons, read, correlation)."""
    degradation = CameraNoise(photons=(10.0, 300.0), read_noise=(1.0, 12.0), correlation=(0.6, 1.0))
    flat = torch.full((6, 3, 128, 128), 0.5)
    noise = interior_noise(degradation(flat, seeded()), flat)
    generator = seeded()
    photons = degradation.sample_photons(6, generator, flat.device)
    read = degradation.sample_read_noise(6, generator, flat.device)
    expected = 0.5 / photons + (read / 255.0) ** 2
    measured = noise.var(dim=(1, 2, 3))
    torch.testing.assert_close(measured, expected, rtol=0.1, atol=0.0)
    assert float(expected.max() / expected.min()) > 3  # the samples really got different noise levels
    correlation = degradation.sample_correlation(6, generator, flat.device)
    assert ((0.6 <= correlation) & (correlation <= 1.0)).all()
    assert ((10.0 <= photons) & (photons <= 300.0)).all() and ((1.0 <= read) & (read <= 12.0)).all()


def test_shot_noise_grows_with_the_signal():
    """Without read noise, a flat image 4x brighter has 4x the noise variance (Poisson: var = v / photons)."""
    degradation = CameraNoise(photons=(40.0, 40.0), read_noise=(0.0, 0.0), correlation=(0.8, 0.8))
    dark, bright = torch.full((4, 3, 96, 96), 0.15), torch.full((4, 3, 96, 96), 0.6)
    bright_var = interior_noise(degradation(bright, seeded()), bright).var()
    dark_var = interior_noise(degradation(dark, seeded()), dark).var()
    assert float(bright_var / dark_var) == pytest.approx(4.0, rel=0.08)


def test_neighbouring_noise_is_correlated_where_awgn_is_not():
    """Lag-1 correlation of a Gaussian-blurred white field is ~exp(-1 / (4 sigma^2)) (0.68 at sigma 0.8)."""
    flat = torch.full((4, 3, 96, 96), 0.5)
    camera = CameraNoise(photons=(60.0, 60.0), read_noise=(4.0, 4.0), correlation=(0.8, 0.8))
    camera_lag1 = lag1_correlation(interior_noise(camera(flat, seeded()), flat))
    awgn_lag1 = lag1_correlation(interior_noise(GaussianNoise(sigma=(25.0, 25.0))(flat, seeded()), flat))
    assert camera_lag1 > 0.2 and abs(awgn_lag1) < 0.05
    assert camera_lag1 == pytest.approx(math.exp(-1 / (4 * 0.8**2)), abs=0.03)


def test_gamma_adds_the_noise_in_linear_light():
    """With gamma g the noise is added to v^g and encoded back, so by the delta method the output
    variance is (d/du u^(1/g))^2 at u = v^g times the linear variance: dark tones get amplified."""
    gamma, photons = 2.2, 2000.0
    degradation = CameraNoise(photons=(photons, photons), read_noise=(0.0, 0.0), correlation=(0.8, 0.8), gamma=gamma)
    for level in (0.2, 0.7):
        flat = torch.full((4, 3, 96, 96), level)
        noise = interior_noise(degradation(flat, seeded()), flat)
        linear = level**gamma
        slope = linear ** (1 / gamma - 1) / gamma  # derivative of the encoding u -> u^(1/g)
        assert float(noise.var()) == pytest.approx(slope**2 * linear / photons, rel=0.06)
        assert abs(float(noise.mean())) < 0.1 * math.sqrt(float(noise.var()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"photons": (0.0, 10.0)}, "photons must be positive"),
        ({"photons": (20.0, 10.0)}, "photons must satisfy"),
        ({"read_noise": (-1.0, 2.0)}, "read_noise must satisfy"),
        ({"correlation": (0.0, 1.0)}, "correlation must be positive"),
        ({"kernel_size": 6}, "kernel_size must be a positive odd integer"),
        ({"gamma": 0.0}, "gamma must be positive"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CameraNoise(**kwargs)


def test_jsonargparse_builds_camera_noise_in_a_pipeline():
    recipe = """
degradation:
  class_path: ir_lightning.degradations.Pipeline
  init_args:
    steps:
      - class_path: ir_lightning.degradations.CameraNoise
        init_args: {photons: [20, 80], read_noise: [3, 3], correlation: [1.0, 1.0], gamma: 2.2}
"""
    parser = ArgumentParser()
    parser.add_argument("--degradation", type=Pipeline | None)
    built = parser.instantiate(parser.parse_string(recipe)).degradation
    (step,) = built.steps
    assert isinstance(step, CameraNoise)
    assert (step.photons, step.read_noise, step.correlation, step.gamma) == ((20, 80), (3, 3), (1.0, 1.0), 2.2)
    img = torch.rand(1, 3, 16, 16, generator=seeded(0))
    out = built(img, seeded())
    assert torch.equal(out, built(img, seeded())) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(torch.round(out * 255), out * 255)  # the pipeline quantised to uint8 levels
