"""`ir-lightning import` of a diffusers folder (`--format diffusers`): a UNet2DModel with random weights, saved as
a DDPMPipeline or as a bare UNet with its scheduler config, imports into a DeqIR checkpoint that restores exactly
the image of the same DeqIR chain driven by the diffusers module itself; a learned-variance model gives its eps;
the training schedule is read from the scheduler config (and checked against diffusers' alphas_cumprod); what the
suite cannot rebuild exactly, or a folder that is not such a model, is refused naming the file and the key."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ir_lightning.commands.import_ import main
from ir_lightning.diffusion.deq import ddnm_chain, draw_noises, sequential
from ir_lightning.diffusion.operators import make_operator
from ir_lightning.diffusion.ranges import to_unit
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas, respaced_timesteps
from ir_lightning.importing import diffusers_, official_formats
from ir_lightning.importing.base import ImportRefused
from ir_lightning.importing.diffusers_ import convert, detect
from ir_lightning.inference.loading import load_method
from tests.importing.test_priors_import import built
from tests.nets.test_diffusers_prior import tiny_unet

diffusers = pytest.importorskip("diffusers")
DDPMPipeline, DDPMScheduler = diffusers.DDPMPipeline, diffusers.DDPMScheduler  # imported at collection (lazy module)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SCHEDULE = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)
"""DDPM's schedule (and the official priors')."""
STEPS = 3


def ddpm_scheduler(**changes: Any):
    return DDPMScheduler(**SCHEDULE | changes)


def pipeline_folder(folder: Path, unet, scheduler=None) -> Path:
    """`DDPMPipeline(unet, scheduler).save_pretrained(folder)`: model_index.json, unet/ (safetensors), scheduler/."""
    DDPMPipeline(unet=unet, scheduler=scheduler or ddpm_scheduler()).save_pretrained(folder)
    return folder


def bare_folder(folder: Path, unet, scheduler=None, safetensors: bool = False) -> Path:
    """`unet.save_pretrained(folder)` (`.bin` unless `safetensors`) with `scheduler_config.json` in the folder."""
    unet.save_pretrained(folder, safe_serialization=safetensors)
    (scheduler or ddpm_scheduler()).save_config(folder)
    return folder


def options(operator: str) -> SimpleNamespace:
    settings = [f"sampling.steps={STEPS}", "sampling.solver.method=sequential"]
    return SimpleNamespace(method=None, no_ema=False, set=settings, steps=None, sampler=None, operator=operator)


def direct_restoration(unet, operator_name: str, lq: torch.Tensor) -> torch.Tensor:
    """DeqIR's chain (seed 0, eta 0, the schedule respaced to STEPS, run step after step) on `unet(x, t).sample`
    itself: the measurement on the signed scale, x_T and the chain's noises drawn as DeqIR draws them."""
    alpha_bars = gammas_from_betas(make_betas("linear", 1000, 1e-4, 0.02))
    operator = make_operator(operator_name, (16, 16), seed=0)
    ones = torch.ones(1, 3, 16, 16)
    y = 2 * lq - operator.forward(ones)
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(ones.shape, generator=generator)
    noises = draw_noises(x_T, STEPS, generator)

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.int64
        return unet(x, t).sample

    chain = ddnm_chain(eps_model, operator, y, alpha_bars, respaced_timesteps(1000, STEPS), 0.0, noises)
    return to_unit(sequential(chain, x_T))


@pytest.mark.parametrize(
    ("layout", "operator", "lq_side"), [("pipeline", "sr4", 4), ("bare", "deblur_gauss", 16)], ids=["sr4", "deblur"]
)
def test_an_imported_folder_restores_the_image_of_the_diffusers_module(tmp_path, capsys, layout, operator, lq_side):
    unet = tiny_unet()
    make = pipeline_folder if layout == "pipeline" else bare_folder
    source, output = make(tmp_path / "ddpm", unet), tmp_path / "prior.ckpt"
    assert main([str(source), str(output)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{source}: format diffusers (") and "train_schedule linear 0.0001 .. 0.02, T = 1000" in out
    assert "a 16 x 16 prior (sample_size)" in out and f"{output}: DeqIR, " in out
    hparams = torch.load(output, weights_only=True)["hyper_parameters"]
    assert hparams["train_schedule"] == {"kind": "linear", "n_steps": 1000, "linear_start": 1e-4, "linear_end": 0.02}
    config = hparams["net"]["init_args"]["prior"]["init_args"]["config"]
    assert not any(key.startswith("_") for key in config) and config["block_out_channels"] == [8, 16]
    model = load_method(output, options(operator), torch.device("cpu"))
    assert type(model.net).__name__ == "TimestepPrior" and type(model.net.prior).__name__ == "DiffusersUNet"
    lq = torch.rand(1, 3, lq_side, lq_side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        restored, expected = model.restore(lq), direct_restoration(unet, operator, lq)
    assert restored.shape == (1, 3, 16, 16) and float(expected.std()) > 0.05
    assert float((restored - expected).abs().max()) <= 1e-6


def test_a_learned_variance_model_gives_its_eps(tmp_path):
    unet = tiny_unet(out_channels=6)
    imported = convert(pipeline_folder(tmp_path / "ddpm", unet, ddpm_scheduler(variance_type="learned_range")), None)
    net = built(imported.networks["net"]).eval()
    net.load_state_dict({key.removeprefix("net."): value for key, value in imported.state_dict.items()})
    t = torch.tensor([0, 517, 999])
    levels = gammas_from_betas(make_betas("linear", 1000, 1e-4, 0.02))[t].sqrt().float()  # what DeqIR passes
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eps, full = net(x, levels), unet(x, t).sample
    assert full.shape[1] == 6 and torch.equal(eps, full[:, :3])
    assert not torch.allclose(full[:, 3:], full[:, :3], atol=0.1)  # the variance channels are other numbers
    assert any("the other 3, the learned variance, are dropped" in line for line in imported.report)


@pytest.mark.parametrize(
    ("scheduler", "changes", "schedule"),
    [
        ("DDPMScheduler", {}, {"kind": "linear", "n_steps": 1000, "linear_start": 1e-4, "linear_end": 0.02}),
        (
            "DDIMScheduler",
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
            {"kind": "quad", "n_steps": 1000, "linear_start": 0.00085, "linear_end": 0.012},
        ),
        (
            "DDPMScheduler",
            {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 4000},
            {"kind": "cosine", "n_steps": 4000},
        ),
    ],
)
def test_each_schedule_the_suite_rebuilds_is_read_from_the_scheduler_config(tmp_path, scheduler, changes, schedule):
    getattr(diffusers, scheduler)(**SCHEDULE | changes).save_config(tmp_path)
    report: list[str] = []
    assert diffusers_.training_schedule(tmp_path / "scheduler_config.json", report) == schedule
    assert "alphas_cumprod equal the suite's to float32 rounding" in report[0]


def test_a_schedule_mapped_to_the_wrong_kind_fails_the_alphas_cumprod_check(tmp_path, monkeypatch):
    ddpm_scheduler().save_config(tmp_path)
    monkeypatch.setitem(diffusers_.BETA_SCHEDULES, "linear", "quad")
    with pytest.raises(ImportRefused, match=r"alphas_cumprod\[\d+\] = .* is not the suite's quad"):
        diffusers_.training_schedule(tmp_path / "scheduler_config.json", [])


def edited_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A bare folder (`.bin`) whose state dict `edit` changed in place."""
    path = bare_folder(folder, tiny_unet()) / "diffusion_pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return folder


def renamed(state: dict[str, torch.Tensor]) -> None:
    state["mid_block.attentions.0.to_qX.weight"] = state.pop("mid_block.attentions.0.to_q.weight")


def reshaped(state: dict[str, torch.Tensor]) -> None:
    state["up_blocks.0.attentions.1.to_k.weight"] = state["up_blocks.0.attentions.1.to_k.weight"][:-1]


def without(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    return folder


def latent_pipeline(folder: Path) -> Path:
    """A pipeline folder whose model_index.json names a latent-diffusion pipeline."""
    index = json.loads((pipeline_folder(folder, tiny_unet()) / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "LDMPipeline"}))
    return folder


REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "class_conditional": (
        lambda d: pipeline_folder(d, tiny_unet(num_class_embeds=4)),
        r"unet/config.json: DiffusersUNet: config key 'num_class_embeds' = 4 makes a class-conditional",
    ),
    "grey": (
        lambda d: bare_folder(d, tiny_unet(in_channels=1)),
        r"config.json: 'in_channels' = 1: DeqIR restores RGB images",
    ),
    "v_prediction": (
        lambda d: pipeline_folder(d, tiny_unet(), ddpm_scheduler(prediction_type="v_prediction")),
        r"scheduler_config.json: 'prediction_type' = \"v_prediction\": DeqIR's chain needs an eps-prediction",
    ),
    "sigmoid": (
        lambda d: pipeline_folder(d, tiny_unet(), ddpm_scheduler(beta_schedule="sigmoid")),
        r"scheduler_config.json: 'beta_schedule' = \"sigmoid\": the suite rebuilds linear, ",
    ),
    "trained_betas": (
        lambda d: pipeline_folder(d, tiny_unet(), ddpm_scheduler(trained_betas=[1e-4] * 1000)),
        r"scheduler_config.json: 'trained_betas' is set: explicit betas are not a schedule",
    ),
    "no_weights": (
        lambda d: without(pipeline_folder(d, tiny_unet()), "unet/diffusion_pytorch_model.safetensors"),
        r"unet: no weights \(diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin\); it holds config",
    ),
    "no_scheduler": (
        lambda d: without(bare_folder(d, tiny_unet()), "scheduler_config.json"),
        r"no scheduler_config.json beside the UNet .* add the scheduler_config.json of its training scheduler",
    ),
    "renamed_key": (
        lambda d: edited_weights(d, renamed),
        r"diffusion_pytorch_model.bin: keys that the UNet2DModel of .* mid_block.attentions.0.to_qX.weight",
    ),
    "reshaped": (
        lambda d: edited_weights(d, reshaped),
        r"diffusion_pytorch_model.bin: shapes that do not fit .* up_blocks.0.attentions.1.to_k.weight \(15, 16\)",
    ),
    "latent": (latent_pipeline, r"model_index.json: '_class_name' = \"LDMPipeline\""),
}
"""A folder the import refuses (made in a tmp folder) and the refusal, which names the file and the key."""


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_the_suite_cannot_rebuild_is_refused_naming_the_file_and_key(tmp_path, case):
    make, named = REFUSED[case]
    with pytest.raises(ImportRefused, match=named):
        convert(make(tmp_path / "model"), None)


def test_attention_keys_of_old_diffusers_load_as_diffusers_renames_them(tmp_path):
    source = bare_folder(tmp_path / "bare", tiny_unet())
    path = source / "diffusion_pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {re.sub(r"\.(to_q|to_k|to_v|to_out\.0)\.", lambda m: f".{old[m[1]]}.", k): v for k, v in state.items()}
    assert "mid_block.attentions.0.query.weight" in renamed and len(renamed) == len(state)
    torch.save(renamed, path)
    imported = convert(source, None)
    assert torch.equal(
        imported.state_dict["net.prior.unet.mid_block.attentions.0.to_q.weight"],
        state["mid_block.attentions.0.to_q.weight"],
    )
    assert any(line.startswith("attention keys of diffusers < 0.14 renamed") for line in imported.report)


def test_folders_are_detected_and_passed_to_the_folder_formats_only(tmp_path, capsys):
    source = pipeline_folder(tmp_path / "ddpm", tiny_unet())
    assert detect(source) and detect(source / "unet") and not detect(source / "scheduler")
    assert not detect(source / "model_index.json") and not detect({"unet": 1}) and not detect(tmp_path / "nope")
    assert [name for name, fmt in official_formats().items() if fmt.detect(source)] == ["diffusers"]
    output = tmp_path / "prior.ckpt"
    assert main([str(source / "unet"), str(output)]) == 0  # a pipeline's unet/: the sibling scheduler/ is read
    assert "a UNet2DModel folder" in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("")
    assert main([str(other), str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err
    assert f"{other}: no official format recognises it (a folder holding notes.txt)" in err
    assert "--format (diffusers)" in err
    assert main([str(output), str(tmp_path / "y.ckpt"), "--format", "diffusers"]) == 2
    assert f"{output}: --format diffusers reads a folder, this is a file" in capsys.readouterr().err
    assert main([str(source), str(tmp_path / "z.ckpt"), "--format", "adm"]) == 2
    assert f"{source}: --format adm reads a file, this is a folder" in capsys.readouterr().err
    assert main([str(source), str(source)]) == 2
    assert f"{source} exists: it is the folder to import" in capsys.readouterr().err
    assert main([str(source), str(tmp_path)]) == 2 and "a folder: name the checkpoint file" in capsys.readouterr().err
    assert not any(tmp_path.glob("[xyz].ckpt"))


def test_list_formats_and_help_name_the_folder_format(capsys):
    assert main(["--list-formats"]) == 0
    assert "  diffusers          a diffusers save_pretrained FOLDER: DDPMPipeline" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "or a folder (a diffusers save_pretrained folder)" in " ".join(capsys.readouterr().out.split())
