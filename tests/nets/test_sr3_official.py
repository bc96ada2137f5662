"""The SR3 network of Janspiry's re-implementation: the official function (the fixture, imported as a released
file is), the official parameter counts, the noise level as (B,) or (B, 1), padding of other sizes, the init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ir_lightning.class_paths import allowed_class
from ir_lightning.importing.sr3 import FORMATS
from ir_lightning.nets.padding import pad_to_multiple
from ir_lightning.nets.sr3_official import SR3ReferenceUNet, attention_levels

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "sr3" / "sr3_janspiry.pt"
OFFICIAL_COMMIT = "01d27a7cbfa8502be1d8dbd4ee02fcbd5e44389d"

TINY = dict(
    inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(8,), res_blocks=1, dropout=0.0, image_size=16
)
"""Two levels, attention at the coarser one (8 px of a 16 px image) and after the first middle block."""


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def imported_network(case: dict) -> SR3ReferenceUNet:
    """The fixture's official `*_gen.pth` through the import, built from its class path and loaded strictly.

    GroupNorm's group count is not in the weights (the import takes it from the release's config): the fixture's
    tiny configuration gives it here, as `--model.init_args.net.init_args.norm_groups` would."""
    imported = FORMATS[0].convert(case["gen"], None)
    net_spec = imported.networks["net"]
    net = allowed_class(net_spec["class_path"])(
        **(net_spec["init_args"] | {"norm_groups": case["unet"]["norm_groups"]})
    )
    net.load_state_dict({key.removeprefix("net."): value for key, value in imported.state_dict.items()}, strict=True)
    return net.eval()


@pytest.mark.parametrize("case", ["conditional", "unconditional"])
def test_the_imported_network_computes_the_official_output(fixture, case):
    official = fixture[case]
    assert fixture["commit"] == OFFICIAL_COMMIT
    net = imported_network(official)
    with torch.no_grad():
        out = net(official["x"], official["level"])  # level (B, 1), as the official wrapper passes it
    assert float((out - official["out"]).abs().max()) <= 1e-5  # measured 1.1e-6 (conditional), 8.3e-7 (prior)
    assert float(official["out"].abs().mean()) > 0.1  # the reference is not a near-zero output


@pytest.mark.parametrize(
    "config,params,keys",
    [
        ({}, 97_807_491, 362),  # 16 -> 128 (config/sr_sr3_16_128.json): the defaults
        (
            dict(
                norm_groups=16, channel_mults=(1, 2, 4, 8, 16), attn_res=(), res_blocks=1, dropout=0.0, image_size=512
            ),
            155_334_339,
            229,
        ),  # 64 -> 512 (config/sr_sr3_64_512.json)
        (dict(in_channel=3), 97_805_763, 362),  # 128 px unconditional (config/sample_sr3_128.json)
    ],
)
def test_official_configurations_have_the_official_parameter_counts(config, params, keys):
    with torch.device("meta"):
        net = SR3ReferenceUNet(**config)
    assert sum(p.numel() for p in net.parameters()) == params  # counted on the official UNet of each config
    assert len(net.state_dict()) == keys


def test_the_released_layouts_have_our_keys_and_shapes(fixture):
    """The full-size official key names and shapes (recorded, no values) map one to one onto ours."""
    for name, release in fixture["released"].items():
        state = {k: torch.empty(s, device="meta") for k, s in release["shapes"].items() if k.startswith("denoise_fn.")}
        imported = FORMATS[0].convert(state, None)
        unet = release["model"]["unet"]
        args = imported.networks["net"]["init_args"]
        assert args["channel_mults"] == unet["channel_multiplier"] and args["res_blocks"] == unet["res_blocks"], name
        assert args["attn_res"] == unet["attn_res"] and args["norm_groups"] == unet["norm_groups"], name
        with torch.device("meta"):
            ours = SR3ReferenceUNet(**args).state_dict()
        assert {k: v.shape for k, v in imported.state_dict.items()} == {f"net.{k}": v.shape for k, v in ours.items()}


def test_a_noise_level_of_shape_b_or_b1_gives_the_same_output_and_others_are_refused():
    torch.manual_seed(0)
    net = SR3ReferenceUNet(**TINY).eval()
    x, level = torch.randn(2, 6, 16, 16), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        flat, column = net(x, level), net(x, level[:, None])
        alone = net(x[:1].repeat(2, 1, 1, 1), level)[0]
        swapped = net(x[:1].expand(2, -1, -1, -1), level.flip(0))[0]
    torch.testing.assert_close(flat, column, rtol=0, atol=0)
    assert float((flat[0] - alone).abs().max()) < 1e-5  # batch members are independent
    assert float((flat[0] - swapped).abs().max()) > 1e-3  # it sees the level
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, 1\)"):
        net(x, torch.rand(2, 2))


@pytest.mark.parametrize("size", [(13, 11), (16, 9), (17, 32)])
def test_other_sizes_are_padded_and_cropped_back(size):
    """The official network takes sides divisible by 2**(levels - 1) only; others are reflect-padded at the bottom
    and right, and the output cropped: exactly the padded input's output, cropped."""
    torch.manual_seed(0)
    net = SR3ReferenceUNet(**(TINY | dict(channel_mults=(1, 2, 2)))).eval()
    x, level = torch.randn(2, 6, *size), torch.rand(2)
    with torch.no_grad():
        out = net(x, level)
        padded = net(pad_to_multiple(x, 4), level)
    assert out.shape == (2, 3, *size)
    torch.testing.assert_close(out, padded[..., : size[0], : size[1]], rtol=0, atol=0)


def test_the_official_init_is_orthogonal_with_zero_biases_and_pytorch_init_is_offered():
    torch.manual_seed(0)
    net = SR3ReferenceUNet(**TINY).requires_grad_(False)
    head = net.head.weight.flatten(1)  # 8 x 54: orthonormal rows
    torch.testing.assert_close(head @ head.T, torch.eye(8), rtol=0, atol=1e-5)
    linear = net.noise_level.mlp[0].weight  # 32 x 8: orthonormal columns
    torch.testing.assert_close(linear.T @ linear, torch.eye(8), rtol=0, atol=1e-5)
    biases = [p for name, p in net.named_parameters() if name.endswith("bias") and "norm" not in name]
    assert biases and all(float(b.abs().max()) == 0 for b in biases)
    assert float(net.tail[0].weight.min()) == 1.0  # GroupNorm keeps its ones
    default = SR3ReferenceUNet(**TINY, init="pytorch").requires_grad_(False)
    assert float(default.head.bias.abs().max()) > 0
    with pytest.raises(ValueError, match="orthogonal or pytorch"):
        SR3ReferenceUNet(**TINY, init="kaiming")


def test_attention_sits_where_the_official_code_puts_it():
    net = SR3ReferenceUNet(**(TINY | dict(channel_mults=(1, 2, 2), res_blocks=2)))
    has_attention = [[not isinstance(a, torch.nn.Identity) for a in level.attns] for level in net.down]
    assert has_attention == [[False, False], [True, True], [False, False]]  # 16, 8, 4 px: attn_res (8,)
    assert [not isinstance(a, torch.nn.Identity) for a in net.mid.attns] == [True, False]  # first middle block only
    assert [len(level.blocks) for level in net.up] == [3, 3, 3]
    assert not isinstance(net.up[1].attns[2], torch.nn.Identity)
    # officially the way up doubles the coarsest resolution, so a side not divisible by 2**(levels-1) places
    # attention differently on the two halves: 100, 50, 25, 12 px down; 96, 48, 24, 12 px up
    assert attention_levels(100, 4, (24, 12)) == ([False, False, False, True], [False, False, True, True])
