"""DiffIR's released BasicSR files (`ir_lightning.importing.diffir`) against the official code's numbers.

The fixture (tests/fixtures/official/diffir/make_fixture.py) holds, per task (GoPro deblurring, real SR x4, x2,
x1) and stage, the state dict of the official `DiffIRS1` / `DiffIRS2` at a tiny configuration wrapped as a
released file ({"params": ..., "params_ema": ...}), an input, and the official output. Each file is converted,
the networks are built from `Imported.networks` and loaded strictly, and must give the official output to 1e-5;
the configuration read from the shapes must be the official one; the duplicates of a stage-2 file are dropped and
reported; a file whose keys or shapes do not fit is refused naming the keys.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

from ir_lightning.diffusion.prior import prior_gammas, reverse_chain
from ir_lightning.importing.base import Imported, ImportRefused
from ir_lightning.importing.diffir import FORMATS, convert_stage1, convert_stage2, detect_stage1, detect_stage2

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/official/diffir/diffir_official.pt"
CASES = tuple(f"{task}_s{stage}" for task in ("deblur", "realsr_x4", "realsr_x2", "realsr_x1") for stage in (1, 2))
TOLERANCE = 1e-5
RECIPES = {
    "deblur_s1": "diffir_s1_gopro",
    "deblur_s2": "diffir_s2_gopro",
    **{f"realsr_x{s}_s1": "diffir_s1_realsr_x4" for s in (1, 2, 4)},
    **{f"realsr_x{s}_s2": "diffir_s2_realsr_x4" for s in (1, 2, 4)},
}


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def convert(case: dict, variant: str | None = None) -> Imported:
    return (convert_stage1 if case["config"].get("timesteps") is None else convert_stage2)(case["file"], variant)


def built(imported: Imported) -> dict[str, torch.nn.Module]:
    """The networks of `Imported.networks` (class imported from its path), loaded strictly with its weights; the ones
    the file does not hold (`exported_without`) are left out."""
    nets = {}
    for name, spec in imported.networks.items():
        if name in imported.exported_without:
            continue
        module, cls = spec["class_path"].rsplit(".", 1)
        net = getattr(importlib.import_module(module), cls)(**spec["init_args"])
        net.load_state_dict(
            {k.removeprefix(f"{name}."): v for k, v in imported.state_dict.items() if k.startswith(f"{name}.")}
        )
        nets[name] = net.eval()
    assert {key.split(".")[0] for key in imported.state_dict} == set(nets)  # every weight went to a network
    return nets


@torch.no_grad()
def restored(imported: Imported, case: dict) -> torch.Tensor:
    """Stage 1: the DIRformer steered by CPEN_S1(LQ, GT). Stage 2: the prior's reverse chain from the official start,
    conditioned on CPEN_S2(LQ), with the schedule the file holds, then the DIRformer."""
    nets = built(imported)
    if "cpen_s2" not in nets:
        ipr = nets["cpen_s1"](case["lq"], case["gt"])
    else:
        schedule = imported.settings["prior_schedule"]
        gammas = prior_gammas(schedule["n_steps"], schedule["linear_start"], schedule["linear_end"])
        c = nets["cpen_s2"](case["lq"])
        ipr = reverse_chain(lambda z, t: nets["denoiser"](z, t, c), case["start"], gammas)[-1]
    return nets["restorer"](case["lq"], ipr)


def edited(case: dict, edit) -> dict:
    """The case's file with `edit(state)` applied to a copy of each wrapped state dict."""
    file = {key: edit(dict(state)) for key, state in case["file"].items()}
    return {**case, "file": file}


def refused(case: dict, *names: str, variant: str | None = None) -> str:
    with pytest.raises(ImportRefused) as error:
        convert(case, variant)
    for name in names:
        assert name in str(error.value), (name, str(error.value))
    return str(error.value)


# --- the official outputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_each_official_file_reproduces_the_official_output(official, name):
    case = official["cases"][name]
    stage1 = name.endswith("_s1")
    assert detect_stage1(case["file"]) is stage1 and detect_stage2(case["file"]) is not stage1  # one format each
    imported = convert(case)
    out = restored(imported, case)
    assert out.shape == case["output"].shape
    assert (out - case["output"]).abs().max().item() < TOLERANCE
    assert imported.method == f"ir_lightning.methods.DiffIRS{1 if stage1 else 2}"
    assert imported.recipe == RECIPES[name]
    assert imported.exported_without == ([] if stage1 else ["cpen_s1"])  # stage 2's teacher: training only


@pytest.mark.parametrize("name", CASES)
def test_the_configuration_read_from_the_shapes_is_the_official_one(official, name):
    case = official["cases"][name]
    config, imported = case["config"], convert(case)
    nets = {name: spec["init_args"] for name, spec in imported.networks.items()}
    restorer, scale = nets["restorer"], config.get("scale", 1)  # the deblurring wrappers have no scale: x1
    assert imported.settings["scale"] == restorer["scale"] == scale
    assert restorer["unshuffle"] == (4 // scale if "realsr" in name else 1)  # real SR: always an x4 tail
    assert restorer["dim"] == config["dim"] and restorer["heads"] == config["heads"]
    assert restorer["num_blocks"] == config["num_blocks"]
    assert restorer["num_refinement_blocks"] == config["num_refinement_blocks"]
    assert restorer["bias"] == config.get("bias", False)
    assert restorer["layernorm"] == {"WithBias": "with_bias", "BiasFree": "bias_free"}[config["LayerNorm_type"]]
    assert restorer["ipr_dim"] == 4 * case["n_feats"]
    for width in (config["dim"] * 2**level for level in range(4)):  # the same hidden widths as the official factor
        assert int(width * restorer["ffn_expansion"]) == int(width * config["ffn_expansion_factor"])
    cpen = nets["cpen_s1" if name.endswith("_s1") else "cpen_s2"]
    assert (cpen["scale"], cpen["res_blocks"], cpen["features"]) == (scale, config["n_encoder_res"], case["n_feats"])
    if name.endswith("_s2"):
        assert nets["cpen_s1"] == {**cpen, "with_gt": True}  # the teacher's configuration, for building the method
        assert nets["denoiser"] == {
            "ipr_dim": 4 * case["n_feats"],
            "hidden_layers": config["n_denoise_res"],
            "n_steps": config["timesteps"],
        }
        assert imported.settings["prior_schedule"] == {
            "kind": "quad",
            "n_steps": config["timesteps"],
            "linear_start": config["linear_start"],
            "linear_end": config["linear_end"],
        }
        assert imported.settings["stage1_ckpt"] is None


def test_ffn_expansion_at_the_official_sizes_is_read_exactly():
    """At the paper's widths one decimal fits: 2.2 (real SR, dim 64) and 2 (deblurring, dim 48)."""
    from ir_lightning.importing.diffir import _expansion

    assert _expansion([(c, int(c * 2.2)) for c in (64, 128, 256, 512)], "G.") == 2.2
    assert _expansion([(c, int(c * 2.0)) for c in (48, 96, 192, 384)], "G.") == 2.0
    assert _expansion([(c, int(c * 2.66)) for c in (48, 96, 192, 384)], "G.") == 2.66
    with pytest.raises(ImportRefused, match=r"G\.\*\.ffn\.project_out\.weight"):
        _expansion([(64, 140), (128, 300)], "G.")


def test_the_stage2_variant_gan_is_diffirgan_without_teacher_and_discriminator(official):
    case = official["cases"]["realsr_x2_s2"]
    imported = convert(case, "gan")
    assert imported.method == "ir_lightning.methods.DiffIRGAN"
    assert imported.recipe == "diffir_s2gan_realsr_x4"
    assert imported.exported_without == ["cpen_s1", "discriminator"]
    assert imported.settings["stage2_ckpt"] is None and imported.settings["perceptual"] is None
    assert "stage1_ckpt" not in imported.settings  # DiffIRGAN sets it itself
    assert any("scale 2" in line for line in imported.report)  # the x4 recipe, with the file's scale
    assert (restored(imported, case) - case["output"]).abs().max().item() < TOLERANCE
    refused(official["cases"]["deblur_s2"], "G.output", "real-world SR", variant="gan")
    refused(case, "variant 'v2'", variant="v2")
    assert [fmt.variants for fmt in FORMATS] == [(), ("s2", "gan")]


@pytest.mark.parametrize("name", ["realsr_x1_s2", "deblur_s2"])
def test_a_stage2_file_alone_restores_through_the_method(official, name):
    """DiffIRS2 built from the imported networks and settings, without the teacher the file lacks (exported_without),
    restores the official output: its sampling seed 0 draws the same start as the official eval path seeded with 0."""
    from ir_lightning.methods.diffir import DiffIRS2

    case = official["cases"][name]
    imported = convert(case)
    nets = built(imported)
    teacher = imported.networks["cpen_s1"]
    module, cls = teacher["class_path"].rsplit(".", 1)
    nets["cpen_s1"] = getattr(importlib.import_module(module), cls)(**teacher["init_args"])
    settings = {k: v for k, v in imported.settings.items() if k != "prior_schedule"}
    model = DiffIRS2(
        **nets, prior_schedule=imported.settings["prior_schedule"], sample_seed=official["seed"], **settings
    )
    missing, unexpected = model.load_state_dict(imported.state_dict, strict=False)
    assert not unexpected and missing and all(key.startswith("cpen_s1.") for key in missing)
    out = model.eval().restore(case["lq"])
    assert (out - case["output"].clamp(0, 1)).abs().max().item() < TOLERANCE


# --- EMA and trained weights ----------------------------------------------------------------------------------------
def test_params_ema_is_restored_and_params_is_kept_as_the_trained_weights(official):
    case = official["cases"]["realsr_x4_s2"]
    ema, trained = case["file"]["params_ema"], case["file"]["params"]
    assert not torch.equal(ema["G.patch_embed.proj.weight"], trained["G.patch_embed.proj.weight"])
    imported = convert(case)
    assert torch.equal(imported.state_dict["restorer.embed.weight"], ema["G.patch_embed.proj.weight"])
    assert torch.equal(imported.trained_state_dict["restorer.embed.weight"], trained["G.patch_embed.proj.weight"])
    assert imported.trained_state_dict.keys() == imported.state_dict.keys()
    assert "params_ema" in imported.report[0] and "trained" in imported.report[0]
    for only in ("params", "params_ema"):  # the official x1/x2 stage-1 configs train without EMA: params only
        alone = convert({**case, "file": {only: case["file"][only]}})
        assert alone.trained_state_dict is None and f"{only} only" in alone.report[0]
        assert torch.equal(alone.state_dict["restorer.embed.weight"], case["file"][only]["G.patch_embed.proj.weight"])


# --- the duplicates of a stage-2 file -------------------------------------------------------------------------------
def test_stage2_duplicates_are_dropped_checked_and_reported(official):
    case = official["cases"]["deblur_s2"]
    state = case["file"]["params_ema"]
    diffusion = [key for key in state if key.startswith("diffusion.")]
    copies = [key for key in diffusion if key.startswith(("diffusion.model.", "diffusion.condition."))]
    assert len(diffusion) - len(copies) == 12  # the schedule buffers
    imported = convert(case)
    assert len(imported.state_dict) == len(state) - len(diffusion)
    (line,) = [line for line in imported.report if line.startswith("dropped")]
    assert f"dropped {len(diffusion)} tensors" in line and f"{len(copies)} copies" in line and "12 schedule" in line
    assert sum("prior schedule from diffusion.betas" in line for line in imported.report) == 1

    def changed(key: str):
        return lambda s: s | {key: s[key] + 1.0}

    refused(edited(case, changed("diffusion.model.resmlp.0.weight")), "diffusion.model.resmlp.0.weight", "differs")
    refused(edited(case, changed("diffusion.condition.mlp.0.bias")), "diffusion.condition.mlp.0.bias")
    refused(edited(case, changed("diffusion.betas")), "diffusion.betas")
    refused(edited(case, changed("diffusion.alphas_cumprod")), "diffusion.alphas_cumprod")
    refused(
        edited(case, lambda s: {k: v for k, v in s.items() if k != "diffusion.posterior_variance"}),
        "diffusion.posterior_variance",
    )
    refused(edited(case, lambda s: s | {"diffusion.extra": torch.zeros(4)}), "unknown keys", "diffusion.extra")


def test_a_stage2_file_without_schedule_buffers_takes_the_official_schedule(official):
    case = official["cases"]["realsr_x4_s2"]
    buffers = edited(case, lambda s: {k: v for k, v in s.items() if not re.match(r"diffusion\.[a-z_0-9]+$", k)})
    imported = convert(buffers)
    assert imported.settings["prior_schedule"] == {
        "kind": "quad",
        "n_steps": 4,
        "linear_start": 0.1,
        "linear_end": 0.99,
    }
    assert any("official prior schedule assumed" in line for line in imported.report)


# --- refusals and detection -----------------------------------------------------------------------------------------
def test_a_renamed_or_reshaped_key_is_refused_naming_it(official):
    case = official["cases"]["realsr_x1_s2"]

    def renamed(old: str, new: str):
        return lambda s: {new if k == old else k: v for k, v in s.items()}

    message = refused(
        edited(case, renamed("G.latent.0.attn.qkv.weight", "G.latent.0.attn.qkv2.weight")),
        "G.latent.0.attn.qkv2.weight",
        "restorer.latent.0.attention.qkv.weight",
    )
    assert "unexpected" in message and "missing" in message
    reshaped = edited(case, lambda s: s | {"G.refinement.1.ffn.project_in.weight": torch.zeros(5, 4, 1, 1)})
    refused(reshaped, "G.refinement.1.ffn.project_in.weight", "(5, 4, 1, 1)")
    refused(edited(case, lambda s: s | {"G.tail.1.weight": torch.zeros(3, 4, 1, 1)}), "G.tail.1.weight")
    refused(edited(case, lambda s: s | {"extra.weight": torch.zeros(1)}), "unknown keys", "extra.weight")
    refused(edited(case, renamed("condition.E.0.weight", "condition.E.0.w")), "condition.E.0.weight", "missing")
    cpen_in = edited(case, lambda s: s | {"condition.E.0.weight": torch.zeros(2, 5, 3, 3)})
    refused(cpen_in, "condition.E.0.weight", "5 input channels")
    stage1 = official["cases"]["realsr_x2_s1"]
    refused(edited(stage1, lambda s: s | {"E.mlp.2.bias": torch.zeros(3)}), "E.mlp.2.bias")
    refused(
        edited(stage1, lambda s: {k: v for k, v in s.items() if k != "G.patch_embed.proj.weight"}),
        "G.patch_embed.proj.weight",
    )


def test_params_and_params_ema_must_agree_key_for_key(official):
    case = official["cases"]["deblur_s1"]
    file = dict(case["file"])
    file["params"] = {("G.out.weight" if k == "G.output.weight" else k): v for k, v in file["params"].items()}
    message = refused({**case, "file": file}, "params does not fit", "G.out.weight")
    assert "params_ema" not in message.split(":")[0]


def test_files_of_other_formats_are_refused_and_not_detected(official):
    state = official["cases"]["realsr_x4_s1"]["file"]["params_ema"]
    for obj in (
        None,
        [],
        torch.zeros(2),
        {},
        {"params": torch.zeros(2)},
        {"params": {}},
        {"state_dict": state},
        state,
        {"params": {"net.weight": torch.zeros(2)}},
        {"params": state, "optimizer": {}},
    ):
        assert not detect_stage1(obj) and not detect_stage2(obj)
    with pytest.raises(ImportRefused, match="params_ema and/or params, got state_dict"):
        convert_stage1({"state_dict": state})
    with pytest.raises(ImportRefused, match="entries that are not tensors"):
        convert_stage1({"params": {**state, "G.note": "text"}})
    with pytest.raises(ImportRefused, match="condition.E.0.weight"):  # a stage-1 file named as stage 2
        convert_stage2(official["cases"]["realsr_x4_s1"]["file"])
