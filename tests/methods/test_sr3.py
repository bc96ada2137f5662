"""SR3's LightningModule composes the net and the diffusion math correctly: checked with an
oracle network that knows the clean image, for which the loss must vanish and the samplers
must return the image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ir_lightning.diffusion.deq import SolverSettings
from ir_lightning.methods.settings import Sampling
from ir_lightning.methods.sr3 import SR3, NoiseSchedule, to_signed, to_unit
from ir_lightning.nets.sr3_official import SR3ReferenceUNet
from ir_lightning.nets.unet import UNet
from tests.helpers.contract import MethodContract
from tests.helpers.nets import tiny_unet


class NoiseOracle(nn.Module):
    """Returns the exact noise of y_t = sqrt(gamma) y0 + sqrt(1 - gamma) eps for a known y0.

    The input is concat([x_up, y_t]); the level is sqrt(gamma)."""

    def __init__(self, y0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("y0", y0)
        self.seen_x = None
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, inputs: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        self.seen_x, y_t = inputs[:, :3], inputs[:, 3:]
        g = level.double()[:, None, None, None] ** 2
        return ((y_t.double() - g.sqrt() * self.y0.double()) / (1 - g).sqrt()).to(y_t.dtype) + 0 * self.dummy


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(2, 3, 16, 16, generator=g)
    lq = F.avg_pool2d(gt, 4)
    return {"gt": gt, "lq": lq}


def test_training_loss_vanishes_for_the_noise_oracle_and_conditions_on_bicubic_lr():
    b = batch()
    model = SR3(net=NoiseOracle(to_signed(b["gt"])), scale=4)
    assert model.training_loss(b).item() < 1e-4
    expected_x = to_signed(F.interpolate(b["lq"], size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 1))
    torch.testing.assert_close(model.net.seen_x, expected_x)


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_training_loss_of_a_zero_predictor_is_the_noise_norm(loss):
    class Zero(nn.Module):
        def forward(self, x, level):
            return torch.zeros_like(x[:, 3:])

    torch.manual_seed(0)
    b = {"gt": torch.rand(8, 3, 32, 32), "lq": torch.rand(8, 3, 8, 8)}
    value = SR3(net=Zero(), scale=4, loss=loss).training_loss(b).item()
    expected = (2 / torch.pi) ** 0.5 if loss == "l1" else 1.0  # E|eps| and E eps^2 for eps ~ N(0, 1)
    assert value == pytest.approx(expected, abs=0.03)  # 24576 draws: s.e. about 0.005 (l1), 0.009 (l2)


def test_offset_noise_adds_its_variance_to_the_training_noise_and_the_oracle_still_reads_it():
    """With offset noise o the noise has variance 1 + o^2 per pixel: a zero predictor's L2 loss is 1 + o^2; the
    oracle, which reads the noise off y_t, still has zero loss. A negative offset is refused by name."""

    class Zero(nn.Module):
        def forward(self, x, level):
            return torch.zeros_like(x[:, 3:])

    torch.manual_seed(0)
    b = {"gt": torch.rand(64, 3, 16, 16), "lq": torch.rand(64, 3, 4, 4)}
    value = SR3(net=Zero(), scale=4, loss="l2", offset_noise=0.5).training_loss(b).item()
    # 192 channel offsets: their mean square has a relative s.e. of sqrt(2 / 192) = 10 % on the 0.25
    assert value == pytest.approx(1.25, abs=0.1)
    assert SR3(net=Zero(), scale=4, loss="l2").training_loss(b).item() == pytest.approx(1.0, abs=0.03)
    oracle = batch()
    assert SR3(net=NoiseOracle(to_signed(oracle["gt"])), scale=4, offset_noise=0.1).training_loss(oracle) < 1e-4
    with pytest.raises(ValueError, match="model.init_args.offset_noise must be a number >= 0, got -0.1"):
        SR3(net=Zero(), scale=4, offset_noise=-0.1)


@pytest.mark.parametrize("sampler,steps", [("ddim", 1), ("ddim", 7), ("ddpm", 5)])
def test_restore_with_the_noise_oracle_returns_the_ground_truth(sampler, steps):
    b = batch(1)
    model = SR3(net=NoiseOracle(to_signed(b["gt"])), scale=4, sampling=Sampling(steps=steps, sampler=sampler))
    restored = model.restore(b["lq"])
    assert restored.shape == b["gt"].shape
    assert (restored - b["gt"]).abs().max() < 1e-4


def test_a_separate_inference_schedule_is_used_when_given():
    model = SR3(net=nn.Identity(), inference_schedule=NoiseSchedule("linear", 10, 1e-4, 0.1))
    assert len(model.inference_gammas) == 10
    assert len(SR3(net=nn.Identity(), sampling=Sampling(steps=25)).inference_gammas) == 25


def test_unknown_sampler_is_refused_at_construction():
    with pytest.raises(ValueError, match="heun"):
        SR3(net=nn.Identity(), sampling={"sampler": "heun"})


def test_range_maps_are_inverse():
    x = torch.rand(4, 3, 5, 5)
    torch.testing.assert_close(to_unit(to_signed(x)), x)


def test_hyperparameters_of_a_python_built_model_load_with_weights_only(tmp_path):
    model = SR3(net=nn.Identity(), train_schedule=NoiseSchedule("linear", 50, 1e-4, 0.02), sampling=Sampling(steps=10))
    assert model.hparams["train_schedule"] == {
        "kind": "linear",
        "n_steps": 50,
        "linear_start": 1e-4,
        "linear_end": 0.02,
    }
    torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.ckpt")
    loaded = torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]
    assert len(SR3(net=nn.Identity(), **loaded).train_gammas) == 50


def test_training_names_a_missing_lq_and_a_scale_mismatch():
    model = SR3(net=nn.Identity(), scale=4)
    with pytest.raises(KeyError, match="degradation"):
        model.training_loss({"gt": torch.rand(1, 3, 16, 16)})
    with pytest.raises(ValueError, match="x4"):
        model.training_loss({"gt": torch.rand(1, 3, 16, 16), "lq": torch.rand(1, 3, 8, 8)})


@pytest.mark.parametrize("solver", ["anderson", "picard"])
def test_the_parallel_solver_restores_what_ddim_does(solver):
    """solver=anderson|picard solves DDIM (eta = 0) as one fixed point over all steps: the same image,
    reached by the solver's tolerance in fewer rounds than steps (after T rounds every state is exact
    whatever the solver did, so a solve ended by that bound would not test the solver; measured: Anderson
    13 rounds, Picard 13, of 25)."""
    torch.manual_seed(0)
    net = UNet(
        in_channels=6,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attn_levels=(),
        dropout=0.0,
        norm_groups=4,
    )
    settings = dict(scale=2, train_schedule=NoiseSchedule("linear", 100, 1e-4, 0.05))
    ddim = Sampling(steps=25, sampler="ddim")
    sequential = SR3(net=net, sampling=ddim, **settings).eval()
    parallel = SR3(net=net, sampling=ddim.replaced(solver={"method": solver, "tolerance": 1e-5}), **settings).eval()
    lq = torch.rand(2, 3, 8, 8)
    batches: list[int] = []
    hook = net.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    (restored, solve), (expected, no_solve) = parallel.restoration(lq), sequential.restoration(lq)
    torch.testing.assert_close(restored, expected, rtol=0, atol=5e-4)
    torch.testing.assert_close(parallel.restore(lq), restored, rtol=0, atol=0)  # `restore` is the restoration's image
    hook.remove()
    assert solve.stopped_by == "tolerance" and solve.iterations < 25
    assert solve.states.numel() == 0  # the report keeps no state images alive
    assert no_solve is None
    assert max(batches) > 2  # the parallel run evaluated several steps of the 2 images in one call
    with pytest.raises(ValueError, match="solver.method=anderson solves the deterministic chain .* got sampler='ddpm'"):
        SR3(net=net, sampling=Sampling(sampler="ddpm", solver=SolverSettings("anderson")))


class TestSR3Contract(MethodContract):
    scale = 4
    parallel = {"solver": {"method": "anderson", "tolerance": 1e-5}}  # 13 of 25 rounds; 1.2e-4 from DDIM
    parallel_tolerance = 5e-4

    def networks(self):
        return {"net": tiny_unet(6)}

    def build(self, networks, **settings):
        defaults = dict(
            scale=4,
            train_schedule=NoiseSchedule("linear", 100, 1e-4, 0.05),
            sampling=Sampling(steps=25, sampler="ddim"),
        )
        return SR3(**networks, **(defaults | settings))


class TestSR3WithReferenceNetContract(MethodContract):
    """The contract with the public re-implementation's network (`SR3ReferenceUNet`, official init), tiny: two
    levels, attention at the coarser one (8 px of the 16 px batches) and after the first middle block."""

    scale = 4
    parallel = {"solver": {"method": "anderson", "tolerance": 1e-5}}  # 14 of 25 rounds; 5.4e-5 from DDIM
    parallel_tolerance = 5e-4

    def networks(self):
        tiny = dict(inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(8,), res_blocks=1, dropout=0.0)
        return {"net": SR3ReferenceUNet(in_channel=6, image_size=16, **tiny)}

    def build(self, networks, **settings):
        return TestSR3Contract.build(self, networks, **settings)
