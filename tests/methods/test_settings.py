"""The typed settings the methods share: `Sampling` (validated once, where it is made), its plain-dict form in
checkpoints, and the upgrade of checkpoints written with the methods' old flat sampling arguments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ir_lightning.diffusion.deq import SolverSettings
from ir_lightning.methods import RDDM, SR3, DeqIR, DiffIRS2, RestorationModule
from ir_lightning.methods.diffir import PRIOR_SCHEDULE
from ir_lightning.methods.settings import NoiseSchedule, Sampling, upgrade_sampling

SHIPPED = (
    Path(__file__).resolve().parents[2] / "tests/fixtures/shipped_2026_11/sr3_x4_demo.ckpt"
)  # the first shipped SR3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "sampling.steps must be an integer >= 1, got 0"),
        ({"steps": True}, "sampling.steps must be an integer >= 1, got True"),
        ({"seed": -1}, "sampling.seed must be an integer >= 0, got -1"),
        ({"sampler": "heun"}, "sampling.sampler must be ddpm or ddim, got 'heun'"),
        ({"eta": 1.5}, r"sampling.eta must lie in \[0, 1\]"),
        (
            {"sampler": "ddpm", "solver": SolverSettings("picard")},
            "solves the deterministic chain .* got sampler='ddpm', eta=0.0",
        ),
        ({"eta": 0.5, "solver": {"method": "anderson"}}, "got sampler='ddim', eta=0.5"),
        ({"solver": {"memory": 0}}, "solver.memory"),
    ],
)
def test_a_bad_field_is_refused_naming_it(fields, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**fields)


def test_the_plain_dict_form_round_trips_with_the_nested_solver():
    sampling = Sampling(
        steps=7, eta=0.0, seed=3, solver=SolverSettings("anderson", memory=3, tolerance=1e-5, max_iter=6)
    )
    stored = dataclasses.asdict(sampling)
    assert stored["solver"] == {
        "method": "anderson",
        "memory": 3,
        "regularisation": 1e-3,
        "mixing": 1.0,
        "tolerance": 1e-5,
        "max_iter": 6,
        "chunk_size": None,
    }
    assert Sampling.of(stored) == sampling and sampling.parallel and not Sampling().parallel
    assert sampling.replaced(solver={"tolerance": 1e-3}).solver == dataclasses.replace(sampling.solver, tolerance=1e-3)


def test_old_flat_sampling_arguments_are_gathered_on_the_methods_own_defaults():
    sr3 = {
        "scale": 4,
        "sample_steps": 50,
        "sampler": "ddim",
        "eta": 0.0,
        "clip_y0": False,
        "sample_seed": 5,
        "solver": "picard",
        "solver_tolerance": 1e-4,
    }
    assert upgrade_sampling(sr3, SR3.DEFAULT_SAMPLING) == {
        "scale": 4,
        "sampling": dataclasses.asdict(
            Sampling(steps=50, sampler="ddim", clip=False, seed=5, solver=SolverSettings("picard", tolerance=1e-4))
        ),
    }
    deqir = {"operator": "sr4", "sample_steps": 10, "memory": 3, "max_iterations": 9, "chunk_size": 4}
    upgraded = Sampling.of(DeqIR.upgrade_hyperparameters(deqir)["sampling"])
    # DeqIR's own defaults fill what the old checkpoint did not set: anderson, no clamping
    assert upgraded == Sampling(
        steps=10, clip=False, solver=SolverSettings("anderson", memory=3, max_iter=9, chunk_size=4)
    )
    rddm = {"sample_steps": 2, "clip": False}
    assert Sampling.of(RDDM.upgrade_hyperparameters(rddm)["sampling"]) == Sampling(steps=2, clip=False)
    current = {"sampling": dataclasses.asdict(Sampling(steps=3))}
    assert SR3.upgrade_hyperparameters(current) is current and RestorationModule.upgrade_hyperparameters(sr3) is sr3


def test_diffir_s2s_old_prior_arguments_become_its_prior_schedule():
    old = {"scale": 4, "n_steps": 4, "beta_start": 0.1, "beta_end": 0.99}
    upgraded = DiffIRS2.upgrade_hyperparameters(old)
    assert upgraded == {"scale": 4, "prior_schedule": dataclasses.asdict(PRIOR_SCHEDULE)}
    # the schedule the old arguments meant: sqrt(beta) evenly spaced (DiffIR's betas 0.1, 0.294, 0.591, 0.99)
    gammas = NoiseSchedule.of(upgraded["prior_schedule"]).gammas()
    betas = 1 - gammas / torch.cat([gammas.new_ones(1), gammas[:-1]])  # gamma_t = prod (1 - beta_i)
    torch.testing.assert_close(betas, torch.linspace(0.1**0.5, 0.99**0.5, 4, dtype=torch.float64) ** 2)


def test_the_shipped_checkpoint_written_with_the_old_names_loads_with_its_settings():
    stored = torch.load(SHIPPED, weights_only=True, map_location="cpu")["hyper_parameters"]
    assert "sample_steps" in stored and "sampling" not in stored  # written before the sampling object
    model = SR3.load_from_checkpoint(SHIPPED, map_location="cpu")
    assert model.sampling == Sampling(
        steps=stored["sample_steps"],
        sampler=stored["sampler"],
        eta=stored["eta"],
        seed=stored["sample_seed"],
        clip=stored["clip_y0"],
    )
    assert len(model.inference_gammas) == stored["sample_steps"]
