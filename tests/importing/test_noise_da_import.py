"""Noise-DA's released files (`denoise.pth`, `derain.pth`, `deblur.pth`): the wrapper state dict with and without
D, read into the suite's networks and reproducing the official outputs (fixture made by the official code), the
official-size layouts, the variants (recipe, value range), and the refusals that name the key at fault."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ir_lightning.importing.base import ImportRefused
from ir_lightning.importing.noise_da import FORMATS, convert, detect
from ir_lightning.methods.noise_da import DenoisingAsAdaptation
from ir_lightning.nets.guided_diffusion import GuidedDiffusionUNet
from tests.nets.test_guided_diffusion import (
    D_PARAMETERS,
    built,
    fixture_d,
    loaded,
    meta_state,
    official_fixture,
    parameter_count,
)

RESTORER_PARAMETERS = 8_559_171
"""The official `RestorationNet()` (width 64, depth 4)."""


@pytest.fixture(scope="module")
def fixture() -> dict[str, Any]:
    return official_fixture()


def wrapper(fixture: dict[str, Any], with_d: bool = True) -> dict[str, torch.Tensor]:
    """The released file's layout: the wrapper's state dict, with or without D and its schedule buffers."""
    state = dict(fixture["state_dict"])
    return state if with_d else {k: v for k, v in state.items() if k.startswith("RestorationNet.")}


def test_the_format_detects_wrapper_files_only(fixture):
    assert FORMATS[0].name == "noise-da" and FORMATS[0].variants == ("denoise", "derain", "deblur")
    assert detect(wrapper(fixture)) and detect(wrapper(fixture, with_d=False))
    assert not detect({"denoise_fn.downs.0.weight": torch.zeros(1)})  # an SR3 file
    assert not detect([1, 2]) and not detect(None) and not detect({1: 2})


def test_the_official_restorer_is_reproduced_through_the_import(fixture):
    imported = convert(wrapper(fixture), "derain")
    restorer = loaded(imported.state_dict, "restorer.", built(imported.networks["restorer"]))
    config = fixture["restorer_config"]
    assert imported.networks["restorer"]["init_args"] | {"slope": config["slope"]} == {
        "in_channels": 3,
        "out_channels": 3,
        "width": config["wf"],
        "depth": config["depth"],
        "slope": 0.2,
        "init": "kaiming",
    }
    with torch.no_grad():
        residual, restored = restorer.residual(fixture["lq"]), restorer(fixture["lq"])
    assert float((residual - fixture["residual"]).abs().max()) <= 1e-5
    assert float((restored - fixture["restored"]).abs().max()) <= 1e-5


def test_a_file_with_d_imports_both_networks(fixture):
    imported = convert(wrapper(fixture), "denoise")
    assert imported.method == "ir_lightning.methods.DenoisingAsAdaptation" and imported.recipe == "da_denoise"
    assert set(imported.networks) == {"restorer", "diffusion"} and imported.exported_without == []
    prefixes = {key.split(".", 1)[0] for key in imported.state_dict}
    assert prefixes == {"restorer", "diffusion"}
    assert not any(name in key for key in imported.state_dict for name in ("gammas", "posterior"))
    assert any("schedule buffers" in line and "linear 1e-6 .. 1e-2" in line for line in imported.report)
    args = imported.networks["diffusion"]["init_args"]
    assert args["attention_ds"] == [2] and args["level_input"] == "gamma" and args["init"] == "kaiming"
    d = fixture_d(fixture)
    with torch.no_grad():
        assert float((d(fixture["x"], fixture["gamma"].sqrt()) - fixture["eps_hat"]).abs().max()) <= 1e-5


def test_a_restorer_only_file_imports_without_d(fixture):
    imported = convert(wrapper(fixture, with_d=False), "deblur")
    assert imported.exported_without == ["diffusion"] and set(imported.networks) == {"restorer"}
    assert all(key.startswith("restorer.") for key in imported.state_dict)
    assert imported.recipe == "da_deblur"
    assert any("no denoise_fn.*" in line for line in imported.report)


def test_the_variant_gives_the_recipe_and_the_value_range(fixture):
    state = wrapper(fixture, with_d=False)
    for variant, value_range in (("denoise", "unit"), ("derain", "signed"), ("deblur", "signed")):
        imported = convert(state, variant)
        assert imported.recipe == f"da_{variant}"
        assert imported.settings == {"restorer_range": value_range, "diffusion_range": value_range}
    with pytest.raises(ImportRefused, match=r"give --variant, one of denoise \(\[0, 1\]\), derain \(\[-1, 1\]\)"):
        convert(state, None)  # a guessed range would restore wrongly
    with pytest.raises(ImportRefused, match="unknown variant 'sr'"):
        convert(state, "sr")


def test_the_settings_are_the_methods_arguments(fixture):
    """What the import sets reaches `DenoisingAsAdaptation`: R runs in the range the weights were trained in."""
    imported = convert(wrapper(fixture), "derain")
    restorer = loaded(imported.state_dict, "restorer.", built(imported.networks["restorer"]))
    method = DenoisingAsAdaptation(restorer=restorer, diffusion=fixture_d(fixture), **imported.settings)
    lq = (fixture["lq"] + 1) / 2  # the official input, in the batches' [0, 1]
    with torch.no_grad():
        expected = (fixture["restored"] + 1) / 2
        assert float((lq + method.residual(lq) - expected).abs().max()) <= 1e-5


def test_official_size_files_read_as_the_official_networks(fixture):
    state = {f"RestorationNet.{k}": v for k, v in meta_state(fixture["official_restorer_shapes"]).items()}
    state |= {f"denoise_fn.{k}": v for k, v in meta_state(fixture["official_d_shapes"]).items()}
    imported = convert(state, "derain")
    with torch.device("meta"):
        restorer, d = built(imported.networks["restorer"]), built(imported.networks["diffusion"])
    assert parameter_count(restorer) == fixture["official_restorer_parameters"] == RESTORER_PARAMETERS
    assert parameter_count(d) == fixture["official_d_parameters"] == D_PARAMETERS
    assert imported.networks["restorer"]["init_args"]["width"] == 64
    with torch.device("meta"):
        recipe_d = GuidedDiffusionUNet(init="kaiming")  # the recipes' D (attention_ds [16], never matched)
    assert {k: v.shape for k, v in d.state_dict().items()} == {k: v.shape for k, v in recipe_d.state_dict().items()}
    assert imported.networks["diffusion"]["init_args"]["attention_ds"] == []  # the middle attention alone
    assert not any("do not take the official" in line for line in imported.report)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("rename", "RestorationNet.lastX.weight"),
        ("shape", "RestorationNet.up_path.0.conv_up.weight"),
        ("rename_d", "denoise_fn.middle_block.1.qkvX.weight"),
        ("shape_d", "denoise_fn.output_blocks.1.1.qkv.weight"),
        ("unknown", "EMA.step"),
        ("missing_d", "decoder.1.res.conv2.bias"),  # in the suite's names
    ],
)
def test_weights_that_do_not_fit_are_refused_by_name(fixture, change, named):
    state = wrapper(fixture)
    if change == "rename":
        state["RestorationNet.lastX.weight"] = state.pop("RestorationNet.last.weight")
    elif change == "shape":
        state[named] = state[named][:, :-1]
    elif change == "rename_d":
        state[named] = state.pop("denoise_fn.middle_block.1.qkv.weight")
    elif change == "shape_d":
        state[named] = state[named][:-3]
    elif change == "unknown":
        state[named] = torch.zeros(())
    else:
        del state["denoise_fn.output_blocks.1.0.out_layers.3.bias"]
    with pytest.raises(ImportRefused, match=named.replace(".", r"\.")):
        convert(state, "denoise")


def test_other_files_are_refused(fixture):
    with pytest.raises(ImportRefused, match="no RestorationNet"):
        convert({"denoise_fn.downs.0.weight": torch.zeros(1)}, "denoise")  # an SR3 file
    with pytest.raises(ImportRefused, match="state dict"):
        convert([1, 2], "denoise")
    with pytest.raises(ImportRefused, match="not tensors"):
        convert(wrapper(fixture) | {"epoch": 3}, "denoise")


def test_a_schedule_other_than_the_methods_is_refused(fixture):
    """D would go on training with a schedule it never saw: the file's gammas must be the method's schedule."""
    state = wrapper(fixture)
    state["gammas"] = state["gammas"] * 0.99
    with pytest.raises(ImportRefused, match="'gammas' of shape .* is not the official linear 1e-6 .. 1e-2"):
        convert(state, "denoise")
