"""The official RDDM network (`ir_lightning.nets.rddm_official`): sizes, the method's conditioning turned into the
official time, the input conversions, padding. The official outputs themselves are reproduced in
tests/importing/test_rddm_import.py, through the import of the official files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ir_lightning.nets.padding import pad_to_multiple
from ir_lightning.nets.rddm_official import (
    OfficialInput,
    OfficialSharedEncoderUNet,
    OfficialSingleUNet,
    OfficialTime,
    OfficialTwoUNets,
    OfficialUNet,
)

TINY = dict(dim=8, dim_mults=(1, 2), resnet_block_groups=4, heads=2, dim_head=4)


def n_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("layout", "kwargs", "expected", "millions"),
    [
        (OfficialTwoUNets, {}, 72_522_374, 72.5),  # share_encoder=0, 6 input channels
        (OfficialSharedEncoderUNet, {}, 51_980_614, 52.0),  # share_encoder=1
        (OfficialTwoUNets, {"mask_input": True}, 72_541_190, 72.5),  # shadow removal, 9 input channels
        (OfficialTwoUNets, {"sees_input": False, "condition": "coefficients"}, 72_503_558, 72.5),  # generation
        (OfficialSingleUNet, {}, 36_261_187, 36.3),  # num_unet=1
    ],
)
def test_the_official_sizes_have_the_official_parameter_counts(layout, kwargs, expected, millions):
    with torch.device("meta"):
        net = layout(**kwargs)
    assert n_parameters(net) == expected
    assert round(n_parameters(net) / 1e6, 1) == millions


def test_the_official_widths_are_64_64_128_256_with_a_512_middle():
    with torch.device("meta"):
        unet = OfficialUNet()
    assert [level.block1.block1.conv.out_channels for level in unet.encoder.levels] == [64, 64, 128, 256]
    assert [level.resample.out_channels for level in unet.encoder.levels] == [64, 128, 256, 512]
    assert unet.encoder.mid_attn.to_qkv.in_channels == 512
    assert unet.encoder.init_conv.kernel_size == (7, 7) and unet.encoder.time_embedding.mlp[0].out_features == 256
    assert [len(unet.encoder.levels), len(unet.decoder.levels)] == [4, 4]


@pytest.mark.parametrize("n_steps", [1000, 100])
def test_the_step_condition_gives_the_official_index_t_minus_1_exactly(n_steps):
    t = torch.arange(1, n_steps + 1)
    res_time, noise_time = OfficialTime("t", float(n_steps), -1.0)(t.float() / n_steps)  # the method's cond
    assert torch.equal(res_time, (t - 1).float()) and torch.equal(noise_time, res_time)


def test_the_coefficients_are_scaled_by_t_for_each_unet():
    cond = torch.tensor([[0.25, 0.5], [1.0, 0.1]])
    res_time, noise_time = OfficialTime("coefficients", 1000.0, -1.0)(cond)
    torch.testing.assert_close(res_time, torch.tensor([250.0, 1000.0]), rtol=0, atol=0)
    torch.testing.assert_close(noise_time, torch.tensor([500.0, 100.0]), rtol=0, atol=0)


def test_the_residual_unet_sees_alpha_bar_only_and_the_noise_unet_beta_bar_only():
    torch.manual_seed(0)
    net = OfficialTwoUNets(**TINY, condition="coefficients").eval()
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        res, eps = net(x, torch.tensor([[0.3, 0.4]]))
        res_b, eps_b = net(x, torch.tensor([[0.3, 0.9]]))  # beta_bar changed
        res_a, eps_a = net(x, torch.tensor([[0.7, 0.4]]))  # alpha_bar changed
    torch.testing.assert_close(res_b, res, rtol=0, atol=0)
    torch.testing.assert_close(eps_a, eps, rtol=0, atol=0)
    assert float((eps_b - eps).abs().max()) > 1e-3 and float((res_a - res).abs().max()) > 1e-3


@pytest.mark.parametrize(("coefficient", "seen"), [("alpha_bar", 0), ("beta_bar", 1)])
def test_a_single_unet_sees_the_coefficient_it_is_given(coefficient, seen):
    torch.manual_seed(0)
    net = OfficialSingleUNet(**TINY, condition="coefficients", coefficient=coefficient).eval()
    x, cond = torch.randn(1, 6, 8, 8), torch.tensor([[0.3, 0.4]])
    with torch.no_grad():
        out = net(x, cond)
        expected = net.unet(x, cond[:, seen] * 1000.0)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_the_mask_channel_is_seen_as_three_equal_channels():
    x = torch.randn(2, 7, 4, 4)
    official = OfficialInput(3, sees_input=True, mask_input=True)(x)
    assert official.shape == (2, 9, 4, 4)
    torch.testing.assert_close(official[:, :6], x[:, :6], rtol=0, atol=0)
    for c in range(6, 9):
        torch.testing.assert_close(official[:, c], x[:, 6], rtol=0, atol=0)


def test_the_shadow_network_is_the_9_channel_unet_on_the_repeated_mask():
    torch.manual_seed(0)
    net = OfficialTwoUNets(**TINY, mask_input=True).eval()
    x, t = torch.randn(2, 7, 8, 8), torch.tensor([1000, 37])
    with torch.no_grad():
        res, eps = net(x, t / 1000)
        nine = torch.cat([x[:, :6], x[:, 6:].repeat(1, 3, 1, 1)], dim=1)
        expected = net.res_unet(nine, (t - 1).float()), net.noise_unet(nine, (t - 1).float())
    assert net.res_unet.encoder.init_conv.in_channels == 9
    torch.testing.assert_close((res, eps), expected, rtol=0, atol=0)


def test_generation_drops_the_methods_zero_input_image():
    torch.manual_seed(0)
    net = OfficialTwoUNets(**TINY, sees_input=False, condition="coefficients").eval()
    i_t = torch.randn(1, 3, 8, 8)
    cond = torch.tensor([[0.5, 0.8]])
    with torch.no_grad():
        with_zeros = net(torch.cat([i_t, torch.zeros_like(i_t)], dim=1), cond)
        with_other = net(torch.cat([i_t, torch.randn_like(i_t)], dim=1), cond)
    assert net.res_unet.encoder.init_conv.in_channels == 3
    torch.testing.assert_close(with_other, with_zeros, rtol=0, atol=0)


def test_a_size_not_a_multiple_of_8_is_padded_and_cropped_back():
    torch.manual_seed(0)
    net = OfficialSharedEncoderUNet(dim=8, dim_mults=(1, 1, 1, 1), resnet_block_groups=4, heads=2, dim_head=4).eval()
    assert net.factor == 8
    x, cond = torch.randn(1, 6, 13, 11), torch.tensor([0.5])
    with torch.no_grad():
        res, eps = net(x, cond)
        padded = pad_to_multiple(x, 8)
        h, skips, emb = net.encoder(padded, torch.tensor([499.0]))
        expected_res = net.res_decoder(h, skips, emb)[..., :13, :11]
    assert res.shape == eps.shape == (1, 3, 13, 11) and padded.shape[-2:] == (16, 16)
    torch.testing.assert_close(res, expected_res, rtol=0, atol=0)


def test_the_shared_encoders_residual_decoder_has_no_skips_and_the_noise_decoder_has():
    net = OfficialSharedEncoderUNet(**TINY)
    assert not net.res_decoder.skips and net.noise_decoder.skips
    assert net.res_decoder.final_block.block1.conv.in_channels == 8  # the bottleneck path alone
    assert net.noise_decoder.final_block.block1.conv.in_channels == 16  # with the init_conv output


def test_the_blocks_compute_the_official_formulas():
    torch.manual_seed(0)
    unet = OfficialUNet(**TINY)
    conv = unet.encoder.levels[0].block1.block1.conv
    x = torch.randn(1, 8, 5, 5)
    w = conv.weight
    standardised = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (
        w.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5
    ).sqrt()
    torch.testing.assert_close(conv(x), F.conv2d(x, standardised, conv.bias, padding=1), rtol=1e-5, atol=1e-6)
    norm = unet.encoder.levels[0].attn.norm
    with torch.no_grad():
        norm.gain.copy_(torch.randn(8))
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-5).permute(0, 3, 1, 2) * norm.gain[:, None, None]
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)
    embedding = unet.encoder.time_embedding
    freqs = 10_000 ** (-torch.arange(4) / 3)  # dim 8: 4 frequencies, the last 1e-4
    sinusoid = torch.cat([(7.0 * freqs).sin(), (7.0 * freqs).cos()])[None]
    torch.testing.assert_close(embedding(torch.tensor([7.0])), embedding.mlp(sinusoid), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("build", "call", "message"),
    [
        (lambda: OfficialTwoUNets(**TINY), lambda n: n(torch.randn(1, 7, 8, 8), torch.tensor([0.5])), "B x 6 x H x W"),
        (lambda: OfficialTwoUNets(**TINY), lambda n: n(torch.randn(1, 6, 8, 8), torch.rand(1, 2)), "condition 't'"),
        (
            lambda: OfficialTwoUNets(**TINY, condition="coefficients"),
            lambda n: n(torch.randn(1, 6, 8, 8), torch.tensor([0.5])),
            "(B, 2)",
        ),
        (lambda: OfficialTwoUNets(**TINY, sees_input=False, mask_input=True), None, "mask_input needs sees_input"),
        (lambda: OfficialTwoUNets(**TINY, condition="alpha"), None, "condition must be"),
        (lambda: OfficialSingleUNet(**TINY, coefficient="gamma"), None, "coefficient must be"),
        (lambda: OfficialUNet(dim=8, dim_mults=()), None, "dim_mults"),
    ],
)
def test_wrong_settings_and_inputs_are_named(build, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        net = build()
        call(net)


def test_low_precision_inputs_use_the_official_larger_epsilon():
    from ir_lightning.nets.rddm_official import norm_eps

    assert norm_eps(torch.zeros(1)) == 1e-5
    assert norm_eps(torch.zeros(1, dtype=torch.bfloat16)) == norm_eps(torch.zeros(1, dtype=torch.float16)) == 1e-3
