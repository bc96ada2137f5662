"""The DDNM chain in the official modes against the official code (tests/fixtures/official/deqir_chain, made by
its make_fixture.py from caojiezhang/DeqIR and wyhuai/DDNM): DeqIR's timesteps, stochastic weights and split,
its map f and its fixed point, its Anderson iterates, DDNM's sampler with fresh noise, and DDNM+'s noise-aware
correction. The eps-model is the fixture's (`TinyEps`, redefined here); everything runs in float64."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ir_lightning.diffusion.deq import SOLVERS, SolverSettings, ddnm_chain, joint_map, sequential, solve
from ir_lightning.diffusion.deq.chains import noise_weights
from ir_lightning.diffusion.operators import AveragePoolSR, Inpainting
from ir_lightning.diffusion.samplers import ddim_step
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas, official_timesteps

FIXTURE = torch.load(Path(__file__).parents[1] / "fixtures/official/deqir_chain/fixture.pt", weights_only=True)
CONFIG = FIXTURE["config"]
DTYPE = torch.float64
N_TRAIN = CONFIG["n_train"]
ALPHA_BARS = gammas_from_betas(make_betas("linear", N_TRAIN, *CONFIG["betas"]))
INPUTS = {name: value.to(DTYPE) for name, value in FIXTURE["inputs"].items()}
TOLERANCE = 1e-5


class TinyEps(nn.Module):
    """The fixture's eps-model: k_t (x + 0.2 tanh(W x + b)), k_t = sqrt(1 - a_t) / (0.25 a_t + 1 - a_t)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1).to(DTYPE)
        with torch.no_grad():
            self.conv.weight.copy_(INPUTS["weight"][:, :, None, None])
            self.conv.bias.copy_(INPUTS["bias"])

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a = ALPHA_BARS[t.long().cpu()].to(x)[:, None, None, None]
        return (1 - a).sqrt() / (0.25 * a + 1 - a) * (x + 0.2 * torch.tanh(self.conv(x)))


EPS = TinyEps()


class DiagonalInpainting(Inpainting):
    """Inpainting with `spectral` written out as a diagonal operator: A = diag(mask) is its own SVD (U = V = I,
    s = the mask), so spectral(fn, *x) = fn(s, *x) elementwise. An independent reference for the suite's."""

    def spectral(self, fn: Callable[..., Tensor], *images: Tensor) -> Tensor:
        return fn(self.mask.to(images[0]).expand_as(images[0]), *images)


def deqir_chain(weights: str = "deqir", split: str = "null_space", operator=None):
    """The official DeqIR run of the fixture as our chain: official timesteps, --nw/--etw weights, one noise."""
    deqir = CONFIG["deqir"]
    timesteps = official_timesteps(N_TRAIN, deqir["steps"])
    noises = INPUTS["z"][None].expand(deqir["steps"], -1, -1, -1, -1)
    y = FIXTURE["deqir"]["y"].to(DTYPE)
    return ddnm_chain(
        EPS,
        operator or AveragePoolSR(CONFIG["scale"]),
        y,
        ALPHA_BARS,
        timesteps,
        deqir["etw"],
        noises,
        weights=weights,
        noise_weight=deqir["nw"],
        split=split,
    )


def error(a: Tensor, b: Tensor) -> float:
    return (a.to(DTYPE) - b.to(DTYPE)).abs().max().item()


def test_official_timesteps_are_deqirs_and_ddnms():
    assert official_timesteps(N_TRAIN, 25).tolist() == FIXTURE["deqir"]["timesteps"].tolist()
    assert official_timesteps(N_TRAIN, 25).tolist() == list(range(960, -1, -40))
    assert official_timesteps(N_TRAIN, 10).tolist() == list(range(900, -1, -100))  # DDNM's at T = 10
    assert official_timesteps(N_TRAIN, 25, start=500).tolist() == list(range(480, -1, -20))  # --start_timesteps
    assert official_timesteps(999, 25).tolist() == list(range(936, -1, -39))  # 999 % 25 != 0: the last one dropped
    with pytest.raises(ValueError, match="n_steps=30, start=20"):
        official_timesteps(N_TRAIN, 30, start=20)


def test_the_sequential_chain_and_the_joint_solve_are_the_official_fixed_point():
    """Sequential in DeqIR's split; the joint solve in ours (the same chain), which Anderson solves before the
    T = 25 bound (21 iterations; DeqIR's split needs all 25)."""
    x_T, expected = INPUTS["x_T"], FIXTURE["deqir"]["x0"]
    assert error(sequential(deqir_chain(split="null_space"), x_T), expected) < TOLERANCE
    solved = solve(deqir_chain(split="x0"), x_T, SolverSettings("anderson", tolerance=1e-10, max_iter=24))
    assert solved.stopped_by == "tolerance" and error(solved.x0, expected) < TOLERANCE


def test_the_path_without_svd_keeps_its_extra_sigma_t_factor():
    chain, expected = deqir_chain("deqir_without_svd"), FIXTURE["deqir"]["x0_without_svd"]
    assert error(sequential(chain, INPUTS["x_T"]), expected) < TOLERANCE
    assert error(sequential(deqir_chain("deqir"), INPUTS["x_T"]), expected) > 0.1  # the factor matters


def test_the_joint_map_is_the_official_map():
    """G(X) = the official compute_multi_step_sr(X), at the official start and at an Anderson iterate (float32
    values of up to ~300: the tolerance is relative to the largest)."""
    chain, x_T, run = deqir_chain(), INPUTS["x_T"], FIXTURE["deqir"]
    start = x_T[None].expand(chain.n_steps, -1, -1, -1, -1)
    for iterate, expected in ((start, run["f_at_start"]), (run["iterate"][:, None], run["f_at_iterate"])):
        mapped = joint_map(chain, x_T, iterate.to(DTYPE))[0][:, 0]
        assert error(mapped, expected) < TOLERANCE * max(1.0, expected.abs().max().item())
    wrong = joint_map(deqir_chain(split="x0"), x_T, start.to(DTYPE))[0][:, 0]  # the same chain, another split
    assert error(wrong, run["f_at_start"]) > 1.0


@pytest.mark.skipif("anderson_official" not in SOLVERS, reason="DeqIR's own Anderson solver is not in solve.py yet")
@pytest.mark.parametrize("max_iter", [3, 6, 15])
def test_the_official_anderson_iterates(max_iter):
    anderson = CONFIG["anderson"]
    settings = SolverSettings(
        "anderson_official",
        memory=anderson["m"],
        regularisation=anderson["lam"],
        mixing=anderson["beta"],
        tolerance=anderson["tol"],
        max_iter=max_iter,
    )
    result = solve(deqir_chain(), INPUTS["x_T"], settings)
    expected = FIXTURE["deqir"]["anderson_x0"][max_iter]
    assert result.iterations == FIXTURE["deqir"]["anderson_evaluations"][max_iter]
    assert error(result.x0, expected) < TOLERANCE * max(1.0, expected.abs().max().item())


def ddnm_run(name: str, operator, sigma_y: float = 0.0):
    ddnm = CONFIG["ddnm"]
    return ddnm_chain(
        EPS,
        operator,
        FIXTURE[name]["y"].to(DTYPE),
        ALPHA_BARS,
        official_timesteps(N_TRAIN, ddnm["steps"]),
        ddnm["eta"],
        INPUTS[f"{name}_noises"],
        weights="ddnm",
        sigma_y=sigma_y,
    )


def test_ddnm_with_a_fresh_noise_per_step():
    chain, x_T = ddnm_run("ddnm", AveragePoolSR(CONFIG["scale"])), INPUTS["ddnm_x_T"]
    assert error(sequential(chain, x_T), FIXTURE["ddnm"]["x0"]) < TOLERANCE
    solved = solve(chain, x_T, SolverSettings("anderson", tolerance=1e-10, max_iter=10))  # noises fixed up front
    assert error(solved.x0, FIXTURE["ddnm"]["x0"]) < TOLERANCE


@pytest.mark.parametrize("operator", [DiagonalInpainting, Inpainting])
def test_ddnm_plus_with_noisy_measurements(operator):
    operator = operator(INPUTS["mask"][None, None])
    chain = ddnm_run("ddnm_plus", operator, CONFIG["ddnm"]["sigma_y"])
    x_T, expected = INPUTS["ddnm_plus_x_T"], FIXTURE["ddnm_plus"]["x0"]
    assert error(sequential(chain, x_T), expected) < TOLERANCE
    assert error(sequential(ddnm_run("ddnm_plus", operator), x_T), expected) > 0.05  # the correction matters


def test_the_ddim_weights_are_ddim_step():
    a_t, a_prev = ALPHA_BARS[[600, 300, 0]], torch.cat([ALPHA_BARS[[300, 0]], torch.ones(1, dtype=DTYPE)])
    c_eps, c_z = noise_weights(a_t, a_prev, "ddim", eta=0.6)
    x_t, eps, z = torch.randn(3, 3, 3, 4, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    expected, x0 = ddim_step(x_t, eps, a_t, a_prev, eta=0.6, noise=z, clip_y0=False)
    rebuilt = a_prev.sqrt()[:, None, None, None] * x0 + c_eps[:, None, None, None] * eps + c_z[:, None, None, None] * z
    torch.testing.assert_close(rebuilt, expected)
    ddnm_eps, ddnm_z = noise_weights(a_t, a_prev, "ddnm", eta=0.6)
    torch.testing.assert_close(ddnm_eps**2 + ddnm_z**2, 1 - a_prev)  # DDNM keeps x_prev's noise variance
