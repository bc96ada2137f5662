"""Tests of ir_lightning.diffusion.gaussian: forward marginal, inverses and the posterior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ir_lightning.diffusion.gaussian import (
    posterior,
    predict_eps_from_y0,
    predict_y0_from_eps,
    q_sample,
)
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas, respace

N_PIXELS = 100 * 200  # Monte-Carlo draws per sample


def test_forward_marginal_mean_and_variance() -> None:
    gamma = torch.tensor([0.9, 0.5, 0.05], dtype=torch.float64)
    y0_values = torch.tensor([0.7, -0.3, 0.1], dtype=torch.float64)
    y0 = y0_values.view(3, 1, 1, 1).expand(3, 1, 100, 200)
    noise = torch.randn(3, 1, 100, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = q_sample(y0, gamma, noise).flatten(1)
    for b in range(3):
        var = 1 - gamma[b].item()
        mean = math.sqrt(gamma[b].item()) * y0_values[b].item()
        assert abs(y[b].mean().item() - mean) < 4 * math.sqrt(var / N_PIXELS)
        # standard error of a Gaussian sample variance: var * sqrt(2 / (N - 1))
        assert abs(y[b].var().item() - var) < 4 * var * math.sqrt(2 / (N_PIXELS - 1))


def test_predictions_invert_q_sample() -> None:
    gen = torch.Generator().manual_seed(1)
    gamma = torch.tensor([0.999, 0.3, 1e-4], dtype=torch.float64)
    y0 = torch.rand(3, 2, 4, 5, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(3, 2, 4, 5, generator=gen, dtype=torch.float64)
    y_t = q_sample(y0, gamma, eps)
    np.testing.assert_allclose(predict_y0_from_eps(y_t, gamma, eps).numpy(), y0.numpy(), atol=1e-10, rtol=0)
    np.testing.assert_allclose(predict_eps_from_y0(y_t, gamma, y0).numpy(), eps.numpy(), atol=1e-10, rtol=0)


def test_float32_images_stay_float32() -> None:
    gamma = torch.tensor([0.5, 0.25], dtype=torch.float64)
    y0 = torch.full((2, 3, 2, 2), 0.5)
    eps = torch.ones(2, 3, 2, 2)
    y_t = q_sample(y0, gamma, eps)
    assert y_t.dtype == torch.float32
    # sqrt(0.5) * 0.5 + sqrt(0.5) * 1 and sqrt(0.25) * 0.5 + sqrt(0.75) * 1
    expected = torch.tensor([math.sqrt(0.5) * 1.5, 0.25 + math.sqrt(0.75)])
    np.testing.assert_allclose(y_t[:, 0, 0, 0].numpy(), expected.numpy(), rtol=1e-6)  # float32 rounding
    mean, variance = posterior(y0, y_t, gamma[1:].expand(2), gamma[:1].expand(2))
    assert mean.dtype == variance.dtype == torch.float32 and variance.shape == (2, 1, 1, 1)


def _bayes_posterior(y0: float, y_t: float, gamma_t: float, gamma_prev: float) -> tuple[float, float]:
    """q(y_{t-1} | y0) q(y_t | y_{t-1}) normalised, for scalars (product of two Gaussians)."""
    alpha = gamma_t / gamma_prev
    prior_mean, prior_var = math.sqrt(gamma_prev) * y0, 1 - gamma_prev
    # as a function of y_{t-1}: N(y_t; sqrt(alpha) y_{t-1}, 1 - alpha) has precision alpha / (1 - alpha)
    precision = 1 / prior_var + alpha / (1 - alpha)
    mean = (prior_mean / prior_var + math.sqrt(alpha) * y_t / (1 - alpha)) / precision
    return mean, 1 / precision


def _schedule_pairs() -> list[tuple[float, float]]:
    train = gammas_from_betas(make_betas("linear", 2000)).numpy()
    fast = respace(torch.from_numpy(train), 7).numpy()
    pairs = [(train[i], train[i - 1]) for i in (1, 2, 100, 999, 1999)]
    pairs += [(fast[i], fast[i - 1]) for i in (1, 3, 6)]
    return pairs


def test_posterior_matches_bayes_rule() -> None:
    pairs = _schedule_pairs()
    gen = np.random.default_rng(2)
    y0s, y_ts = gen.uniform(-1, 1, len(pairs)), gen.normal(size=len(pairs))
    gamma_t = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    gamma_prev = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    as_images = lambda v: torch.from_numpy(v).view(-1, 1, 1, 1)  # noqa: E731
    mean, variance = posterior(as_images(y0s), as_images(y_ts), gamma_t, gamma_prev)
    assert variance.shape == (len(pairs), 1, 1, 1)
    for b, (g_t, g_prev) in enumerate(pairs):
        want_mean, want_var = _bayes_posterior(y0s[b], y_ts[b], g_t, g_prev)
        assert mean[b].item() == pytest.approx(want_mean, abs=1e-6, rel=1e-6)
        assert variance[b].item() == pytest.approx(want_var, abs=1e-12, rel=1e-6)


def test_posterior_at_gamma_prev_one_is_y0() -> None:
    y0 = torch.tensor([0.3, -0.8], dtype=torch.float64).view(2, 1, 1, 1)
    y_t = torch.tensor([1.7, 0.2], dtype=torch.float64).view(2, 1, 1, 1)
    mean, variance = posterior(y0, y_t, torch.tensor([0.99, 0.4], dtype=torch.float64), torch.ones(2))
    np.testing.assert_allclose(mean.numpy(), y0.numpy(), atol=1e-15, rtol=0)
    assert variance.abs().max().item() == 0.0


def test_posterior_marginalises_to_the_forward_process() -> None:
    # y_t ~ q(y_t | y0), then y_{t-1} ~ q(y_{t-1} | y_t, y0) must be distributed as q(y_{t-1} | y0)
    fast = respace(gammas_from_betas(make_betas("linear", 2000)), 5)
    gamma_t, gamma_prev = fast[2].expand(2), fast[1].expand(2)
    y0 = torch.tensor([0.6, -0.9], dtype=torch.float64).view(2, 1, 1, 1).expand(2, 1, 100, 200)
    gen = torch.Generator().manual_seed(3)
    y_t = q_sample(y0, gamma_t, torch.randn(y0.shape, generator=gen, dtype=torch.float64))
    mean, variance = posterior(y0, y_t, gamma_t, gamma_prev)
    y_prev = (mean + variance.sqrt() * torch.randn(y0.shape, generator=gen, dtype=torch.float64)).flatten(1)
    var = 1 - gamma_prev[0].item()
    for b in range(2):
        want_mean = math.sqrt(gamma_prev[0].item()) * y0[b, 0, 0, 0].item()
        assert abs(y_prev[b].mean().item() - want_mean) < 4 * math.sqrt(var / N_PIXELS)
        assert abs(y_prev[b].var().item() - var) < 4 * var * math.sqrt(2 / (N_PIXELS - 1))
