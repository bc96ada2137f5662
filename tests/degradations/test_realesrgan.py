"""Tests for the Real-ESRGAN degradation: kernels against closed forms and scipy, Monte-Carlo noise
statistics, output sizes, determinism, Pipeline/config integration and argument checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from scipy import special

from ir_lightning.degradations import (
    KERNEL_TYPES,
    Pipeline,
    RealESRGANDegradation,
    filter_per_sample,
    gaussian_kernels,
    generalized_gaussian_kernels,
    plateau_kernels,
    poisson_noise,
    pulse_kernels,
    restrict_support,
    sinc_kernels,
)

SEED = 1234
CPU = torch.device("cpu")


def seeded(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_batch(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """B x 3 x H x W in [0.1, 0.9]: smooth random plane waves, so blur, resize and JPEG all change it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    imgs = np.empty((batch, 3, height, width))
    for b in range(batch):
        for c in range(3):
            fy, fx, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
            imgs[b, c] = 0.5 + 0.4 * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
    return torch.from_numpy(imgs).float()


def numpy_kernel(sigma_x: float, sigma_y: float, theta: float, size: int, profile) -> np.ndarray:
    """Independent reference: ``profile(x^T C^-1 x)`` with C built as a matrix and inverted by numpy."""
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    covariance = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    offsets = np.arange(size) - size // 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    points = np.stack([xx, yy], axis=-1)  # (x, y) = (column, row) offsets
    q = np.einsum("...i,ij,...j->...", points, np.linalg.inv(covariance), points)
    kernel = profile(q)
    return kernel / kernel.sum()


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- kernels


def test_every_kernel_family_sums_to_one() -> None:
    gen = seeded()
    n = 16
    sigma_x, sigma_y = 0.2 + 2.8 * torch.rand(n, generator=gen), 0.2 + 2.8 * torch.rand(n, generator=gen)
    theta = math.pi * (2 * torch.rand(n, generator=gen) - 1)
    beta = 0.5 + 3.5 * torch.rand(n, generator=gen)
    cutoff = math.pi / 5 + (math.pi - math.pi / 5) * torch.rand(n, generator=gen)
    families = {
        "gaussian": gaussian_kernels(sigma_x, sigma_y, theta),
        "generalized": generalized_gaussian_kernels(sigma_x, sigma_y, theta, beta),
        "plateau": plateau_kernels(sigma_x, sigma_y, theta, beta),
        "sinc": sinc_kernels(cutoff),
        "pulse": pulse_kernels(n),
        "restricted": restrict_support(gaussian_kernels(sigma_x, sigma_y, theta), torch.full((n,), 7)),
    }
    model = RealESRGANDegradation()
    families["stage1"] = model.sample_blur_kernels(1, 64, seeded(1), CPU)
    families["stage2"] = model.sample_blur_kernels(2, 64, seeded(2), CPU)
    families["final"] = model.sample_final_sinc_kernels(64, seeded(3), CPU)
    for name, kernels in families.items():
        assert kernels.shape[-2:] == (21, 21), name
        sums = kernels.double().sum(dim=(-2, -1))
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6, rtol=0), name


@pytest.mark.parametrize("family", ["gaussian", "generalized", "plateau", "sinc"])
def test_isotropic_kernels_are_rotation_and_transposition_invariant(family: str) -> None:
    sigma, beta, cutoff = f64(0.7, 1.9, 2.6), f64(0.6, 1.0, 3.0), f64(0.8, 1.6, 2.9)
    for theta in (0.0, 0.4, 2.0):  # the angle must not matter when sigma_x == sigma_y
        angle = torch.full_like(sigma, theta)
        kernels = {
            "gaussian": lambda: gaussian_kernels(sigma, sigma, angle),  # noqa: B023 (called within this iteration)
            "generalized": lambda: generalized_gaussian_kernels(sigma, sigma, angle, beta),  # noqa: B023 (called within this iteration)
            "plateau": lambda: plateau_kernels(sigma, sigma, angle, beta),  # noqa: B023 (called within this iteration)
            "sinc": lambda: sinc_kernels(cutoff),
        }[family]()
        if theta == 0.0:
            reference = kernels
        assert torch.allclose(kernels, reference, atol=1e-12, rtol=0)
        assert torch.allclose(kernels, kernels.transpose(-2, -1), atol=1e-12, rtol=0)
        assert torch.allclose(kernels, torch.rot90(kernels, 1, dims=(-2, -1)), atol=1e-12, rtol=0)
        assert torch.allclose(kernels, kernels.flip(-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("theta", [0.0, 0.6, -1.1, 2.5])
def test_anisotropic_gaussian_second_moments_match_covariance(theta: float) -> None:
    # A sampled Gaussian's discrete second moments equal the continuous ones up to a Poisson-summation
    # term ~exp(-2 pi^2 sigma_min^2) (4e-6 at 0.8) and truncation at 10 px = 5 sigma_max: 1e-3 is loose.
    sigma_x, sigma_y = 2.0, 0.8
    kernel = gaussian_kernels(f64(sigma_x), f64(sigma_y), f64(theta), size=21)[0].numpy()
    offsets = np.arange(21) - 10
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    expected_xx = c**2 * sigma_x**2 + s**2 * sigma_y**2  # (R diag(sx^2, sy^2) R^T)_00
    expected_yy = s**2 * sigma_x**2 + c**2 * sigma_y**2
    expected_xy = c * s * (sigma_x**2 - sigma_y**2)
    assert abs((kernel * xx).sum()) < 1e-12 and abs((kernel * yy).sum()) < 1e-12  # centred
    assert (kernel * xx**2).sum() == pytest.approx(expected_xx, abs=1e-3)
    assert (kernel * yy**2).sum() == pytest.approx(expected_yy, abs=1e-3)
    assert (kernel * xx * yy).sum() == pytest.approx(expected_xy, abs=1e-3)


@pytest.mark.parametrize(("sigma_x", "sigma_y", "theta", "beta"), [(2.5, 0.9, 0.7, 0.6), (1.2, 2.8, -2.0, 3.5)])
def test_generalized_and_plateau_kernels_match_numpy_reference(
    sigma_x: float, sigma_y: float, theta: float, beta: float
) -> None:
    args = (f64(sigma_x), f64(sigma_y), f64(theta), f64(beta))
    generalized = generalized_gaussian_kernels(*args, size=15)[0].numpy()
    plateau = plateau_kernels(*args, size=15)[0].numpy()
    np.testing.assert_allclose(
        generalized, numpy_kernel(sigma_x, sigma_y, theta, 15, lambda q: np.exp(-0.5 * q**beta)), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        plateau, numpy_kernel(sigma_x, sigma_y, theta, 15, lambda q: 1 / (1 + q**beta)), rtol=0, atol=1e-12
    )
    gaussian = gaussian_kernels(*args[:3], size=15)
    assert torch.allclose(generalized_gaussian_kernels(*args[:3], f64(1.0), size=15), gaussian, atol=1e-14, rtol=0)


@pytest.mark.parametrize("size", [7, 13, 21])
def test_sinc_kernel_matches_scipy_bessel_closed_form(size: int) -> None:
    # torch's float64 bessel_j1 (a rational fit) is within 5e-7 of scipy's j1 on [0, 45] (measured); after
    # normalisation the kernels differ by up to 8.4e-8 (measured), hence atol 2e-7.
    cutoffs = [math.pi / 5, math.pi / 3, 2.0, math.pi]
    ours = sinc_kernels(f64(*cutoffs), size=size).numpy()
    offsets = np.arange(size) - size // 2
    radius = np.hypot(*np.meshgrid(offsets, offsets, indexing="ij"))
    for kernel, omega in zip(ours, cutoffs):
        with np.errstate(divide="ignore", invalid="ignore"):
            reference = omega * special.j1(omega * radius) / (2 * np.pi * radius)
        reference[size // 2, size // 2] = omega**2 / (4 * np.pi)
        np.testing.assert_allclose(kernel, reference / reference.sum(), rtol=0, atol=2e-7)


@pytest.mark.parametrize("cutoff", [math.pi / 2, 2.5])
def test_sinc_kernel_frequency_response_is_a_circular_low_pass(cutoff: float) -> None:
    # The 21-tap truncation ripples (measured: pass band 0.86-1.10, stop band <= 0.044 at pi/2).
    kernel = sinc_kernels(f64(cutoff), size=21)[0].numpy()
    n = 256
    response = np.abs(np.fft.fft2(kernel, s=(n, n)))
    omega = np.fft.fftfreq(n) * 2 * np.pi
    radius = np.hypot(*np.meshgrid(omega, omega, indexing="ij"))
    assert np.all(np.abs(response[radius < 0.5 * cutoff] - 1) < 0.15)
    assert np.all(response[radius > 1.5 * cutoff] < 0.1)


def test_restricted_support_equals_small_kernel_zero_padded() -> None:
    sigma_x, sigma_y, theta = f64(2.5, 1.0), f64(1.0, 1.0), f64(0.3, 0.0)
    for support in (7, 13):
        small = gaussian_kernels(sigma_x, sigma_y, theta, size=support)
        pad = (21 - support) // 2
        padded = torch.nn.functional.pad(small, (pad, pad, pad, pad))
        restricted = restrict_support(gaussian_kernels(sigma_x, sigma_y, theta, size=21), torch.full((2,), support))
        assert torch.allclose(restricted, padded, atol=1e-12, rtol=0)


def test_sampled_blur_kernels_stay_inside_their_drawn_support() -> None:
    model = RealESRGANDegradation()
    kernels = model.sample_blur_kernels(1, 200, seeded(), CPU)
    support = model.sample_kernel_sizes(200, seeded(), CPU)  # the first draw of sample_blur_kernels, replayed
    assert set(support.tolist()) == set(range(7, 22, 2))
    offsets = (torch.arange(21) - 10).abs()
    outside = torch.maximum(offsets[:, None], offsets[None, :])[None] > (support // 2)[:, None, None]
    assert torch.all(kernels[outside] == 0)
    assert torch.all(kernels.amax(dim=(-2, -1)) > 0)


def test_kernel_family_and_blur_probabilities_are_honoured() -> None:
    gen_iso = RealESRGANDegradation(kernel_prob=(1, 0, 0, 0, 0, 0), sinc_prob=0.0)
    iso = gen_iso.sample_blur_kernels(1, 32, seeded(), CPU)
    assert torch.allclose(iso, iso.transpose(-2, -1), atol=1e-7) and torch.allclose(iso, iso.flip(-1), atol=1e-7)
    gen_aniso = RealESRGANDegradation(kernel_prob=(0, 1, 0, 0, 0, 0), sinc_prob=0.0)
    aniso = gen_aniso.sample_blur_kernels(1, 32, seeded(), CPU)
    asymmetry = (aniso - aniso.transpose(-2, -1)).abs().amax(dim=(-2, -1))
    assert float((asymmetry > 1e-3).float().mean()) > 0.8  # random angles and unequal sigmas: transposes differ
    no_second_blur = RealESRGANDegradation(second_blur_prob=0.0).sample_blur_kernels(2, 16, seeded(), CPU)
    assert torch.equal(no_second_blur, pulse_kernels(16))
    assert torch.equal(
        RealESRGANDegradation(final_sinc_prob=0.0).sample_final_sinc_kernels(16, seeded(), CPU), pulse_kernels(16)
    )
    always = RealESRGANDegradation(final_sinc_prob=1.0).sample_final_sinc_kernels(16, seeded(), CPU)
    assert torch.all(always[:, 10, 10] < 1.0)  # every one a real low-pass, none the identity


def test_filter_per_sample_uses_each_samples_kernel() -> None:
    img = torch.rand(3, 2, 24, 24, generator=seeded(), dtype=torch.float64)
    kernels = RealESRGANDegradation().sample_blur_kernels(1, 3, seeded(5), CPU).double()
    batched = filter_per_sample(img, kernels)
    for b in range(3):
        assert torch.allclose(batched[b : b + 1], filter_per_sample(img[b : b + 1], kernels[b : b + 1]), atol=1e-12)
    flat = torch.full((3, 2, 24, 24), 0.3, dtype=torch.float64)
    assert torch.allclose(filter_per_sample(flat, kernels), flat, atol=1e-12)  # kernels sum to 1


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("stage", [1, 2])
def test_gaussian_noise_std_matches_sigma(stage: int) -> None:
    sigma_255 = 12.0
    model = RealESRGANDegradation(
        gaussian_noise_prob=1.0,
        noise_range=(sigma_255, sigma_255),
        gray_noise_prob=0.0,
        gaussian_noise_prob2=1.0,
        noise_range2=(sigma_255, sigma_255),
        gray_noise_prob2=0.0,
    )
    clean = torch.full((4, 3, 48, 48), 0.5, dtype=torch.float64)  # 0.5 is 10 sigma from the clamp
    residual = model.add_noise(clean, seeded(), stage=stage) - clean
    n, sigma = residual.numel(), sigma_255 / 255
    assert abs(float(residual.std()) - sigma) < 3 * sigma / math.sqrt(2 * (n - 1))
    assert abs(float(residual.mean())) < 3 * sigma / math.sqrt(n)


def level_image(batch: int, size: int, level: int, extra_levels: int) -> torch.Tensor:
    """Flat ``level / 255`` except the first ``extra_levels`` pixels (row-major), which take other distinct
    8-bit values, so each sample has exactly ``extra_levels + 1`` distinct levels."""
    img = torch.full((batch, 3, size * size), level / 255, dtype=torch.float64)
    others = [v for v in range(256) if v != level][:extra_levels]
    img[:, :, : len(others)] = torch.tensor(others, dtype=torch.float64) / 255
    return img.view(batch, 3, size, size)


@pytest.mark.parametrize(("extra_levels", "photons"), [(0, 1), (99, 128), (200, 256)])
def test_poisson_noise_variance_follows_official_formula(extra_levels: int, photons: int) -> None:
    # noise = scale * (Poisson(v q) / v - q), v = distinct levels rounded up to a power of two:
    # mean 0, variance scale^2 q / v. Measured on the flat pixels, within 3 standard errors.
    level, scale = 100, 0.8
    img = level_image(4, 64, level, extra_levels)
    noise = poisson_noise(img, torch.full((4,), scale), torch.zeros(4, dtype=torch.bool), seeded())
    flat = noise.flatten(2)[:, :, extra_levels:]
    q, n = level / 255, flat.numel()
    variance = scale**2 * q / photons
    # s.e. of a sample variance: sqrt((mu4 - var^2) / n); a Poisson(m) count has mu4 = var^2 (3 + 1/m)
    mean_count = photons * q
    standard_error = variance * math.sqrt((2 + 1 / mean_count) / n)
    assert abs(float(flat.var()) - variance) < 3 * standard_error
    assert abs(float(flat.mean())) < 3 * math.sqrt(variance / n)


def test_poisson_gray_noise_is_shared_by_channels_and_scale_multiplies() -> None:
    img = level_image(2, 32, 150, 60)
    gray = poisson_noise(img, torch.ones(2), torch.ones(2, dtype=torch.bool), seeded())
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])
    color = poisson_noise(img, torch.ones(2), torch.zeros(2, dtype=torch.bool), seeded())
    assert not torch.equal(color[:, 0], color[:, 1])
    half = poisson_noise(img, torch.full((2,), 0.5), torch.zeros(2, dtype=torch.bool), seeded())
    assert torch.allclose(half, 0.5 * color, atol=1e-15)  # same draws, scaled


def test_add_noise_poisson_branch_clamps_and_matches_helper() -> None:
    model = RealESRGANDegradation(gaussian_noise_prob=0.0, poisson_scale_range=(3.0, 3.0), gray_noise_prob=0.0)
    img = level_image(2, 32, 250, 10)
    out = model.add_noise(img, seeded(), stage=1)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out == 1.0).float().mean()) > 0.1  # scale 3 pushes many bright pixels past 1


# ---------------------------------------------------------------- the whole model


def test_same_seed_same_output_different_seed_different_output() -> None:
    model = RealESRGANDegradation()
    img = smooth_batch(2, 64, 64)
    first, again = model(img, seeded(7)), model(img, seeded(7))
    assert torch.equal(first, again)
    other = model(img, seeded(8))
    assert first.shape == other.shape == (2, 3, 16, 16)
    assert float((first - other).abs().mean()) > 1e-3


@pytest.mark.parametrize(("scale", "height", "width"), [(4, 64, 64), (4, 64, 96), (2, 48, 32), (4, 96, 48)])
def test_output_has_exact_lq_size(scale: int, height: int, width: int) -> None:
    model = RealESRGANDegradation(scale=scale)
    img = smooth_batch(2, height, width)
    for seed in range(4):  # different resize directions and final orders
        assert model(img, seeded(seed)).shape == (2, 3, height // scale, width // scale)


def test_indivisible_size_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 30, 32\).*scale 4"):
        RealESRGANDegradation(scale=4)(torch.zeros(1, 3, 30, 32))


def test_degradation_actually_degrades() -> None:
    # The LQ image is a blurred, noisy, compressed version: it correlates with the bicubic
    # down-scaled GT but is not equal to it.
    img = smooth_batch(2, 128, 128)
    lq = RealESRGANDegradation()(img, seeded())
    reference = torch.nn.functional.interpolate(img, size=(32, 32), mode="bicubic", antialias=True)
    error = float((lq - reference).abs().mean())
    assert 0.005 < error < 0.25


def test_inside_pipeline_output_is_in_unit_range_on_uint8_levels() -> None:
    pipeline = Pipeline(steps=[RealESRGANDegradation(noise_range=(25.0, 30.0), poisson_scale_range=(2.5, 3.0))])
    img = smooth_batch(3, 64, 64)
    out = pipeline(img, seeded())
    assert out.shape == (3, 3, 16, 16)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    levels = out * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4, rtol=0)
    assert torch.equal(pipeline(img, seeded()), out)


def test_runs_in_the_datamodule_hook_with_its_generator() -> None:
    # ShardDataModule seeds a generator from (seed, keys) outside training: the same keys give the same LQ.
    from datamodules import ShardDataModule

    datamodule = ShardDataModule(degradation=Pipeline(steps=[RealESRGANDegradation()]))
    gt = smooth_batch(2, 64, 64)
    first = datamodule.on_after_batch_transfer({"gt": gt, "__key__": ["a", "b"]}, 0)["lq"]
    again = datamodule.on_after_batch_transfer({"gt": gt, "__key__": ["a", "b"]}, 0)["lq"]
    other = datamodule.on_after_batch_transfer({"gt": gt, "__key__": ["c", "d"]}, 0)["lq"]
    assert first.shape == (2, 3, 16, 16) and torch.equal(first, again) and not torch.equal(first, other)


def test_works_without_a_generator() -> None:
    torch.manual_seed(0)
    assert RealESRGANDegradation(scale=2)(smooth_batch(1, 32, 32)).shape == (1, 3, 16, 16)


RECIPE = """
degradation:
  class_path: ir_lightning.degradations.Pipeline
  init_args:
    steps:
      - class_path: ir_lightning.degradations.RealESRGANDegradation
        init_args:
          scale: 2
          kernel_prob: [0.5, 0.5, 0, 0, 0, 0]
          noise_range2: [1, 10]
          final_sinc_prob: 0.5
"""


def test_recipe_builds_from_class_path_and_init_args() -> None:
    parser = ArgumentParser()
    parser.add_argument("--degradation", type=Pipeline | None)
    built = parser.instantiate(parser.parse_string(RECIPE)).degradation
    (step,) = built.steps
    assert isinstance(step, RealESRGANDegradation)
    assert step.scale == 2 and step.kernel_prob == (0.5, 0.5, 0, 0, 0, 0) and step.noise_range2 == (1, 10)
    assert step.final_sinc_prob == 0.5 and step.jpeg_range == (30.0, 95.0)  # untouched default
    assert built(smooth_batch(1, 32, 32), seeded()).shape == (1, 3, 16, 16)


def test_defaults_are_the_official_x4_settings() -> None:
    model = RealESRGANDegradation()
    assert model.scale == 4 and model.kernel_sizes == (7, 21) and len(KERNEL_TYPES) == 6
    assert model.kernel_prob == model.kernel_prob2 == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert (model.sinc_prob, model.sinc_prob2, model.final_sinc_prob, model.second_blur_prob) == (0.1, 0.1, 0.8, 0.8)
    assert model.blur_sigma == (0.2, 3.0) and model.blur_sigma2 == (0.2, 1.5)
    assert model.resize_prob == (0.2, 0.7, 0.1) and model.resize_range == (0.15, 1.5)
    assert model.resize_prob2 == (0.3, 0.4, 0.3) and model.resize_range2 == (0.3, 1.2)
    assert model.noise_range == (1.0, 30.0) and model.noise_range2 == (1.0, 25.0)
    assert model.poisson_scale_range == (0.05, 3.0) and model.poisson_scale_range2 == (0.05, 2.5)
    assert model.gray_noise_prob == model.gray_noise_prob2 == 0.4
    assert model.jpeg_range == model.jpeg_range2 == (30.0, 95.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"scale": 0}, "scale"),
        ({"kernel_sizes": (8, 21)}, "kernel_sizes"),
        ({"kernel_prob": (1.0, 0.0)}, "kernel_prob"),
        ({"kernel_prob2": (0.5, -0.1, 0.2, 0.2, 0.1, 0.1)}, "kernel_prob2"),
        ({"resize_prob2": (0.0, 0.0, 0.0)}, "resize_prob2"),
        ({"gray_noise_prob": 1.5}, "gray_noise_prob"),
        ({"second_blur_prob": -0.1}, "second_blur_prob"),
        ({"blur_sigma2": (0.0, 1.0)}, "blur_sigma2"),
        ({"betag_range": (1.5, 4.0)}, "betag_range"),
        ({"resize_range": (0.5, 0.9)}, "resize_range"),
        ({"noise_range2": (5.0, 1.0)}, "noise_range2"),
        ({"jpeg_range": (30.0, 120.0)}, "jpeg_range"),
        ({"final_sinc_cutoff": (1.0, 4.0)}, "final_sinc_cutoff"),
    ],
)
def test_bad_argument_raises_value_error_naming_it(kwargs: dict, name: str) -> None:
    value = str(next(iter(kwargs.values())))
    with pytest.raises(ValueError, match=rf"^{name} .*{re.escape(value)}"):
        RealESRGANDegradation(**kwargs)
