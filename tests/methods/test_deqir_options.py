"""DeqIR's official options as the module wires them: the official timesteps, DeqIR's and DDNM's stochastic
weights (one noise for every step, or one per step), DeqIR's split, DDNM+'s noise-aware correction on the
signed scale, the noise-gain warning, and the settings' checks. The chains themselves are checked against the
official code in tests/diffusion/test_deq_official.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from ir_lightning.diffusion.deq import ddnm_chain, draw_noises, joint_map, sequential
from ir_lightning.diffusion.operators import AveragePoolSR, Inpainting
from ir_lightning.diffusion.ranges import to_unit
from ir_lightning.diffusion.schedules import official_timesteps
from ir_lightning.methods.deqir import DeqIR
from ir_lightning.methods.settings import Sampling, check_sampler
from tests.methods.test_deqir import SCHEDULE, tiny

GT = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
MASK = (torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).double()


def chain_by_hand(model: DeqIR, operator, lq, timesteps, weights: str, shared: bool, sigma_y=0.0, split="x0"):
    """(the module's chain rebuilt by hand, its x_T): x_T, then the noises, drawn from `sampling.seed`."""
    generator = torch.Generator().manual_seed(model.sampling.seed)
    x_T = torch.randn(GT.shape, generator=generator)
    n_steps = len(timesteps)
    if shared:
        noises = draw_noises(x_T, 1, generator).expand(n_steps, -1, -1, -1, -1)
    else:
        noises = draw_noises(x_T, n_steps, generator)
    alpha_bars = SCHEDULE.gammas()
    y = 2 * lq - operator.forward(torch.ones_like(GT))

    def eps_model(x, t):
        return model.net(x, alpha_bars[t].sqrt().to(x.dtype))

    chain = ddnm_chain(
        eps_model,
        operator,
        y,
        alpha_bars,
        timesteps,
        model.sampling.eta,
        noises,
        weights=weights,
        noise_weight=model.noise_weight,
        sigma_y=sigma_y,
        split=split,
    )
    return chain, x_T


def by_hand(*args, **kwargs) -> torch.Tensor:
    """The module's sequential restoration rebuilt by hand (`chain_by_hand`)."""
    chain, x_T = chain_by_hand(*args, **kwargs)
    return to_unit(sequential(chain, x_T))


@pytest.mark.parametrize(("weights", "shared"), [("deqir", True), ("ddnm", False)])
def test_the_official_options_restore_the_official_chain(weights, shared):
    """timesteps official (over start_timesteps 80 of 100), DeqIR's weights with one noise (nw 0.3, etw 0.5) or
    DDNM's with a noise per step; with preconditioner official the solver iterates in DeqIR's split."""
    options = dict(timesteps="official", start_timesteps=80, noise_weights=weights)
    options |= {"noise_weight": 0.3} if shared else {}
    model = tiny({"steps": 8, "eta": 0.5, "fixed_noise": True, "solver": {"method": "sequential"}}, **options)
    operator, timesteps = AveragePoolSR(4), official_timesteps(100, 8, start=80)
    lq = operator.forward(GT)
    restored = model.restore(lq, size=(16, 16))
    torch.testing.assert_close(restored, by_hand(model, operator, lq, timesteps, weights, shared), rtol=0, atol=1e-6)
    assert (restored - by_hand(model, operator, lq, timesteps, weights, not shared)).abs().max() > 1e-3
    model.preconditioner = "official"
    model.sampling = model.sampling.replaced(solver={"method": "anderson", "max_iter": 1})
    first = model.restore(lq, size=(16, 16))  # G at the start, every state x_T
    for split, equal in (("null_space", True), ("x0", False)):
        chain, x_T = chain_by_hand(model, operator, lq, timesteps, weights, shared, split=split)
        mapped = to_unit(joint_map(chain, x_T, x_T[None].expand(8, -1, -1, -1, -1))[0][-1])
        assert ((first - mapped).abs().max() < 1e-5) == equal


class Gained(Inpainting):
    """An inpainting that claims a large noise gain (what deblurring operators have)."""

    def noise_gain(self, input_shape) -> float:
        return 40.0


def test_noise_aware_restoration_corrects_on_the_signed_scale_and_the_plain_one_warns(monkeypatch):
    """sigma_y = 0.1 on the [0, 1] scale is 0.2 on the chain's signed scale; without noise_aware a restoration
    through an operator of noise gain > 10 warns, once, naming the operator, the gain and the option."""
    operator = Gained(MASK)
    lq = operator.measure(GT, 0.1, torch.Generator().manual_seed(5))
    aware = tiny(
        {"steps": 6, "solver": {"method": "sequential"}}, operator="inpaint_box", sigma_y=0.1, noise_aware=True
    )
    monkeypatch.setattr(aware, "operator_for", lambda size: operator)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = aware.restore(lq, size=(16, 16))
    timesteps = aware.sampling_timesteps()
    torch.testing.assert_close(restored, by_hand(aware, operator, lq, timesteps, "ddim", False, 0.2), rtol=0, atol=1e-6)
    plain = tiny({"steps": 6, "solver": {"method": "sequential"}}, operator="inpaint_box", sigma_y=0.1)
    monkeypatch.setattr(plain, "operator_for", lambda size: operator)
    with pytest.warns(UserWarning, match="sigma_y=0.1 .* 'inpaint_box', .* 40 times; set model.init_args.noise_aware"):
        unaware = plain.restore(lq, size=(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.restore(lq, size=(16, 16))  # once
    assert (unaware - restored).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timesteps": "ddnm"}, "timesteps must be ours or official, got 'ddnm'"),
        ({"start_timesteps": 50}, "start_timesteps must be null, or an integer with timesteps: official"),
        ({"timesteps": "official", "start_timesteps": 20}, r"start_timesteps: .*n_steps=25, start=20"),
        ({"noise_weights": "ddpm"}, "noise_weights must be ddim, ddnm, deqir, deqir_without_svd, got 'ddpm'"),
        ({"noise_weight": -0.1}, "noise_weight must be a number >= 0"),
        ({"noise_weight": 0.3}, "noise_weight is DeqIR's --nw, for noise_weights deqir or deqir_without_svd"),
        ({"noise_aware": "yes"}, "noise_aware must be true or false"),
    ],
)
def test_bad_official_options_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_fixed_noise_lets_a_stochastic_chain_be_solved_in_parallel_only_where_offered():
    with pytest.raises(ValueError, match="eta > 0 with fixed_noise"):
        Sampling(eta=0.5, solver={"method": "anderson"})
    fixed = Sampling(eta=0.5, fixed_noise=True, solver={"method": "anderson"})
    assert check_sampler(fixed, ("ddim",), "DeqIR", fixed_noise=True) is fixed
    with pytest.raises(ValueError, match="sampling.fixed_noise: SR3's sampler draws its noise step by step"):
        check_sampler(fixed, ("ddim",), "SR3")


@pytest.mark.parametrize(
    ("operator", "tile"),
    [("sr4", 64), ("bicubic4", 64), ("colorization", 256), ("deblur_gauss_ddrm", 256), ("inpaint_box", None)],
)
def test_the_native_tile_is_the_prior_size_in_measurement_pixels(operator, tile):
    model = tiny(operator=operator)
    assert model.native_tile() is None  # a prior of any size
    model.net.image_size = 256  # what a TimestepPrior of the official priors carries
    assert model.native_tile() == tile
    if operator == "sr4":
        sr3 = tiny(operator="sr3")
        sr3.net.image_size = 256
        with pytest.raises(ValueError, match=r"x3 \(sr3\) measurements cannot tile: .* 85\.3333 pixels wide"):
            sr3.native_tile()


def test_a_compressed_sensing_measurement_is_no_image_its_size_is_the_square_it_came_from():
    model = tiny(operator="cs_wh2")
    model.net.image_size = 16
    assert not model.tileable and model.native_tile() is None
    assert model.image_size(torch.zeros(1, 3, 128, 1)) == (16, 16)  # 16 x 16 pixels, 1 coefficient in 2
    with pytest.raises(ValueError, match="measurement of 100 x 1 coefficients is not a square image's"):
        model.image_size(torch.zeros(1, 3, 100, 1))


def test_deq_inversion_is_off_by_default_with_the_official_settings_and_brings_validation_closer_to_the_gt():
    from ir_lightning.diffusion.deq.inversion import DEQIR_INVERSION_SOLVER, Inversion

    official = Inversion()
    assert (official.steps, official.lr, official.tau, official.phantom_steps) == (0, 2e-5, 0.1, 1)
    assert official.solver == DEQIR_INVERSION_SOLVER and official.solver.memory == 3 and official.solver.mixing == 0.9
    solver = {"method": "anderson_official", "max_iter": 6}
    plain = tiny(operator="sr2", preconditioner="official", sampling={"steps": 4, "solver": solver})
    inverted = tiny(
        operator="sr2",
        preconditioner="official",
        sampling={"steps": 4, "solver": solver},
        inversion={"steps": 3, "lr": 0.05, "solver": {"method": "anderson_official", "max_iter": 6}},
    )
    operator, measurement = plain.measurement(GT)
    before = plain.restoration_with(operator, measurement, (16, 16), target=GT)[0]
    after = inverted.restoration_with(operator, measurement, (16, 16), target=GT)[0]
    assert torch.equal(before, plain.restoration_with(operator, measurement, (16, 16))[0])  # 0 steps: off
    assert float(((after - GT) ** 2).mean()) < float(((before - GT) ** 2).mean()) - 1e-4
    assert torch.equal(inverted.restoration_with(operator, measurement, (16, 16))[0], before)  # no gt: no inversion


@pytest.mark.parametrize(
    ("inversion", "message"),
    [
        ({"steps": -1}, "inversion.steps must be an integer >= 0, got -1"),
        ({"tau": 0.0}, r"inversion.tau must be a number in \(0, 1\], got 0.0"),
        ({"solver": {"method": "sequential"}}, "inversion.solver must be a fixed-point solver"),
    ],
)
def test_bad_inversion_settings_name_the_field(inversion, message):
    with pytest.raises(ValueError, match=message):
        tiny(inversion=inversion)
