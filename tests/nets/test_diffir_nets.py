"""DiffIR's networks: shapes and parameter counts of the paper's configurations (recorded, against
closed forms computed from the layer sizes, and against the official code's counts recorded in the
fixture), CPEN's inputs per scale, the real-SR x1/x2 DIRformer (LQ unshuffled, x4 tail), the IPR
modulation, the LayerNorms and the denoiser's time input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ir_lightning.nets.diffir import CPEN, DIRformer, IPRDenoiser, IPRModulation, LayerNorm2d, input_multiple

DEBLUR = dict(
    dim=48,
    num_blocks=(3, 5, 6, 6),
    num_refinement_blocks=4,
    heads=(1, 2, 4, 8),
    ffn_expansion=2.0,
    bias=False,
    layernorm="with_bias",
    scale=1,
)
REAL_SR_X4 = dict(
    dim=64,
    num_blocks=(13, 1, 1, 1),
    num_refinement_blocks=13,
    heads=(1, 2, 4, 8),
    ffn_expansion=2.2,
    bias=False,
    layernorm="bias_free",
    scale=4,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(c_in: int, c_out: int, k: int, bias: bool = True, groups: int = 1) -> int:
    return c_out * (c_in // groups) * k * k + (c_out if bias else 0)


def block_params(c: int, ffn: float, bias_free: bool) -> int:
    """One DIRformer block from its layers: 2 LayerNorms, DMTA and DGFN each with a Linear(256 -> 2C)
    (the per-head temperatures are added by the caller)."""
    norm = c if bias_free else 2 * c
    hidden = int(c * ffn)
    dmta = 256 * 2 * c + conv(c, 3 * c, 1, False) + conv(3 * c, 3 * c, 3, False, 3 * c) + conv(c, c, 1, False)
    dgfn = (
        256 * 2 * c
        + conv(c, 2 * hidden, 1, False)
        + conv(2 * hidden, 2 * hidden, 3, False, 2 * hidden)
        + conv(hidden, c, 1, False)
    )
    return 2 * norm + dmta + dgfn


def dirformer_params(
    dim, num_blocks, num_refinement_blocks, heads, ffn_expansion, bias, layernorm, scale, unshuffle=1
) -> int:
    bias_free = layernorm == "bias_free"
    width = [dim * 2**i for i in range(4)]
    total = conv(3 * unshuffle**2, dim, 3, False)  # the embedding (never a bias, as officially)
    for level in range(4):  # encoder levels 1..3 and the latent
        total += num_blocks[level] * (block_params(width[level], ffn_expansion, bias_free) + heads[level])
    for level in range(3):  # decoder levels 3..1 (level 1 at 2 x dim)
        c = 2 * dim if level == 0 else width[level]
        total += num_blocks[level] * (block_params(c, ffn_expansion, bias_free) + heads[level])
    total += num_refinement_blocks * (block_params(2 * dim, ffn_expansion, bias_free) + heads[0])
    total += sum(conv(width[i], width[i] // 2, 3, False) for i in range(3))  # down-samplers
    total += sum(conv(width[i + 1], 2 * width[i + 1], 3, False) for i in range(3))  # up-samplers
    total += conv(2 * width[1], width[1], 1, bias) + conv(2 * width[2], width[2], 1, bias)  # skip reductions
    if scale * unshuffle == 1:
        return total + conv(2 * dim, 3, 3, bias)
    return total + 2 * conv(2 * dim, 8 * dim, 3) + conv(2 * dim, 3, 3)  # x4: two (conv + shuffle x2), then conv


def cpen_params(in_channels: int, res_blocks: int) -> int:
    return (
        conv(in_channels, 64, 3)
        + res_blocks * 2 * conv(64, 64, 3)
        + conv(64, 128, 3)
        + conv(128, 128, 3)
        + conv(128, 256, 3)
        + 2 * (256 * 256 + 256)
    )


@pytest.mark.parametrize(
    ("config", "recorded"), [(DEBLUR, 25_669_374), (REAL_SR_X4, 23_459_142)], ids=["deblur", "real_sr_x4"]
)
def test_dirformer_parameter_counts(config, recorded):
    net = DIRformer(**config)
    assert n_params(net) == recorded == dirformer_params(**config)


@pytest.mark.parametrize(
    ("scale", "with_gt", "res_blocks", "in_channels", "recorded"),
    [
        (1, True, 5, 96, 1_072_832),
        (1, False, 5, 48, 1_045_184),
        (4, True, 9, 51, 1_342_336),
        (4, False, 9, 3, 1_314_688),
        (2, True, 9, 60, None),
        (2, False, 9, 12, None),
    ],
)
def test_cpen_inputs_and_parameter_counts(scale, with_gt, res_blocks, in_channels, recorded):
    cpen = CPEN(scale, with_gt, res_blocks)
    assert cpen.body[0].in_channels == in_channels
    assert n_params(cpen) == cpen_params(in_channels, res_blocks)
    if recorded is not None:
        assert n_params(cpen) == recorded
    lq = torch.rand(2, 3, 32 // scale, 48 // scale)
    ipr = cpen(lq, torch.rand(2, 3, 32, 48)) if with_gt else cpen(lq)
    assert ipr.shape == (2, 256)


def test_denoiser_parameter_count_and_time_input():
    denoiser = IPRDenoiser(n_steps=4)
    assert n_params(denoiser) == 197_376 == (513 * 256 + 256) + (256 * 256 + 256)
    first = denoiser.mlp[0]
    z, c = torch.randn(3, 256), torch.randn(3, 256)
    t = torch.tensor([0, 1, 3])
    with torch.no_grad():
        expected = F.leaky_relu(F.linear(torch.cat([c, t[:, None] / 40.0, z], dim=1), first.weight, first.bias), 0.1)
        hidden = denoiser.mlp[:2](torch.cat([c, t[:, None].float() / 40.0, z], dim=1))
    torch.testing.assert_close(hidden, expected)
    assert denoiser(z, t, c).shape == (3, 256)


def test_output_shapes_and_padding_multiple():
    ipr = torch.randn(1, 256)
    small = {"dim": 16, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1}
    deblur, sr = DIRformer(**{**DEBLUR, **small}), DIRformer(**{**REAL_SR_X4, **small})
    assert deblur(torch.rand(1, 3, 24, 40), ipr).shape == (1, 3, 24, 40)
    assert sr(torch.rand(1, 3, 16, 24), ipr).shape == (1, 3, 64, 96)
    assert (input_multiple(1), input_multiple(2), input_multiple(4)) == (8, 8, 8)
    # the real-SR x1 / x2 DIRformers unshuffle the LQ by 4 / 2 first (the official inference's window sizes)
    assert (input_multiple(1, unshuffle=4), input_multiple(2, unshuffle=2)) == (32, 16)


def test_sr_output_is_nearest_upsampled_input_plus_tail():
    sr = DIRformer(**{**REAL_SR_X4, "dim": 16, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1})
    torch.nn.init.zeros_(sr.output[-1].weight)
    torch.nn.init.zeros_(sr.output[-1].bias)
    lq = torch.rand(1, 3, 8, 8)
    out = sr(lq, torch.randn(1, 256))
    torch.testing.assert_close(out, lq.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))


def test_ipr_modulation_is_x_times_k1_plus_k2():
    modulation = IPRModulation(channels=4)
    ipr, x = torch.randn(2, 256), torch.randn(2, 4, 3, 5)
    k = ipr @ modulation.linear.weight.T  # no bias
    expected = x * k[:, :4, None, None] + k[:, 4:, None, None]
    torch.testing.assert_close(modulation(x, ipr), expected)


@pytest.mark.parametrize("bias_free", [False, True])
def test_layernorm_over_channels(bias_free):
    norm = LayerNorm2d(6, bias_free=bias_free)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if norm.bias is not None:
            norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 4, 5) * 3 + 1
    pixels = x.permute(0, 2, 3, 1)
    if bias_free:
        expected = pixels / torch.sqrt(pixels.var(-1, keepdim=True, unbiased=False) + 1e-5) * norm.weight
    else:
        expected = F.layer_norm(pixels, (6,), norm.weight, norm.bias, eps=1e-5)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_bad_configurations_name_the_value():
    with pytest.raises(ValueError, match="scale 1, 2 or 4"):
        CPEN(scale=3)
    with pytest.raises(ValueError, match="layernorm"):
        DIRformer(layernorm="batch")
    with pytest.raises(ValueError, match="4 entries"):
        DIRformer(num_blocks=(1, 1, 1))


def test_dmta_is_channel_attention_per_head_against_a_plain_loop():
    """DMTA's output against a head-by-head loop written from the paper's description: q, k, v from
    the modulated input by 1x1 + depthwise 3x3; per head, softmax(temperature * q_n k_n^T) over channels
    (q, k L2-normalised over pixels), applied to v; then the 1x1 projection."""
    from ir_lightning.nets.diffir import DMTA

    torch.manual_seed(0)
    dmta = DMTA(channels=8, heads=2, bias=True)
    with torch.no_grad():
        dmta.temperature.copy_(torch.tensor([0.7, 1.9]).reshape(2, 1, 1))
    x, ipr = torch.randn(2, 8, 5, 6), torch.randn(2, 256)
    qkv = dmta.qkv_dw(dmta.qkv(dmta.modulation(x, ipr)))
    out = torch.empty(2, 8, 30)
    for b in range(2):
        for h in range(2):
            rows = slice(4 * h, 4 * h + 4)
            q, k, v = (qkv[b, offset + rows.start : offset + rows.stop].reshape(4, 30) for offset in (0, 8, 16))
            q, k = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
            attention = torch.softmax(dmta.temperature[h, 0, 0] * (q @ k.T), dim=1)
            out[b, rows] = attention @ v
    expected = dmta.project_out(out.reshape(2, 8, 5, 6))
    torch.testing.assert_close(dmta(x, ipr), expected, atol=1e-5, rtol=1e-5)


REAL_SR_X2 = {**REAL_SR_X4, "scale": 2, "unshuffle": 2}
REAL_SR_X1 = {**REAL_SR_X4, "scale": 1, "unshuffle": 4}
"""The official real-SR x2 and x1 DIRformers (DiffIR-RealSR/options/train_DiffIRS2_x2.yml, _x1.yml: only the scale
differs from x4; DiffIR-RealSR/DiffIR/archs/S2_arch.py:199-206 unshuffles the LQ, :235-237 keeps the x4 tail)."""

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures/official/diffir/diffir_official.pt"


@pytest.mark.parametrize(
    ("config", "lq_size", "embed_in"), [(REAL_SR_X2, 16, 12), (REAL_SR_X1, 32, 48)], ids=["x2", "x1"]
)
def test_unshuffling_dirformer_runs_on_the_gt_over_4_grid_with_an_x4_tail(config, lq_size, embed_in):
    net = DIRformer(**{**config, "dim": 4, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1})
    assert net.embed.in_channels == embed_in
    assert [m.out_channels for m in net.output if isinstance(m, torch.nn.Conv2d)] == [32, 32, 3]  # two x2 + the conv
    lq = torch.rand(2, 3, lq_size, lq_size)
    assert net(lq, torch.randn(2, 256)).shape == (2, 3, 32, 32)  # scale x the LQ
    torch.nn.init.zeros_(net.output[-1].weight)
    torch.nn.init.zeros_(net.output[-1].bias)
    scale = config["scale"]
    expected = lq.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # the nearest-up-sampled LQ
    torch.testing.assert_close(net(lq, torch.randn(2, 256)), expected)
    with pytest.raises(RuntimeError):  # an LQ that halves only to 1/8 of 16 / 8: a multiple of 8 is not enough
        net(torch.rand(1, 3, lq_size + 8, lq_size + 8), torch.randn(1, 256))


@pytest.mark.parametrize(
    ("name", "config", "res_blocks"),
    [("deblur", DEBLUR, 5), ("realsr_x4", REAL_SR_X4, 9), ("realsr_x2", REAL_SR_X2, 9), ("realsr_x1", REAL_SR_X1, 9)],
)
def test_parameter_counts_equal_the_official_codes(name, config, res_blocks):
    """Our networks at the official configurations against the counts of the official `DiffIRS1` / `DiffIRS2`
    members (`G`, `E`, `condition`, `denoise`) that make_fixture.py measured."""
    official = torch.load(OFFICIAL, weights_only=True)["official_counts"][name]
    scale = config["scale"]
    with torch.device("meta"):
        restorer = DIRformer(**config)
        cpen_s1, cpen_s2 = CPEN(scale, True, res_blocks), CPEN(scale, False, res_blocks)
        denoiser = IPRDenoiser()
    assert n_params(restorer) == official["G"] == official["G_s1"] == dirformer_params(**config)
    assert n_params(cpen_s1) == official["E"]
    assert n_params(cpen_s2) == official["condition"]
    assert n_params(denoiser) == official["denoise"]
    assert n_params(restorer) + n_params(cpen_s2) + n_params(denoiser) == official["DiffIRS2"]
    assert n_params(restorer) + n_params(cpen_s1) == official["DiffIRS1"]


def test_recorded_real_sr_x1_and_x2_counts():
    with torch.device("meta"):
        counts = [n_params(DIRformer(**config)) for config in (REAL_SR_X2, REAL_SR_X1)]
    assert counts == [23_464_326, 23_485_062]  # x4: 23_459_142; only the embedding's inputs grow (12, 48)


def test_bad_unshuffle_is_refused():
    with pytest.raises(ValueError, match="unshuffle"):
        DIRformer(unshuffle=0)
