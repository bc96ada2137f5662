"""PSNR and SSIM computed the way the image-restoration papers report them.

Protocol (the one of the SR literature: the MATLAB evaluation scripts and BasicSR's
``calculate_psnr`` / ``calculate_ssim``), applied to every image on its own:

1. quantize prediction and target to uint8 values: ``round(clamp(x, 0, 1) * 255)``;
2. crop ``crop_border`` pixels from each side (the scale factor, for SR);
3. if ``y_channel``, convert RGB to the luma Y of ITU-R BT.601 with the MATLAB
   ``rgb2ycbcr`` coefficients, ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in
   [0, 1], Y in [16, 235]), kept as a float and not re-rounded (as BasicSR does; MATLAB's
   uint8 ``rgb2ycbcr`` would round Y); a one-channel input is taken as Y as it is;
4. PSNR with a peak of 255; SSIM of Wang et al. (2004) with an 11x11 Gaussian window of
   sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, averaged over the *valid* region only
   (windows that lie fully inside the image, no padding), per channel, then over channels;
5. average the per-image values over the data set (not the PSNR of a pooled MSE).

All arithmetic runs in float64 so that the numbers agree with the float64 references to
far below the precision the papers print (float64 is not available on Apple MPS).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

PIXEL_MAX = 255.0  # peak value of a uint8 image: the PSNR peak and the SSIM data range
Y_OFFSET = 16.0  # MATLAB rgb2ycbcr: offset of Y on the 255 scale
Y_WEIGHTS_RGB = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr: Y weights of R, G, B in [0, 1]
MSE_EPS = 1e-10  # MSE floor: identical images get PSNR 10*log10(255^2 / 1e-10) = 148.13 dB
SSIM_SIGMA = 1.5  # Wang et al. 2004: standard deviation of the Gaussian window
SSIM_WINDOW = 11  # Wang et al. 2004: window side; torchmetrics derives it as 2*int(3.5*sigma+0.5)+1
SSIM_K1 = 0.01  # Wang et al. 2004: C1 = (K1 * L)^2
SSIM_K2 = 0.03  # Wang et al. 2004: C2 = (K2 * L)^2
WORK_DTYPE = torch.float64


def rgb_to_y(img: Tensor) -> Tensor:
    """Luma Y (BT.601, MATLAB ``rgb2ycbcr``) of a ``B x 3 x H x W`` image in [0, 255].

    Returns ``B x 1 x H x W`` in [16, 235].
    """
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects a B x 3 x H x W tensor, got shape {tuple(img.shape)}")
    weights = torch.tensor(Y_WEIGHTS_RGB, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B on the 255 scale (rgb2ycbcr)
    return Y_OFFSET + (img * weights).sum(dim=1, keepdim=True) / PIXEL_MAX


def quantize(img01: Tensor) -> Tensor:
    """Round an image in [0, 1] to uint8 levels, returned as floats in {0, ..., 255}."""
    # uint8 conversion of the saved output: round(clamp(x, 0, 1) * 255), half to even
    return torch.round(img01.clamp(0.0, 1.0) * PIXEL_MAX)


def crop_border(img: Tensor, n: int) -> Tensor:
    """Drop ``n`` pixels from each side of the last two (spatial) dimensions."""
    height, width = img.shape[-2:]
    if n < 0 or 2 * n >= min(height, width):
        raise ValueError(f"cannot crop {n} pixels from each side of a {height} x {width} image")
    if n == 0:
        return img
    return img[..., n:-n, n:-n]


def _check_pair(pred: Tensor, target: Tensor) -> None:
    """Raise ``ValueError`` unless pred and target are matching B x C x H x W, C in {1, 3}."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if pred.ndim != 4 or pred.shape[1] not in (1, 3):
        raise ValueError(f"expected B x C x H x W images with C = 1 or 3, got shape {tuple(pred.shape)}")


def _to_eval_space(img01: Tensor, border: int, y_channel: bool) -> Tensor:
    """Steps 1-3 of the protocol: quantize, crop, and (for RGB with y_channel) take Y."""
    img = crop_border(quantize(img01.to(WORK_DTYPE)), border)
    if y_channel and img.shape[1] == 3:
        return rgb_to_y(img)
    return img


def _prepare(pred: Tensor, target: Tensor, border: int, y_channel: bool) -> tuple[Tensor, Tensor]:
    """Check the pair and map both images to the space the metrics are computed in."""
    _check_pair(pred, target)
    return _to_eval_space(pred, border, y_channel), _to_eval_space(target, border, y_channel)


def psnr_per_image(pred: Tensor, target: Tensor, crop_border: int, y_channel: bool) -> Tensor:
    """PSNR in dB of each image of a batch (inputs in [0, 1]), shape ``(B,)``.

    The MSE is floored at ``MSE_EPS`` so that identical images give a finite 148.13 dB
    instead of +inf, which keeps data-set means finite.
    """
    pred_q, target_q = _prepare(pred, target, crop_border, y_channel)
    mse = (pred_q - target_q).pow(2).flatten(start_dim=1).mean(dim=1).clamp_min(MSE_EPS)
    # PSNR = 10 log10(MAX^2 / MSE) with MAX = 255
    return 10.0 * torch.log10(PIXEL_MAX**2 / mse)


def ssim_per_image(pred: Tensor, target: Tensor, crop_border: int, y_channel: bool) -> Tensor:
    """SSIM of each image of a batch (inputs in [0, 1]), shape ``(B,)``.

    torchmetrics reflect-pads the image and averages its SSIM map over the padded
    positions too; the SR protocol averages only windows lying fully inside the image,
    so the map is taken from torchmetrics and its outer ``SSIM_WINDOW // 2`` pixels dropped.
    """
    pred_q, target_q = _prepare(pred, target, crop_border, y_channel)
    if min(pred_q.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels after cropping, got {tuple(pred_q.shape[-2:])}"
        )
    _, ssim_map = structural_similarity_index_measure(
        pred_q,
        target_q,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        reduction="none",
        data_range=PIXEL_MAX,
        k1=SSIM_K1,
        k2=SSIM_K2,
        return_full_image=True,
    )
    # MSSIM of Wang et al. 2004: mean of the SSIM map over valid windows, then over channels
    radius = SSIM_WINDOW // 2
    valid_map = ssim_map[..., radius:-radius, radius:-radius]
    return valid_map.flatten(start_dim=1).mean(dim=1)


COLOR_BOX = 8
"""Side of the box the colour error averages over: it compares colours, not detail."""


def color_error_per_image(pred: Tensor, target: Tensor, border: int = 0) -> Tensor:
    """Colour error of each image of a batch (inputs in [0, 1]), shape ``(B,)``: the mean absolute difference,
    per channel, of the two images' `COLOR_BOX` x `COLOR_BOX` box averages (non-overlapping boxes, a remainder
    at the right and bottom dropped), in 8-bit levels, after the protocol's quantisation and border crop. A cast
    of c levels on one channel of 3 scores c / 3; texture that averages out in a box scores nothing."""
    _check_pair(pred, target)
    pred_q = crop_border(quantize(pred.to(WORK_DTYPE)), border)
    target_q = crop_border(quantize(target.to(WORK_DTYPE)), border)
    if min(pred_q.shape[-2:]) < COLOR_BOX:
        raise ValueError(f"the colour error needs at least {COLOR_BOX} x {COLOR_BOX} pixels after cropping")
    boxes = torch.nn.functional.avg_pool2d(pred_q - target_q, COLOR_BOX)
    return boxes.abs().flatten(start_dim=1).mean(dim=1)


class RestorationMetrics(Metric):
    """Data-set mean of per-image PSNR (dB) and SSIM, SR-literature protocol, and of the colour error
    (`color_error_per_image`, RGB, 8-bit levels).

    Each image is quantized to uint8, cropped by ``crop_border`` pixels per side,
    converted to BT.601 Y with the MATLAB ``rgb2ycbcr`` coefficients when ``y_channel``
    (and RGB), then scored with PSNR (peak 255, MSE floored at 1e-10) and SSIM (Gaussian
    11x11 window, sigma 1.5, K1 0.01, K2 0.03, data range 255, valid region, channel
    mean), as BasicSR's ``calculate_psnr`` / ``calculate_ssim`` and the MATLAB scripts do.
    ``compute`` returns the mean over images of the per-image values, not the PSNR of
    the pooled MSE. The states are sums, so DDP reduces them by summing across ranks.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    psnr_sum: Tensor
    ssim_sum: Tensor
    color_error_sum: Tensor
    num_images: Tensor

    def __init__(self, crop_border: int = 0, y_channel: bool = True, **kwargs: Any) -> None:
        """``crop_border``: pixels dropped per side; ``y_channel``: score Y instead of RGB."""
        super().__init__(**kwargs)
        self.crop_border = crop_border
        self.y_channel = y_channel
        zero = torch.tensor(0.0, dtype=WORK_DTYPE)
        self.add_state("psnr_sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("ssim_sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("color_error_sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the per-image PSNR and SSIM of a batch (inputs in [0, 1], B x C x H x W)."""
        pred, target = pred.detach(), target.detach()
        self.psnr_sum += psnr_per_image(pred, target, self.crop_border, self.y_channel).sum()
        self.ssim_sum += ssim_per_image(pred, target, self.crop_border, self.y_channel).sum()
        if pred.shape[1] == 3:
            self.color_error_sum += color_error_per_image(pred, target, self.crop_border).sum()
        self.num_images += pred.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Means over all images seen: ``{"psnr": dB, "ssim": in [-1, 1], "color_error": 8-bit levels}`` (the
        colour error of grey images counts as 0)."""
        return {
            "psnr": self.psnr_sum / self.num_images,
            "ssim": self.ssim_sum / self.num_images,
            "color_error": self.color_error_sum / self.num_images,
        }
