"""Denoising as Adaptation's value ranges (`restorer_range`, `diffusion_range`): the official code runs R and D
in [0, 1] for denoising and in [-1, 1] for deraining and deblurring. Checked against closed forms of an affine
restorer (R(x) = x + b + x / 2) and against the inputs a recording D receives."""

from __future__ import annotations

import pytest
import torch

from ir_lightning.losses import charbonnier
from ir_lightning.methods.noise_da import DenoisingAsAdaptation
from tests.methods.test_noise_da import AddBias, Recorder

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")


def images(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt, lq, real = (torch.rand(4, 3, 8, 8, generator=g) for _ in range(3))
    return {"gt": gt, "lq": lq, "real_lq": real}


def test_a_signed_restorer_sees_2x_minus_1_and_its_output_maps_back():
    model = DenoisingAsAdaptation(restorer=AddBias(), diffusion=Recorder(), restorer_range="signed")
    lq = images()["lq"]
    bias = torch.tensor([0.1, -0.2, 0.05]).reshape(1, 3, 1, 1)
    signed = 2 * lq - 1
    expected = ((signed + bias + 0.5 * signed) + 1) / 2  # R in [-1, 1], its output back in [0, 1]
    torch.testing.assert_close(model.residual(lq), expected - lq)
    torch.testing.assert_close(model.restore(lq), expected.clamp(0, 1))
    unit = DenoisingAsAdaptation(restorer=AddBias(), diffusion=Recorder())
    torch.testing.assert_close(unit.residual(lq), bias + 0.5 * lq)  # the default: R in [0, 1]


@pytest.mark.parametrize("restorer_range", ["unit", "signed"])
def test_the_pixel_loss_is_measured_in_the_restorers_range(restorer_range):
    batch = images(1)
    model = DenoisingAsAdaptation(
        restorer=AddBias(), diffusion=Recorder(), noise_weight=0.0, restorer_range=restorer_range
    )
    restored = batch["lq"] + model.residual(batch["lq"])
    factor, shift = (1.0, 0.0) if restorer_range == "unit" else (2.0, -1.0)
    expected = charbonnier(factor * restored + shift, factor * batch["gt"] + shift, 1e-3)
    torch.testing.assert_close(model.training_loss(batch), expected)


@pytest.mark.parametrize("diffusion_range", ["unit", "signed"])
def test_d_sees_its_conditions_in_its_range(diffusion_range):
    recorder = Recorder()
    model = DenoisingAsAdaptation(
        restorer=AddBias(), diffusion=recorder, diffusion_range=diffusion_range, shuffle_prob=0.0
    )
    batch = images(2)
    model.training_loss(batch)
    seen = recorder.inputs[0]
    restored_syn = batch["lq"] + model.residual(batch["lq"])
    expected = restored_syn if diffusion_range == "unit" else 2 * restored_syn - 1
    torch.testing.assert_close(seen[:, 3:6], expected)  # slot a holds the restored synthetic image (no shuffle)


@pytest.mark.parametrize("diffusion_range", ["unit", "signed"])
def test_d_noises_the_target_in_its_range(diffusion_range):
    """With a schedule whose gamma is 1 - 1e-9, x_t = sqrt(gamma) x_0 + sqrt(1 - gamma) eps is x_0 to 1e-4: the
    target D sees is the GT in D's range."""
    from ir_lightning.methods.settings import NoiseSchedule

    recorder = Recorder()
    schedule = NoiseSchedule(kind="linear", n_steps=10, linear_start=1e-10, linear_end=1e-10)
    model = DenoisingAsAdaptation(
        restorer=AddBias(), diffusion=recorder, diffusion_range=diffusion_range, schedule=schedule
    )
    batch = images(3)
    model.training_loss(batch)
    expected = batch["gt"] if diffusion_range == "unit" else 2 * batch["gt"] - 1
    torch.testing.assert_close(recorder.inputs[0][:, :3], expected, rtol=0, atol=1e-3)


def test_a_range_outside_the_two_is_refused_by_name():
    with pytest.raises(ValueError, match="diffusion_range must be 'unit' or 'signed', got 'pm1'"):
        DenoisingAsAdaptation(restorer=AddBias(), diffusion=Recorder(), diffusion_range="pm1")


def adam_steps(ramp_restorer_only: bool, optimizer: str, weight: float = 0.05, steps: int = 3) -> dict:
    """The module's parameters after `steps` optimizer steps at a fixed ramp weight, from a fixed start and batches."""
    from tests.helpers.nets import tiny_da

    torch.manual_seed(0)
    model = DenoisingAsAdaptation(**tiny_da(), ramp_restorer_only=ramp_restorer_only)
    model.noise_loss_weight = lambda: weight  # the ramp's value at some step, held fixed
    model.training_generator = lambda: torch.Generator().manual_seed(1)
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-3)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=1e-3)
    )
    for step in range(steps):
        opt.zero_grad()
        model.training_loss(images(step)).backward()
        opt.step()
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def distance(first: dict, second: dict, prefix: str) -> float:
    """The Euclidean distance between two sets of parameters, over the names starting with `prefix`."""
    return float(torch.cat([(first[k] - second[k]).flatten() for k in first if k.startswith(prefix)]).norm())


def test_under_adam_ramp_restorer_only_changes_d_and_r_by_next_to_nothing():
    """The docstring's claim: D's parameters get only the ramped loss's gradient, and Adam's step does not depend
    on a constant factor of the gradient (but for its eps, which weighs on the smallest gradients); the restorer
    gets the same gradient in both settings. Under SGD, D's steps differ by the factor (1 / weight = 20 here).
    Measured: D's parameters end 0.8 % of their movement apart under Adam, 19x apart under SGD."""
    start = adam_steps(False, "adam", steps=0)
    paper, restorer_only = adam_steps(False, "adam"), adam_steps(True, "adam")
    assert distance(paper, restorer_only, "diffusion.") < 0.02 * distance(paper, start, "diffusion.")
    assert distance(paper, restorer_only, "restorer.") < 1e-3 * distance(paper, start, "restorer.")
    sgd_paper, sgd_restorer_only = adam_steps(False, "sgd"), adam_steps(True, "sgd")
    assert distance(sgd_paper, sgd_restorer_only, "diffusion.") > 10 * distance(sgd_paper, start, "diffusion.")
