"""DiffIR's two LightningModules: what trains in each phase, the frozen teacher, the stage-1 hand-off
(and its errors), the learning rates per phase, and restoration of any size."""

from __future__ import annotations

import pytest
import torch

from ir_lightning.methods.diffir import DiffIRS1, DiffIRS2, Stage1CheckpointError
from ir_lightning.nets.diffir import CPEN, DIRformer, IPRDenoiser
from ir_lightning.training.optim import StepDecay
from tests.helpers.contract import MethodContract
from tests.helpers.nets import tiny_diffir

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))


def batch(scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"lq": torch.rand(2, 3, 8, 8, generator=g), "gt": torch.rand(2, 3, 8 * scale, 8 * scale, generator=g)}


def stage2(**kwargs) -> DiffIRS2:
    torch.manual_seed(0)
    return DiffIRS2(
        restorer=DIRformer(scale=4, **TINY),
        cpen_s1=CPEN(4, True, 1),
        cpen_s2=CPEN(4, False, 1),
        denoiser=IPRDenoiser(),
        scale=4,
        **kwargs,
    )


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_stage1_trains_both_networks():
    model = DiffIRS1(restorer=DIRformer(scale=4, **TINY), cpen_s1=CPEN(4, True, 1), scale=4)
    model.training_loss(batch()).backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads(model.cpen_s1))
    assert all(g is not None for g in grads(model.restorer))


def test_stage2_joint_phase_gradients_reach_cpen_s2_through_the_steps_not_the_teacher():
    model = stage2(prior_steps=0)
    model.training_loss(batch()).backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads(model.cpen_s2))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(model.denoiser))
    assert all(g is None for g in grads(model.cpen_s1))
    assert not any(p.requires_grad for p in model.cpen_s1.parameters())


def test_stage2_prior_phase_leaves_the_restorer_untouched():
    model = stage2(prior_steps=10)
    optimizer = model.configure_optimizers()["optimizer"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.training_loss(batch()).backward()
    model.on_before_optimizer_step(optimizer)
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("cpen_s2.", "denoiser.")) for k in changed)
    assert any(k.startswith("cpen_s2.") for k in changed) and any(k.startswith("denoiser.") for k in changed)
    assert all(not optimizer.state[p] for p in model.restorer.parameters())  # no Adam moments either


def test_learning_rates_per_phase():
    model = stage2(prior_steps=100, prior_lr_schedule=StepDecay(60, 0.1), lr_schedule=StepDecay(80, 0.5, start=100))
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert [g["name"] for g in optimizer.param_groups] == ["prior", "restorer"]
    base = optimizer.defaults["lr"]
    expected = {0: (base, 0.0), 60: (base * 0.1, 0.0), 100: (base, base), 180: (base * 0.5, base * 0.5)}
    for step in range(181):
        if step in expected:
            assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(list(expected[step]))
        optimizer.step()
        scheduler.step()


def save_stage1(path, model: DiffIRS1) -> None:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {}}, path)


def test_stage1_hand_off_loads_teacher_and_restorer(tmp_path):
    torch.manual_seed(1)
    s1 = DiffIRS1(restorer=DIRformer(scale=4, **TINY), cpen_s1=CPEN(4, True, 1), scale=4)
    save_stage1(tmp_path / "s1.ckpt", s1)
    model = stage2()
    report = model.load_stage1(tmp_path / "s1.ckpt")
    assert report == {"missing": [], "unexpected": []}
    for key, value in s1.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_stage1_hand_off_errors_name_the_keys(tmp_path):
    other_teacher = DiffIRS1(restorer=DIRformer(scale=4, **TINY), cpen_s1=CPEN(4, True, 2), scale=4)
    save_stage1(tmp_path / "teacher.ckpt", other_teacher)
    with pytest.raises(Stage1CheckpointError, match=r"CPEN_S1 does not match.*unexpected: body\.3\.body\.0\.bias"):
        stage2().load_stage1(tmp_path / "teacher.ckpt")
    wider = DiffIRS1(restorer=DIRformer(scale=4, **{**TINY, "dim": 16}), cpen_s1=CPEN(4, True, 1), scale=4)
    save_stage1(tmp_path / "wider.ckpt", wider)
    with pytest.raises(
        Stage1CheckpointError,
        match=r"DIRformer does not match.*modulation\.linear\.weight \(64, 256\) vs \(32, 256\).*\(\+102 more\)",
    ):
        stage2().load_stage1(tmp_path / "wider.ckpt")
    deeper = DiffIRS1(
        restorer=DIRformer(scale=4, **{**TINY, "num_refinement_blocks": 2}), cpen_s1=CPEN(4, True, 1), scale=4
    )
    save_stage1(tmp_path / "deeper.ckpt", deeper)
    with pytest.warns(UserWarning, match=r"non-strictly: unexpected: refinement\.1\."):
        report = stage2().load_stage1(tmp_path / "deeper.ckpt")
    assert report["missing"] == [] and all(k.startswith("refinement.1.") for k in report["unexpected"])
    with pytest.raises(FileNotFoundError, match="stage1_ckpt"):
        stage2().load_stage1(tmp_path / "missing.ckpt")


def test_restore_any_size_is_seeded_and_stage1_needs_gt():
    model = stage2().eval()
    lq = torch.rand(1, 3, 5, 7)
    out = model.restore(lq)
    assert out.shape == (1, 3, 20, 28) and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(model.restore(lq), out, rtol=0, atol=0)
    s1 = DiffIRS1(restorer=DIRformer(scale=4, **TINY), cpen_s1=CPEN(4, True, 1), scale=4).eval()
    assert s1.restore_with_gt(lq, torch.rand(1, 3, 20, 28)).shape == (1, 3, 20, 28)
    assert s1.restore_batch({"lq": lq, "gt": torch.rand(1, 3, 20, 28)}).shape == (1, 3, 20, 28)
    with pytest.raises(ValueError, match="stage-2"):
        s1.restore(lq)


@pytest.mark.parametrize(("scale", "unshuffle", "size"), [(1, 4, (20, 44)), (2, 2, (12, 20))], ids=["x1", "x2"])
def test_real_sr_x1_x2_networks_restore_any_size(scale, unshuffle, size):
    """The real-SR x1 / x2 DIRformer unshuffles the LQ by 4 / 2 before its three halvings: the method pads the LQ to
    a multiple of 32 / 16 (not 8) and crops the result back to scale x the LQ, in both stages."""
    torch.manual_seed(0)
    restorer = DIRformer(scale=scale, unshuffle=unshuffle, **TINY)
    model = DiffIRS2(restorer, CPEN(scale, True, 1), CPEN(scale, False, 1), IPRDenoiser(), scale=scale).eval()
    assert model.multiple == 8 * unshuffle
    lq = torch.rand(1, 3, *size)
    out = model.restore(lq)
    assert out.shape == (1, 3, size[0] * scale, size[1] * scale) and 0 <= out.min() and out.max() <= 1
    s1 = DiffIRS1(restorer=restorer, cpen_s1=model.cpen_s1, scale=scale).eval()
    assert s1.restore_with_gt(lq, torch.rand(1, 3, size[0] * scale, size[1] * scale)).shape == out.shape


class TestDiffIRS1Contract(MethodContract):
    scale = 4
    size = 32  # an 8 x 8 LQ: the DIRformer pads by reflection to a multiple of 8
    restores_lq_alone = False

    def networks(self):
        return tiny_diffir(4, stage=1)

    def build(self, networks, **settings):
        return DiffIRS1(**networks, **(dict(scale=4) | settings))


class TestDiffIRS2Contract(MethodContract):
    scale = 4
    size = 32  # an 8 x 8 LQ: the DIRformer pads by reflection to a multiple of 8

    def networks(self):
        return tiny_diffir(4, stage=2)

    def build(self, networks, **settings):
        return DiffIRS2(**networks, **(dict(scale=4) | settings))
