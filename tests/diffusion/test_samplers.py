"""Tests of ir_lightning.diffusion.samplers with a perfect noise oracle and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from ir_lightning.diffusion.gaussian import posterior
from ir_lightning.diffusion.samplers import (
    SAMPLERS,
    ddim_drift,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    get_sampler,
)
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas, respace

TRAIN_GAMMAS = gammas_from_betas(make_betas("linear", 2000))  # SR3: linear 1e-6..1e-2, T = 2000
SHAPE = (2, 3, 4, 4)


def oracle(y0: Tensor, gammas: Tensor):
    """A model returning the exact eps implied by y0: eps = (y_t - sqrt(gamma) y0) / sqrt(1 - gamma).

    The network only sees the float32 level sqrt(gamma); the oracle maps it back to the nearest float64
    gamma of the schedule, so the check is not limited by float32 rounding of gamma near 1.
    """
    roots = gammas.sqrt()

    def model(y_t: Tensor, noise_level: Tensor) -> Tensor:
        assert noise_level.dtype == torch.float32 and noise_level.shape == (y_t.shape[0],)
        nearest = (roots[None, :] - noise_level.double()[:, None]).abs().argmin(dim=1)
        assert (roots[nearest] - noise_level.double()).abs().max().item() < 1e-6
        gamma = gammas[nearest].view(-1, 1, 1, 1)
        return (y_t - gamma.sqrt() * y0) / (1 - gamma).sqrt()

    return model


def linear_model(y_t: Tensor, noise_level: Tensor) -> Tensor:
    """An imperfect but fixed network: eps_hat = 0.5 y_t + 0.1 level."""
    return 0.5 * y_t + 0.1 * noise_level.to(y_t.dtype).view(-1, 1, 1, 1)


def _start(seed: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y0 = torch.rand(SHAPE, generator=gen, dtype=dtype) * 2 - 1
    return y0, torch.randn(SHAPE, generator=gen, dtype=dtype)


@pytest.mark.parametrize("n_steps", [1, 2, 5, 50])
def test_ddim_eta0_with_oracle_returns_y0(n_steps: int) -> None:
    gammas = respace(TRAIN_GAMMAS, n_steps)
    y0, y_T = _start(0)
    out = ddim_sample(oracle(y0, gammas), y_T, gammas)
    assert out.dtype == torch.float64 and out.shape == SHAPE
    assert (out - y0).abs().max().item() < 1e-5


@pytest.mark.parametrize("n_steps", [1, 2, 5, 50])
def test_ddpm_with_oracle_returns_y0(n_steps: int) -> None:
    gammas = respace(TRAIN_GAMMAS, n_steps)
    y0, y_T = _start(1)
    out = ddpm_sample(oracle(y0, gammas), y_T, gammas, generator=torch.Generator().manual_seed(0))
    assert (out - y0).abs().max().item() < 1e-5


def _trajectory(sampler, seed: int, **kwargs) -> list[Tensor]:
    states: list[Tensor] = []
    gammas = respace(TRAIN_GAMMAS, 5)
    _, y_T = _start(2)
    final = sampler(
        linear_model,
        y_T,
        gammas,
        generator=torch.Generator().manual_seed(seed),
        callback=lambda i, y_t, y0_hat: states.append(y_t.clone()),
        **kwargs,
    )
    return states + [final]


def test_ddpm_is_reproducible_and_seed_dependent() -> None:
    first, again, other = (_trajectory(ddpm_sample, s) for s in (7, 7, 8))
    assert len(first) == 6  # five callbacks plus the output
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # the state after the first noisy step differs between seeds
    assert (first[1] - other[1]).abs().max().item() > 1e-2


def test_ddim_eta0_ignores_the_generator() -> None:
    first, other = (_trajectory(ddim_sample, s) for s in (7, 8))
    assert all(torch.equal(a, b) for a, b in zip(first, other))


def test_ddim_eta1_sigma_is_the_posterior_std() -> None:
    gamma_t = torch.tensor([0.5, 0.01, 0.9, 4e-5], dtype=torch.float64)
    gamma_prev = torch.tensor([0.6, 0.3, 0.999999, 0.08], dtype=torch.float64)
    images = torch.zeros(4, 1, 1, 1, dtype=torch.float64)  # the variance does not depend on y0 or y_t
    _, variance = posterior(images, images, gamma_t, gamma_prev)
    sigma = ddim_sigma(gamma_t, gamma_prev, eta=1.0)
    np.testing.assert_allclose((sigma**2).numpy(), variance.flatten().numpy(), atol=0, rtol=1e-12)
    # (1 - 0.6) / (1 - 0.5) * (1 - 0.5 / 0.6) = 0.4 / 0.5 * (1 / 6) = 2 / 15
    assert sigma[0].item() ** 2 == pytest.approx(2 / 15, rel=1e-12)
    half = ddim_sigma(gamma_t, gamma_prev, eta=0.5)
    np.testing.assert_allclose(half.numpy(), 0.5 * sigma.numpy(), atol=0, rtol=1e-15)


def test_ddim_eta1_equals_ddpm_step_by_step() -> None:
    # with the same noise draws, DDIM eq. 12 at eta = 1 is the DDPM posterior sample
    ddpm = _trajectory(ddpm_sample, 5)
    ddim = _trajectory(ddim_sample, 5, eta=1.0)
    for a, b in zip(ddpm, ddim):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_clip_y0_clamps_an_out_of_range_target(sampler) -> None:
    gammas = respace(TRAIN_GAMMAS, 5)
    y0, y_T = _start(3)
    y0 = 1.5 * y0.sign()  # every pixel outside [-1, 1]
    model = oracle(y0, gammas)
    clipped = sampler(model, y_T, gammas, generator=torch.Generator().manual_seed(0))
    assert torch.equal(clipped, y0.clamp(-1, 1))
    free = sampler(model, y_T, gammas, generator=torch.Generator().manual_seed(0), clip_y0=False)
    assert (free - y0).abs().max().item() < 1e-5


def test_callback_counts_down_and_float32_is_kept() -> None:
    gammas = respace(TRAIN_GAMMAS, 4)
    seen: list[int] = []
    y_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    out = ddpm_sample(linear_model, y_T, gammas, callback=lambda i, y, y0: seen.append(i), progress=True)
    assert seen == [3, 2, 1, 0]
    assert out.dtype == torch.float32 and out.abs().max().item() <= 1.0


def test_registry_and_argument_checks() -> None:
    assert get_sampler("ddpm") is ddpm_sample and get_sampler("ddim") is ddim_sample
    assert set(SAMPLERS) == {"ddpm", "ddim"}
    with pytest.raises(ValueError, match="'euler'.*ddim, ddpm"):
        get_sampler("euler")
    y_T = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="decrease"):
        ddpm_sample(linear_model, y_T, respace(TRAIN_GAMMAS, 3).flip(0))
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(linear_model, y_T, respace(TRAIN_GAMMAS, 3), eta=1.5)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_output_is_the_last_predicted_y0(sampler) -> None:
    last: dict[int, Tensor] = {}
    _, y_T = _start(5)
    record = lambda i, y_t, y0_hat: last.update({i: y0_hat})  # noqa: E731
    gammas = respace(TRAIN_GAMMAS, 6)
    out = sampler(linear_model, y_T, gammas, generator=torch.Generator().manual_seed(0), callback=record)
    assert torch.equal(out, last[0])


def test_ddim_eta0_keeps_the_implied_eps_after_clipping() -> None:
    # deterministic DDIM moves along y_t = sqrt(gamma) y0_c + sqrt(1 - gamma) eps with eps fixed (DDIM eq. 12,
    # sigma = 0), where y0_c is the clamped prediction; an oracle for an out-of-range y0 makes y0_c = clamp(y0)
    gammas = respace(TRAIN_GAMMAS, 5)
    y0, y_T = _start(6)
    y0 = 1.5 * y0.sign()
    states: dict[int, Tensor] = {}
    ddim_sample(oracle(y0, gammas), y_T, gammas, callback=lambda i, y_t, y0_hat: states.update({i: y_t}))
    target = y0.clamp(-1, 1)
    implied = [(states[i] - gammas[i].sqrt() * target) / (1 - gammas[i]).sqrt() for i in range(len(gammas))]
    for eps in implied[1:]:
        np.testing.assert_allclose(eps.numpy(), implied[0].numpy(), atol=1e-10, rtol=0)


def _rows_at_different_levels(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y_t, eps_hat, gamma_t, gamma_prev, z) with each row of the batch at its own step of a schedule."""
    gammas = respace(TRAIN_GAMMAS, 6)
    levels = torch.cat([gammas.new_ones(1), gammas])
    index = torch.tensor([5, 1])  # row 0 near the noisiest level, row 1 at the second step
    y0, y_t = _start(seed)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return y_t, eps + 0.1 * y0, levels[index + 1], levels[index], torch.randn_like(y_t)


@pytest.mark.parametrize("clip_y0", [True, False])
def test_steps_on_rows_at_different_levels_equal_one_row_at_a_time(clip_y0: bool) -> None:
    y_t, eps, gamma_t, gamma_prev, z = _rows_at_different_levels(2)
    steps = {
        "ddim": lambda *args, noise: ddim_step(*args, eta=0.5, noise=noise, clip_y0=clip_y0),
        "ddpm": lambda *args, noise: ddpm_step(*args, noise=noise, clip_y0=clip_y0),
    }
    for name, step in steps.items():
        batched = step(y_t, eps, gamma_t, gamma_prev, noise=z)
        for row in range(SHAPE[0]):
            one = step(*(v[row : row + 1] for v in (y_t, eps, gamma_t, gamma_prev)), noise=z[row : row + 1])
            for got, expected in zip(batched, one):
                assert (got[row : row + 1] - expected).abs().max().item() < 1e-14, name


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_is_its_drift_times_y_t_plus_terms_in_y0_and_z(eta: float) -> None:
    """y_prev - ddim_drift y_t = (sqrt(gamma_prev) - ddim_drift sqrt(gamma_t)) y0_hat + sigma z (DDIM eq. 12 with
    eq. 9), whatever y_t: the split the fixed-point chains use."""
    y_t, eps, gamma_t, gamma_prev, z = _rows_at_different_levels(3)
    y_prev, y0_hat = ddim_step(y_t, eps, gamma_t, gamma_prev, eta=eta, noise=z, clip_y0=True)
    assert y0_hat.abs().max().item() <= 1.0
    drift, sigma = (
        ddim_drift(gamma_t, gamma_prev, eta).view(-1, 1, 1, 1),
        ddim_sigma(gamma_t, gamma_prev, eta).view(-1, 1, 1, 1),
    )
    y0_weight = gamma_prev.sqrt().view(-1, 1, 1, 1) - drift * gamma_t.sqrt().view(-1, 1, 1, 1)
    assert (y_prev - drift * y_t - y0_weight * y0_hat - sigma * z).abs().max().item() < 1e-12


def test_ddim_step_x0_hook_replaces_the_predicted_y0_but_not_the_direction() -> None:
    y_t, eps, gamma_t, gamma_prev, _ = _rows_at_different_levels(4)
    target = torch.full_like(y_t, 0.25)
    hooked, y0_hat = ddim_step(y_t, eps, gamma_t, gamma_prev, clip_y0=False, x0_hook=lambda x0: target)
    assert torch.equal(y0_hat, target)
    # y_prev = sqrt(gamma_prev) hook(y0) + sqrt(1 - gamma_prev) eps (eta 0, no clamp: eps is the model's)
    expected = gamma_prev.sqrt().view(-1, 1, 1, 1) * target + (1 - gamma_prev).sqrt().view(-1, 1, 1, 1) * eps
    assert (hooked - expected).abs().max().item() < 1e-12
