"""RDDM's diffusion math against closed forms, Bayes' rule, Monte-Carlo estimates, an oracle
network and the suite's own DDIM sampler."""

from __future__ import annotations

import pytest
import torch

from ir_lightning.diffusion import ddim_sample
from ir_lightning.diffusion.rddm import (
    ResidualSchedule,
    ddim_step,
    eps_from_res,
    path_independent_path,
    posterior,
    q_sample,
    res_from_eps,
    sample,
    sample_path,
    step_weights,
)


def images(seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(I_0, I_in) in [-1, 1], float64."""
    generator = torch.Generator().manual_seed(seed)
    i_0 = torch.rand(batch, 3, 5, 6, generator=generator, dtype=torch.float64) * 2 - 1
    i_in = (i_0 + 0.3 * torch.randn(i_0.shape, generator=generator, dtype=torch.float64)).clamp(-1, 1)
    return i_0, i_in


def test_official_linear_shapes_and_sums():
    T = 10
    t = torch.arange(1, T + 1, dtype=torch.float64)
    torch.testing.assert_close(step_weights("increased", T), t / (T * (T + 1) / 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(step_weights("decreased", T), t.flip(0) / (T * (T + 1) / 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(step_weights("increased", T, ratio=3), t**3 / (t**3).sum(), rtol=0, atol=1e-15)
    schedule = ResidualSchedule.make(T, "decreased", 1.0, "increased", 3.0, sum_scale=0.01)
    assert schedule.alpha_bar[0] == 0 and schedule.alpha_bar[-1] == 1
    assert schedule.beta_bar[0] == 0 and schedule.beta_bar[-1] ** 2 == pytest.approx(0.01, rel=1e-12)
    assert bool((schedule.alpha_bar[1:] > schedule.alpha_bar[:-1]).all())
    with pytest.raises(ValueError, match="valid shapes: decreased, increased, average"):
        step_weights("cosine", T)


def test_i_T_is_the_input_plus_scaled_noise_exactly():
    schedule = ResidualSchedule.make(50, sum_scale=1.0)
    i_0, i_in = images(0)
    eps = torch.randn_like(i_0)
    T = torch.full((2,), 50)
    i_T = q_sample(i_0, i_in - i_0, *schedule.at(T), eps)
    torch.testing.assert_close(i_T, i_in + schedule.beta_bar[-1] * eps, rtol=0, atol=1e-12)


def test_monte_carlo_mean_and_variance_of_q():
    schedule = ResidualSchedule.make(100, sum_scale=0.5)
    i_0, i_in = images(1, batch=1)
    t = torch.tensor([37])
    a, b = schedule.at(t)
    n = 20000
    generator = torch.Generator().manual_seed(2)
    eps = torch.randn(n, *i_0.shape[1:], generator=generator, dtype=torch.float64)
    draws = q_sample(i_0.expand(n, -1, -1, -1), (i_in - i_0).expand(n, -1, -1, -1), a.expand(n), b.expand(n), eps)
    # the sample mean's standard error is b / sqrt(n); 5 of them is a bound no seed will cross by chance
    torch.testing.assert_close(draws.mean(0), (i_0 + a * (i_in - i_0))[0], rtol=0, atol=5 * b.item() / n**0.5)
    torch.testing.assert_close(draws.var(0).mean(), b[0] ** 2, rtol=0.02, atol=0)


@pytest.mark.parametrize("t, s", [(10, 9), (1, 0), (40, 12), (50, 49)])
def test_posterior_is_bayes_rule_of_the_two_gaussians(t, s):
    """q(I_s | I_0, I_res) = N(I_0 + a_s I_res, b_s^2) and q(I_t | I_s) = N(I_s + (a_t - a_s) I_res, b_t^2 - b_s^2):
    the posterior's precision is the sum of precisions, its mean the precision-weighted mean."""
    schedule = ResidualSchedule.make(50, sum_scale=0.3)
    i_0, i_in = images(3)
    i_res, i_t = i_in - i_0, torch.randn_like(i_0)
    (a_t, b_t), (a_s, b_s) = schedule.at(torch.tensor([t, t])), schedule.at(torch.tensor([s, s]))
    mean, var = posterior(i_t, i_0, i_res, (a_t, b_t), (a_s, b_s))
    v_prior, v_like = b_s[0] ** 2, b_t[0] ** 2 - b_s[0] ** 2
    if s == 0:  # I_0 is known exactly: the posterior is a point mass at I_0
        torch.testing.assert_close(mean, i_0, rtol=0, atol=1e-12)
        assert float(var[0]) == 0.0
        return
    var_bayes = 1.0 / (1.0 / v_prior + 1.0 / v_like)
    mean_bayes = var_bayes * ((i_0 + a_s[0] * i_res) / v_prior + (i_t - (a_t[0] - a_s[0]) * i_res) / v_like)
    torch.testing.assert_close(mean, mean_bayes, rtol=0, atol=1e-6)
    torch.testing.assert_close(var, var_bayes.expand(2), rtol=0, atol=1e-12)


def oracle(i_0: torch.Tensor, i_in: torch.Tensor):
    """A network that knows I_0: returns the true I_res and the eps that I_t implies."""

    def predict(i_t, alpha_bar, beta_bar, t):
        i_res = i_in - i_0
        if bool((beta_bar == 0).all()):  # no noise left (noise-first paths): any finite eps does
            return i_res, torch.zeros_like(i_t)
        return i_res, eps_from_res(i_t, i_in, i_res, alpha_bar, beta_bar)

    return predict


@pytest.mark.parametrize("steps", [1, 2, 5, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_oracle_sampler_returns_the_target(steps, eta):
    schedule = ResidualSchedule.make(50, sum_scale=0.01)
    i_0, i_in = images(4)
    out = sample(oracle(i_0, i_in), i_in, schedule, steps, eta=eta, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, i_0, rtol=0, atol=1e-5)


def test_both_path_independent_orders_end_at_the_same_image():
    schedule = ResidualSchedule.make(50, sum_scale=1.0)
    i_0, i_in = images(5)
    noise = torch.randn_like(i_0)
    ends = [
        sample_path(oracle(i_0, i_in), i_in, path_independent_path(schedule, 4, 3, residual_first=order), noise)
        for order in (True, False)
    ]
    torch.testing.assert_close(ends[0], i_0, rtol=0, atol=1e-5)
    torch.testing.assert_close(ends[1], ends[0], rtol=0, atol=1e-5)


def test_eta_one_step_is_the_posterior_with_the_predicted_target():
    schedule = ResidualSchedule.make(30, sum_scale=0.2)
    i_0, i_in = images(6)
    i_t = torch.randn_like(i_0)
    coeff_t, coeff_s = schedule.at(torch.tensor([20, 20])), schedule.at(torch.tensor([19, 19]))
    res_hat, eps_hat = torch.randn_like(i_0), torch.randn_like(i_0)
    i_0_hat = i_t - coeff_t[0].view(-1, 1, 1, 1) * res_hat - coeff_t[1].view(-1, 1, 1, 1) * eps_hat
    mean, var = posterior(i_t, i_0_hat, res_hat, coeff_t, coeff_s)
    step, predicted = ddim_step(i_t, res_hat, eps_hat, coeff_t, coeff_s, eta=1.0)
    torch.testing.assert_close(step, mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(predicted, i_0_hat, rtol=0, atol=1e-10)  # the step's predicted clean image
    z = torch.randn_like(i_0)
    step, _ = ddim_step(i_t, res_hat, eps_hat, coeff_t, coeff_s, eta=1.0, noise=z)
    torch.testing.assert_close(step - mean, var.sqrt().view(-1, 1, 1, 1) * z, rtol=0, atol=1e-10)


def test_objective_conversions_invert_each_other():
    schedule = ResidualSchedule.make(20, sum_scale=0.5)
    i_0, i_in = images(7)
    a, b = schedule.at(torch.tensor([11, 11]))
    eps = torch.randn_like(i_0)
    i_t = q_sample(i_0, i_in - i_0, a, b, eps)
    torch.testing.assert_close(eps_from_res(i_t, i_in, i_in - i_0, a, b), eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(res_from_eps(i_t, i_in, eps, a, b, clip=False), i_in - i_0, rtol=0, atol=1e-10)


def test_rddm_with_convert_to_ddim_follows_the_suites_ddim_trajectory():
    """The paper's "consistent with DDIM by coefficient transformation": I_in = 0, the same
    noise-predicting model, RDDM's eta = 0 sampler and the suite's DDIM visit the same states."""
    T, steps = 100, 10
    schedule = ResidualSchedule.convert_to_ddim(T)
    gammas_all = (1.0 - schedule.beta_bar**2)[1:]  # gamma_t for t = 1..T

    def eps_model(x, gamma):  # any smooth function of the state and the noise level
        return torch.tanh(0.7 * x + gamma.view(-1, 1, 1, 1).to(x.dtype))

    generator = torch.Generator().manual_seed(8)
    x_T = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    i_in = torch.zeros_like(x_T)

    rddm_states = []

    def predict(i_t, alpha_bar, beta_bar, t):
        rddm_states.append(i_t.clone())
        eps = eps_model(i_t, (1.0 - beta_bar**2).sqrt())  # the DDIM model's input: sqrt(gamma_t)
        return res_from_eps(i_t, i_in, eps, alpha_bar, beta_bar, clip=False), eps

    times = schedule.sampling_times(steps)  # T .. 0
    beta_bar_T = schedule.beta_bar[-1]
    # start both from the same state: RDDM's I_T = beta_bar_T * noise
    rddm_end = sample(predict, i_in, schedule, steps, noise=x_T / beta_bar_T)

    ddim_states = []
    gammas = gammas_all[times[:-1].flip(0) - 1]  # the visited t > 0, least noisy first
    ddim_end = ddim_sample(
        lambda y, level: eps_model(y, level.double()),
        x_T,
        gammas,
        clip_y0=False,
        callback=lambda i, y_t, y0: ddim_states.append(y_t.clone()),
    )
    assert len(rddm_states) == len(ddim_states) == steps
    for a, b in zip(rddm_states, ddim_states):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(rddm_end, ddim_end, rtol=0, atol=1e-5)
