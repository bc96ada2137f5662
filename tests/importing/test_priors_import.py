"""DeqIR's pretrained priors (OpenAI's `256x256_diffusion_uncond.pt`, SDEdit's `celeba_hq.ckpt`) as DeqIR
checkpoints: each raw state dict is detected (and no other format's file is), converted with its configuration
read from the shapes, and the `TimestepPrior`-wrapped network, called with the levels sqrt(alpha_bar_t) DeqIR
passes, reproduces the official eps (fixtures made by the official code); misfits are refused naming the key; the
imported file restores through `ir-lightning import` and `load_method`."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ir_lightning.class_paths import allowed_class
from ir_lightning.commands.import_ import import_checkpoint
from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas
from ir_lightning.importing import official_formats
from ir_lightning.importing.base import ImportRefused, key_renames
from ir_lightning.importing.noise_da import guided_diffusion_rules
from ir_lightning.importing.priors import FORMATS, convert_adm, convert_ddim, detect_adm, detect_ddim
from ir_lightning.inference.loading import load_method
from ir_lightning.nets.ddim_model import DDIMUNet
from ir_lightning.nets.guided_diffusion import ADM_256_UNCOND, GuidedDiffusionUNet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
ADM_FIXTURE = FIXTURES / "adm" / "fixture.pt"
DDIM_FIXTURE = FIXTURES / "ddim_model" / "fixture.pt"
ADM_256_PARAMETERS = 552_814_086
"""The official `UNetModel` of `256x256_diffusion_uncond.pt` (measured by the fixture's generator)."""


@pytest.fixture(scope="module")
def adm() -> dict[str, Any]:
    return torch.load(ADM_FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def ddim() -> dict[str, Any]:
    return torch.load(DDIM_FIXTURE, weights_only=True)


def built(network: dict[str, Any], **prior_overrides: Any) -> torch.nn.Module:
    """DeqIR's `net` from `Imported.networks["net"]`: the nested prior first, then the `TimestepPrior`."""
    prior_spec = network["init_args"]["prior"]
    prior = allowed_class(prior_spec["class_path"])(**prior_spec["init_args"] | prior_overrides)
    wrapper_args = {key: value for key, value in network["init_args"].items() if key != "prior"}
    return allowed_class(network["class_path"])(prior=prior, **wrapper_args)


def levels(t: torch.Tensor, n_steps: int = 1000) -> torch.Tensor:
    """sqrt(alpha_bar_t) of the official schedule (linear 1e-4 .. 0.02), as DeqIR passes them (float32)."""
    return gammas_from_betas(make_betas("linear", n_steps, 1e-4, 0.02))[t].sqrt().float()


def reproduced(imported, fixture: dict[str, Any], **prior_overrides: Any) -> torch.Tensor:
    net = built(imported.networks["net"], **prior_overrides)
    assert net.image_size == 256
    net.image_size = None  # the fixtures are tiny images (the size check has its own test)
    net.load_state_dict({k[len("net.") :]: v for k, v in imported.state_dict.items()})
    with torch.no_grad():
        return net.eval()(fixture["x"], levels(fixture["t"]))


def test_each_format_detects_its_files_only(adm, ddim):
    assert [fmt.name for fmt in FORMATS] == ["adm", "ddim-model"]
    files = {"adm": dict(adm["state_dict"]), "ddim-model": dict(ddim["state_dict"])}
    for name, fmt in official_formats().items():
        for file_name, state in files.items():
            assert fmt.detect(state) == (name == file_name), (name, file_name)
    noise_da_file = {f"denoise_fn.{k}": v for k, v in adm["state_dict"].items()}
    assert not detect_adm(noise_da_file) and not detect_ddim(noise_da_file)
    assert not detect_adm({"denoise_fn.downs.0.weight": torch.zeros(1)})  # an SR3 file
    assert not detect_adm(None) and not detect_ddim([1, 2]) and not detect_ddim({1: 2})


def test_the_official_adm_is_reproduced_through_the_import(adm):
    state = {k: v.half() for k, v in adm["state_dict"].items()}  # the release's dtype
    imported = convert_adm(state, None)
    assert all(v.dtype == torch.float32 for v in imported.state_dict.values())
    assert any("float16: converted to float32" in line for line in imported.report)
    assert imported.method == "ir_lightning.methods.DeqIR" and imported.recipe == "deqir_imagenet256_sr4"
    assert imported.settings == {
        "train_schedule": {"kind": "linear", "n_steps": 1000, "linear_start": 1e-4, "linear_end": 0.02}
    }
    assert all(key.startswith("net.prior.") for key in imported.state_dict)
    assert any("256 px" in line and "--recipe deqir_imagenet256_<task>" in line for line in imported.report)
    args = imported.networks["net"]["init_args"]["prior"]["init_args"]
    config = adm["config"]
    assert {k: args[k] for k in ("base_channels", "channel_mults", "num_res_blocks", "attention_ds")} == {
        "base_channels": config["model_channels"],
        "channel_mults": config["channel_mult"],
        "num_res_blocks": config["num_res_blocks"],
        "attention_ds": config["attention_resolutions"],
    }
    assert args["out_channels"] == 6 and args["resblock_updown"] and args["scale_shift_norm"]
    assert args["num_head_channels"] == 64 and args["level_input"] == "sqrt_gamma" and args["dropout"] == 0.0
    # the fp16 round trip changes the weights: compare the float32 fixture's import with the official output
    imported = convert_adm(dict(adm["state_dict"]), None)
    out = reproduced(imported, adm, norm_groups=adm["norm_groups"], num_head_channels=config["num_head_channels"])
    assert adm["t"].tolist() == [17, 930]
    assert float((out - adm["out"][:, :3]).abs().max()) <= 1e-5
    assert float(adm["out"][:, :3].abs().max()) > 0.5  # non-trivial: the zero-initialised convolutions re-drawn


def test_the_official_ddim_model_is_reproduced_through_the_import(ddim):
    imported = convert_ddim(dict(ddim["state_dict"]), None)
    assert imported.recipe == "deqir_celebahq256_sr4"
    args = imported.networks["net"]["init_args"]["prior"]["init_args"]
    config = ddim["config"]
    assert {k: args[k] for k in ("ch", "ch_mult", "num_res_blocks", "in_channels", "out_ch")} == {
        k: config[k] for k in ("ch", "ch_mult", "num_res_blocks", "in_channels", "out_ch")
    }
    assert args["resolution"] == 256 and args["attn_resolutions"] == [128]  # level 1, as [8] of 16 px
    assert any("resolution 256" in line for line in imported.report)
    assert any("attention at levels [1] and in the middle" in line for line in imported.report)
    out = reproduced(imported, ddim, norm_groups=ddim["norm_groups"])
    assert float((out - ddim["eps"]).abs().max()) <= 1e-5


def test_the_official_sizes_read_as_the_released_networks(adm, ddim):
    with torch.device("meta"):
        ours = GuidedDiffusionUNet(**ADM_256_UNCOND)
        celeba = {k: torch.empty(v, device="meta") for k, v in ddim["celeba_hq_shapes"].items()}
    assert sum(p.numel() for p in ours.parameters()) == adm["adm256_parameters"] == ADM_256_PARAMETERS
    imported = convert_ddim(celeba, None)
    with torch.device("meta"):
        net = built(imported.networks["net"])
    assert sum(p.numel() for p in net.parameters()) == ddim["celeba_hq_parameters"]
    assert imported.networks["net"]["init_args"]["prior"]["init_args"]["attn_resolutions"] == [16]
    assert any("attention at levels [4] and in the middle" in line for line in imported.report)  # 16 px of 256


@pytest.mark.parametrize(
    ("fmt", "change", "named"),
    [
        ("adm", "rename", "middle_block.1.qkvX.weight"),
        ("adm", "shape", "output_blocks.1.1.qkv.weight"),
        ("adm", "unknown", "label_emb.weight"),
        ("ddim-model", "rename", "mid.attn_1.qX.weight"),
        ("ddim-model", "shape", "up.1.attn.0.k.weight"),
        ("ddim-model", "missing", "conv_out.bias"),
    ],
)
def test_weights_that_do_not_fit_are_refused_by_name(adm, ddim, fmt, change, named):
    state = dict((adm if fmt == "adm" else ddim)["state_dict"])
    if change == "rename":
        state[named] = state.pop(named.replace("X", ""))
    elif change == "shape":
        state[named] = state[named][:-1]
    elif change == "unknown":
        state[named] = torch.zeros(10, 32)
    else:
        del state[named]
    with pytest.raises(ImportRefused, match=re.escape(named)):
        official_formats()[fmt].convert(state, None)


# --- end to end: a file at widths that take the official 32 groups and 64-channel heads ---------------------------
E2E_ADM = dict(
    in_channels=3,
    out_channels=6,
    base_channels=32,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_ds=(2,),
    dropout=0.0,
    num_head_channels=64,
    level_input="sqrt_gamma",
)


def adm_file(adm: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Our GuidedDiffusionUNet at base 32 (the tiny fixture's layout), under the official keys (the fixture's key
    map read backwards), in fp16 as released."""
    official_keys = list(adm["state_dict"])
    args = {"channel_mults": [1, 2], "num_res_blocks": 1}
    rules = guided_diffusion_rules(adm["state_dict"], args)
    ours = key_renames(official_keys, rules)
    torch.manual_seed(0)
    state = GuidedDiffusionUNet(**E2E_ADM).state_dict()
    return {key: state[ours[key]].half() for key in official_keys}


def ddim_file() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return DDIMUNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(128,)).state_dict()


def options(settings: list[str]) -> SimpleNamespace:
    return SimpleNamespace(method=None, no_ema=False, set=settings, steps=None, sampler=None, operator=None)


@pytest.mark.parametrize(
    ("fmt", "file_name", "recipe"),
    [
        ("adm", "256x256_diffusion_uncond.pt", "deqir_imagenet256_sr4"),
        ("ddim-model", "celeba_hq.ckpt", "deqir_celebahq256_sr4"),
    ],
)
def test_import_writes_a_deqir_checkpoint_that_restores(adm, tmp_path, fmt, file_name, recipe):
    source, output = tmp_path / file_name, tmp_path / f"{fmt}.ckpt"
    torch.save(adm_file(adm) if fmt == "adm" else ddim_file(), source)
    report = import_checkpoint(source, output)
    assert report[0].startswith(f"{source}: format {fmt} (") and "DeqIR" in report[-2]
    assert f"settings from recipe {recipe}" in report
    model = load_method(output, options(["sampling.steps=2"]), torch.device("cpu"))
    assert type(model).__name__ == "DeqIR" and type(model.net).__name__ == "TimestepPrior"
    # the paired recipe's official chain and solver, on x4 bicubic SR
    assert (model.operator_name, model.timestep_kind, model.noise_weights, model.preconditioner) == (
        "bicubic4",
        "official",
        "deqir",
        "official",
    )
    assert model.sampling.solver.method == "anderson_official" and model.sampling.solver.max_iter == 15
    assert model.sampling_timesteps().tolist() == [500, 0]  # range(0, 1000, 500), noisiest first
    assert "a 256 x 256 prior" in "\n".join(report) and model.net.image_size == 256
    lq = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"trained on 256 x 256 images and restores that size only, got 16 x 16"):
        model.restore(lq)
    model.net.image_size = 16  # the tiny test prior stands for a 16 px model
    restored = model.restore(lq)
    assert restored.shape == (1, 3, 16, 16) and bool(torch.isfinite(restored).all())
    assert restored.min() >= 0 and restored.max() <= 1 and restored.std() > 0


def test_import_takes_a_task_recipe_of_the_prior(tmp_path):
    """--recipe deqir_celebahq256_deblur_gauss: the checkpoint holds that task's settings (validate takes them)."""
    source, output = tmp_path / "celeba_hq.ckpt", tmp_path / "deblur_gauss.ckpt"
    torch.save(ddim_file(), source)
    report = import_checkpoint(source, output, recipe="deqir_celebahq256_deblur_gauss")
    assert "settings from recipe deqir_celebahq256_deblur_gauss" in report
    hparams = torch.load(output, weights_only=True)["hyper_parameters"]
    assert hparams["operator"] == "deblur_gauss_ddrm" and hparams["sampling"]["eta"] == 0.1  # README.md's --etw 0.1
    assert hparams["net"]["init_args"]["prior"]["init_args"]["ch"] == 32  # the file's network, not the recipe's
