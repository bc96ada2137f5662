"""The guided-diffusion (ADM) U-Net: the official Noise-DA D reproduced through the import (fixture made by the
official code), the official parameter counts of D and of ADM's 256 px unconditional model, what the embedding
sees (`level_input`, `level_scale`), the two qkv orders (each against the official code), odd sizes, and the two
initialisations."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ir_lightning.importing.noise_da import convert, guided_diffusion_args, guided_diffusion_keys
from ir_lightning.nets.guided_diffusion import ADM_256_UNCOND, AttentionBlock, GuidedDiffusionUNet, timestep_embedding
from ir_lightning.nets.padding import pad_to_multiple

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "noise_da" / "fixture.pt"
D_PARAMETERS = 62_643_075
"""Noise-DA's D at its training configuration (the official U-Net on the meta device)."""
ADM_256_UNCOND_PARAMETERS = 552_814_086
"""OpenAI's 256x256_diffusion_uncond.pt configuration: measured with openai/guided-diffusion @22e0df8 `UNetModel`
and with Noise-DA's copy of the U-Net alike (the fixture records the latter)."""
TINY = dict(
    in_channels=9,
    base_channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_ds=(2,),
    dropout=0.0,
    num_head_channels=4,
    norm_groups=4,
)


def official_fixture() -> dict[str, Any]:
    return torch.load(FIXTURE, weights_only=True)


def built(network: dict[str, Any], **overrides: Any) -> nn.Module:
    """A network from an `Imported.networks` entry (its class imported from the class path)."""
    module_name, class_name = network["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**network["init_args"] | overrides)


def loaded(imported_state: dict[str, torch.Tensor], prefix: str, module: nn.Module) -> nn.Module:
    module.load_state_dict({k[len(prefix) :]: v for k, v in imported_state.items() if k.startswith(prefix)})
    return module.eval()


def fixture_d(fixture: dict[str, Any], **overrides: Any) -> GuidedDiffusionUNet:
    """The fixture's D through the import, with the settings the generator used that differ from the official
    ones (GroupNorm groups and head width, which the weights do not show)."""
    imported = convert(dict(fixture["state_dict"]), "denoise")
    config = fixture["d_config"]
    network = built(
        imported.networks["diffusion"],
        norm_groups=config["norm_groups"],
        num_head_channels=config["num_head_channels"],
        **overrides,
    )
    return loaded(imported.state_dict, "diffusion.", network)


def meta_state(shapes: dict[str, list[int]], rename: tuple[str, str] | None = None) -> dict[str, torch.Tensor]:
    """A state dict with the official layout and no values (meta tensors)."""
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    return state if rename is None else {key.replace(*rename): value for key, value in state.items()}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_official_d_is_reproduced_through_the_import():
    fixture = official_fixture()
    d = fixture_d(fixture)
    with torch.no_grad():
        out = d(fixture["x"], fixture["gamma"].sqrt())  # the method passes sqrt(gamma); D embeds gamma
    assert float((out - fixture["eps_hat"]).abs().max()) <= 1e-5
    assert float(fixture["eps_hat"].abs().max()) > 1.0  # a non-trivial output: the perturbed zero convolutions


def test_level_input_says_what_the_sinusoid_sees():
    fixture = official_fixture()
    gamma_net, sqrt_net = fixture_d(fixture), fixture_d(fixture, level_input="sqrt_gamma")
    scaled = fixture_d(fixture, level_input="sqrt_gamma", level_scale=2.0)
    x, gamma = fixture["x"], fixture["gamma"]
    with torch.no_grad():
        torch.testing.assert_close(gamma_net(x, gamma.sqrt()), sqrt_net(x, gamma), rtol=0, atol=1e-5)
        torch.testing.assert_close(scaled(x, gamma / 2), sqrt_net(x, gamma), rtol=0, atol=1e-5)
        torch.testing.assert_close(gamma_net(x, gamma.sqrt()[:, None]), gamma_net(x, gamma.sqrt()))  # (B, 1)
        assert float((gamma_net(x, gamma) - gamma_net(x, gamma.sqrt())).abs().max()) > 1e-3  # it does see the level
    with pytest.raises(ValueError, match="level_input"):
        GuidedDiffusionUNet(**TINY, level_input="t")  # type: ignore[arg-type]


def test_timestep_embedding_closed_form():
    code = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]])
    torch.testing.assert_close(code, expected)  # cosines first, frequencies 1e4^(-i/2)
    odd = timestep_embedding(torch.tensor([0.5]), 5)
    assert odd.shape == (1, 5) and odd[0, -1] == 0.0


def test_official_size_parameter_counts_and_layouts():
    fixture = official_fixture()
    with torch.device("meta"):
        d, adm = GuidedDiffusionUNet(), GuidedDiffusionUNet(**ADM_256_UNCOND)
    assert parameter_count(d) == fixture["official_d_parameters"] == D_PARAMETERS
    assert parameter_count(adm) == fixture["adm256_uncond_parameters"] == ADM_256_UNCOND_PARAMETERS
    official_d = meta_state(fixture["official_d_shapes"])
    args = guided_diffusion_args(official_d)
    assert args["attention_ds"] == [] and args["channel_mults"] == [1, 2, 4, 8] and args["num_res_blocks"] == 2
    assert len(guided_diffusion_keys(official_d, args)) == len(d.state_dict()) == 326
    adm_state = meta_state(fixture["adm256_uncond_shapes"], ("cond_embed.", "time_embed."))  # ADM's prefix
    args = guided_diffusion_args(adm_state)
    assert args["attention_ds"] == [8, 16, 32] and args["channel_mults"] == [1, 1, 2, 2, 4, 4]
    assert args["out_channels"] == 6 and args["base_channels"] == 256 and args["resblock_updown"]
    assert len(guided_diffusion_keys(adm_state, args | {"num_head_channels": 64})) == len(adm.state_dict())


def test_d_at_the_official_configuration_has_attention_in_the_middle_only():
    with torch.device("meta"):
        d = GuidedDiffusionUNet()
    attention = [name for name, module in d.named_modules() if isinstance(module, AttentionBlock)]
    assert attention == ["middle.attention"] and d.middle.attention.heads == 512 // 32


def test_odd_sizes_are_padded_and_cropped():
    torch.manual_seed(0)
    net = GuidedDiffusionUNet(**TINY, init="kaiming").eval()
    x, level = torch.randn(2, 9, 13, 19), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        out = net(x, level)
        assert out.shape == (2, 3, 13, 19)
        torch.testing.assert_close(out, net(pad_to_multiple(x, 2), level)[..., :13, :19], rtol=0, atol=0)


def test_the_new_qkv_order_reproduces_the_official_qkv_attention():
    """`legacy_attention_order=False` against the official U-Net built with `use_new_attention_order=True` (its
    `QKVAttention`) with the fixture's weights: the same output, which is not the legacy order's."""
    fixture = official_fixture()
    d = fixture_d(fixture, legacy_attention_order=False)
    with torch.no_grad():
        out = d(fixture["x"], fixture["gamma"].sqrt())
    assert float((out - fixture["eps_hat_new_order"]).abs().max()) <= 1e-5
    assert float((fixture["eps_hat_new_order"] - fixture["eps_hat"]).abs().max()) > 1e-3  # the order matters here


def test_the_two_qkv_orders_differ_by_a_permutation_of_the_qkv_rows():
    torch.manual_seed(0)
    heads, width, channels = 4, 3, 12
    legacy, new = AttentionBlock(channels, heads, 4, True), AttentionBlock(channels, heads, 4, False)
    new.load_state_dict(legacy.state_dict())
    # legacy rows: (head, q/k/v, c); new rows: (q/k/v, head, c)
    order = torch.arange(3 * channels).reshape(heads, 3, width).transpose(0, 1).reshape(-1)
    with torch.no_grad():
        new.qkv.weight.copy_(legacy.qkv.weight[order])
        new.qkv.bias.copy_(legacy.qkv.bias[order])
        new.proj.weight.normal_()
        legacy.proj.weight.copy_(new.proj.weight)
        x = torch.randn(2, channels, 5, 3)
        torch.testing.assert_close(new(x), legacy(x))
        unpermuted = AttentionBlock(channels, heads, 4, False)
        unpermuted.load_state_dict(legacy.state_dict())
        assert float((unpermuted(x) - legacy(x)).abs().max()) > 1e-3  # the same weights read in the other order


def test_adm_init_zeroes_the_output_convolutions_and_kaiming_overwrites_them():
    torch.manual_seed(0)
    adm, kaiming = GuidedDiffusionUNet(**TINY), GuidedDiffusionUNet(**TINY, init="kaiming")
    x, level = torch.randn(1, 9, 8, 8), torch.tensor([0.5])
    assert not adm(x, level).any()  # ADM's zero_module: the untrained network outputs zeros
    zeroed = kaiming.zero_initialised()
    assert len(zeroed) == len(adm.zero_initialised()) and all(m.weight.abs().min() > 0 for m in zeroed)
    for module in kaiming.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            assert not module.bias.any()
    assert kaiming(x, level).abs().mean() > 0.1


@pytest.mark.parametrize("name", ["conv_resample", "pooling"])
def test_the_layout_readers_take_the_other_resamplers_and_the_bias_conditioning(name):
    layout = official_fixture()["other_layouts"][name]
    config, state = layout["config"], meta_state(layout["shapes"])
    args = guided_diffusion_args(state)
    levels = range(len(config["channel_mults"]))
    assert args == {
        "in_channels": config["in_channel"],
        "out_channels": config["out_channel"],
        "base_channels": config["inner_channel"],
        "channel_mults": config["channel_mults"],
        "num_res_blocks": config["res_blocks"],
        "attention_ds": [2**level for level in levels if 2**level in config["attn_res"]],
        "conv_resample": config["conv_resample"],
        "scale_shift_norm": config.get("use_scale_shift_norm", True),
        "resblock_updown": False,
    }
    assert len(guided_diffusion_keys(state, args)) == len(state)
