"""Denoising as Adaptation: channel shuffling, the residual-swapped negatives D sees, the triplet
term and its gradients, the ramp, the unpaired-reference variant, and an export that holds the
restorer alone and restores like the trained module."""

from __future__ import annotations

import math

import pytest
import torch

from ir_lightning.commands.export import export_weights
from ir_lightning.methods.noise_da import DenoisingAsAdaptation, draw_swaps, ramp, shuffle_slots, triplet
from ir_lightning.methods.sr3 import to_signed
from ir_lightning.nets.guided_diffusion import GuidedDiffusionUNet
from ir_lightning.nets.restorer import ResidualUNet
from tests.helpers.contract import MethodContract
from tests.helpers.nets import tiny_da, tiny_unet
from tests.nets.test_guided_diffusion import TINY

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")


def test_channel_shuffling_frequency_and_pairs_intact():
    swaps = draw_swaps(20_000, 0.5, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert abs(swaps.float().mean().item() - 0.5) < 0.05
    a, b = torch.arange(8.0).reshape(8, 1, 1, 1), -torch.arange(8.0).reshape(8, 1, 1, 1) - 100
    swap = torch.tensor([True, False] * 4)
    slot_a, slot_b = shuffle_slots(a, b, swap)
    for i in range(8):
        assert {slot_a[i].item(), slot_b[i].item()} == {a[i].item(), b[i].item()}  # each sample keeps its pair
        assert (slot_a[i].item() == b[i].item()) == bool(swap[i])


class Recorder(torch.nn.Module):
    """A stand-in for D that records its inputs and returns zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.scale * x[:, :3]


class AddBias(torch.nn.Module):
    """A restorer whose residual is a per-channel constant plus a fraction of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.1, -0.2, 0.05]).reshape(1, 3, 1, 1))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias + 0.5 * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


def test_residual_swap_builds_exactly_the_negatives():
    recorder = Recorder()
    model = DenoisingAsAdaptation(restorer=AddBias(), diffusion=recorder)
    g = torch.Generator().manual_seed(0)
    lq_syn, lq_real, gt = (torch.rand(6, 3, 8, 8, generator=g) for _ in range(3))
    model.training_loss({"gt": gt, "lq": lq_syn, "real_lq": lq_real})
    positive, negative = recorder.inputs
    res_syn, res_real = model.residual(lq_syn), model.residual(lq_real)
    expected = [(lq_syn + res_syn, lq_real + res_real), (lq_syn + res_real, lq_real + res_syn)]
    for seen, (first, second) in zip((positive, negative), expected):
        slots = seen[:, 3:6], seen[:, 6:9]
        for i in range(6):
            kept = torch.allclose(slots[0][i], to_signed(first[i])) and torch.allclose(
                slots[1][i], to_signed(second[i])
            )
            swapped = torch.allclose(slots[0][i], to_signed(second[i])) and torch.allclose(
                slots[1][i], to_signed(first[i])
            )
            assert kept or swapped, i  # the slots hold exactly this pair, in either order
    assert torch.equal(positive[:, :3], negative[:, :3])  # the same noisy target for both


def test_triplet_zero_beyond_the_margin_and_gradient_signs():
    anchor = torch.zeros(4, 3)
    positive = torch.full((4, 3), 0.1)  # MSE 0.01
    far = torch.full((4, 3), 0.4)  # MSE 0.16 >= 0.01 + 0.1
    assert triplet(anchor, positive, far, margin=0.1).item() == 0.0
    near = torch.full((4, 3), 0.2, requires_grad=True)  # MSE 0.04 < 0.11
    pos = positive.clone().requires_grad_(True)
    loss = triplet(anchor, pos, near, margin=0.1)
    assert loss.item() == pytest.approx(0.01 - 0.04 + 0.1)
    loss.backward()
    assert bool((pos.grad > 0).all())  # descending moves the positive toward the anchor (0)
    assert bool((near.grad < 0).all())  # and the negative away from it


def test_ramp_closed_form():
    assert ramp(0.0) == 0.0
    assert ramp(0.5) == pytest.approx((2 / (1 + math.exp(-2.5)) - 1) * 0.2)
    assert ramp(1.0) == pytest.approx((2 / (1 + math.exp(-5.0)) - 1) * 0.2)
    assert ramp(3.0) == ramp(1.0)


def test_unpaired_variant_noises_another_samples_gt_and_has_no_triplet():
    recorder = Recorder()
    model = DenoisingAsAdaptation(restorer=AddBias(), diffusion=recorder, contrastive=False)
    gt = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 3, 4, 4).clone() / 4
    reference = model.unpaired_reference({"gt": gt}, torch.Generator().manual_seed(1))
    assert all(not torch.equal(reference[i], gt[i]) for i in range(4))
    assert sorted(reference[:, 0, 0, 0].tolist()) == sorted(gt[:, 0, 0, 0].tolist())
    model.training_loss({"gt": gt, "lq": torch.rand(4, 3, 4, 4), "real_lq": torch.rand(4, 3, 4, 4)})
    assert len(recorder.inputs) == 1  # no negative pass


def test_export_holds_the_restorer_alone_and_restores_alike(tmp_path):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    model = DenoisingAsAdaptation(**tiny_da())
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    batch = {"gt": torch.rand(2, 3, 16, 16), "lq": torch.rand(2, 3, 16, 16), "real_lq": torch.rand(2, 3, 16, 16)}
    trainer.fit(model, torch.utils.data.DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    export_weights(tmp_path / "full.ckpt", tmp_path / "restorer.ckpt")
    exported = torch.load(tmp_path / "restorer.ckpt", weights_only=True)
    assert exported["state_dict"] and all(k.startswith("restorer.") for k in exported["state_dict"])
    loaded = DenoisingAsAdaptation.load_from_checkpoint(tmp_path / "restorer.ckpt", weights_only=True, **tiny_da())
    assert loaded.diffusion is None
    lq = torch.rand(1, 3, 20, 12)
    torch.testing.assert_close(loaded.restore(lq), model.restore(lq), rtol=0, atol=0)


def test_ramp_restorer_only_scales_the_restorers_share_not_ds():
    """With the ramp on the restorer only, D's gradient is the full-weight one and the restorer's
    gradient from the diffusion term is the ramped one: compare against the paper's weighting."""
    g = torch.Generator().manual_seed(0)
    batch = {key: torch.rand(4, 3, 8, 8, generator=g) for key in ("gt", "lq", "real_lq")}

    def grads(ramp_restorer_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = DenoisingAsAdaptation(
            restorer=AddBias(),
            diffusion=tiny_unet(9),
            ramp_steps=1,
            charbonnier_eps=1.0,
            ramp_restorer_only=ramp_restorer_only,
        )
        model.noise_loss_weight = lambda: 0.25  # type: ignore[method-assign]
        model.training_loss(batch).backward()
        d_grad = next(model.diffusion.parameters()).grad
        return d_grad, model.restorer.bias.grad

    d_paper, r_paper = grads(False)
    d_ours, r_ours = grads(True)
    torch.testing.assert_close(d_ours, 4 * d_paper)  # D's own gradient: full weight instead of 0.25
    torch.testing.assert_close(r_ours, r_paper)  # the restorer's: ramped alike in both


def test_synthetic_only_baseline_skips_d_and_equals_the_pixel_loss():
    """noise_weight 0 (the baseline adaptation must beat): the loss is the Charbonnier term alone, D is
    never called, yet each of its parameters gets a (zero) gradient so DDP's buckets are complete."""
    recorder = Recorder()
    model = DenoisingAsAdaptation(restorer=AddBias(), diffusion=recorder, noise_weight=0.0, charbonnier_eps=1e-3)
    g = torch.Generator().manual_seed(2)
    batch = {key: torch.rand(4, 3, 8, 8, generator=g) for key in ("gt", "lq", "real_lq")}
    loss = model.training_loss(batch)
    restored = batch["lq"] + model.restorer.bias + 0.5 * batch["lq"]
    expected = torch.sqrt((restored - batch["gt"]) ** 2 + 1e-6).mean()
    torch.testing.assert_close(loss, expected)
    assert recorder.inputs == []
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in recorder.parameters())


class TestDenoisingAsAdaptationContract(MethodContract):
    def networks(self):
        return tiny_da()

    def build(self, networks, **settings):
        return DenoisingAsAdaptation(**networks, **settings)


class TestDAWithOfficialDContract(MethodContract):
    """The method with the official networks, at a tiny width: the guided-diffusion D (embedding the raw gamma,
    attention at one level and in the middle, residual-block resamplers) and Kaiming-initialised R and D, both
    working in [-1, 1] as the official deraining and deblurring."""

    official = {"restorer_range": "signed", "diffusion_range": "signed"}

    def networks(self):
        diffusion = GuidedDiffusionUNet(**TINY, init="kaiming")
        return {"restorer": ResidualUNet(width=8, depth=2, init="kaiming"), "diffusion": diffusion}

    def build(self, networks, **settings):
        return DenoisingAsAdaptation(**networks, **(self.official | settings))
