"""The evaluation presets of `ir-lightning evaluate`: a test set and the protocol its papers report numbers with
(the colour space, the border cropped before scoring, and for super-resolution the scale, the modcrop of the
ground truth and the bicubic LQ images made from it), each with the official code its settings come from.
PSNR and SSIM under a protocol are `ir_lightning.metrics.psnr_ssim`'s; the table is in docs/evaluation.md.

Plain data (torch is imported by `bicubic_lq` only): `ir-lightning evaluate --help` reads no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Protocol:
    """How a test set is scored: what the official evaluation code of its papers does.

    `scale`: the SR factor (1: same-size restoration); `modcrop`: GT cropped to a multiple of this before
    anything else (1: none); `crop_border`: pixels dropped per side before PSNR/SSIM; `y_channel`: score
    BT.601 Y (MATLAB coefficients) instead of RGB; `source`: the official code the settings come from.
    """

    name: str
    task: str
    scale: int
    modcrop: int
    crop_border: int
    y_channel: bool
    source: str


# Super-resolution, bicubic x2/x3/x4. Settings checked against:
# - BasicSR options/test/SwinIR/test_SwinIR_x4.yml (Set5, Set14, B100, Urban100, Manga109): calculate_psnr /
#   calculate_ssim with crop_border = scale and test_y_channel: true;
# - DiffIR DiffIR-SRGAN/options/test_DiffIRS2_GAN_x4.yml (Urban100, DIV2K100): crop_border 4, test_y_channel true;
# - BasicSR basicsr/data/paired_image_dataset.py: outside training the GT is cropped to (LQ size x scale),
#   i.e. to a multiple of the scale (modcrop);
# - BasicSR scripts/matlab_scripts/generate_bicubic_img.m: the LR sets are MATLAB imresize(modcrop(gt),
#   1/scale, 'bicubic') of the modcropped GT (BasicSR's GTmod12 folders crop to a multiple of 12 for all
#   scales at once; a GT folder that is already a multiple of 12 gives the same pairs here).
SR_SOURCE = (
    "BasicSR options/test/SwinIR/test_SwinIR_x4.yml + data/paired_image_dataset.py + "
    "scripts/matlab_scripts/generate_bicubic_img.m; DiffIR DiffIR-SRGAN/options/test_DiffIRS2_GAN_x4.yml"
)
SR_SETS = ("set5", "set14", "b100", "urban100", "manga109", "div2k_val")
SR_SCALES = (2, 3, 4)

# Deblurring: Restormer Motion_Deblurring/evaluate_gopro_hide.m and MPRNet Deblurring/evaluate_GOPRO_HIDE.m
# (DiffIR's GoPro numbers are Restormer's protocol; RDDM eval/deblurring_eval/evaluate_GOPRO_HIDE.m is the
# same script) call MATLAB psnr(input, gt) and ssim(input, gt) on the RGB uint8 images, nothing cropped.
# PSNR is the same number here; MATLAB's ssim treats an H x W x 3 array as a volume (3-D Gaussian window),
# where this suite averages the 2-D SSIM of the channels, so SSIM can differ in the third decimal.
DEBLUR_SOURCE = "Restormer Motion_Deblurring/evaluate_gopro_hide.m; MPRNet Deblurring/evaluate_GOPRO_HIDE.m"
# Deraining: Restormer Deraining/evaluate_PSNR_SSIM.m (from MPRNet Deraining/evaluate_PSNR_SSIM.m) takes
# channel 1 of MATLAB rgb2ycbcr (uint8, so Y is rounded there and not here), PSNR with peak 255 and Wang's
# SSIM_index (11x11 Gaussian, sigma 1.5, 'valid' windows), nothing cropped.
DERAIN_SOURCE = "Restormer Deraining/evaluate_PSNR_SSIM.m; MPRNet Deraining/evaluate_PSNR_SSIM.m"
# Real denoising: Restormer Denoising/test_real_denoising_SIDD.py saves the float outputs of the 1280 SIDD
# validation patches and MPRNet Denoising/evaluate_SIDD.m scores them with MATLAB psnr/ssim on RGB in [0, 1],
# nothing cropped. Those outputs are not rounded to 8 bits and the metric contract rounds them, which moves
# PSNR by a few hundredths of a dB near 40 dB; SSIM differs as for deblurring (MATLAB's volume SSIM).
SIDD_SOURCE = "MPRNet Denoising/evaluate_SIDD.m on Restormer Denoising/test_real_denoising_SIDD.py outputs"
# Low light: RDDM eval/lowlight_eval/evaluate_PSNR_SSIM.m (the suite's LOL paper) is the deraining script
# above: Y of rgb2ycbcr, nothing cropped. (It also resizes the GT to the output's size, which RDDM needs for
# its 256 x 256 outputs; here the output must have the GT's size.) Many LOL papers report RGB instead.
LOL_SOURCE = "RDDM eval/lowlight_eval/evaluate_PSNR_SSIM.m"


def _presets() -> dict[str, Protocol]:
    presets = {
        f"{name}_x{scale}": Protocol(f"{name}_x{scale}", f"bicubic SR x{scale}", scale, scale, scale, True, SR_SOURCE)
        for name in SR_SETS
        for scale in SR_SCALES
    }
    same_size = [
        ("gopro", "motion deblurring", False, DEBLUR_SOURCE),
        ("hide", "motion deblurring", False, DEBLUR_SOURCE),
        ("rain100l", "deraining", True, DERAIN_SOURCE),
        ("rain100h", "deraining", True, DERAIN_SOURCE),
        ("sidd", "real denoising", False, SIDD_SOURCE),
        ("lol", "low-light enhancement", True, LOL_SOURCE),
    ]
    for name, task, y_channel, source in same_size:
        presets[name] = Protocol(name, task, scale=1, modcrop=1, crop_border=0, y_channel=y_channel, source=source)
    return presets


PRESETS: dict[str, Protocol] = _presets()


def protocol_line(protocol: Protocol) -> str:
    """The protocol in words: colour space, modcrop, border, quantisation, averaging."""
    space = "Y (BT.601, MATLAB rgb2ycbcr)" if protocol.y_channel else "RGB"
    crop = f"GT modcrop {protocol.modcrop}, " if protocol.modcrop > 1 else ""
    return f"PSNR/SSIM on {space}, {crop}{protocol.crop_border} px border cropped, uint8, mean over images"


def presets_table() -> str:
    """Every preset with its settings, one per line (`ir-lightning evaluate --presets`)."""
    rows = [f"{'preset':<16} {'task':<22} {'scale':>5} {'modcrop':>7} {'crop':>4}  space"]
    for p in PRESETS.values():
        rows.append(
            f"{p.name:<16} {p.task:<22} {p.scale:>5} {p.modcrop:>7} {p.crop_border:>4}  {'Y' if p.y_channel else 'RGB'}"
        )
    return "\n".join(rows)


def modcrop(img: Tensor, modulo: int) -> Tensor:
    """Crop the bottom and right of `img` (... x H x W) to H, W multiples of `modulo` (MATLAB's modcrop)."""
    height, width = img.shape[-2:]
    return img[..., : height - height % modulo, : width - width % modulo]


def bicubic_lq(gt: Tensor, scale: int) -> Tensor:
    """MATLAB `imresize(gt, 1/scale, 'bicubic')` of a C x H x W image (H, W multiples of `scale`), rounded to
    8 bits as the stored LR sets are (`ir_lightning.degradations.resize.matlab_bicubic_downsample`)."""
    from ir_lightning.degradations.resize import matlab_bicubic_downsample
    from ir_lightning.metrics.psnr_ssim import quantize

    return (quantize(matlab_bicubic_downsample(gt, scale)) / 255.0).to(gt.dtype)
