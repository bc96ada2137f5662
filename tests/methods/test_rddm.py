"""The RDDM LightningModule: objectives, input assembly, conditioning and the sampler's wiring,
checked with an oracle network that knows the target (restoration must then be exact)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ir_lightning.degradations import bicubic_upsample
from ir_lightning.diffusion.deq import SolverSettings
from ir_lightning.methods.rddm import RDDM, RDDMSchedule
from ir_lightning.methods.settings import Sampling
from ir_lightning.nets.rddm import TwoUNets
from ir_lightning.nets.rddm_official import OfficialTwoUNets
from ir_lightning.nets.unet import UNet
from tests.helpers.contract import MethodContract
from tests.helpers.nets import tiny_two_unets

SMALL = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(), dropout=0.0, norm_groups=4)


class Oracle(nn.Module):
    """Knows I_0 (in [-1, 1]): from x = concat([I_t, I_in]) and cond = (alpha_bar, beta_bar) it returns
    the true I_res and the eps that I_t implies."""

    def __init__(self, i_0: torch.Tensor) -> None:
        super().__init__()
        self.i_0 = i_0
        self.calls: list[torch.Tensor] = []

    def forward(self, x, cond):
        self.calls.append(cond)
        i_t, i_in = x[:, :3], x[:, 3:6]
        a, b = (c.double().view(-1, 1, 1, 1) for c in cond.unbind(1))
        i_res = i_in - self.i_0
        return i_res, ((i_t.double() - self.i_0 - a * i_res) / b).float()


def test_restore_with_an_oracle_network_returns_the_target_through_upsampling_and_conditioning():
    # a smooth target, so that the residual to its upsampled LR stays inside the clamp of I_res
    gt = bicubic_upsample(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2, (16, 16))
    gt = gt.clamp(0, 1)
    lq = torch.nn.functional.avg_pool2d(gt, 4)  # 4x4 LR
    i_0 = gt * 2 - 1
    model = RDDM(
        net=Oracle(i_0),
        condition="coefficients",
        scale=4,
        sampling=Sampling(steps=3),
        schedule=RDDMSchedule(n_steps=100, sum_scale=0.01),
    )
    i_in = bicubic_upsample(lq, (16, 16)) * 2 - 1
    assert float((i_in - i_0).abs().max()) <= 1.0  # inside the clamp of I_res
    restored = model.restore(lq)
    torch.testing.assert_close(restored, gt, rtol=0, atol=1e-5)
    assert len(model.net.calls) == 3 and model.net.calls[0].shape == (2, 2)
    torch.testing.assert_close(model.net.calls[0][:, 0], torch.ones(2))  # alpha_bar_T = 1 at the first step


@pytest.mark.parametrize("objective", ["pred_res_noise", "pred_res", "pred_noise"])
def test_each_objective_trains_and_samples(objective):
    net = TwoUNets(**SMALL) if objective == "pred_res_noise" else UNet(in_channels=6, out_channels=3, **SMALL)
    model = RDDM(net=net, objective=objective, sampling=Sampling(steps=2), schedule=RDDMSchedule(n_steps=50))
    batch = {"gt": torch.rand(2, 3, 16, 16), "lq": torch.rand(2, 3, 16, 16)}
    loss = model.training_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.net.parameters())
    out = model.restore(batch["lq"], size=(16, 16))
    assert out.shape == (2, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1
    torch.testing.assert_close(model.restore(batch["lq"], size=(16, 16)), out)  # seeded sampling repeats


def test_a_net_with_the_wrong_number_of_outputs_is_named():
    model = RDDM(net=UNet(in_channels=6, out_channels=3, **SMALL), objective="pred_res_noise")
    with pytest.raises(ValueError, match="pred_res_noise needs a net with 2 output"):
        model.training_loss({"gt": torch.rand(1, 3, 8, 8), "lq": torch.rand(1, 3, 8, 8)})


def test_mask_channel_and_generation_inputs():
    masked = RDDM(net=TwoUNets(in_channels=7, **SMALL), use_mask=True, schedule=RDDMSchedule(n_steps=20))
    batch = {"gt": torch.rand(1, 3, 8, 8), "lq": torch.rand(1, 3, 8, 8)}
    with pytest.raises(KeyError, match="use_mask is set but the batch has no 'mask'"):
        masked.training_loss(batch)
    assert torch.isfinite(masked.training_loss({**batch, "mask": torch.ones(1, 1, 8, 8)}))
    generator = RDDM(net=TwoUNets(**SMALL), generation=True, schedule=RDDMSchedule(n_steps=20, sum_scale=1.0))
    assert torch.isfinite(generator.training_loss({"gt": torch.rand(1, 3, 8, 8)}))  # no lq needed
    assert generator.restore_batch({"gt": torch.rand(1, 3, 8, 8)}).shape == (1, 3, 8, 8)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="objective must be one of"):
        RDDM(net=nn.Identity(), objective="pred_x0")
    with pytest.raises(ValueError, match="sampling steps must lie in"):
        RDDM(net=nn.Identity(), sampling=Sampling(steps=2000))  # beyond the schedule's T = 1000
    model = RDDM(net=nn.Identity(), condition="t")
    with pytest.raises(ValueError, match="condition: coefficients"):
        model.conditioning(None, torch.zeros(1), torch.zeros(1))


def test_hyperparameters_load_with_weights_only(tmp_path):
    model = RDDM(net=nn.Identity(), schedule=RDDMSchedule(n_steps=30, sum_scale=0.5))
    torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.ckpt")
    loaded = torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]
    assert RDDM(net=nn.Identity(), **loaded).schedule.n_steps == 30


@pytest.mark.parametrize("solver", ["anderson", "picard"])
def test_the_parallel_solver_restores_what_the_sequential_sampler_does(solver):
    """solver=anderson|picard solves the eta = 0 sampler as one fixed point: the same image, with the mask
    channel tiled along with the stacked steps, reached by the solver's tolerance in fewer rounds than
    steps, so that the T bound (every state exact after T rounds) cannot make it right (measured: Anderson
    7 rounds, Picard 6, of 10)."""
    torch.manual_seed(0)
    net = TwoUNets(**(SMALL | {"in_channels": 7}))
    settings = dict(schedule=RDDMSchedule(n_steps=50), use_mask=True)
    sequential = RDDM(net=net, sampling=Sampling(steps=10), **settings).eval()
    parallel = RDDM(
        net=net, sampling=Sampling(steps=10, solver=SolverSettings(solver, tolerance=1e-5)), **settings
    ).eval()
    lq, mask = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    expected = sequential.restore(lq, size=(16, 16), mask=mask)
    batches: list[int] = []
    hook = net.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    restored, solve = parallel.restoration(lq, size=(16, 16), mask=mask)
    torch.testing.assert_close(restored, expected, rtol=0, atol=1e-4)
    hook.remove()
    assert solve.stopped_by == "tolerance" and solve.iterations < 10
    assert max(batches) > 2  # the parallel run evaluated several steps of the 2 images in one call
    with pytest.raises(ValueError, match="solver.method=anderson solves the deterministic chain .* eta=0.5"):
        RDDM(net=net, sampling=Sampling(eta=0.5, solver=SolverSettings("anderson")))
    with pytest.raises(ValueError, match="newton"):
        RDDM(net=net, sampling={"solver": {"method": "newton"}})


# --- the training loss against its targets (issue 16) ------------------------------------------------
def loss_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """GT and LQ on a grid of k / 256, so that 2x - 1 and I_in - I_0 are exact in float32 however they are
    computed: the oracle's I_res is then bit-equal to the module's."""
    g = torch.Generator().manual_seed(seed)
    gt, lq = (torch.randint(0, 257, (3, 3, 8, 8), generator=g).float() / 256 for _ in range(2))
    return {"gt": gt, "lq": lq}


@pytest.fixture
def drawn_noise(monkeypatch) -> list[torch.Tensor]:
    """Every tensor `torch.randn` returns while the test runs (the forward process's eps)."""
    draws: list[torch.Tensor] = []
    randn = torch.randn

    def recording(*args, **kwargs):
        draws.append(randn(*args, **kwargs))
        return draws[-1]

    monkeypatch.setattr(torch, "randn", recording)
    return draws


class TrainingOracle(nn.Module):
    """Returns the true targets of the objective: I_res = I_in - I_0 = 2 (LQ - GT) from the batch itself
    (RDDM's convention: the residual points from the target to the degraded input) and the eps the module
    drew; it checks the I_t and I_in it is shown against the forward process I_t = (1 - alpha_bar_t) I_0
    + alpha_bar_t I_in + beta_bar_t eps, with (alpha_bar_t, beta_bar_t) its conditioning."""

    def __init__(self, batch: dict[str, torch.Tensor], objective: str, draws: list[torch.Tensor]) -> None:
        super().__init__()
        self.i_0, self.i_in = batch["gt"] * 2 - 1, batch["lq"] * 2 - 1
        self.objective, self.draws = objective, draws

    def forward(self, x, cond):
        assert len(self.draws) == 1 and self.draws[0].shape == self.i_0.shape  # one eps, drawn before the net
        eps, i_res = self.draws[0], self.i_in - self.i_0
        a, b = (c.double().view(-1, 1, 1, 1) for c in cond.unbind(1))
        assert ((a > 0) & (a <= 1) & (b > 0)).all()
        expected_i_t = (1 - a) * self.i_0.double() + a * self.i_in.double() + b * eps.double()
        torch.testing.assert_close(x[:, :3].double(), expected_i_t, rtol=0, atol=1e-6)
        torch.testing.assert_close(x[:, 3:6], self.i_in, rtol=0, atol=0)
        if self.objective == "pred_res_noise":
            return i_res, eps
        return i_res if self.objective == "pred_res" else eps


@pytest.mark.parametrize("loss", ["l1", "l2"])
@pytest.mark.parametrize("objective", ["pred_res_noise", "pred_res", "pred_noise"])
def test_the_training_loss_of_the_oracle_of_each_objective_is_zero(objective, loss, drawn_noise):
    """A network that returns the true I_res (= I_in - I_0) and the drawn eps has loss exactly 0: a target
    of -I_res, or the noise where I_res is due (or the other way), leaves a loss of order 1."""
    batch = loss_batch()
    model = RDDM(
        net=TrainingOracle(batch, objective, drawn_noise),
        objective=objective,
        loss=loss,
        condition="coefficients",
        schedule=RDDMSchedule(n_steps=50),
    )
    value = model.training_loss(batch)
    assert len(drawn_noise) == 1
    assert value.item() == 0.0


class Zero(nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.n_outputs = outputs

    def forward(self, x, cond):
        zeros = torch.zeros_like(x[:, :3])
        return (zeros, zeros) if self.n_outputs == 2 else zeros


@pytest.mark.parametrize("loss", ["l1", "l2"])
@pytest.mark.parametrize("objective", ["pred_res_noise", "pred_res", "pred_noise"])
def test_the_training_loss_of_a_zero_network_is_the_mean_size_of_its_targets(objective, loss, drawn_noise):
    """Predicting 0 costs mean |target| (l1) or mean target^2 (l2) for each output, summed over I_res and
    eps for pred_res_noise (the paper's two-term loss), with I_res = 2 (LQ - GT) and eps the drawn noise."""
    batch = loss_batch(1)
    model = RDDM(
        net=Zero(2 if objective == "pred_res_noise" else 1),
        objective=objective,
        loss=loss,
        schedule=RDDMSchedule(n_steps=50),
    )
    value = model.training_loss(batch)
    (eps,) = drawn_noise
    i_res = 2 * (batch["lq"].double() - batch["gt"].double())
    size = (lambda v: v.abs().mean()) if loss == "l1" else (lambda v: (v**2).mean())
    res, noise = size(i_res), size(eps.double())
    expected = {"pred_res_noise": res + noise, "pred_res": res, "pred_noise": noise}
    torch.testing.assert_close(value.double(), expected[objective], rtol=1e-6, atol=0)
    assert abs(res - noise) > 0.05  # the two terms differ by far more than the tolerance: a swap shows


class TestRDDMContract(MethodContract):
    parallel = {"solver": {"method": "anderson", "tolerance": 1e-5}}

    def networks(self):
        return {"net": tiny_two_unets()}

    def build(self, networks, **settings):
        return RDDM(**networks, **(dict(schedule=RDDMSchedule(n_steps=50), sampling=Sampling(steps=10)) | settings))


class TestRDDMWithOfficialNetContract(MethodContract):
    """The method with the official network (`ir_lightning.nets.rddm_official`), tiny: its time is the official
    step index round(t / T * time_scale) - 1, here with time_scale = T = 50."""

    parallel = {"solver": {"method": "anderson", "tolerance": 1e-5}}

    def networks(self):
        tiny = dict(dim=8, dim_mults=(1, 2), resnet_block_groups=4, heads=2, dim_head=4, time_scale=50.0)
        return {"net": OfficialTwoUNets(**tiny)}

    def build(self, networks, **settings):
        return RDDM(**networks, **(dict(schedule=RDDMSchedule(n_steps=50), sampling=Sampling(steps=10)) | settings))
