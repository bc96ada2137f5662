"""DiffIR's 4-step diffusion on the IPR: the schedule's values, the reverse chain against the
posterior-mean closed form, an oracle x0-predictor recovering its target, the forward noising
(Monte Carlo), and gradients through all unrolled steps."""

from __future__ import annotations

import math

import torch

from ir_lightning.diffusion.prior import noised_start, prior_betas, prior_gammas, reverse_chain


def test_betas_are_linear_in_sqrt_beta():
    betas = prior_betas()
    torch.testing.assert_close(betas, torch.tensor([0.1, 0.294, 0.591, 0.99], dtype=torch.float64), atol=1e-3, rtol=0)
    roots = betas.sqrt()
    torch.testing.assert_close(
        roots.diff(), torch.full((3,), (math.sqrt(0.99) - math.sqrt(0.1)) / 3, dtype=torch.float64)
    )
    gammas = prior_gammas()
    assert abs(gammas[-1].item() - 0.9 * (1 - betas[1]) * (1 - betas[2]) * 0.01) < 1e-12
    assert abs(gammas[-1].item() - 0.0026) < 1e-4


def test_oracle_x0_predictor_returns_the_target():
    target = torch.randn(5, 256)
    start = torch.randn(5, 256)
    states = reverse_chain(lambda z, t: target, start, prior_gammas())
    assert len(states) == 4
    torch.testing.assert_close(states[-1], target, atol=1e-6, rtol=0)


def test_each_step_is_the_posterior_mean():
    """z_{t-1} = beta_t sqrt(ab_{t-1}) / (1 - ab_t) x0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) z_t, coefficients
    computed here from the betas (DDPM eq. 7), for an x0-predictor that depends on z_t and t."""
    betas = prior_betas()
    alpha_bar = torch.cumprod(1 - betas, 0)
    model = lambda z, t: 0.5 * z + t[:, None].to(z.dtype)  # noqa: E731
    z = torch.randn(3, 8, dtype=torch.float64)
    states = reverse_chain(model, z, alpha_bar)
    for step, t in enumerate(reversed(range(4))):
        prev = alpha_bar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        x0 = 0.5 * z + t
        z = (
            betas[t] * prev.sqrt() / (1 - alpha_bar[t]) * x0
            + (1 - betas[t]).sqrt() * (1 - prev) / (1 - alpha_bar[t]) * z
        )
        torch.testing.assert_close(states[step], z)


def test_noised_start_matches_the_forward_marginal():
    gammas = prior_gammas()
    ipr = torch.full((200_000, 1), 2.0, dtype=torch.float64)
    noise = torch.randn(ipr.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = noised_start(ipr, gammas, noise)
    mean, std = gammas[-1].sqrt() * 2.0, (1 - gammas[-1]).sqrt()
    assert abs(z.mean().item() - mean.item()) < 4 * std.item() / math.sqrt(ipr.numel())
    assert abs(z.std().item() - std.item()) < 0.01


def test_gradients_reach_every_unrolled_step():
    weights = torch.nn.Parameter(torch.ones(4))  # one scale per step: each must receive a gradient
    model = lambda z, t: weights[t][:, None] * z  # noqa: E731
    start = torch.randn(2, 16, requires_grad=True)
    states = reverse_chain(model, start, prior_gammas())
    states[-1].square().sum().backward()
    assert weights.grad is not None and bool((weights.grad != 0).all())
    assert start.grad is not None and start.grad.abs().sum() > 0
