"""Post-processing of a restoration, for any method: a colour fix and measurement consistency.

- `color_fix(output, reference, method)` gives the output the low frequencies (colour, brightness, slow shading)
  of a reference, the input brought to the output's size (`reference_of`), and keeps the output's own detail.
  `wavelet`: the output's high-frequency bands of an a-trous decomposition on top of the reference's residual
  low band (the colour fix of StableSR, Wang et al. 2023, which diffusion SR systems since use against colour
  drift); `adain`: each channel's mean and standard deviation matched to the reference's (adaptive instance
  normalisation, Huang & Belongie 2017, StableSR's other option).
- `project_consistent(x, y, operator)` = x + A^+ (y - A x): the closest image to x (in the least-squares sense)
  that the degradation A maps to the input y, the range-null-space split DDNM puts in each step (Wang et al.
  2023, eq. 13) and the consistency-enforcing layer of Bahat & Michaeli (2020) for SR. It is idempotent, and
  never moves x away from any image of that affine set (the ground truth, if A is the data's degradation).
  `consistent(x, y, name)` alternates it with clamping to [0, 1] (projections onto convex sets, POCS), since a
  restoration must stay in [0, 1].

Both use the input only: the reference and the measurement are what the method was given, never a ground
truth. Consistency is right only with the exact operator of the data's degradation (`ir_lightning.diffusion.
operators.make_operator`: `bicubic4` for MATLAB-bicubic x4 data, `sr4` for 4 x 4 box averages, ...); for real-
world or unknown degradations it forces a wrong model onto the output. docs/postprocess.md says when each helps.

Tiles (`ir_lightning.inference.tiling`): a method's `restore` runs per tile with the tile's own input, so both
act per tile. At a tile's edges the colour fix's low band and the operator see only the tile (replicate border
for the blur, the operator's own border rule: MATLAB's symmetric border for `bicubic<k>`, circular for
`deblur_*`); the tile blending gives the outer quarter of each overlap no weight, and inside an overlap the
output is a weighted mean of two tiles that are each consistent with their own input, so A x = y holds there
where the window is constant over the operator's support or the two tiles agree, and only approximately
elsewhere (docs/postprocess.md has a measurement); exactly for whole-image restoring.

Plain torch, no Lightning.
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn.functional as F
from torch import Tensor

from ir_lightning.degradations.resize import bicubic_upsample
from ir_lightning.diffusion.operators import OPERATOR_NAMES, LinearOperator, make_operator

COLOR_FIX_METHODS: tuple[str, ...] = ("none", "wavelet", "adain")
"""What `color_fix` (and the methods' `color_fix` setting, `--color-fix`) accepts."""

WAVELET_LEVELS = 5
"""Levels of the a-trous decomposition (dilations 1, 2, 4, 8, 16): the low band left after them is the image
smoothed over about 2^5 = 32 pixels, StableSR's choice. More levels leave more to the output (its colour drift
included), fewer take fine shading from the reference's bicubic up-sampling."""

WAVELET_TAPS = (0.25, 0.5, 0.25)
"""The 1-D kernel [1, 2, 1] / 4 of each level (a binomial kernel; the 2-D kernel is its outer product): it sums to
1, so with a replicate border a constant image is all low band, at every pixel."""

ADAIN_EPS = 1e-6
"""A channel of the output whose standard deviation is below this is treated as flat (shifted to the reference's
mean, not stretched)."""

CLAMP_ROUNDS = 20
"""Rounds of projection then clamping to [0, 1] in `consistent` (POCS). The first round does most of it; the
next rounds shrink what clamping undid of A x = y where the projected image left [0, 1] (a restoration near
the truth, on bicubic x4: a few 8-bit levels at most after one round, under one after 20; each round costs
about two applications of A, little beside a diffusion sampler)."""

OPERATOR_CACHE_SIZE = 16
"""Operators kept built (by name and image size): `bicubic<k>` computes SVDs, `cs_wh<k>` Hadamard matrices."""


def _check_color_fix(method: str) -> None:
    if method not in COLOR_FIX_METHODS:
        raise ValueError(f"color fix {method!r}: valid: {', '.join(COLOR_FIX_METHODS)}")


def reference_of(lq: Tensor, size: tuple[int, int]) -> Tensor:
    """The input `lq` (B x C x h x w) brought to the output's `size` (H, W) as the colour fix's reference: itself
    when the sizes agree (same-size tasks), else its bicubic up-sampling (`degradations.resize.bicubic_upsample`,
    clamped to [0, 1]). The output must be an integer scale of the input, the same along both sides."""
    height, width = (int(s) for s in size)
    h, w = lq.shape[-2:]
    if (h, w) == (height, width):
        return lq
    if h == 0 or w == 0 or height % h or width % w or height // h != width // w:
        raise ValueError(
            f"colour fix: the output ({height} x {width}) is no integer scale of the input ({h} x {w}): "
            f"no reference can be made from the input"
        )
    return bicubic_upsample(lq, (height, width))


def atrous_blur(image: Tensor, dilation: int) -> Tensor:
    """One level of the a-trous ("with holes") smoothing: the separable [1, 2, 1] / 4 kernel with its taps
    `dilation` pixels apart, on each channel, with a replicate border (any image size)."""
    channels = image.shape[1]
    taps = torch.tensor(WAVELET_TAPS, dtype=image.dtype, device=image.device)
    kernel = torch.outer(taps, taps).expand(channels, 1, 3, 3)
    padded = F.pad(image, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=dilation)


def wavelet_split(image: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """(high, low) of the a-trous decomposition: level i (dilation 2^i) smooths the previous low band, the
    differences add up to `high`, the last smoothing is `low`; high + low = image."""
    low = image
    high = torch.zeros_like(image)
    for level in range(levels):
        smoothed = atrous_blur(low, 2**level)
        high = high + (low - smoothed)
        low = smoothed
    return high, low


def adain(output: Tensor, reference: Tensor) -> Tensor:
    """Each image's channels shifted and scaled so that their mean and (population) standard deviation are the
    reference's: (x - mean_x) / std_x * std_ref + mean_ref, over the pixels of one channel of one image."""
    dims = (-2, -1)
    mean, std = output.mean(dims, keepdim=True), output.std(dims, keepdim=True, unbiased=False)
    ref_mean, ref_std = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True, unbiased=False)
    return (output - mean) / std.clamp_min(ADAIN_EPS) * ref_std + ref_mean


def color_fix(output: Tensor, reference: Tensor, method: str) -> Tensor:
    """The output (B x C x H x W) with the low frequencies of `reference` (same shape, or one channel for a grey
    reference), by `method`: `none` (unchanged), `wavelet` (the output's high bands + the reference's low band,
    `wavelet_split`) or `adain` (per image and channel mean and std of the reference). Computed in float64, in
    the output's dtype, not clamped."""
    _check_color_fix(method)
    if method == "none":
        return output
    if reference.shape[1] == 1 and output.shape[1] != 1:
        reference = reference.expand(-1, output.shape[1], -1, -1)
    if reference.shape != output.shape:
        raise ValueError(
            f"colour fix: the reference {tuple(reference.shape)} does not fit the output {tuple(output.shape)}"
        )
    x, ref = output.to(torch.float64), reference.to(torch.float64)
    if method == "wavelet":
        fixed = wavelet_split(x)[0] + wavelet_split(ref)[1]
    else:
        fixed = adain(x, ref)
    return fixed.to(output.dtype)


# --- consistency ----------------------------------------------------------------------------------------------
def _name_pattern(name: str) -> str:
    return re.escape(name).replace("<k>", r"[1-9][0-9]*").replace("<p>", r"(?:100|[1-9]?[0-9])")


OPERATOR_PATTERN = re.compile("|".join(f"(?:{_name_pattern(name)})" for name in OPERATOR_NAMES))
"""The names `make_operator` builds (`OPERATOR_NAMES` with <k> a positive integer, <p> a percentage)."""


def check_operator_name(name: object) -> str:
    """`name` when it is an operator name of `make_operator`, else a ValueError listing the valid forms."""
    if not isinstance(name, str) or OPERATOR_PATTERN.fullmatch(name) is None:
        raise ValueError(f"{name!r} is no operator name; valid: {', '.join(OPERATOR_NAMES)} (or none)")
    return name


@functools.lru_cache(maxsize=OPERATOR_CACHE_SIZE)
def _built(name: str, size: tuple[int, int]) -> LinearOperator:
    return make_operator(name, size)


def operator_for(name: str, size: tuple[int, int]) -> LinearOperator:
    """The operator `name` for images of `size` (H, W), built once per (name, size) and kept (the operators hold
    float64 constants on the CPU and move them to each image's device and dtype themselves, so one serves every
    device and dtype). `inpaint_random<p>` and `cs_wh<k>` draw their mask or coefficients from seed 0
    (`make_operator`'s default)."""
    return _built(check_operator_name(name), (int(size[0]), int(size[1])))


def _mismatch(label: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...], why: str) -> ValueError:
    return ValueError(
        f"consistency {label}: the output is {tuple(x_shape)} and the input {tuple(y_shape)}, but {why}: "
        f"the operator must be the degradation that made this input from an image of the output's size"
    )


def check_consistent_shapes(operator: LinearOperator, x_shape: tuple[int, ...], y: Tensor, label: str) -> None:
    """Refuse (ValueError naming `label`, the output's and the input's shapes) when A x's shape is not y's."""
    try:
        expected = tuple(operator.output_shape(tuple(x_shape)))
    except ValueError as error:
        raise _mismatch(
            label, x_shape, tuple(y.shape), f"the operator does not apply to the output ({error})"
        ) from error
    if expected != tuple(y.shape):
        raise _mismatch(label, x_shape, tuple(y.shape), f"A x would be {expected}")


def project_consistent(x: Tensor, y: Tensor, operator: LinearOperator) -> Tensor:
    """x + A^+ (y - A x): the projection of x onto {z : A z = y} (DDNM eq. 13 in its one-pseudo-inverse form;
    `LinearOperator.project`), computed in float64 (A^+ of a blur divides by small singular values) and
    returned in x's dtype. A x's shape must be y's (ValueError naming the operator and both shapes)."""
    check_consistent_shapes(operator, tuple(x.shape), y, type(operator).__name__)
    x64, y64 = x.to(_working_dtype(x)), y.to(_working_dtype(x))
    return (x64 + operator.pinv(y64 - operator.forward(x64))).to(x.dtype)


def _working_dtype(x: Tensor) -> torch.dtype:
    """float64, except on a device without it (Apple's MPS): float32."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def measurement_of(lq: Tensor, operator: LinearOperator, x_shape: tuple[int, ...]) -> Tensor:
    """The input as the operator's measurement y: itself, or for an operator that measures one channel
    (`colorization`) the mean of a colour-coded grey input's channels (how a grey image reaches a method)."""
    try:
        channels = operator.output_shape(tuple(x_shape))[1]
    except ValueError:
        return lq  # refused with both shapes by `check_consistent_shapes`
    if channels == 1 and lq.ndim == 4 and lq.shape[1] > 1:
        return lq.mean(dim=1, keepdim=True)
    return lq


def consistent(x: Tensor, y: Tensor, name: str, clamp_rounds: int = CLAMP_ROUNDS) -> Tensor:
    """x made consistent with the input y under the operator `name` (`make_operator`, built for x's size) and
    kept in [0, 1]: `clamp_rounds` rounds of `project_consistent` then clamping (POCS), ending clamped, so
    |A x - y| is what clamping leaves of it. Computed in float64, returned in x's dtype."""
    if clamp_rounds < 1:
        raise ValueError(f"clamp_rounds must be >= 1, got {clamp_rounds}")
    operator, y = _operator_and_measurement(name, tuple(x.shape), y)
    z = x.to(_working_dtype(x))
    for _ in range(clamp_rounds):
        z = project_consistent(z, y, operator).clamp(0.0, 1.0)
    return z.to(x.dtype)


def check_consistency(name: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
    """What `consistent` would refuse for an output of `x_shape` and an input of `y_shape`, found before
    restoring (the commands check each input first): a ValueError naming the operator and both shapes."""
    _operator_and_measurement(name, tuple(x_shape), torch.empty(y_shape, device="meta"))


def _operator_and_measurement(name: str, x_shape: tuple[int, ...], lq: Tensor) -> tuple[LinearOperator, Tensor]:
    """The operator `name` at the output's size and the input as its measurement, checked to fit each other."""
    check_operator_name(name)
    try:
        operator = operator_for(name, x_shape[-2:])
    except ValueError as error:
        raise _mismatch(
            repr(name), x_shape, tuple(lq.shape), f"the operator cannot be built for it ({error})"
        ) from error
    y = measurement_of(lq, operator, x_shape)
    check_consistent_shapes(operator, x_shape, y, repr(name))
    return operator, y


def describe(color_fix: str = "none", consistency: str | None = None, colourises: bool = False) -> str:
    """The one line the commands print: `post-processing: color fix wavelet, consistency bicubic4` (or `none`)."""
    parts = []
    if color_fix != "none":
        parts.append(f"color fix {color_fix}" + (" (off for grey inputs: the method colourises)" if colourises else ""))
    if consistency is not None:
        parts.append(f"consistency {consistency}")
    return "post-processing: " + (", ".join(parts) or "none")
