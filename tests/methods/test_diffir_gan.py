"""DiffIR's optional GAN stage: both networks step each iteration through a real Trainer, the teacher
stays frozen, the VGG stays out of the checkpoint, and the stage-2 hand-off is strict."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from ir_lightning.losses import PerceptualLoss, vgg19_features_stack
from ir_lightning.methods.diffir import DiffIRGAN, DiffIRS2, Stage1CheckpointError
from ir_lightning.nets.diffir import CPEN, DIRformer, IPRDenoiser
from ir_lightning.nets.discriminator import UNetDiscriminatorSN
from ir_lightning.training.callbacks import EMA
from tests.helpers.contract import MethodContract
from tests.helpers.nets import tiny_diffir, tiny_discriminator

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))


def networks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "restorer": DIRformer(scale=4, **TINY),
        "cpen_s1": CPEN(4, True, 1),
        "cpen_s2": CPEN(4, False, 1),
        "denoiser": IPRDenoiser(),
    }


class Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"lq": torch.rand(3, 8, 8, generator=g), "gt": torch.rand(3, 32, 32, generator=g)}


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in vgg19_features_stack().state_dict().items()}, path)
    return str(path)


def test_each_iteration_steps_generator_and_discriminator(tmp_path, vgg_file):
    model = DiffIRGAN(
        **networks(), discriminator=UNetDiscriminatorSN(base_channels=4), perceptual=PerceptualLoss(vgg_file), scale=4
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EMA(decay=0.5)],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, torch.utils.data.DataLoader(Pairs(), batch_size=2))
    assert trainer.global_step == 4  # 2 iterations x 2 optimizers
    assert trainer.fit_loop.epoch_loop.batch_progress.current.completed == 2
    logged = trainer.callback_metrics
    assert {"train/pixel_loss", "train/ipr_loss", "train/gan_loss", "train/perceptual_loss", "train/d_real"} <= set(
        logged
    )
    assert logged["train/perceptual_loss"] > 0
    trained = model.state_dict()  # the EMA weights were copied in at the end of fit; compare the live ones
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], trained[k])}
    assert {"restorer", "cpen_s2", "denoiser", "discriminator"} <= changed
    assert "cpen_s1" not in changed
    trainer.save_checkpoint(tmp_path / "gan.ckpt")
    saved = torch.load(tmp_path / "gan.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("discriminator.") for k in saved["state_dict"])
    assert not any("vgg" in k or "perceptual" in k for k in saved["state_dict"])
    assert [len(state["param_groups"]) for state in saved["optimizer_states"]] == [1, 1]


def test_stage2_hand_off_is_strict(tmp_path):
    s2 = DiffIRS2(**networks(), scale=4)
    torch.save({"state_dict": s2.state_dict()}, tmp_path / "s2.ckpt")
    gan = DiffIRGAN(**networks(), discriminator=UNetDiscriminatorSN(base_channels=4), scale=4)
    with torch.no_grad():
        for p in gan.restorer.parameters():
            p.add_(1.0)
    gan.load_stage2(tmp_path / "s2.ckpt")
    for key, value in s2.state_dict().items():
        assert torch.equal(gan.state_dict()[key], value), key
    other = DiffIRGAN(
        **{**networks(), "cpen_s2": CPEN(4, False, 2)}, discriminator=UNetDiscriminatorSN(base_channels=4), scale=4
    )
    with pytest.raises(Stage1CheckpointError, match=r"stage-2 networks do not match.*missing: cpen_s2\.body\.3\."):
        other.load_stage2(tmp_path / "s2.ckpt")


class TestDiffIRGANContract(MethodContract):
    scale = 4
    size = 32  # an 8 x 8 LQ: the DIRformer pads by reflection to a multiple of 8
    not_reached_by_the_loss = ("discriminator",)  # stepped by its own loss in `training_step`

    def networks(self):
        return tiny_diffir(4, stage=2) | {"discriminator": tiny_discriminator()}

    def build(self, networks, **settings):
        return DiffIRGAN(**networks, **(dict(scale=4) | settings))
