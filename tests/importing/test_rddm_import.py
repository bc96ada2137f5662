"""RDDM's official `model-*.pt` files through `ir_lightning.importing.rddm`: the fixtures (tests/fixtures/official/rddm,
made by the official code, see make_fixture.py there) wrapped as the official Trainer saves them, converted, and the
official network outputs and the official sampler reproduced by the suite's network and method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ir_lightning.class_paths import allowed_class
from ir_lightning.diffusion.ranges import to_signed, to_unit
from ir_lightning.diffusion.rddm import sample
from ir_lightning.importing import ImportRefused, official_formats
from ir_lightning.importing.rddm import FORMATS, convert, detect
from ir_lightning.methods.rddm import RDDM

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "rddm"
CASES = ("generation", "derain", "shadow", "lowlight")
TOLERANCE = 1e-5
TRAINED_SHIFT = 0.5
"""The test's trained weights are the EMA weights plus this, so that the two are told apart."""


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def released(state: dict[str, torch.Tensor], one_unet: bool = False) -> dict:
    """`state` (an official `ResidualDiffusion.state_dict()`) wrapped as the official `Trainer.save` writes it, with
    `state` as the EMA's weights."""
    trained = {k: v + TRAINED_SHIFT if k.startswith("model.") else v for k, v in state.items()}
    ema = {
        "initted": torch.tensor(True),
        "step": torch.tensor(9000),
        **{f"online_model.{k}": v for k, v in trained.items()},
        **{f"ema_model.{k}": v for k, v in state.items()},
    }
    optimizer = {"state": {}, "param_groups": []}
    file = {"step": 90000, "model": trained, "opt0": optimizer, "opt1": optimizer, "ema": ema, "scaler": None}
    if one_unet:
        del file["opt1"]
    return file


def imported_net(imported) -> torch.nn.Module:
    spec = imported.networks["net"]
    net = allowed_class(spec["class_path"])(**spec["init_args"]).eval()
    net.load_state_dict({k.removeprefix("net."): v for k, v in imported.state_dict.items()}, strict=True)
    return net


def method_input(name: str, case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's (x, cond) for the official network call of the fixture."""
    x, t = case["x"], case["config"]["timesteps"]
    if name == "generation":  # the method passes I_t and I_in = 0; cond = (alpha_bar, beta_bar)
        return torch.cat([x, torch.zeros_like(x)], dim=1), torch.stack([case["alpha_bar"], case["beta_bar"]], dim=1)
    if name == "shadow":  # the method passes the mask once
        x = x[:, :7]
    return x, (case["step"] + 1).float() / t  # the method's t = the official index + 1


@pytest.mark.parametrize("name", CASES)
def test_an_official_file_is_detected_and_its_network_reproduces_the_official_outputs(name):
    case = fixture(name)
    file = released(case["state_dict"], one_unet=name == "lowlight")
    assert detect(file)
    net = imported_net(convert(file, None))
    with torch.no_grad():
        out = net(*method_input(name, case))
    expected = (case["out"],) if name == "lowlight" else (case["res"], case["eps"])
    out = (out,) if isinstance(out, torch.Tensor) else out
    for ours, official in zip(out, expected, strict=True):
        assert ours.shape == official.shape
        assert float((ours - official).abs().max()) <= TOLERANCE


EXPECTED = {
    "generation": dict(
        layout="OfficialTwoUNets",
        recipe="rddm_generation",
        objective="pred_res_noise",
        condition="coefficients",
        generation=True,
        use_mask=False,
        convert_to_ddim=True,
        sum_scale=1.0,
        sees_input=False,
        mask_input=False,
        dim_mults=[1, 1],
    ),
    "derain": dict(
        layout="OfficialTwoUNets",
        recipe="rddm_derain",
        objective="pred_res_noise",
        condition="t",
        generation=False,
        use_mask=False,
        convert_to_ddim=False,
        sum_scale=1.0,
        sees_input=True,
        mask_input=False,
        dim_mults=[1, 1],
    ),
    "shadow": dict(
        layout="OfficialSharedEncoderUNet",
        recipe="rddm_shadow",
        objective="pred_res_noise",
        condition="t",
        generation=False,
        use_mask=True,
        convert_to_ddim=False,
        sum_scale=0.01,
        sees_input=True,
        mask_input=True,
        dim_mults=[1, 2],
    ),
    "lowlight": dict(
        layout="OfficialSingleUNet",
        recipe="rddm_lowlight",
        objective="pred_res",
        condition="t",
        generation=False,
        use_mask=False,
        convert_to_ddim=True,
        sum_scale=1.0,
        sees_input=True,
        mask_input=False,
        dim_mults=[1, 2],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_the_settings_layout_and_schedule_are_read_from_the_file(name):
    case, expected = fixture(name), EXPECTED[name]
    imported = convert(released(case["state_dict"]), None)
    spec = imported.networks["net"]
    assert spec["class_path"] == f"ir_lightning.nets.rddm_official.{expected['layout']}"
    args = spec["init_args"]
    assert (args["dim"], args["dim_mults"], args["dim_head"], args["heads"]) == (8, expected["dim_mults"], 4, 4)
    assert (args["sees_input"], args["mask_input"]) == (expected["sees_input"], expected["mask_input"])
    assert (args["time_scale"], args["step_offset"]) == (100.0, -1.0)  # T of the fixtures' schedules
    assert imported.method == "ir_lightning.methods.RDDM" and imported.recipe == expected["recipe"]
    settings = imported.settings
    for key in ("objective", "condition", "generation", "use_mask"):
        assert settings[key] == expected[key], key
    schedule = settings["schedule"]
    assert (schedule["n_steps"], schedule["convert_to_ddim"], schedule["sum_scale"]) == (
        100,
        expected["convert_to_ddim"],
        expected["sum_scale"],
    )
    assert args.get("condition", "t") == expected["condition"]
    assert any("EMA" in line for line in imported.report) and any("GroupNorm 8" in line for line in imported.report)


@pytest.mark.parametrize("name", CASES)
def test_the_ema_weights_are_the_weights_and_the_trained_ones_the_trained_state_dict(name):
    case = fixture(name)
    imported = convert(released(case["state_dict"]), None)
    assert imported.trained_state_dict is not None and imported.trained_state_dict.keys() == imported.state_dict.keys()
    for key, value in imported.state_dict.items():
        torch.testing.assert_close(imported.trained_state_dict[key], value + TRAINED_SHIFT, rtol=0, atol=1e-6)
    method = RDDM(net=imported_net(imported), **imported.settings)
    method.load_state_dict(imported.state_dict, strict=True)
    method.load_state_dict(imported.trained_state_dict, strict=True)


@pytest.mark.parametrize("name", ["derain", "shadow", "lowlight"])
def test_the_method_with_the_imported_network_samples_what_the_official_sampler_does(name):
    """The official deterministic DDIM sampler (`ResidualDiffusion.ddim_sample`) from its own noise draw: the method's
    sampler at the same steps (official k = T-1, ...; ours t = T, ...) reaches the same image. The official start is
    I_in + sqrt(sum_scale) noise, ours I_in + beta_bar_T noise: equal on the linear schedules, not on the DDIM
    conversion (there beta_bar_T = sqrt(1 - gamma_T): 0.80 at the fixture's T = 100, 0.99998 at T = 1000), so the
    noise is rescaled to start where the official sampler starts."""
    case = fixture(name)
    imported = convert(released(case["state_dict"]), None)
    steps = case["config"]["sampling_steps"]
    model = RDDM(net=imported_net(imported), **imported.settings, sampling=dict(steps=steps, eta=0.0, clip=True))
    model.load_state_dict(imported.state_dict, strict=True)
    i_in = to_signed(case["lq"])
    official_start = case["config"].get("sum_scale", 1.0) ** 0.5
    noise = case["noise"] * official_start / model.schedule.beta_bar[-1].item()
    with torch.no_grad():
        out = sample(model.eval().predictor(i_in, case.get("mask")), i_in, model.schedule, steps, noise=noise)
    assert float((to_unit(out) - case["sample"]).abs().max()) <= TOLERANCE


def test_the_method_conditions_the_generation_unets_on_their_coefficients_as_the_official_code():
    """Experiment 0: `model_predictions` gives U-Net 0 alpha_bar * T and U-Net 1 beta_bar * T (its buffers at k);
    the method's predictor, given the same coefficients, returns the official (clamped) residual and noise."""
    case = fixture("generation")
    imported = convert(released(case["state_dict"]), None)
    model = RDDM(net=imported_net(imported), **imported.settings).eval()
    i_t = case["x"]
    with torch.no_grad():
        res, eps = model.predictor(torch.zeros_like(i_t), None)(i_t, case["alpha_bar"], case["beta_bar"], None)
    assert float((res - case["res"].clamp(-1, 1)).abs().max()) <= TOLERANCE
    assert float((eps - case["eps"]).abs().max()) <= TOLERANCE
    # and the method's own schedule holds the official coefficients at t = k + 1
    t = case["step"] + 1
    torch.testing.assert_close(model.schedule.alpha_bar[t].float(), case["alpha_bar"], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.schedule.beta_bar[t].float(), case["beta_bar"], rtol=0, atol=1e-6)


def test_the_import_command_writes_a_checkpoint_the_paired_recipe_builds(tmp_path):
    from ir_lightning.commands.import_ import import_checkpoint

    source = tmp_path / "model-100.pt"
    torch.save(released(fixture("generation")["state_dict"]), source)
    lines = import_checkpoint(source, tmp_path / "rddm.ckpt")
    checkpoint = torch.load(tmp_path / "rddm.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["net"]["class_path"] == "ir_lightning.nets.rddm_official.OfficialTwoUNets"
    assert hparams["condition"] == "coefficients" and hparams["generation"] and hparams["loss"] == "l2"
    assert "current_model_state" in checkpoint and any("format rddm" in line for line in lines)


def test_a_variant_picks_the_experiment_and_one_that_does_not_fit_is_refused():
    state = fixture("derain")["state_dict"]
    assert convert(released(state), "lowlight").recipe == "rddm_lowlight"
    with pytest.raises(ImportRefused, match=r"variant shadow.*init_conv\.weight has 6"):
        convert(released(state), "shadow")
    with pytest.raises(ImportRefused, match="unknown variant"):
        convert(released(state), "deblur")


def test_the_format_is_registered():
    assert official_formats()["rddm"] is FORMATS[0]
    assert FORMATS[0].variants == ("generation", "derain", "lowlight", "shadow")


@pytest.mark.parametrize(
    "obj",
    [None, [], {}, {"model": None}, {"model": {"alphas_cumsum": torch.zeros(3)}}, {"denoise_fn.downs.0.weight": 1}],
)
def test_other_files_are_not_detected(obj):
    assert not detect(obj)


def renamed(state: dict, old: str, new: str) -> dict:
    return {(new if key == old else key): value for key, value in state.items()}


BLOCK = "model.unet0.downs.0.0.block1.proj.weight"
NORM = "model.unet0.mid_attn.fn.norm.g"
INIT = "model.unet0.init_conv.weight"
MISFITS = {
    "renamed": (lambda s: renamed(s, BLOCK, BLOCK.replace("proj", "conv")), r"not have: .*0\.block1\.conv\.weight"),
    "missing": (lambda s: {k: v for k, v in s.items() if k != BLOCK}, r"missing .*unet0\.downs\.0\.0\.block1\.proj\.w"),
    "shape": (lambda s: s | {BLOCK: s[BLOCK][:, :-1]}, r"fit .*downs\.0\.0\.block1\.proj\.weight \(8, 7, 3, 3\)"),
    "gain": (lambda s: s | {NORM: torch.ones(1, 5, 1, 1)}, r"mid_attn\.fn\.norm\.g \(1, 5, 1, 1\) \(expected \(8,\)\)"),
    "buffer": (lambda s: s | {"sampling_timesteps": torch.zeros(1)}, "nor schedule buffers: sampling_timesteps"),
    "schedule": (lambda s: s | {"alphas_cumsum": torch.rand(100)}, "alphas_cumsum and betas2_cumsum are neither"),
    "init_conv": (lambda s: renamed(s, INIT, INIT.replace("init", "first")), r"model\.unet0\.init_conv\.weight"),
}


@pytest.mark.parametrize("misfit", MISFITS)
def test_weights_that_do_not_fit_are_refused_naming_the_key(misfit):
    change, message = MISFITS[misfit]
    state = change(dict(fixture("derain")["state_dict"]))
    with pytest.raises(ImportRefused, match=message):
        convert(released(state), None)


def test_a_file_of_another_format_is_refused():
    with pytest.raises(ImportRefused, match="not a model-"):
        convert({"denoise_fn.downs.0.weight": torch.zeros(1)}, None)
    with pytest.raises(ImportRefused, match="no official RDDM network"):
        convert({"model": {"model.net.weight": torch.zeros(1), "alphas_cumsum": torch.zeros(2)}, "ema": None}, None)
    with pytest.raises(ImportRefused, match="entries that are not ema-pytorch's: shadow_params"):
        file = released(fixture("derain")["state_dict"])
        convert(file | {"ema": file["ema"] | {"shadow_params": torch.zeros(1)}}, None)


def test_the_conditioning_follows_the_code_the_schedule_buffers_betray():
    """The DDIM conversion without AOSA's alpha_res is experiment 0's code (coefficients) for two U-Nets; for one U-Net
    it is ambiguous (experiment 3 with a fixed objective conditions on t) and a variant decides; with alpha_res,
    experiment 3's: the step."""
    derain, lowlight = fixture("derain")["state_dict"], fixture("lowlight")["state_dict"]
    ddim = {name: lowlight[name] for name in ("alphas_cumsum", "betas2_cumsum")}
    imported = convert(released(derain | ddim), None)
    assert imported.settings["condition"] == imported.networks["net"]["init_args"]["condition"] == "coefficients"
    without_aosa = {k: v for k, v in lowlight.items() if k != "alpha_res"}
    with pytest.raises(ImportRefused, match="experiment 0's code conditions it on a coefficient, experiment 3's on t"):
        convert(released(without_aosa, one_unet=True), None)  # ambiguous: the wrong guess is another function
    imported = convert(released(without_aosa, one_unet=True), "lowlight")  # experiment 3 with a fixed objective
    args = imported.networks["net"]["init_args"]
    assert (imported.settings["objective"], args["condition"]) == ("pred_res", "t")
    assert any("pred_res assumed" in line for line in imported.report)
    aosa_noise = lowlight | {"alpha_res": torch.tensor([0.2])}
    imported = convert(released(aosa_noise, one_unet=True), None)
    assert imported.settings["objective"] == "pred_noise" and imported.settings["condition"] == "t"


def test_a_file_without_ema_imports_its_trained_weights():
    case = fixture("derain")
    file = released(case["state_dict"]) | {"ema": None}
    imported = convert(file, None)
    assert imported.trained_state_dict is None
    key = "net.res_unet.encoder.init_conv.weight"
    torch.testing.assert_close(
        imported.state_dict[key], case["state_dict"]["model.unet0.init_conv.weight"] + TRAINED_SHIFT
    )
    assert any("no EMA" in line for line in imported.report)
