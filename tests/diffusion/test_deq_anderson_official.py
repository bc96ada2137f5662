"""`SolverSettings(method="anderson_official")` against DeqIR's own `anderson` (`functions/ddim_anderson.py`), and
DeqIR's inversion settings.

The fixture (`tests/fixtures/official/deqir_anderson/make_fixture.py`) ran the official solver on a 6-step chain
over one 3 x 4 x 4 image: the scan s_{k+1} = drift_k s_k + bias_k + gain tanh(weight_k u_k), u_k the iterate's
s_k (x_T for k = 0). `fixture_chain` rebuilds that map as a `Chain` from the saved parameters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from ir_lightning.diffusion.deq import (
    DEQIR_INVERSION_LR,
    DEQIR_INVERSION_PHANTOM_STEPS,
    DEQIR_INVERSION_SOLVER,
    DEQIR_INVERSION_TAU,
    DEQIR_SAMPLING_SOLVER,
    Chain,
    SolverSettings,
    invert,
    joint_map,
    phantom_loss,
    run_chain,
    solve,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "deqir_anderson" / "fixture.pt"
DTYPES = {"float64": (torch.float64, 1e-6), "float32": (torch.float32, 1e-5)}
"""dtype and the max abs difference allowed against the official iterates."""
NEVER = 1e-300
"""A tolerance no residual reaches: the solver runs all max_iter evaluations."""


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def fixture_chain(official: dict, dtype: torch.dtype) -> tuple[Chain, Tensor]:
    """(the fixture's map as a Chain, its x_T as a batch of one image)."""
    drift, bias, weight = (official["map"][name].to(dtype) for name in ("drift", "bias", "weight"))
    gain = official["gain"]

    def update(states: Tensor, steps: Tensor) -> Tensor:
        mixed = torch.einsum("nij,nj->ni", weight[steps], states.flatten(1))
        return (bias[steps] + gain * torch.tanh(mixed)).view_as(states)

    return Chain(official["n_steps"], update, drift=lambda k, s: drift[k] * s), official["map"]["x_T"].to(dtype)


def official_settings(run: dict, tolerance: float, max_iter: int) -> SolverSettings:
    setting = run["setting"]
    return SolverSettings(
        "anderson_official",
        memory=setting["m"],
        regularisation=setting["lam"],
        mixing=setting["beta"],
        tolerance=tolerance,
        max_iter=max_iter,
    )


def image_states(states: Tensor) -> Tensor:
    """T x 1 x C x H x W -> T x D, the official layout of one image's iterate."""
    return states[:, 0].flatten(1)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("setting", ["sampling", "inversion"])
def test_reference_mode_reproduces_the_official_iterates(official, setting, dtype_name):
    dtype, tolerance = DTYPES[dtype_name]
    chain, x_T = fixture_chain(official, dtype)
    run = official["runs"][f"{setting}-{dtype_name}"]
    mapped, _ = joint_map(chain, x_T, x_T[None].expand(chain.n_steps, *x_T.shape))
    assert (image_states(mapped) - run["f_at_init"]).abs().max() <= tolerance  # the Chain is the fixture's map
    for evaluations, expected in run["x_after"].items():
        result = solve(chain, x_T, official_settings(run, NEVER, evaluations))
        assert result.iterations == evaluations and result.stopped_by == "max_iter" and not result.converged
        assert (image_states(result.states) - expected.flatten(1)).abs().max() <= tolerance, evaluations
        assert torch.equal(result.x0, result.states[-1])
    # the official residual history starts at its third evaluation
    assert result.residuals[2:] == pytest.approx(run["norm_res"], rel=tolerance, abs=1e-12)
    assert max(result.residuals[2:]) > 100 * min(result.residuals[2:])  # a history that moves


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("setting", ["sampling", "inversion"])
def test_reference_mode_stops_where_the_official_solver_stops(official, setting, dtype_name):
    dtype, tolerance = DTYPES[dtype_name]
    chain, x_T = fixture_chain(official, dtype)
    run = official["runs"][f"{setting}-{dtype_name}"]
    early = run["early"]
    result = solve(chain, x_T, official_settings(run, early["tol"], 15))
    assert 3 <= result.iterations == early["evaluations"] < 15
    assert result.stopped_by == "tolerance" and result.converged
    assert result.residuals[-1] < early["tol"] <= min(result.residuals[2:-1])
    assert (image_states(result.states) - early["x"].flatten(1)).abs().max() <= tolerance


def test_the_official_settings_are_those_of_the_official_runs(official):
    sampling, inversion = official["runs"]["sampling-float64"], official["runs"]["inversion-float64"]
    assert DEQIR_SAMPLING_SOLVER == official_settings(sampling, sampling["early"]["tol"], 15)
    assert DEQIR_INVERSION_SOLVER == official_settings(inversion, inversion["early"]["tol"], 15)
    assert (DEQIR_INVERSION_PHANTOM_STEPS, DEQIR_INVERSION_TAU, DEQIR_INVERSION_LR) == (1, 0.1, 2e-5)


def test_the_report_counts_evaluations_of_all_states(official):
    chain, x_T = fixture_chain(official, torch.float64)
    x_T = torch.cat([x_T, -x_T])  # two images
    seen = []
    settings = SolverSettings("anderson_official", memory=5, regularisation=1e-3, mixing=1.0, max_iter=4)
    x0, result = run_chain(chain, x_T, settings)
    assert torch.equal(x0, result.x0) and torch.equal(x0, result.states[-1])
    assert (result.iterations, result.network_evaluations, result.network_images) == (4, 4, 4 * 6 * 2)
    assert result.stopped_by == "max_iter" and not result.converged and len(result.residuals) == 4
    chunked = solve(
        chain, x_T, SolverSettings("anderson_official", max_iter=4, chunk_size=4), callback=lambda *a: seen.append(a)
    )
    assert (chunked.network_evaluations, chunked.network_images) == (4 * 3, 4 * 6 * 2)  # 2 steps of 2 images a call
    assert [i for i, _ in seen] == [1, 2, 3, 4] and [r for _, r in seen] == chunked.residuals
    assert torch.allclose(chunked.states, result.states, rtol=0, atol=1e-12)


def test_it_never_stops_before_the_third_evaluation_and_starts_from_init(official):
    chain, x_T = fixture_chain(official, torch.float64)
    anything = SolverSettings("anderson_official", tolerance=1e9)
    assert solve(chain, x_T, anything).iterations == 3
    init = torch.randn(chain.n_steps, *x_T.shape, dtype=x_T.dtype, generator=torch.Generator().manual_seed(0))
    first = solve(chain, x_T, SolverSettings("anderson_official", max_iter=1), init=init)
    assert torch.equal(first.states, init) and first.stopped_by == "max_iter"
    second = solve(chain, x_T, SolverSettings("anderson_official", max_iter=2), init=init)
    assert torch.equal(second.states, joint_map(chain, x_T, init)[0])  # X_1 = G(X_0)


def test_each_state_of_each_image_has_its_own_weights(official):
    """A batch gives every image what it gets alone (its rows are mixed on their own); the batch's residual is
    the worst image's."""
    chain, x_T = fixture_chain(official, torch.float64)
    other = torch.randn(x_T.shape, dtype=x_T.dtype, generator=torch.Generator().manual_seed(1))
    settings = SolverSettings(
        "anderson_official", memory=3, regularisation=1e-3, mixing=0.9, tolerance=NEVER, max_iter=7
    )
    both = solve(chain, torch.cat([x_T, other]), settings)
    alone = [solve(chain, image, settings) for image in (x_T, other)]
    for b, single in enumerate(alone):
        assert torch.allclose(both.states[:, b], single.states[:, 0], rtol=0, atol=1e-13)
    worst = [max(pair) for pair in zip(alone[0].residuals, alone[1].residuals)]
    assert both.residuals == pytest.approx(worst, rel=1e-10)


def test_one_official_phantom_step_damps_towards_g_of_the_mixed_iterate(official):
    chain, x_T = fixture_chain(official, torch.float64)
    run = official["runs"]["inversion-float64"]
    solved = run["early"]["x"].view(chain.n_steps, *x_T.shape)  # the official solver's return at tol 1e-2
    x0 = phantom_loss(
        chain, x_T, lambda x: x, DEQIR_INVERSION_SOLVER, DEQIR_INVERSION_TAU, DEQIR_INVERSION_PHANTOM_STEPS
    )
    expected = (1 - DEQIR_INVERSION_TAU) * solved[-1] + DEQIR_INVERSION_TAU * joint_map(chain, x_T, solved)[0][-1]
    assert (x0 - expected).abs().max() <= 1e-12


def test_invert_with_the_official_inversion_settings_decreases_the_loss(official):
    chain, x_T = fixture_chain(official, torch.float64)
    target = torch.zeros_like(x_T)
    inversion = invert(
        chain,
        x_T,
        lambda x0: (x0 - target).square().sum(),
        steps=3,
        settings=DEQIR_INVERSION_SOLVER,
        lr=DEQIR_INVERSION_LR,
        tau=DEQIR_INVERSION_TAU,
        phantom_steps=DEQIR_INVERSION_PHANTOM_STEPS,
    )
    assert inversion.losses[0] > inversion.losses[1] > inversion.losses[2]
    # Adam moves a coordinate whose gradient keeps its sign by about lr a step
    moved = (inversion.x_T - x_T).abs()
    assert moved.max() == pytest.approx(3 * DEQIR_INVERSION_LR, rel=1e-3)
