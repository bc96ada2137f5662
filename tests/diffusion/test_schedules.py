"""Tests of ir_lightning.diffusion.schedules against closed forms and Monte-Carlo estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ir_lightning.diffusion.schedules import (
    SCHEDULES,
    gammas_from_betas,
    make_betas,
    respace,
    respaced_indices,
    respaced_timesteps,
    sample_noise_levels,
)

SR3_T = 2000  # SR3 training schedule: linear betas 1e-6..1e-2 over T = 2000


def test_linear_endpoints_and_monotonic() -> None:
    betas = make_betas("linear", SR3_T)
    assert betas.dtype == torch.float64 and betas.shape == (SR3_T,)
    assert betas[0].item() == pytest.approx(1e-6, rel=1e-12)
    assert betas[-1].item() == pytest.approx(1e-2, rel=1e-12)
    assert bool((betas.diff() > 0).all())
    # constant step (end - start) / (T - 1)
    np.testing.assert_allclose(betas.diff().numpy(), (1e-2 - 1e-6) / (SR3_T - 1), rtol=1e-6)


def test_quad_is_square_of_linear_roots() -> None:
    betas = make_betas("quad", 11, linear_start=1e-4, linear_end=4e-2)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(4e-2, rel=1e-12)
    expected = np.linspace(1e-2, 0.2, 11) ** 2  # sqrt(1e-4) = 1e-2, sqrt(4e-2) = 0.2
    np.testing.assert_allclose(betas.numpy(), expected, rtol=1e-12)


def test_const_uses_linear_end() -> None:
    betas = make_betas("const", 7, linear_start=0.3, linear_end=0.02)
    np.testing.assert_array_equal(betas.numpy(), np.full(7, 0.02))


def test_cosine_matches_closed_form_alpha_bar() -> None:
    n_steps, s = 50, 0.008
    gammas = gammas_from_betas(make_betas("cosine", n_steps)).numpy()
    t = np.arange(n_steps + 1) / n_steps
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2  # Nichol & Dhariwal eq. 17
    alpha_bar = f[1:] / f[0]
    # every step but the last is unclipped, so the cumulative product is the closed form
    np.testing.assert_allclose(gammas[:-1], alpha_bar[:-1], rtol=1e-10, atol=1e-14)
    # the last beta would be 1 (alpha_bar(T) = 0) and is clipped to 0.999
    assert make_betas("cosine", n_steps)[-1].item() == pytest.approx(0.999, abs=1e-15)


def test_make_betas_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="linear, quad, cosine, const"):
        make_betas("sigmoid", 10)
    with pytest.raises(ValueError, match="at least 1"):
        make_betas("linear", 0)
    assert SCHEDULES == ("linear", "quad", "cosine", "const")


def test_gammas_are_cumulative_product() -> None:
    betas = make_betas("linear", 30, linear_start=1e-3, linear_end=0.2)
    expected = np.cumprod(1.0 - np.linspace(1e-3, 0.2, 30))
    gammas = gammas_from_betas(betas)
    assert gammas.dtype == torch.float64
    np.testing.assert_allclose(gammas.numpy(), expected, rtol=1e-13)


@pytest.mark.parametrize("n_steps", [1, 2, 5, 7, 50, 1999, 2000])
def test_respace_is_an_even_subsequence_keeping_the_noisiest(n_steps: int) -> None:
    gammas = gammas_from_betas(make_betas("linear", SR3_T))
    sub = respace(gammas, n_steps)
    assert sub.shape == (n_steps,) and sub.dtype == torch.float64
    assert sub[-1].item() == gammas[-1].item()
    if n_steps >= 2:
        assert sub[0].item() == gammas[0].item()
    # gammas are strictly decreasing, so searchsorted on the flipped schedule recovers the positions
    positions = SR3_T - 1 - np.searchsorted(gammas.flip(0).numpy(), sub.numpy())
    np.testing.assert_array_equal(gammas.numpy()[positions], sub.numpy())
    gaps = np.diff(positions)
    assert (gaps > 0).all()
    if n_steps >= 2:
        # evenly spaced: every gap is (T - 1) / (n - 1) rounded up or down
        assert gaps.max() - gaps.min() <= 1
        assert abs(gaps.mean() - (SR3_T - 1) / (n_steps - 1)) < 1e-12


@pytest.mark.parametrize(("n_train", "n_steps"), [(1000, 25), (1000, 5), (1001, 7), (10, 10), (10, 1), (2000, 3)])
def test_one_respacing_serves_levels_timesteps_and_rddm_times(n_train: int, n_steps: int) -> None:
    """Index k from the last is round(k (T - 1) / (n - 1)) with halves rounded up (exact, from Fractions)."""
    from fractions import Fraction

    from ir_lightning.diffusion.rddm import ResidualSchedule

    expected = [
        n_train - 1 - math.floor(Fraction(k * (n_train - 1), max(n_steps - 1, 1)) + Fraction(1, 2))
        for k in range(n_steps)
    ]
    assert respaced_timesteps(n_train, n_steps).tolist() == expected  # the noisiest first
    assert respaced_indices(n_train, n_steps).tolist() == expected[::-1]
    gammas = gammas_from_betas(make_betas("linear", n_train))
    assert torch.equal(respace(gammas, n_steps), gammas[expected[::-1]])
    schedule = ResidualSchedule.make(n_train - 1)  # times 0..T, T + 1 = n_train of them
    if n_steps >= 2:
        assert schedule.sampling_times(n_steps - 1).tolist() == expected


def test_respace_rejects_too_many_steps() -> None:
    gammas = gammas_from_betas(make_betas("linear", 10))
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        respace(gammas, 11)
    with pytest.raises(ValueError):
        respace(gammas, 0)


HAND_GAMMAS = torch.tensor([0.9, 0.6, 0.5, 0.1], dtype=torch.float64)
N_LEVELS = 20000


def _draw_gammas() -> np.ndarray:
    levels = sample_noise_levels(HAND_GAMMAS, N_LEVELS, generator=torch.Generator().manual_seed(0))
    assert levels.dtype == torch.float32 and levels.shape == (N_LEVELS,)
    return levels.double().numpy() ** 2


def test_noise_levels_lie_between_neighbouring_levels() -> None:
    gammas = gammas_from_betas(make_betas("linear", SR3_T))
    levels = sample_noise_levels(gammas, N_LEVELS, generator=torch.Generator().manual_seed(1)).double()
    # union of the intervals [sqrt(gamma_t), sqrt(gamma_{t-1})] for t = 1..T, float32-rounded
    assert levels.min().item() >= math.sqrt(gammas[-1].item()) * (1 - 1e-6)
    assert levels.max().item() <= 1.0


def test_noise_levels_follow_the_mixture_of_uniforms() -> None:
    gamma = _draw_gammas()
    upper = np.concatenate([[1.0], HAND_GAMMAS.numpy()[:-1]])  # gamma_{t-1}
    lower = HAND_GAMMAS.numpy()  # gamma_t
    # mixture of U(gamma_t, gamma_{t-1}) with weight 1/T each: first two moments in closed form
    mean = np.mean((upper + lower) / 2)
    second = np.mean((upper**2 + upper * lower + lower**2) / 3)
    std_error = math.sqrt((second - mean**2) / N_LEVELS)
    assert abs(gamma.mean() - mean) < 4 * std_error
    # per-sample t: P(gamma > gamma_k) = k / T at every boundary, binomial standard error
    n_train = len(lower)
    for k, boundary in enumerate(lower[:-1], start=1):
        p = k / n_train
        assert abs((gamma > boundary).mean() - p) < 4 * math.sqrt(p * (1 - p) / N_LEVELS)
    assert gamma.min() > lower[-1] and gamma.max() <= 1.0


def test_noise_levels_are_reproducible_with_a_generator() -> None:
    first = sample_noise_levels(HAND_GAMMAS, 8, generator=torch.Generator().manual_seed(3))
    again = sample_noise_levels(HAND_GAMMAS, 8, generator=torch.Generator().manual_seed(3))
    other = sample_noise_levels(HAND_GAMMAS, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert (first - other).abs().max().item() > 1e-3


def test_noised_training_sample_is_the_forward_process_of_its_own_draws():
    from ir_lightning.diffusion import gammas_from_betas, make_betas, noised_training_sample

    gammas = gammas_from_betas(make_betas("linear", 100, 1e-4, 0.02))
    y0 = torch.rand(64, 3, 4, 4) * 2 - 1
    y_noisy, level, noise = noised_training_sample(y0, gammas, torch.Generator().manual_seed(3))
    gamma = level.double()[:, None, None, None] ** 2
    torch.testing.assert_close(y_noisy.double(), gamma.sqrt() * y0 + (1 - gamma).sqrt() * noise, rtol=0, atol=1e-6)
    assert float(level.min()) >= float(gammas[-1].sqrt()) - 1e-6 and float(level.max()) <= 1.0
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05  # 3072 N(0, 1) draws
    again = noised_training_sample(y0, gammas, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip((y_noisy, level, noise), again))


def test_offset_noise_gives_the_channel_means_the_variance_of_the_offset_plus_white_noise() -> None:
    """Monte-Carlo: the mean over a 16 x 16 crop of each channel of the training noise has variance 1 / 256 with white
    noise alone and offset^2 + 1 / 256 with offset noise; offset 0 draws exactly what the call without it draws."""
    from ir_lightning.diffusion.schedules import noised_training_sample

    gammas = gammas_from_betas(make_betas("linear", SR3_T))
    y0 = torch.zeros(4000, 3, 16, 16)
    for offset in (0.0, 0.1, 0.3):
        _, _, noise = noised_training_sample(y0, gammas, torch.Generator().manual_seed(5), offset)
        variance = noise.double().mean(dim=(2, 3)).var().item()
        expected = offset**2 + 1 / 256
        # the sample variance of 12000 normal means: relative standard error sqrt(2 / 12000) = 1.3 %
        assert abs(variance - expected) < 4 * math.sqrt(2 / 12000) * expected, (offset, variance)
    plain = noised_training_sample(y0[:8], gammas, torch.Generator().manual_seed(6))
    zero = noised_training_sample(y0[:8], gammas, torch.Generator().manual_seed(6), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))
