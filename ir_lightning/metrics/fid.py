"""FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"):
the Frechet distance between Gaussians fitted to the Inception-v3 pool features of two image sets, with the
network built from a weight file the user already has; nothing is ever downloaded.

    network = InceptionFID.from_file("weights-inception-2015-12-05-6726825d.pth")
    fid = frechet_distance(*statistics(network(restored)), *statistics(network(gt)))

FID as papers report it comes from TensorFlow's 2015 Inception graph (`inception-2015-12-05`). torch-fidelity
(and pytorch-fid) carry a PyTorch port of that graph whose weights file is the one named above; torchvision
does not install beside the suite's CPU torch, so the network is written here and reads that file with the
suite's safe reader (`ir_lightning.io.weights`: `torch.load(weights_only=True)`, no code in a file ever runs).
The file's format:

- each convolution `<layer>.conv.weight` (out x in x kh x kw, no bias) followed by a batch norm (eps 1e-3)
  `<layer>.bn.weight / bias / running_mean / running_var`, for the stem layers `Conv2d_1a_3x3` ...
  `Conv2d_4a_3x3` and the branches of the mixed blocks `Mixed_5b` ... `Mixed_7c` (names as in torchvision's
  Inception-v3: `Mixed_5b.branch5x5_1`, `Mixed_7c.branch3x3dbl_3b`, ...);
- `fc.weight` (1008 x 2048) and `fc.bias`: the classifier, checked for shape and not used (FID takes the
  2048-d pool features before it). `*.bn.num_batches_tracked` is not in the file; it is accepted if present.

The features of one image, as the graph computes them:
1. the [0, 1] image is rounded to uint8 levels (the graph's input is an 8-bit image);
2. it is resized to 299 x 299 with TensorFlow 1's bilinear resize (`align_corners=False` without half-pixel
   centres: output pixel i samples input coordinate i * in / out; no antialiasing when shrinking), which is
   not `torch.nn.functional.interpolate`'s bilinear (that one samples at (i + 0.5) * in / out - 0.5);
3. levels are mapped to [-1, 1) by (x - 128) / 128;
4. the network runs to the last mixed block; the 2048 channels averaged over the 8 x 8 map are the features.
The graph's own quirks are kept: average poolings inside mixed blocks do not count the zero padding, and the
last block (`Mixed_7c`) pools its pool branch with a 3 x 3 max instead of an average.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.io.weights import WeightsError, check_keys, read_state_dict
from ir_lightning.metrics.psnr_ssim import quantize

INPUT_SIDE = 299  # the graph's input: 299 x 299
LEVEL_CENTRE = 128.0  # (x - 128) / 128 maps uint8 levels to [-1, 1)
BN_EPS = 1e-3  # the graph's batch-norm epsilon
FEATURES = 2048  # channels of Mixed_7c: the pool features FID compares
CLASSES = 1008  # rows of the graph's softmax layer (fc): in the file, not used here
# The smallest number of images whose feature covariance can be full rank: N samples span at most N - 1
# dimensions around their mean. FID on fewer images is dominated by that rank deficit.
FULL_RANK_IMAGES = FEATURES + 1

Kernel = int | tuple[int, int]


FIDWeightsError = WeightsError
"""A weight file that cannot serve (missing, not a PyTorch file, or with missing, extra or mis-shaped keys): the
suite's one weight-file error (`ir_lightning.io.weights.WeightsError`), under the name this module gave it."""


@dataclass(frozen=True)
class Conv:
    """One convolution + batch norm + ReLU of the graph: its name in the file, output channels and geometry."""

    name: str
    out: int
    kernel: Kernel
    stride: int = 1
    padding: Kernel = 0


@dataclass(frozen=True)
class Branch:
    """One branch of a mixed block: an optional 3 x 3 pooling of the block's input ("avg": stride 1, padding
    not counted; "max": stride 1, padded; "max_s2": stride 2, no padding), the convolutions applied in turn,
    then optionally `split`: convolutions applied each to that result and concatenated (the 8 x 8 blocks)."""

    convs: tuple[Conv, ...] = ()
    pool: str | None = None
    split: tuple[Conv, ...] = ()


class ConvBN(nn.Module):
    """Convolution without bias, batch norm in inference mode, ReLU: the graph's unit (keys conv.*, bn.*)."""

    def __init__(self, c_in: int, spec: Conv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, spec.out, spec.kernel, stride=spec.stride, padding=spec.padding, bias=False)
        self.bn = nn.BatchNorm2d(spec.out, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def pooled(x: Tensor, pool: str | None) -> Tensor:
    if pool is None:
        return x
    if pool == "avg":
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if pool == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.max_pool2d(x, 3, stride=2)  # "max_s2"


class Mixed(nn.Module):
    """A mixed block: its branches run on the same input and their outputs are concatenated along channels.
    Each convolution is an attribute named as in the file (`branch1x1`, `branch7x7dbl_3`, ...)."""

    def __init__(self, c_in: int, branches: tuple[Branch, ...]) -> None:
        super().__init__()
        self.branches = branches
        self.out_channels = 0
        for branch in branches:
            channels = c_in
            for spec in branch.convs:
                self.add_module(spec.name, ConvBN(channels, spec))
                channels = spec.out
            for spec in branch.split:
                self.add_module(spec.name, ConvBN(channels, spec))
            self.out_channels += sum(spec.out for spec in branch.split) if branch.split else channels

    def forward(self, x: Tensor) -> Tensor:
        outputs = []
        for branch in self.branches:
            y = pooled(x, branch.pool)
            for spec in branch.convs:
                y = self.get_submodule(spec.name)(y)
            if branch.split:
                y = torch.cat([self.get_submodule(spec.name)(y) for spec in branch.split], dim=1)
            outputs.append(y)
        return torch.cat(outputs, dim=1)


def block_35(pool_channels: int) -> tuple[Branch, ...]:
    """Mixed_5b/5c/5d (35 x 35): 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3; average pool -> 1x1."""
    return (
        Branch((Conv("branch1x1", 64, 1),)),
        Branch((Conv("branch5x5_1", 48, 1), Conv("branch5x5_2", 64, 5, padding=2))),
        Branch(
            (
                Conv("branch3x3dbl_1", 64, 1),
                Conv("branch3x3dbl_2", 96, 3, padding=1),
                Conv("branch3x3dbl_3", 96, 3, padding=1),
            )
        ),
        Branch((Conv("branch_pool", pool_channels, 1),), pool="avg"),
    )


def reduction_35() -> tuple[Branch, ...]:
    """Mixed_6a (35 -> 17): 3x3 stride 2; 1x1 -> 3x3 -> 3x3 stride 2; max pool stride 2."""
    return (
        Branch((Conv("branch3x3", 384, 3, stride=2),)),
        Branch(
            (
                Conv("branch3x3dbl_1", 64, 1),
                Conv("branch3x3dbl_2", 96, 3, padding=1),
                Conv("branch3x3dbl_3", 96, 3, stride=2),
            )
        ),
        Branch(pool="max_s2"),
    )


def block_17(c7: int) -> tuple[Branch, ...]:
    """Mixed_6b...6e (17 x 17): 7 x 7 convolutions factorised into 1 x 7 and 7 x 1, `c7` channels inside."""
    row, col = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
    return (
        Branch((Conv("branch1x1", 192, 1),)),
        Branch((Conv("branch7x7_1", c7, 1), Conv("branch7x7_2", c7, **row), Conv("branch7x7_3", 192, **col))),
        Branch(
            (
                Conv("branch7x7dbl_1", c7, 1),
                Conv("branch7x7dbl_2", c7, **col),
                Conv("branch7x7dbl_3", c7, **row),
                Conv("branch7x7dbl_4", c7, **col),
                Conv("branch7x7dbl_5", 192, **row),
            )
        ),
        Branch((Conv("branch_pool", 192, 1),), pool="avg"),
    )


def reduction_17() -> tuple[Branch, ...]:
    """Mixed_7a (17 -> 8): 1x1 -> 3x3 stride 2; 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2; max pool stride 2."""
    return (
        Branch((Conv("branch3x3_1", 192, 1), Conv("branch3x3_2", 320, 3, stride=2))),
        Branch(
            (
                Conv("branch7x7x3_1", 192, 1),
                Conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3)),
                Conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0)),
                Conv("branch7x7x3_4", 192, 3, stride=2),
            )
        ),
        Branch(pool="max_s2"),
    )


def block_8(pool: str) -> tuple[Branch, ...]:
    """Mixed_7b/7c (8 x 8): 1x1; 1x1 -> (1x3 | 3x1); 1x1 -> 3x3 -> (1x3 | 3x1); pool -> 1x1. The graph pools
    with an average in Mixed_7b and with a max in Mixed_7c."""
    split = lambda prefix: (
        Conv(f"{prefix}a", 384, (1, 3), padding=(0, 1)),
        Conv(f"{prefix}b", 384, (3, 1), padding=(1, 0)),
    )  # noqa: E731
    return (
        Branch((Conv("branch1x1", 320, 1),)),
        Branch((Conv("branch3x3_1", 384, 1),), split=split("branch3x3_2")),
        Branch(
            (Conv("branch3x3dbl_1", 448, 1), Conv("branch3x3dbl_2", 384, 3, padding=1)), split=split("branch3x3dbl_3")
        ),
        Branch((Conv("branch_pool", 192, 1),), pool=pool),
    )


STEM = (
    Conv("Conv2d_1a_3x3", 32, 3, stride=2),
    Conv("Conv2d_2a_3x3", 32, 3),
    Conv("Conv2d_2b_3x3", 64, 3, padding=1),
    None,
    Conv("Conv2d_3b_1x1", 80, 1),
    Conv("Conv2d_4a_3x3", 192, 3),
    None,
)  # None: 3 x 3 max pool, stride 2
MIXED = {
    "Mixed_5b": block_35(32),
    "Mixed_5c": block_35(64),
    "Mixed_5d": block_35(64),
    "Mixed_6a": reduction_35(),
    "Mixed_6b": block_17(128),
    "Mixed_6c": block_17(160),
    "Mixed_6d": block_17(160),
    "Mixed_6e": block_17(192),
    "Mixed_7a": reduction_17(),
    "Mixed_7b": block_8("avg"),
    "Mixed_7c": block_8("max"),
}


def resize_bilinear_tf1(x: Tensor, height: int, width: int) -> Tensor:
    """TensorFlow 1's `resize_bilinear` (align_corners=False, no half-pixel centres) of B x C x H x W floats:
    output pixel i reads source coordinate s = i * in / out (in float32, as the graph), between pixels
    floor(s) and min(floor(s) + 1, in - 1); the width is interpolated first, then the height."""

    def taps(size_in: int, size_out: int) -> tuple[Tensor, Tensor, Tensor]:
        source = torch.arange(size_out, dtype=torch.float32, device=x.device) * torch.tensor(
            size_in / size_out, dtype=torch.float32
        )
        low = source.floor().long()
        return low, (low + 1).clamp(max=size_in - 1), (source - low).to(x.dtype)

    low, high, frac = taps(x.shape[-1], width)
    left, right = x.index_select(-1, low), x.index_select(-1, high)
    x = left + (right - left) * frac
    low, high, frac = taps(x.shape[-2], height)
    top, bottom = x.index_select(-2, low), x.index_select(-2, high)
    return top + (bottom - top) * frac[:, None]


class InceptionFID(nn.Module):
    """The FID Inception-v3: `forward` maps B x 3 x H x W images in [0, 1] (any size) to B x 2048 pool features
    (float32). Build it with `from_file`; a bare `InceptionFID()` has random weights."""

    def __init__(self) -> None:
        super().__init__()
        channels = 3
        for spec in STEM:
            if spec is not None:
                self.add_module(spec.name, ConvBN(channels, spec))
                channels = spec.out
        for name, branches in MIXED.items():
            block = Mixed(channels, branches)
            self.add_module(name, block)
            channels = block.out_channels
        if channels != FEATURES:
            raise AssertionError(f"the mixed blocks give {channels} channels, not {FEATURES}")
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> InceptionFID:
        """The network with the weights of `path` (torch-fidelity's / pytorch-fid's converted TF graph). Every
        tensor the format has must be there with its shape; anything else is an error (another network's file)."""
        model = cls()
        own = model.state_dict()
        tracked = {key for key in own if key.endswith(".num_batches_tracked")}
        expected = {key: value.shape for key, value in own.items() if key not in tracked}
        expected |= {"fc.weight": torch.Size((CLASSES, FEATURES)), "fc.bias": torch.Size((CLASSES,))}
        state = read_state_dict(path)
        given = {key: value for key, value in state.items() if key not in tracked}
        check_keys(
            path, given, expected, "the FID Inception-v3 weights (torch-fidelity's weights-inception-2015-12-05)"
        )
        weights = {key: value for key, value in given.items() if not key.startswith("fc.")}
        model.load_state_dict(weights | {key: own[key] for key in tracked}, strict=True)
        return model

    def forward(self, images01: Tensor) -> Tensor:
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"the FID network needs B x 3 x H x W images, got {tuple(images01.shape)}")
        x = resize_bilinear_tf1(quantize(images01.float()), INPUT_SIDE, INPUT_SIDE)
        x = (x - LEVEL_CENTRE) / LEVEL_CENTRE
        for spec in STEM:
            x = F.max_pool2d(x, 3, stride=2) if spec is None else self.get_submodule(spec.name)(x)
        for name in MIXED:
            x = self.get_submodule(name)(x)
        return x.mean(dim=(2, 3))  # the global average pool: B x 2048


def statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance (unbiased, divided by N - 1, as numpy.cov) of N x D features, in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID statistics need N x D features with N >= 2, got {tuple(features.shape)}")
    features = features.to(torch.float64)
    mu = features.mean(dim=0)
    centred = features - mu
    return mu, centred.mT @ centred / (features.shape[0] - 1)


def psd_sqrt(sigma: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix: V sqrt(L) V^T from its
    eigen-decomposition, with the tiny negative eigenvalues that rounding leaves clipped to 0."""
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.mT


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)): the squared Frechet (2-Wasserstein) distance of
    two Gaussians, in float64.

    tr((S1 S2)^(1/2)) is computed as tr((A S2 A)^(1/2)) with A = S1^(1/2): A S2 A is similar to S1 S2 (same
    eigenvalues), but symmetric, so `eigh` gives real eigenvalues with a backward-stable method and the
    trace is the sum of their square roots. scipy.linalg.sqrtm works on the non-symmetric product S1 S2: it
    is slower, and with fewer images than features (a singular product) it returns complex parts or
    warns of a singular matrix and needs an offset added to the diagonal; neither happens here."""
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1 or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"need two means of one length D and two D x D covariances, got {tuple(mu1.shape)}, "
            f"{tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}"
        )
    root1 = psd_sqrt(symmetric(sigma1))
    return gaussian_distance(mu1, sigma1, mu2, sigma2, trace_sqrt_psd(root1 @ sigma2 @ root1))


def symmetric(matrix: Tensor) -> Tensor:
    """The symmetric part: removes the rounding asymmetry of a product that is symmetric in exact arithmetic."""
    return (matrix + matrix.mT) / 2


def trace_sqrt_psd(matrix: Tensor) -> Tensor:
    """tr(M^(1/2)) of a symmetric positive semi-definite M: the sum of the square roots of its eigenvalues."""
    return torch.linalg.eigvalsh(symmetric(matrix)).clamp(min=0).sqrt().sum()


def gaussian_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, trace_sqrt: Tensor) -> float:
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def fid(features_a: Tensor, features_b: Tensor) -> float:
    """The FID of two sets of N x 2048 features: the Frechet distance of their Gaussian fits (`statistics`).

    With fewer images than features, S_a = X^T X / (N - 1) (X: the centred features of set a) has rank N - 1 at
    most, and the nonzero eigenvalues of S_a S_b are those of X S_b X^T / (N - 1), a symmetric N x N matrix: the
    same value as `frechet_distance`, without its two D x D eigen-decompositions (seconds each for D = 2048)."""
    mu_a, sigma_a = statistics(features_a)
    mu_b, sigma_b = statistics(features_b)
    count, dimension = features_a.shape
    if count - 1 >= dimension:
        return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
    centred = features_a.to(torch.float64) - mu_a
    return gaussian_distance(mu_a, sigma_a, mu_b, sigma_b, trace_sqrt_psd(centred @ sigma_b @ centred.mT / (count - 1)))
