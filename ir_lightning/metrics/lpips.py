"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
AlexNet variant v0.1, built from two weight files the user already has; nothing is ever downloaded.

    lpips = LPIPS.from_files("alexnet-owt-7be5be79.pth", "lpips/weights/v0.1/alex.pth")
    distance = lpips(restored, gt)  # B x 3 x H x W in [0, 1] each -> B distances

The papers of this suite report LPIPS with the `lpips` package's default network. That package builds it
from torchvision (which fetches the ImageNet AlexNet from the internet on first use), and torchvision does
not install beside the suite's CPU torch, so the network is written here, and its two halves come from
local files, both read by the suite's safe reader (`ir_lightning.io.weights`: `torch.load(weights_only=True)`,
no code in a file ever runs):

- the backbone: torchvision's ImageNet AlexNet state dict (`alexnet-owt-7be5be79.pth`). Only its
  `features.N.*` tensors are used (`classifier.*` is ignored); `AlexNetFeatures` numbers its layers as
  torchvision's `features` does, so those keys load strictly;
- the linear layers: the `lpips` package's `weights/v0.1/alex.pth` (`linK.model.1.weight`, 1 x C x 1 x 1,
  one per tapped layer K = 0..4).

The distance, as the package computes it for v0.1:
1. images in [0, 1] are mapped to [-1, 1], then shifted and scaled per channel (`LPIPS_SHIFT`, `LPIPS_SCALE`);
2. AlexNet's five ReLU outputs (after conv1 ... conv5) are taken for both images;
3. each feature vector (the channels at one pixel) is divided by its L2 norm plus `NORM_EPS`;
4. the squared difference of the two normalised maps is weighted per channel by the linear layer (a 1 x 1
   convolution without bias, one output), averaged over the pixels of the map;
5. the five averages are summed: one distance per image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ir_lightning.io.weights import WeightsError, check_keys, read_state_dict

# The lpips package's ScalingLayer (v0.1): x in [-1, 1] becomes (x - shift) / scale, per RGB channel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # the lpips package's channel normalisation: x / (||x||_2 + eps)
# AlexNet's `features` as torchvision numbers it: index -> (in, out, kernel, stride, padding) of each conv.
ALEXNET_CONVS = {
    0: (3, 64, 11, 4, 2),
    3: (64, 192, 5, 1, 2),
    6: (192, 384, 3, 1, 1),
    8: (384, 256, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
ALEXNET_POOLS = (2, 5)  # max pooling, 3 x 3 windows, stride 2, no padding (the last one, index 12, is not needed)
TAPS = (1, 4, 7, 9, 11)  # the ReLUs after conv1 ... conv5: the layers LPIPS compares
# The smallest side that leaves every tapped map at least one pixel: conv1 gives (H - 7) // 4 + 1 rows, two
# 3 x 3 stride-2 poolings need 7 of them (7 -> 3 -> 1), so H - 7 >= 24.
MIN_SIDE = 31


LPIPSWeightsError = WeightsError
"""A weight file that cannot serve (missing, not a PyTorch file, or with missing, extra or mis-shaped keys): the
suite's one weight-file error (`ir_lightning.io.weights.WeightsError`), under the name this module gave it."""


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional part (conv1 ... conv5 with their ReLUs and the two poolings between them), with
    torchvision's layer numbering in `self.features`, so that a torchvision state dict's `features.N.*`
    tensors load with `strict=True`. `forward` returns the five tapped ReLU outputs."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(max(TAPS) + 1):
            if index in ALEXNET_CONVS:
                c_in, c_out, kernel, stride, padding = ALEXNET_CONVS[index]
                layers.append(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding))
            elif index in ALEXNET_POOLS:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            else:  # every other index is the ReLU after a conv
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x)
        return taps


def lin_key(layer: int) -> str:
    """The key of a linear layer's weight in the lpips package's files (index 0 of `model` is a Dropout)."""
    return f"lin{layer}.model.1.weight"


class LPIPS(nn.Module):
    """LPIPS v0.1 on AlexNet: `forward(x, y)` takes two B x 3 x H x W batches in [0, 1] and returns the B
    distances (0 for identical images). Build it with `from_files`; a bare `LPIPS()` has random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.backbone = AlexNetFeatures()
        channels = [ALEXNET_CONVS[index - 1][1] for index in TAPS]  # each tap follows its conv
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, backbone: str | Path, linear: str | Path) -> LPIPS:
        """LPIPS with torchvision's AlexNet weights from `backbone` and the lpips package's v0.1 linear layers
        from `linear`. Both files must hold every needed tensor with its shape; `classifier.*` in the
        backbone file is ignored, anything else unexpected is an error (another network's file)."""
        model = cls()
        expected_features = {f"features.{k}": v.shape for k, v in model.backbone.features.state_dict().items()}
        features = {k: v for k, v in read_state_dict(backbone).items() if not k.startswith("classifier.")}
        check_keys(backbone, features, expected_features, "torchvision's AlexNet weights (features.N.weight/bias)")
        expected_lins = {lin_key(i): lin.weight.shape for i, lin in enumerate(model.lins)}
        lins = read_state_dict(linear)
        check_keys(linear, lins, expected_lins, "the lpips package's v0.1 AlexNet linear layers (linK.model.1.weight)")
        model.backbone.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in features.items()}, strict=True
        )
        for i, lin in enumerate(model.lins):
            lin.weight.copy_(lins[lin_key(i)])
        return model

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two B x 3 x H x W batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                f"LPIPS (AlexNet) needs images of at least {MIN_SIDE} x {MIN_SIDE} pixels, got {x.shape[-2]} x {x.shape[-1]}"
            )
        features_x, features_y = self.backbone(self.scaled(x)), self.backbone(self.scaled(y))
        distance = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, features_x, features_y):
            difference = (unit_channels(fx) - unit_channels(fy)) ** 2
            distance = distance + lin(difference).mean(dim=(1, 2, 3))  # 1 x 1 weighting, then the spatial mean
        return distance

    def scaled(self, img01: Tensor) -> Tensor:
        """[0, 1] -> [-1, 1] (the range LPIPS was trained on), then the package's per-channel shift and scale."""
        return (2 * img01 - 1 - self.shift) / self.scale


def unit_channels(features: Tensor) -> Tensor:
    """Each pixel's feature vector divided by its L2 norm (plus `NORM_EPS`, so an all-zero vector stays zero)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
