"""`TimestepPrior`: a prior trained on integer steps (ADM, DDIM's `Model`) behind the suite's `net(x, level)`. The
steps are recovered exactly from the levels the DeqIR chain passes (checked against the official priors' schedule
written out with numpy), levels off the schedule are refused, and only eps is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ir_lightning.methods.deqir import DeqIR
from ir_lightning.methods.settings import NoiseSchedule
from ir_lightning.nets.guided_diffusion import GuidedDiffusionUNet
from ir_lightning.nets.timestep_prior import TimestepPrior
from tests.helpers.contract import MethodContract
from tests.nets.test_guided_diffusion import TINY


class Recorder(torch.nn.Module):
    """A prior that records the steps it gets and returns 6 channels: eps = the input, then a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.steps.append(t.clone())
        return torch.cat([x, torch.full_like(x, 7.0)], dim=1)


def official_levels(n_steps: int = 1000) -> np.ndarray:
    """sqrt(alpha_bar_t), t = 0 .. T - 1, of the official priors: betas linspace(1e-4, 0.02, T), cumulative product."""
    return np.sqrt(np.cumprod(1.0 - np.linspace(1e-4, 0.02, n_steps, dtype=np.float64)))


def test_every_step_of_the_official_schedule_comes_back_from_its_float32_level():
    recorder = Recorder()
    prior = TimestepPrior(recorder).eval()
    levels = torch.from_numpy(official_levels()).float()  # what the chain passes: float32 levels
    out = prior(torch.ones(1000, 3, 1, 1), levels)
    assert torch.equal(recorder.steps[0], torch.arange(1000, dtype=torch.float32))
    assert out.shape == (1000, 3, 1, 1) and bool((out == 1).all())  # eps kept, the 3 variance channels dropped


def test_a_level_off_the_schedule_is_refused_naming_it():
    prior = TimestepPrior(Recorder()).eval()
    between = torch.tensor(float(official_levels()[500] + official_levels()[501]) / 2)
    training = TimestepPrior(Recorder()).train()
    near_501 = torch.tensor(float(official_levels()[500] + 3 * official_levels()[501]) / 4)
    assert training.timestep(near_501.reshape(1)).tolist() == [501]  # training: the nearest step
    with pytest.raises(ValueError, match=r"noise level 0\.27\d* is not sqrt\(alpha_bar\) of the prior's schedule"):
        prior(torch.ones(1, 3, 1, 1), between.reshape(1))
    with pytest.raises(ValueError, match="eps_channels must be at least 1"):
        TimestepPrior(Recorder(), eps_channels=0)


def test_a_prior_of_one_size_refuses_others_in_eval_and_trains_on_any_crop():
    level = torch.from_numpy(official_levels()[[10]]).float()
    prior = TimestepPrior(Recorder(), image_size=8).eval()
    assert prior(torch.ones(1, 3, 8, 8), level).shape == (1, 3, 8, 8)
    for height, width in [(8, 16), (4, 4)]:
        with pytest.raises(ValueError, match=rf"trained on 8 x 8 images and restores that size only, got {height} x "):
            prior(torch.ones(1, 3, height, width), level)
    assert prior.train()(torch.ones(1, 3, 4, 4), level).shape == (1, 3, 4, 4)  # fine-tuning on smaller crops
    assert TimestepPrior(Recorder()).eval()(torch.ones(1, 3, 5, 7), level).shape == (1, 3, 5, 7)  # None: any size
    with pytest.raises(ValueError, match="image_size must be None or at least 1, got 0"):
        TimestepPrior(Recorder(), image_size=0)


def test_the_steps_deqir_visits_are_the_steps_the_prior_gets():
    """DeqIR's chain with the adapted prior calls it at exactly its respaced steps (the official spacing aside)."""
    recorder = Recorder()
    schedule = NoiseSchedule(kind="linear", n_steps=100, linear_start=1e-4, linear_end=0.02)
    model = DeqIR(net=TimestepPrior(recorder, n_steps=100), train_schedule=schedule, operator="sr4")
    sampling = model.sampling.replaced(steps=5, solver={"method": "sequential", "max_iter": None})
    model = DeqIR(net=TimestepPrior(recorder, n_steps=100), train_schedule=schedule, operator="sr4", sampling=sampling)
    model.restore(torch.rand(1, 3, 4, 4))
    visited = sorted({int(step) for steps in recorder.steps for step in steps})
    from ir_lightning.diffusion.schedules import respaced_timesteps

    assert visited == sorted(int(t) for t in respaced_timesteps(100, 5))


class TestDeqIRWithAdmPriorContract(MethodContract):
    """DeqIR with an ADM-style prior (the guided-diffusion U-Net on integer steps, learned sigma: 6 outputs)."""

    scale = 4
    parallel = {"solver": {"method": "anderson", "tolerance": 1e-4}}

    def networks(self):
        # the integer step embedded as given (level_input sqrt_gamma), as ADM does; learned sigma: 6 outputs
        adm = GuidedDiffusionUNet(**(TINY | dict(in_channels=3, out_channels=6)), level_input="sqrt_gamma")
        return {"net": TimestepPrior(adm, n_steps=100)}

    def build(self, networks, **settings):
        schedule = NoiseSchedule(kind="linear", n_steps=100, linear_start=1e-4, linear_end=0.02)
        sampling = DeqIR.DEFAULT_SAMPLING.replaced(steps=10, solver={"method": "sequential", "max_iter": None})
        return DeqIR(**networks, **(dict(train_schedule=schedule, operator="sr4", sampling=sampling) | settings))
