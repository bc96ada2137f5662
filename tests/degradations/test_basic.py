"""Tests for ir_lightning.degradations: references (PIL, numpy closed forms), Monte-Carlo, config."""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from kornia.filters import gaussian_blur2d
from PIL import Image
from skimage import data as skimage_data

from ir_lightning.degradations import (
    JPEG,
    BicubicDownsample,
    Degradation,
    GaussianBlur,
    GaussianNoise,
    Pipeline,
)

SEED = 1234


def sinusoid_field(height: int, width: int, rng: np.random.Generator, waves: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1]: a sum of plane waves of 0.5-3 cycles per image."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    field = sum(
        np.sin(2 * np.pi * (rng.uniform(0.5, 3) * y + rng.uniform(0.5, 3) * x) + rng.uniform(0, 2 * np.pi))
        for _ in range(waves)
    )
    return (field - field.min()) / (field.max() - field.min())


def smooth_rgb_uint8(height: int, width: int, seed: int = 0) -> np.ndarray:
    """H x W x 3 uint8 image with independent smooth channels."""
    rng = np.random.default_rng(seed)
    channels = [sinusoid_field(height, width, rng) for _ in range(3)]
    return np.round(np.stack(channels, axis=-1) * 255).astype(np.uint8)


def natural_rgb(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """1 x 3 x H x W image in [0, 1], uint8 levels: smooth luminance with a faint colour tint, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    luminance = 0.15 + 0.7 * sinusoid_field(height, width, rng)
    tint = 0.05 * np.sin(2 * np.pi * (y + x))[..., None] * np.array([1.0, -0.5, 0.3])
    img = np.round(np.clip(luminance[..., None] + tint, 0, 1) * 255) / 255
    return torch.from_numpy(img).permute(2, 0, 1)[None].float()


def to_tensor(img_hwc: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C -> float64 1 x C x H x W in [0, 1]."""
    return torch.from_numpy(img_hwc).permute(2, 0, 1)[None].double() / 255


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB for images in [0, 1]."""
    return float(10 * torch.log10(1 / ((x - y) ** 2).mean()))


def seeded(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- bicubic


@pytest.mark.parametrize("scale", [2, 4, 5])
def test_bicubic_matches_pil_float_resize(scale: int) -> None:
    # PIL's mode-"F" resize is the antialiased a=-0.5 bicubic in floating point, no rounding; measured max 2e-7.
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    ours = BicubicDownsample(scale)(to_tensor(img))[0].numpy()
    size = (40 // scale, 40 // scale)
    ref = np.stack(
        [
            np.asarray(Image.fromarray(img[..., c].astype(np.float32) / 255).resize(size, Image.BICUBIC))
            for c in range(3)
        ]
    )
    assert ours.shape == (3, *size)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_matches_pil_uint8_resize(scale: int) -> None:
    # PIL rounds to uint8 after its horizontal pass and again at the end, so it may differ from the exact
    # result by up to 0.5 + 0.5 * sum|w| = 1.09 levels (sum|w| = 1.19 for the x2 kernel); measured max
    # 0.91/255 (x2) and 0.80/255 (x4), border included (the float test above covers the border exactly).
    img = smooth_rgb_uint8(48, 48)
    ours = BicubicDownsample(scale)(to_tensor(img))[0].permute(1, 2, 0).numpy() * 255
    pil = np.asarray(Image.fromarray(img).resize((48 // scale, 48 // scale), Image.BICUBIC)).astype(np.float64)
    assert ours.shape == pil.shape == (48 // scale, 48 // scale, 3)
    assert np.abs(ours - pil).max() <= 1.0


def test_bicubic_shape_constant_and_identity() -> None:
    img = torch.full((2, 3, 12, 8), 0.37)
    out = BicubicDownsample(4)(img)
    assert out.shape == (2, 3, 3, 2)
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-6, rtol=0)
    ramp = torch.rand(1, 1, 6, 6, generator=seeded())
    assert torch.equal(BicubicDownsample(1)(ramp), ramp)


def test_bicubic_rejects_indivisible_size() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 10, 12\).*scale 4"):
        BicubicDownsample(4)(torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError):
        BicubicDownsample(0)


# ---------------------------------------------------------------- blur


def test_blur_keeps_constant_image() -> None:
    img = torch.full((3, 2, 16, 16), 0.61)
    out = GaussianBlur((0.2, 3.0), kernel_size=11)(img, generator=seeded())
    assert torch.allclose(out, img, atol=1e-6, rtol=0)


def test_blur_of_delta_is_normalised_gaussian_of_drawn_sigma() -> None:
    # 41 x 41 with the delta at the centre: the reflected copies of the delta lie 20 px away, beyond the
    # kernel's reach of 10 px, so the output is exactly the kernel, zero elsewhere.
    blur, size, centre, half = GaussianBlur((0.5, 3.0), kernel_size=21), 41, 20, 10
    img = torch.zeros(2, 1, size, size, dtype=torch.float64)
    img[..., centre, centre] = 1.0
    out = blur(img, generator=seeded())
    sigmas = blur.sample_sigma(2, seeded(), torch.device("cpu")).double().numpy()
    assert abs(sigmas[0] - sigmas[1]) > 0.1
    assert np.all((sigmas >= 0.5) & (sigmas <= 3.0))
    offsets = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    for b, sigma in enumerate(sigmas):
        kernel = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))  # sampled 2-D Gaussian
        expected = np.zeros((size, size))
        expected[centre - half : centre + half + 1, centre - half : centre + half + 1] = kernel / kernel.sum()
        np.testing.assert_allclose(out[b, 0].numpy(), expected, rtol=0, atol=1e-4)


def test_blur_fixed_sigma_range_gives_exactly_that_sigma() -> None:
    blur = GaussianBlur((1.5, 1.5), kernel_size=9)
    assert torch.equal(blur.sample_sigma(4, seeded(), torch.device("cpu")), torch.full((4,), 1.5))
    img = torch.rand(4, 3, 12, 12, generator=seeded(7))
    assert torch.equal(blur(img, seeded()), gaussian_blur2d(img, 9, (1.5, 1.5), border_type="reflect"))


def test_blur_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        GaussianBlur((0.0, 1.0))
    with pytest.raises(ValueError):
        GaussianBlur((2.0, 1.0))
    with pytest.raises(ValueError):
        GaussianBlur(kernel_size=4)


# ---------------------------------------------------------------- noise


def test_noise_std_matches_fixed_sigma() -> None:
    sigma_255 = 10.0
    clean = torch.full((4, 3, 32, 32), 0.5, dtype=torch.float64)
    residual = GaussianNoise((sigma_255, sigma_255))(clean, seeded()) - clean
    n = residual.numel()
    sigma = sigma_255 / 255
    standard_error = sigma / math.sqrt(2 * (n - 1))  # s.e. of a sample std of Gaussian data
    assert abs(float(residual.std()) - sigma) < 3 * standard_error
    assert abs(float(residual.mean())) < 3 * sigma / math.sqrt(n)


def test_noise_per_sample_std_matches_drawn_sigma() -> None:
    noise = GaussianNoise((1.0, 30.0))
    clean = torch.full((3, 3, 32, 32), 0.5, dtype=torch.float64)
    residual = noise(clean, seeded()) - clean
    sigmas = noise.sample_sigma(3, seeded(), torch.device("cpu")).double() / 255
    n = residual[0].numel()
    for b in range(3):
        standard_error = float(sigmas[b]) / math.sqrt(2 * (n - 1))
        assert abs(float(residual[b].std()) - float(sigmas[b])) < 3 * standard_error


def test_noise_gray_prob() -> None:
    clean = torch.full((2, 3, 16, 16), 0.5)
    gray = GaussianNoise((20.0, 20.0), gray_prob=1.0)(clean, seeded()) - clean
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])
    color = GaussianNoise((20.0, 20.0), gray_prob=0.0)(clean, seeded()) - clean
    # independent channels: correlation ~ N(0, 1/n) with n = 512, so |r| < 0.2 is a > 4-sigma bound
    r = np.corrcoef(color[:, 0].flatten().numpy(), color[:, 1].flatten().numpy())[0, 1]
    assert abs(r) < 0.2


# ---------------------------------------------------------------- JPEG


def test_jpeg_quality_orders_psnr() -> None:
    # measured on this image: 55.7 dB at q100, 46.0 at q90, 29.0 at q10
    img = natural_rgb(32, 32)
    psnr_100 = psnr(JPEG((100.0, 100.0))(img), img)
    out_90, out_10 = JPEG((90.0, 90.0))(img), JPEG((10.0, 10.0))(img)
    assert psnr_100 > 40.0
    assert psnr(out_10, img) < psnr(out_90, img) < psnr_100
    for out in (out_90, out_10):
        assert out.shape == img.shape and out.min() >= 0.0 and out.max() <= 1.0


@functools.cache
def astronaut_crops() -> np.ndarray:
    """Three 96 x 96 crops of skimage's astronaut photo (flag and hair, face, suit): N x H x W x 3 uint8."""
    photo = skimage_data.astronaut()
    return np.stack([photo[top : top + 96, left : left + 96] for top, left in [(0, 0), (96, 160), (256, 256)]])


def pillow_jpeg(images: np.ndarray, quality: int, subsampling: int = 2) -> torch.Tensor:
    """A libjpeg round trip through Pillow (subsampling 2 = 4:2:0, 0 = 4:4:4): N x 3 x H x W in [0, 1]."""
    decoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(decoded).transpose(0, 3, 1, 2).copy()).float() / 255


@pytest.mark.parametrize("quality", [30, 50, 75, 95])
def test_jpeg_is_close_to_libjpeg_at_the_same_quality_and_chroma_subsampling(quality: int) -> None:
    """kornia's codec is not bit-exact with libjpeg (float DCT, smooth rounding), but at the same quality
    and 4:2:0 it is far closer to Pillow's round trip than to Pillow's at 0.9 q, q -/+ 3 or 4:4:4.

    Measured (PSNR ours vs Pillow, dB): same q 40.7 / 42.5 / 43.5 / 45.3 at q 30 / 50 / 75 / 95; the nearest
    rival, q -/+ 3, is 3.3 to 5.4 dB below, 0.9 q 5.1 to 7.5 dB below, 4:4:4 6.6 to 7.0 dB below."""
    crops = astronaut_crops()
    ours = JPEG((float(quality), float(quality)))(torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()).float() / 255)
    same = psnr(ours, pillow_jpeg(crops, quality))
    assert same > 39.0
    rivals = {
        "0.9 q": pillow_jpeg(crops, round(0.9 * quality)),
        "q - 3": pillow_jpeg(crops, quality - 3),
        "q + 3": pillow_jpeg(crops, quality + 3),
        "4:4:4": pillow_jpeg(crops, quality, subsampling=0),
    }
    for name, rival in rivals.items():
        assert same > psnr(ours, rival) + 1.5, name


def test_jpeg_odd_size_gray_and_channel_check() -> None:
    img = natural_rgb(20, 28)
    gray = img.mean(dim=1, keepdim=True)
    out = JPEG((100.0, 100.0))(gray)
    assert out.shape == gray.shape
    assert psnr(out, gray) > 40.0
    with pytest.raises(ValueError, match="1- or 3-channel"):
        JPEG()(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError):
        JPEG((50.0, 101.0))


# ---------------------------------------------------------------- pipeline


def default_pipeline() -> Pipeline:
    steps: list[Degradation] = [GaussianBlur(kernel_size=7), BicubicDownsample(2), GaussianNoise(), JPEG()]
    return Pipeline(steps)


def test_pipeline_quantizes_and_clamps() -> None:
    img = natural_rgb(32, 32).expand(2, -1, -1, -1)
    out = default_pipeline()(img, seeded())
    assert out.shape == (2, 3, 16, 16)
    levels = out * 255
    assert torch.allclose(levels, levels.round(), atol=1e-6 * 255, rtol=0)
    assert out.min() >= 0.0 and out.max() <= 1.0
    loud = Pipeline([GaussianNoise((200.0, 200.0))], quantize=False)(img, seeded())
    assert loud.min() == 0.0 and loud.max() == 1.0


def test_pipeline_seed_determinism() -> None:
    img = natural_rgb(32, 32).expand(2, -1, -1, -1)
    pipeline = default_pipeline()
    first, again = pipeline(img, seeded(1)), pipeline(img, seeded(1))
    other = pipeline(img, seeded(2))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 5 / 255


def test_repr_shows_settings() -> None:
    text = repr(Pipeline([GaussianNoise((2.0, 4.0), gray_prob=0.5)], quantize=False))
    assert text == "Pipeline(steps=[GaussianNoise(sigma=(2.0, 4.0), gray_prob=0.5)], quantize=False, clamp=True)"


RECIPE = """
degradation:
  class_path: ir_lightning.degradations.Pipeline
  init_args:
    quantize: true
    steps:
      - class_path: ir_lightning.degradations.GaussianBlur
        init_args: {sigma: [0.5, 1.5], kernel_size: 7}
      - class_path: ir_lightning.degradations.BicubicDownsample
        init_args: {scale: 2}
      - class_path: ir_lightning.degradations.GaussianNoise
        init_args: {sigma: [5, 5], gray_prob: 0.25}
      - class_path: ir_lightning.degradations.JPEG
"""


def test_jsonargparse_builds_pipeline_from_yaml() -> None:
    parser = ArgumentParser()
    parser.add_argument("--degradation", type=Pipeline | None)
    built = parser.instantiate(parser.parse_string(RECIPE)).degradation
    assert isinstance(built, Pipeline) and built.quantize and built.clamp
    assert [type(step) for step in built.steps] == [GaussianBlur, BicubicDownsample, GaussianNoise, JPEG]
    assert built.steps[0].sigma == (0.5, 1.5) and built.steps[0].kernel_size == 7
    assert built.steps[1].scale == 2
    assert built.steps[2].sigma == (5.0, 5.0) and built.steps[2].gray_prob == 0.25
    assert built.steps[3].quality == (30.0, 95.0)
    img = natural_rgb(16, 16)
    assert torch.equal(built(img, seeded()), built(img, seeded()))
    assert parser.parse_string("degradation: null").degradation is None
