"""The post-processing every method has (`ir_lightning.inference.postprocess`), checked against closed forms:
a constant colour cast is removed, detail is kept, AdaIN's moments are the reference's (computed by numpy),
the consistency projection satisfies A x = y for every operator, is idempotent and moves towards any image of
the affine set, the clamped rounds stay in [0, 1]; and the settings reach `restore` of a method."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from ir_lightning.diffusion import operators
from ir_lightning.inference import postprocess
from ir_lightning.methods.deqir import DeqIR
from ir_lightning.methods.settings import Sampling
from ir_lightning.methods.sr3 import SR3
from tests.helpers.checkpoints import small_deqir
from tests.helpers.nets import tiny_unet

CAST_LEVELS = (12.0, -7.0, 20.0)
"""A constant colour cast, per channel, in 8-bit levels."""


def photo(size: int = 64) -> torch.Tensor:
    """A crop of scikit-image's astronaut (1 x 3 x size x size, float64), squeezed into [0.1, 0.85] so that a
    cast of up to 20 levels stays inside [0, 1] (no clipping makes the cast non-constant)."""
    crop = skimage.data.astronaut()[100 : 100 + size, 180 : 180 + size]
    image = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].to(torch.float64) / 255
    return 0.1 + 0.75 * image


def test_the_wavelet_fix_removes_a_constant_colour_cast_to_a_level_everywhere():
    clean = photo()
    cast = torch.tensor(CAST_LEVELS, dtype=torch.float64).view(1, 3, 1, 1) / 255
    fixed = postprocess.color_fix(clean + cast, clean, "wavelet")
    # Closed form: the [1, 2, 1] / 4 kernel sums to 1 and the replicate border maps a constant to itself, so a
    # constant lies wholly in the low band at every pixel, borders included: high(clean + cast) = high(clean),
    # and high(clean) + low(clean) = clean. So no border needs to be left out.
    residual_levels = float((fixed - clean).abs().max()) * 255
    assert residual_levels < 1.0  # the brief's bound; measured 1.1e-13 levels (float64 rounding)
    assert residual_levels < 1e-9


def test_the_wavelet_split_adds_up_and_keeps_a_constant_in_the_low_band():
    image = photo(32)
    high, low = postprocess.wavelet_split(image)
    torch.testing.assert_close(high + low, image, rtol=0, atol=1e-12)
    constant = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    high, low = postprocess.wavelet_split(constant)
    assert float(high.abs().max()) < 1e-15 and float((low - 0.3).abs().max()) < 1e-15
    # one level on a checkerboard: (1 + 2 + 1) / 4 of a pixel's neighbours along each axis gives
    # (-1 + 2 - 1) / 4 = 0 away from the border, so the checkerboard is all high band there
    ii, jj = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    board = (((ii + jj) % 2) * 2 - 1).to(torch.float64).expand(1, 1, 16, 16)
    assert float(postprocess.atrous_blur(board, 1)[..., 1:-1, 1:-1].abs().max()) < 1e-15


def test_the_low_band_of_a_cosine_is_its_closed_form_attenuation():
    # [1, 2, 1] / 4 with taps d apart multiplies a cosine of angular frequency w by (1 + cos(w d)) / 2 =
    # cos^2(w d / 2); the 5 levels (d = 1, 2, 4, 8, 16) multiply it by the product, exactly wherever the taps
    # stay inside the image: 1 + 2 + 4 + 8 + 16 = 31 pixels from the border.
    period, width, reach = 64, 160, 31
    w = 2 * np.pi / period
    columns = np.arange(width)
    cosine = torch.from_numpy(np.cos(w * columns)).expand(1, 1, 8, width)
    low = postprocess.wavelet_split(cosine)[1][0, 0, 4].numpy()
    gain = np.prod([np.cos(w * 2**level / 2) ** 2 for level in range(postprocess.WAVELET_LEVELS)])
    assert 0.35 < gain < 0.45  # the low band keeps about 40 % of this period
    inside = slice(reach, width - reach)
    np.testing.assert_allclose(low[inside], gain * np.cos(w * columns[inside]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("detail", ["checkerboard", "stripes"])
def test_the_wavelet_fix_keeps_high_frequency_detail(detail):
    clean = photo()
    ii, jj = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    pattern = (ii + jj) % 2 if detail == "checkerboard" else jj % 2  # 1-pixel stripes along W
    added = (pattern * 2 - 1).to(torch.float64).expand(1, 3, 64, 64) * 3 / 255  # +-3 levels
    fixed = postprocess.color_fix(clean + added, clean, "wavelet")
    # fixed = high(clean + added) + low(clean) = clean + high(added): what is left of the detail is high(added)
    energy_ratio = float(((fixed - clean) ** 2).sum() / (added**2).sum())
    assert abs(energy_ratio - 1) < 0.05  # measured: checkerboard 0.99997, stripes 0.9949 (the border columns)


def test_adain_gives_each_image_and_channel_the_reference_s_mean_and_std():
    generator = torch.Generator().manual_seed(0)
    output = torch.rand(2, 3, 32, 24, generator=generator) * 0.5 + 0.2
    reference = torch.cat([photo(32)[..., :24], 1 - photo(32)[..., :24]]).to(torch.float32)
    fixed = postprocess.color_fix(output, reference, "adain").numpy().astype(np.float64)
    expected = reference.numpy().astype(np.float64)
    np.testing.assert_allclose(fixed.mean(axis=(2, 3)), expected.mean(axis=(2, 3)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fixed.std(axis=(2, 3)), expected.std(axis=(2, 3)), rtol=0, atol=1e-6)


def test_color_fix_none_changes_nothing_and_bad_methods_or_sizes_are_refused():
    output = torch.rand(1, 3, 8, 8)
    assert postprocess.color_fix(output, torch.zeros(1, 3, 8, 8), "none") is output
    with pytest.raises(ValueError, match="color fix 'blue': valid: none, wavelet, adain"):
        postprocess.color_fix(output, output, "blue")
    with pytest.raises(ValueError, match=r"the output \(30 x 30\) is no integer scale of the input \(8 x 8\)"):
        postprocess.reference_of(output, (30, 30))
    with pytest.raises(ValueError, match=r"the output \(32 x 16\) is no integer scale"):
        postprocess.reference_of(output, (32, 16))
    assert postprocess.reference_of(output, (8, 8)) is output
    up = postprocess.reference_of(output, (32, 32))  # torch's bicubic (a = -0.75), clamped
    expected = torch.nn.functional.interpolate(output, size=(32, 32), mode="bicubic", align_corners=False)
    torch.testing.assert_close(up, expected.clamp(0, 1))


# --- consistency ----------------------------------------------------------------------------------------------
def concrete(name: str) -> str:
    """An instance of each form of `operators.OPERATOR_NAMES` (<k> and <p> with small values)."""
    return name.replace("<k>", "4").replace("<p>", "50")


ALL_OPERATORS = [concrete(name) for name in operators.OPERATOR_NAMES]


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_projection_makes_a_x_equal_y_for_every_operator_and_is_idempotent(name):
    size = (32, 32)
    operator = postprocess.operator_for(name, size)
    generator = torch.Generator().manual_seed(1)
    gt, x = torch.rand(2, 2, 3, *size, generator=generator)
    y = operator.forward(gt.to(torch.float64)).to(torch.float32)
    projected = postprocess.project_consistent(x, y, operator)
    assert projected.dtype == torch.float32
    a_x_minus_y = float((operator.forward(projected.to(torch.float64)) - y.to(torch.float64)).abs().max())
    assert a_x_minus_y < 1e-5  # measured at most 6e-8 (float32 rounding of the result)
    again = postprocess.project_consistent(projected, y, operator)
    assert float((again - projected).abs().max()) < 1e-6  # P(P(x)) = P(x)
    # gt lies in {z : A z = y}: the orthogonal projection onto that affine set never moves away from it
    assert float((projected - gt).norm()) <= float((x - gt).norm()) + 1e-6


def test_projection_for_box_means_is_the_block_mean_replaced_by_the_measurement():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(1, 3, 8, 8, generator=generator), torch.rand(1, 3, 4, 4, generator=generator)
    projected = postprocess.project_consistent(x, y, operators.make_operator("sr2", (8, 8))).numpy()
    blocks = x.numpy().reshape(1, 3, 4, 2, 4, 2)
    expected = blocks - blocks.mean(axis=(3, 5), keepdims=True) + y.numpy()[:, :, :, None, :, None]
    np.testing.assert_allclose(projected, expected.reshape(1, 3, 8, 8), atol=1e-6)


def test_clamped_rounds_stay_in_range_and_shrink_the_residual():
    generator = torch.Generator().manual_seed(3)
    gt = photo(64).to(torch.float32)
    operator = postprocess.operator_for("bicubic4", (64, 64))
    y = operator.forward(gt.to(torch.float64)).to(torch.float32)
    x = (gt + 0.3 * torch.randn(gt.shape, generator=generator)).clamp(0, 1)  # a noisy restoration

    def residual(image: torch.Tensor) -> float:
        return float((operator.forward(image.to(torch.float64)) - y.to(torch.float64)).norm())

    before, once = residual(x), residual(postprocess.consistent(x, y, "bicubic4", clamp_rounds=1))
    result = postprocess.consistent(x, y, "bicubic4")
    assert 0.0 <= float(result.min()) and float(result.max()) <= 1.0 and result.dtype == torch.float32
    assert residual(result) < once < before
    assert residual(result) < 0.01 * before  # measured: 1.62 -> 0.23 (one round) -> 3.3e-6 (20 rounds)


def test_a_measurement_that_does_not_fit_is_refused_naming_the_operator_and_both_shapes():
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(
        ValueError, match=r"consistency 'bicubic3': the output is \(1, 3, 64, 64\) and the input \(1, 3, 16, 16\)"
    ):
        postprocess.consistent(x, torch.rand(1, 3, 16, 16), "bicubic3")
    with pytest.raises(
        ValueError,
        match=r"consistency 'sr2': the output is \(1, 3, 64, 64\) and the input \(1, 3, 16, 16\), "
        r"but A x would be \(1, 3, 32, 32\)",
    ):
        postprocess.consistent(x, torch.rand(1, 3, 16, 16), "sr2")
    with pytest.raises(
        ValueError, match=r"consistency AveragePoolSR: the output is \(1, 3, 64, 64\) and the input \(1, 3, 8, 8\)"
    ):
        postprocess.project_consistent(x, torch.rand(1, 3, 8, 8), operators.AveragePoolSR(4))
    with pytest.raises(ValueError, match="'sr' is no operator name; valid: sr<k>, bicubic<k>"):
        postprocess.consistent(x, x, "sr")
    grey = (0.2 + 0.6 * torch.rand(1, 1, 64, 64)).expand(1, 3, 64, 64)  # grey as RGB: colorization takes its mean
    coloured = postprocess.consistent(grey + 0.1 * torch.rand(1, 3, 64, 64) - 0.05, grey, "colorization")
    torch.testing.assert_close(coloured.mean(1, keepdim=True), grey[:, :1], atol=1e-6, rtol=0)


# --- the settings on every method -----------------------------------------------------------------------------
def tiny_sr3(**settings) -> SR3:
    torch.manual_seed(0)
    return SR3(net=tiny_unet(6), scale=4, sampling=Sampling(steps=2, sampler="ddim"), **settings).eval()


def test_bad_settings_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="model.init_args.color_fix must be one of none, wavelet, adain, got 'auto'"):
        tiny_sr3(color_fix="auto")
    with pytest.raises(ValueError, match="model.init_args.consistency: 'bicubic' is no operator name"):
        tiny_sr3(consistency="bicubic")
    assert tiny_sr3(consistency="none").consistency is None
    assert tiny_sr3().hparams.get("color_fix", "none") == "none"
    assert tiny_sr3(color_fix="adain", consistency="bicubic4").hparams["consistency"] == "bicubic4"  # in checkpoints


def test_restore_applies_the_colour_fix_then_the_consistency():
    generator = torch.Generator().manual_seed(4)
    lq = torch.rand(2, 3, 8, 8, generator=generator) * 0.6 + 0.2
    plain = tiny_sr3().restoration(lq).image
    reference = postprocess.reference_of(lq, (32, 32))
    expected = postprocess.color_fix(plain, reference, "adain").clamp(0, 1)
    torch.testing.assert_close(tiny_sr3(color_fix="adain").restore(lq), expected, rtol=0, atol=1e-6)
    both = tiny_sr3(color_fix="adain", consistency="bicubic4").restore(lq)
    torch.testing.assert_close(both, postprocess.consistent(expected, lq, "bicubic4"), rtol=0, atol=1e-6)
    batch = tiny_sr3(color_fix="adain").restore_batch({"lq": lq, "gt": torch.zeros(2, 3, 32, 32)})  # validation's
    torch.testing.assert_close(batch, expected, rtol=0, atol=1e-6)


def test_deqir_keeps_its_own_consistency_and_gets_the_setting_too_and_a_grey_input_keeps_its_colours():
    lq = 0.3 + 0.4 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    operator = postprocess.operator_for("sr2", (16, 16))

    def residual(image: torch.Tensor) -> float:
        return float((operator.forward(image.double()) - lq.double()).abs().max())

    # DeqIR's chain puts A^+ y in every step, but its final clamp to [0, 1] breaks A x = y where the (untrained)
    # prior's x0 left the range: measured 0.29. The projection (idempotent) changes only what the clamp broke.
    chain = small_deqir(operator="sr2").restore(lq)
    projected = small_deqir(operator="sr2", consistency="sr2").restore(lq)
    assert residual(projected) < 1e-5 < 0.1 < residual(chain)  # measured 1.8e-7 after the 20 clamped rounds
    assert 0.0 <= float(projected.min()) and float(projected.max()) <= 1.0
    grey = lq[:, :1].expand(1, 3, 8, 8)
    model: DeqIR = small_deqir(operator="colorization", color_fix="wavelet")
    assert model.colourises
    torch.testing.assert_close(model.restore(grey), model.restoration(grey).image)  # colour fix off for grey
    coloured = lq.clone()
    assert not torch.equal(model.restore(coloured), model.restoration(coloured).image)  # on for a colour input
