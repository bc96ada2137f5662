"""Tests of ir_lightning.metrics.psnr_ssim against closed forms, a numpy reference written here, and skimage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ir_lightning.metrics.psnr_ssim import (
    MSE_EPS,
    RestorationMetrics,
    crop_border,
    psnr_per_image,
    quantize,
    rgb_to_y,
    ssim_per_image,
)

PSNR_TOL_DB = 1e-4  # agreement asked of PSNR, in dB
SSIM_TOL = 1e-5  # agreement asked of SSIM
PSNR_CAP_DB = 10.0 * math.log10(255.0**2 / MSE_EPS)  # PSNR of identical images after the MSE floor


# ---------------------------------------------------------------- numpy reference


def np_eval_space(img01: np.ndarray, border: int, y_channel: bool) -> np.ndarray:
    """Quantize, crop and take MATLAB-rgb2ycbcr Y, written independently with numpy."""
    img = np.round(np.clip(img01.astype(np.float64), 0.0, 1.0) * 255.0)
    if border > 0:
        img = img[:, :, border:-border, border:-border]
    if y_channel and img.shape[1] == 3:
        red, green, blue = img[:, 0], img[:, 1], img[:, 2]
        img = (16.0 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255.0)[:, None]
    return img


def np_psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    mse = ((pred - target) ** 2).mean(axis=(1, 2, 3))
    return 10.0 * np.log10(255.0**2 / mse)


def np_ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM over windows fully inside one 2-D plane (Gaussian 11x11, sigma 1.5)."""
    offsets = np.arange(11) - 5
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    patches_x = sliding_window_view(x, (11, 11))
    patches_y = sliding_window_view(y, (11, 11))

    def weighted_mean(patches: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", patches, window)

    mu_x, mu_y = weighted_mean(patches_x), weighted_mean(patches_y)
    var_x = weighted_mean(patches_x**2) - mu_x**2
    var_y = weighted_mean(patches_y**2) - mu_y**2
    cov_xy = weighted_mean(patches_x * patches_y) - mu_x * mu_y
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    ssim_map = numerator / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def np_ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array([np.mean([np_ssim_plane(p, t) for p, t in zip(pi, ti)]) for pi, ti in zip(pred, target)])


def skimage_psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array([peak_signal_noise_ratio(t, p, data_range=255) for p, t in zip(pred, target)])


def skimage_ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    scores = []
    for p, t in zip(pred, target):
        if p.shape[0] > 1:
            scores.append(structural_similarity(p, t, channel_axis=0, **kwargs))
        else:
            scores.append(structural_similarity(p[0], t[0], **kwargs))
    return np.array(scores)


# ---------------------------------------------------------------- test images


def random_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    target = rng.uniform(0.0, 1.0, size=(2, 3, 32, 36)).astype(np.float32)
    pred = (target + rng.normal(0.0, 0.05, size=target.shape)).astype(np.float32)
    return pred, target


def photo_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two crops of skimage's astronaut photo plus Gaussian noise (values may leave [0, 1])."""
    rng = np.random.default_rng(1)
    photo = skimage_data.astronaut().astype(np.float32) / 255.0
    crops = [photo[100:140, 180:228], photo[300:340, 60:108]]
    target = np.stack([c.transpose(2, 0, 1) for c in crops])
    pred = (target + rng.normal(0.0, 0.03, size=target.shape)).astype(np.float32)
    return pred, target


PAIRS = {"random": random_pair, "photo": photo_pair}


# ---------------------------------------------------------------- building blocks


@pytest.mark.parametrize(
    ("rgb", "y_expected"),
    [
        ((255, 255, 255), 235.0),
        ((0, 0, 0), 16.0),
        ((255, 0, 0), 81.481),
        ((0, 255, 0), 144.553),
        ((0, 0, 255), 40.966),
    ],
)
def test_rgb_to_y_matlab_coefficients_on_known_colours(rgb: tuple[int, int, int], y_expected: float) -> None:
    img = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 2, 3)
    y = rgb_to_y(img)
    assert y.shape == (2, 1, 2, 3)
    assert torch.allclose(y, torch.full_like(y, y_expected), rtol=0.0, atol=1e-9)


def test_quantize_rounds_and_clamps_to_uint8_levels() -> None:
    img01 = torch.tensor([-0.2, 0.4 / 255, 0.6 / 255, 100.4 / 255, 100.6 / 255, 1.3], dtype=torch.float64)
    assert quantize(img01).tolist() == [0.0, 0.0, 1.0, 100.0, 101.0, 255.0]
    assert quantize(img01).is_floating_point()


def test_crop_border_slices_each_side() -> None:
    img = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)
    assert torch.equal(crop_border(img, 0), img)
    assert torch.equal(crop_border(img, 2), torch.from_numpy(img.numpy()[:, :, 2:8, 2:10]))
    with pytest.raises(ValueError):
        crop_border(img, 5)
    with pytest.raises(ValueError):
        crop_border(img, -1)


# ---------------------------------------------------------------- per-image metrics vs references


@pytest.mark.parametrize("pair_name", sorted(PAIRS))
@pytest.mark.parametrize("y_channel", [True, False])
@pytest.mark.parametrize("border", [0, 4])
def test_psnr_matches_numpy_and_skimage(pair_name: str, y_channel: bool, border: int) -> None:
    pred, target = PAIRS[pair_name]()
    ours = psnr_per_image(torch.from_numpy(pred), torch.from_numpy(target), border, y_channel).numpy()
    pred_ref, target_ref = np_eval_space(pred, border, y_channel), np_eval_space(target, border, y_channel)
    assert ours.shape == (2,)
    np.testing.assert_allclose(ours, np_psnr(pred_ref, target_ref), rtol=0.0, atol=PSNR_TOL_DB)
    np.testing.assert_allclose(ours, skimage_psnr(pred_ref, target_ref), rtol=0.0, atol=PSNR_TOL_DB)


@pytest.mark.parametrize("pair_name", sorted(PAIRS))
@pytest.mark.parametrize("y_channel", [True, False])
@pytest.mark.parametrize("border", [0, 4])
def test_ssim_matches_numpy_and_skimage(pair_name: str, y_channel: bool, border: int) -> None:
    pred, target = PAIRS[pair_name]()
    ours = ssim_per_image(torch.from_numpy(pred), torch.from_numpy(target), border, y_channel).numpy()
    pred_ref, target_ref = np_eval_space(pred, border, y_channel), np_eval_space(target, border, y_channel)
    assert ours.shape == (2,)
    np.testing.assert_allclose(ours, np_ssim(pred_ref, target_ref), rtol=0.0, atol=SSIM_TOL)
    np.testing.assert_allclose(ours, skimage_ssim(pred_ref, target_ref), rtol=0.0, atol=SSIM_TOL)


def test_one_channel_input_is_used_as_y() -> None:
    pred, target = photo_pair()
    pred_gray, target_gray = torch.from_numpy(pred[:, :1]), torch.from_numpy(target[:, :1])
    for metric in (psnr_per_image, ssim_per_image):
        as_y = metric(pred_gray, target_gray, 4, True)
        assert torch.equal(as_y, metric(pred_gray, target_gray, 4, False))
    ref = np_psnr(np_eval_space(pred[:, :1], 4, False), np_eval_space(target[:, :1], 4, False))
    ours = psnr_per_image(pred_gray, target_gray, 4, True).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0.0, atol=PSNR_TOL_DB)


# ---------------------------------------------------------------- quantization


def integer_level_target() -> torch.Tensor:
    """Images on exact uint8 levels 0..254, so a shift of under one level never clamps."""
    generator = torch.Generator().manual_seed(2)
    return torch.randint(0, 255, (2, 3, 20, 20), generator=generator).float() / 255.0


@pytest.mark.parametrize("y_channel", [True, False])
def test_offset_below_half_a_level_vanishes_after_rounding(y_channel: bool) -> None:
    target = integer_level_target()
    pred = target + 0.4 / 255.0
    psnr = psnr_per_image(pred, target, 0, y_channel)
    assert torch.isfinite(psnr).all()
    assert torch.allclose(psnr, torch.full_like(psnr, PSNR_CAP_DB), rtol=0.0, atol=1e-9)
    ssim = ssim_per_image(pred, target, 0, y_channel)
    assert torch.allclose(ssim, torch.ones_like(ssim), rtol=0.0, atol=1e-12)


@pytest.mark.parametrize(
    ("y_channel", "expected_db"),
    [
        (False, 20.0 * math.log10(255.0)),  # every value moves one level: MSE = 1
        (True, 20.0 * math.log10(255.0**2 / 219.0)),  # Y moves (65.481 + 128.553 + 24.966) / 255 = 219/255
    ],
)
def test_offset_above_half_a_level_moves_one_level(y_channel: bool, expected_db: float) -> None:
    target = integer_level_target()
    psnr = psnr_per_image(target + 0.6 / 255.0, target, 0, y_channel)
    assert torch.allclose(psnr, torch.full_like(psnr, expected_db), rtol=0.0, atol=1e-9)


# ---------------------------------------------------------------- errors


def test_shape_mismatch_names_both_shapes() -> None:
    pred, target = torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 20)
    for call in (
        lambda: psnr_per_image(pred, target, 0, True),
        lambda: ssim_per_image(pred, target, 0, True),
        lambda: RestorationMetrics().update(pred, target),
    ):
        with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\).*\(1, 3, 16, 20\)"):
            call()


def test_ssim_rejects_images_smaller_than_the_window_after_cropping() -> None:
    img = torch.rand(1, 3, 18, 18, generator=torch.Generator().manual_seed(3))
    ssim_per_image(img, img, 3, True)  # 12 x 12 left: enough for an 11 x 11 window
    with pytest.raises(ValueError, match="11 x 11"):
        ssim_per_image(img, img, 4, True)  # 10 x 10 left


# ---------------------------------------------------------------- RestorationMetrics


def shifted(target: torch.Tensor, levels: int) -> torch.Tensor:
    return target + levels / 255.0


def test_restoration_metrics_averages_per_image_values_over_updates() -> None:
    """One image off by 1 level, then two off by 10 levels: the mean of three per-image PSNRs."""
    target = integer_level_target().clamp(max=240 / 255.0)
    metric = RestorationMetrics(crop_border=4, y_channel=True)
    metric.update(shifted(target[:1], 1), target[:1])
    metric.update(shifted(target, 10), target)
    result = metric.compute()

    psnr_one_level = 20.0 * math.log10(255.0**2 / 219.0)  # Y error 219/255 on every pixel
    psnr_ten_levels = psnr_one_level - 20.0  # ten times the error: -20 dB
    per_image_mean = (psnr_one_level + 2 * psnr_ten_levels) / 3
    mse_one = (219.0 / 255.0) ** 2
    pooled_mse_psnr = 10.0 * math.log10(255.0**2 / ((mse_one + 2 * 100 * mse_one) / 3))
    batch_mean_of_means = (psnr_one_level + psnr_ten_levels) / 2
    assert result["psnr"].item() == pytest.approx(per_image_mean, abs=1e-9)
    assert abs(per_image_mean - pooled_mse_psnr) > 4.0  # 36.12 vs 31.19 dB: the two protocols differ
    assert abs(per_image_mean - batch_mean_of_means) > 3.0  # 36.12 vs 39.45 dB: per image, not per batch

    ssim_all = torch.cat(
        [
            ssim_per_image(shifted(target[:1], 1), target[:1], 4, True),
            ssim_per_image(shifted(target, 10), target, 4, True),
        ]
    )
    assert result["ssim"].item() == pytest.approx(ssim_all.mean().item(), abs=1e-12)
    assert int(metric.num_images) == 3


def test_restoration_metrics_states_merge_by_sum_like_ddp() -> None:
    """Two 'ranks' merged with the states' dist_reduce_fx give the single-process result."""
    target = integer_level_target().clamp(max=240 / 255.0)
    rank0, rank1, single = (RestorationMetrics(crop_border=0, y_channel=False) for _ in range(3))
    rank0.update(shifted(target[:1], 1), target[:1])
    rank1.update(shifted(target, 10), target)
    single.update(shifted(target[:1], 1), target[:1])
    single.update(shifted(target, 10), target)
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), single.compute()
    psnr_expected = (20.0 * math.log10(255.0) + 2 * (20.0 * math.log10(255.0) - 20.0)) / 3
    assert merged["psnr"].item() == pytest.approx(psnr_expected, abs=1e-9)
    assert merged["ssim"].item() == pytest.approx(expected["ssim"].item(), abs=1e-12)


def test_color_error_of_a_cast_is_its_size_over_the_channels_and_texture_averages_out() -> None:
    """A cast of c levels on one of 3 channels scores c / 3; a checkerboard of +-a levels (zero mean on every
    8 x 8 box) scores 0; the border crop drops what lies outside it; a remainder past the last full box is
    dropped (a cast there scores 0)."""
    from ir_lightning.metrics.psnr_ssim import color_error_per_image

    base = torch.full((2, 3, 40, 40), 100.0) / 255
    cast = base.clone()
    cast[:, 1] += 12 / 255
    assert torch.allclose(color_error_per_image(cast, base), torch.tensor(4.0, dtype=torch.float64))
    rows, cols = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    checker = base + ((rows + cols) % 2 * 2 - 1).float() * 9 / 255
    assert torch.equal(color_error_per_image(checker, base), torch.zeros(2, dtype=torch.float64))
    edge = base.clone()
    edge[..., :4, :] += 30 / 255  # the 4-pixel border only
    assert color_error_per_image(edge, base, border=4).max() == 0
    assert color_error_per_image(edge, base).min() > 0
    wide = torch.full((1, 3, 40, 44), 100.0) / 255
    tail = wide.clone()
    tail[..., 40:] += 30 / 255  # past the last full 8 x 8 box of a 44-pixel side
    assert color_error_per_image(tail, wide).max() == 0


def test_restoration_metrics_average_the_color_error_over_images() -> None:
    from ir_lightning.metrics.psnr_ssim import RestorationMetrics

    base = torch.full((2, 3, 32, 32), 0.4)
    cast = base.clone()
    cast[0, 0] += 6 / 255  # 2 levels on image 0, 0 on image 1
    metrics = RestorationMetrics(crop_border=0, y_channel=True)
    metrics.update(cast, base)
    assert metrics.compute()["color_error"].item() == pytest.approx(1.0)
