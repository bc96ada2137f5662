"""DiffIR through the real command line: stage 1 -> stage 2 hand-off on the demo photos for GoPro-style
deblurring (progressive patches on), stage 2 under 2-process DDP, the real-SR chain stage 1 -> stage 2 -> GAN (GAN under DDP), a mismatched
stage-1 checkpoint stopped with the keys named. Every DiffIR recipe is the base of one of these runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.test_cli import data_args, load, run

pytestmark = pytest.mark.slow

TINY = ["-c", str(REPO / "tests/configs/diffir_tiny.yaml"), "-c", str(REPO / "tests/configs/quiet.yaml")]


def recipe(name: str) -> list[str]:
    return ["-c", str(REPO / f"recipes/{name}.yaml"), "-c", str(REPO / f"recipes/demo/{name}_cpu.yaml"), *TINY]


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def gopro_stage1(tmp_path_factory, sr_shards) -> Path:
    """A directory holding a 4-step GoPro-style stage-1 run (runs/diffir_s1_gopro_demo)."""
    cwd = tmp_path_factory.mktemp("stage1")
    run(["fit", *recipe("diffir_s1_gopro"), *data_args(sr_shards)], cwd)
    return cwd


def with_stage1(gopro_stage1: Path, tmp_path: Path) -> Path:
    shutil.copytree(gopro_stage1 / "runs/diffir_s1_gopro_demo", tmp_path / "runs/diffir_s1_gopro_demo")
    return tmp_path


def test_gopro_stage1_to_stage2(gopro_stage1: Path, tmp_path: Path, sr_shards):
    with_stage1(gopro_stage1, tmp_path)
    s1 = load(tmp_path / "runs/diffir_s1_gopro_demo/checkpoints/last.ckpt")
    assert s1["global_step"] == 4 and s1["hyper_parameters"]["_class_path"] == "ir_lightning.methods.DiffIRS1"
    run(["fit", *recipe("diffir_s2_gopro"), *data_args(sr_shards), "--model.init_args.prior_steps=2"], tmp_path)
    s2 = load(tmp_path / "runs/diffir_s2_gopro_demo/checkpoints/last.ckpt")
    assert s2["global_step"] == 4
    # the frozen teacher is stage 1's CPEN_S1 (its EMA weights): bit for bit in the live weights; the EMA of a
    # constant drifts by float32 rounding only
    for key, value in part(s1["state_dict"], "cpen_s1.").items():
        assert torch.equal(s2["current_model_state"][key], value), key
        torch.testing.assert_close(s2["state_dict"][key], value, rtol=0, atol=1e-6)
    # the DIRformer started from stage 1's, sat out the 2 prior-only steps, then trained
    assert not torch.equal(
        s2["current_model_state"]["restorer.embed.weight"], s1["state_dict"]["restorer.embed.weight"]
    )
    restorer_moments = s2["optimizer_states"][0]["state"]
    groups = s2["optimizer_states"][0]["param_groups"]
    assert [g["name"] for g in groups] == ["prior", "restorer"]
    assert all(int(restorer_moments[i]["step"]) == 2 for i in groups[1]["params"])  # joint steps 2 and 3 only
    assert all(int(restorer_moments[i]["step"]) == 4 for i in groups[0]["params"])
    last = tmp_path / "runs/diffir_s2_gopro_demo/checkpoints/last.ckpt"
    done = run(["validate", *recipe("diffir_s2_gopro"), *data_args(sr_shards), f"--ckpt_path={last}"], tmp_path)
    assert "val/psnr" in done.stdout + done.stderr


def test_stage2_under_two_process_ddp_crosses_the_phase_switch(gopro_stage1: Path, tmp_path: Path, sr_shards):
    """The prior-only phase leaves the DIRformer out of the loss; its zero term keeps DDP's buckets complete."""
    with_stage1(gopro_stage1, tmp_path)
    done = run(
        [
            "fit",
            *recipe("diffir_s2_gopro"),
            *data_args(sr_shards),
            "--model.init_args.prior_steps=2",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
        ],
        tmp_path,
    )
    assert "All distributed processes registered. Starting with 2 processes" in done.stdout + done.stderr
    s2 = load(tmp_path / "runs/diffir_s2_gopro_demo/checkpoints/last.ckpt")
    state, groups = s2["optimizer_states"][0]["state"], s2["optimizer_states"][0]["param_groups"]
    assert s2["global_step"] == 4 and all(int(state[i]["step"]) == 2 for i in groups[1]["params"])


def test_mismatched_stage1_checkpoint_names_the_keys(gopro_stage1: Path, tmp_path: Path, sr_shards):
    with_stage1(gopro_stage1, tmp_path)
    done = run(
        ["fit", *recipe("diffir_s2_gopro"), *data_args(sr_shards), "--model.init_args.cpen_s1.init_args.res_blocks=3"],
        tmp_path,
        check=False,
    )
    assert done.returncode != 0
    assert "CPEN_S1 does not match model.init_args.cpen_s1" in done.stderr
    assert "missing: body.4.body.0.bias" in done.stderr


def test_real_sr_stage1_stage2_gan_chain(tmp_path: Path, sr_shards):
    extra = {
        "diffir_s1_realsr_x4": [],
        "diffir_s2_realsr_x4": ["--model.init_args.prior_steps=2"],
        # the GAN stage under 2-process DDP, with the strategy its recipe names (each backward reaches one network)
        "diffir_s2gan_realsr_x4": ["--trainer.devices=2", "--trainer.strategy=ddp_find_unused_parameters_true"],
    }
    for name, args in extra.items():
        done = run(["fit", *recipe(name), *data_args(sr_shards), *args], tmp_path)
    assert "Starting with 2 processes" in done.stdout + done.stderr
    s2 = load(tmp_path / "runs/diffir_s2_realsr_x4_demo/checkpoints/last.ckpt")
    gan = load(tmp_path / "runs/diffir_s2gan_realsr_x4_demo/checkpoints/last.ckpt")
    assert gan["global_step"] == 4  # 2 iterations x (generator + discriminator)
    assert len(gan["optimizer_states"]) == 2
    assert any(k.startswith("discriminator.") for k in gan["state_dict"])
    for key, value in part(s2["state_dict"], "cpen_s1.").items():
        assert torch.equal(gan["current_model_state"][key], value), key
