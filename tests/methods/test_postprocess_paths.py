"""The restoring paths that do not go through `restore` post-process too (DeqIR's and DiffIR stage 1's validation
with a ground truth), generation refuses the two options, a graph export refuses a module that post-processes,
and `export --set` writes restoring settings into a published model."""

from __future__ import annotations

import pytest
import torch

import ir_lightning
from ir_lightning import deploy
from ir_lightning.commands import export
from ir_lightning.diffusion.operators import make_operator
from ir_lightning.methods.diffir import DiffIRS1
from ir_lightning.methods.rddm import RDDM
from ir_lightning.methods.sr3 import SR3
from tests.helpers.checkpoints import save_checkpoint, small_deqir
from tests.helpers.nets import tiny_diffir, tiny_two_unets, tiny_unet


def test_deqir_validation_with_a_ground_truth_is_made_consistent_with_its_measurement():
    gt = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    measurement = make_operator("sr2", (16, 16)).forward(gt.double()).float()
    plain = small_deqir(operator="sr2").restore_batch({"gt": gt})
    projected = small_deqir(operator="sr2", consistency="sr2").restore_batch({"gt": gt})
    residual = (make_operator("sr2", (16, 16)).forward(projected.double()) - measurement.double()).abs().max()
    before = (make_operator("sr2", (16, 16)).forward(plain.double()) - measurement.double()).abs().max()
    # the untrained prior's clamp breaks A x = y; the setting's projection and clamping rounds restore it up to what
    # the last clamp leaves (the ground truth lies in [0, 1] and in {A x = y}: the rounds converge towards both)
    assert residual < 1e-3 and residual < before / 100, (residual, before)


def test_diffir_stage1_with_a_ground_truth_gets_the_colour_fix():
    torch.manual_seed(0)
    model = DiffIRS1(**tiny_diffir(stage=1), scale=4, color_fix="adain").eval()
    lq, gt = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)
    out = model.restore_batch({"lq": lq, "gt": gt})
    reference = ir_lightning.inference.postprocess.reference_of(lq, (32, 32))
    # adain matches each channel's mean to the reference's (then [0, 1] clamping may move it a little)
    assert torch.allclose(out.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=2e-2)
    unfixed = DiffIRS1(**tiny_diffir(stage=1), scale=4).eval()
    unfixed.load_state_dict(model.state_dict())
    assert not torch.allclose(unfixed.restore_batch({"lq": lq, "gt": gt}), out)


def test_generation_refuses_the_options_that_read_the_input():
    with pytest.raises(ValueError, match="leave them off with generation"):
        RDDM(net=tiny_two_unets(in_channels=3), generation=True, color_fix="wavelet")
    with pytest.raises(ValueError, match="leave them off with generation"):
        RDDM(net=tiny_two_unets(in_channels=3), generation=True, consistency="sr4")


def test_a_graph_export_refuses_a_module_that_post_processes():
    from ir_lightning.methods.noise_da import DenoisingAsAdaptation
    from tests.helpers.nets import tiny_da

    assert deploy.deployable(DenoisingAsAdaptation(**tiny_da())) is None
    refusal = deploy.deployable(DenoisingAsAdaptation(**tiny_da(), color_fix="wavelet"))
    assert "color_fix wavelet" in refusal and "--set color_fix=none" in refusal


def test_export_set_writes_restoring_settings_the_model_then_restores_with(tmp_path, capsys):
    source = save_checkpoint(small_deqir(), tmp_path / "src.ckpt")
    target = tmp_path / "m.ckpt"
    assert (
        export.main([str(source), str(target), "--half", "--set", "color_fix=wavelet", "--set", "sampling.steps=2"])
        == 0
    )
    model = ir_lightning.load(target, device="cpu", tile=0)
    assert model.module.color_fix == "wavelet" and model.module.sampling.steps == 2
    assert export.main([str(source), str(tmp_path / "x.ckpt"), "--set", "colour=1"]) == 2
    assert "export --set colour: DeqIR has no such setting" in capsys.readouterr().err
    sr3 = SR3(net=tiny_unet(6), scale=4)
    assert sr3.color_fix == "none"  # the default stays off
