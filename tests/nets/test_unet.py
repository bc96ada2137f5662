"""The SR3 U-Net: sizes, shapes, conditioning on one or more scalars, its halves, the shipped checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ir_lightning.nets.unet import NoiseLevelEmbedding, UNet

REPO = Path(__file__).resolve().parents[2]

TINY = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), dropout=0.0, norm_groups=8)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts_of_recorded_configurations():
    # Recorded when the network was written; a change of architecture changes these on purpose only.
    public_16_128 = UNet(base_channels=64, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=2, attn_levels=(3,))
    demo = UNet(base_channels=32, channel_mults=(1, 2, 2, 4), num_res_blocks=1, attn_levels=(3,))
    assert n_params(public_16_128) == 102_682_115
    assert n_params(demo) == 3_359_203


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (17, 64)])
def test_any_input_size_gives_the_same_output_size(size):
    net = UNet(in_channels=6, out_channels=3, **TINY)
    out = net(torch.randn(2, 6, *size), torch.rand(2))
    assert out.shape == (2, 3, *size)


def test_output_depends_on_the_noise_level_per_sample():
    torch.manual_seed(0)
    net = UNet(**TINY).eval()
    x = torch.randn(1, 6, 16, 16).repeat(2, 1, 1, 1)
    out = net(x, torch.tensor([0.1, 0.9]))
    assert (out[0] - out[1]).abs().max() > 1e-3  # same image, different levels
    again = net(x[:1], torch.tensor([0.1]))
    torch.testing.assert_close(again[0], out[0], atol=1e-5, rtol=0)  # batch members are independent


def test_groupnorm_needs_divisible_channels():
    with pytest.raises(ValueError, match="not divisible"):
        UNet(base_channels=24, channel_mults=(1,), norm_groups=16, attn_levels=())


def demo_net_config() -> dict:
    """The U-Net arguments of the demo recipe: recipes/sr3_x4.yaml overlaid by recipes/demo/sr3_x4_cpu.yaml."""
    config = {}
    for path in (REPO / "recipes" / "sr3_x4.yaml", REPO / "recipes" / "demo" / "sr3_x4_cpu.yaml"):
        net = yaml.safe_load(path.read_text())["model"]["init_args"]["net"]
        assert net["class_path"] == "ir_lightning.nets.unet.UNet", f"{path}: the net is {net['class_path']}"
        config.update(net["init_args"])
    return config


def test_the_shipped_sr3_checkpoint_loads_strictly_and_predicts_as_recorded():
    # The refactor into encoder/decoder halves must keep the SR3 state-dict keys, shapes and order
    # (the optimizer state of a training checkpoint follows the parameter order) and the computation.
    shipped = REPO / "tests/fixtures/shipped_2026_11/sr3_x4_demo.ckpt"  # the first shipped SR3: float16 EMA, "net.*"
    checkpoint = torch.load(shipped, map_location="cpu", weights_only=True)
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net = UNet(**demo_net_config()).eval()
    net.load_state_dict(weights, strict=True)
    assert list(net.state_dict()) == list(weights)

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 22), torch.linspace(-1, 1, 37), indexing="ij")  # padded to 24 x 40
    x = torch.stack([torch.sin(3 * (c + 1) * xx + 2 * c * yy) for c in range(6)])[None]
    with torch.no_grad():
        out = net(x, torch.tensor([0.3]))
    # recorded with the U-Net as it was before the refactor (bit-identical then)
    assert out.abs().mean().item() == pytest.approx(0.7801673, abs=1e-5)
    expected = {
        (0, 0): [1.0854788, 1.2099438, -0.2227142],
        (21, 36): [-0.8729236, -1.6803496, 0.0891555],
        (11, 17): [-0.3140989, -0.4489943, -0.4490483],
    }
    for (i, j), values in expected.items():
        torch.testing.assert_close(out[0, :, i, j], torch.tensor(values), atol=1e-4, rtol=0)


def test_encode_then_decode_is_forward():
    torch.manual_seed(0)
    net = UNet(**TINY).eval()
    x, level = torch.randn(2, 6, 16, 16), torch.rand(2)
    emb = net.embed(level)
    h, skips = net.encode(x, emb)
    n_skips = len(skips)
    torch.testing.assert_close(net.decode(h, skips, emb), net(x, level), atol=0, rtol=0)
    assert len(skips) == n_skips  # decode reads the skips without consuming them: a second decoder can use them


def test_one_conditioning_scalar_keeps_the_parameter_shapes_and_takes_b_or_b1():
    torch.manual_seed(0)
    one = UNet(**TINY).eval()
    two = UNet(**TINY, cond_dims=2)
    shapes_one = {k: v.shape for k, v in one.state_dict().items()}
    shapes_two = {k: v.shape for k, v in two.state_dict().items()}
    assert shapes_one.keys() == shapes_two.keys()
    # only the MLP's first layer widens: one 16-wide sinusoidal code per scalar
    assert {k for k in shapes_one if shapes_one[k] != shapes_two[k]} == {"embed.mlp.0.weight"}
    assert shapes_one["embed.mlp.0.weight"] == (64, 16) and shapes_two["embed.mlp.0.weight"] == (64, 32)
    x, level = torch.randn(2, 6, 16, 16), torch.rand(2)
    torch.testing.assert_close(one(x, level[:, None]), one(x, level), atol=0, rtol=0)


def test_each_of_two_conditioning_scalars_changes_the_output():
    torch.manual_seed(0)
    net = UNet(**TINY, cond_dims=2).eval()
    x = torch.randn(1, 6, 16, 16).repeat(3, 1, 1, 1)
    out = net(x, torch.tensor([[0.5, 0.1], [0.2, 0.1], [0.5, 0.05]]))
    assert (out[0] - out[1]).abs().max() > 1e-3  # first scalar only differs
    assert (out[0] - out[2]).abs().max() > 1e-3  # second scalar only differs


@pytest.mark.parametrize(("cond_dims", "shape"), [(1, (2, 2)), (2, (2,)), (2, (2, 3)), (2, (2, 2, 1))])
def test_a_conditioning_of_the_wrong_shape_is_refused(cond_dims, shape):
    net = UNet(**TINY, cond_dims=cond_dims)
    with pytest.raises(ValueError, match=r"conditioning of shape .* expected"):
        net(torch.randn(2, 6, 16, 16), torch.rand(shape))


def test_noise_level_embedding_encodes_each_scalar_with_its_own_code():
    # Zeroing the MLP weights that read the second scalar's code makes the output blind to it.
    torch.manual_seed(0)
    embed = NoiseLevelEmbedding(8, n_inputs=2)
    with torch.no_grad():
        embed.mlp[0].weight[:, 8:] = 0
    a = embed(torch.tensor([[0.3, 0.1]]))
    b = embed(torch.tensor([[0.3, 0.9]]))
    c = embed(torch.tensor([[0.4, 0.1]]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_cond_dims_must_be_positive():
    with pytest.raises(ValueError, match="cond_dims must be at least 1"):
        UNet(**TINY, cond_dims=0)
