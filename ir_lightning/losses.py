"""Losses beyond plain L1/L2: Charbonnier, the VGG19 perceptual loss and the adversarial loss.

The GAN stage of real-world SR (Real-ESRGAN, and DiffIR's optional S2-GAN stage after it) trains the
generator on ``L1 + perceptual + adversarial`` and a per-pixel discriminator
(:class:`ir_lightning.nets.discriminator.UNetDiscriminatorSN`) on the adversarial loss alone. The
pieces here are plain modules and functions; a method composes them and owns the two optimisers.

The perceptual loss needs ImageNet-trained VGG19 weights. They are read only from a local file
whose path the recipe gives (``weights``): nothing is downloaded, and torchvision is not needed. The
network is defined here with torchvision's layer indices, so its ``vgg19-dcbb9e9d.pth`` loads as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ir_lightning.io.weights import WeightsError, existing_file, key_report, read_state_dict

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
"""Where torchvision publishes its ImageNet VGG19 (``IMAGENET1K_V1``); users download it themselves."""

VGG19_CONVS_PER_BLOCK: tuple[int, ...] = (2, 2, 4, 4, 4)
"""VGG19 (configuration E of Simonyan & Zisserman): 3x3 convolutions per block, a 2x2 max-pool after each."""

VGG_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
"""Output channels of the convolutions of each block."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel statistics of ImageNet for images in [0, 1]: VGG was trained on inputs standardised by them."""

PERCEPTUAL_LAYER_WEIGHTS: dict[str, float] = {
    "conv1_2": 0.1,
    "conv2_2": 0.1,
    "conv3_4": 1.0,
    "conv4_4": 1.0,
    "conv5_4": 1.0,
}
"""Real-ESRGAN's and DiffIR's real-SR GAN configs: features before the ReLU of these layers, these weights."""

TORCHVISION_HEAD_PREFIX = "classifier."
"""torchvision's VGG19 file also holds the fully connected classifier, which a feature loss does not use."""


def vgg19_layer_names() -> list[str]:
    """Names of the 37 modules of torchvision's ``vgg19().features``, in order (index = position).

    ``conv<b>_<k>`` is the k-th convolution of block b, ``relu<b>_<k>`` its activation, ``pool<b>`` the
    max-pool closing block b: index 0 is ``conv1_1``, 34 ``conv5_4``, 36 ``pool5``.
    """
    names = []
    for block, n_convs in enumerate(VGG19_CONVS_PER_BLOCK, start=1):
        for k in range(1, n_convs + 1):
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
        names.append(f"pool{block}")
    return names


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier loss, a differentiable L1: mean of sqrt((pred - target)^2 + eps^2).

    ``eps`` is the distance below which the loss turns quadratic; this is the convention of
    LapSRN and MPRNet (eps = 1e-3). BasicSR's ``charbonnier_loss`` adds ``eps`` unsquared.
    """
    return torch.sqrt((pred - target) ** 2 + eps**2).mean()  # rho(x) = sqrt(x^2 + eps^2)


def load_vgg19_features_state_dict(weights: str | Path) -> dict[str, Tensor]:
    """The convolution weights of a torchvision VGG19 file, keyed ``<index>.weight`` / ``<index>.bias``.

    Accepts torchvision's own file (keys ``features.<i>.*`` plus ``classifier.*``, which is dropped) and
    a bare features state dict (keys ``<i>.*``), read by the suite's safe reader
    (`ir_lightning.io.weights.read_state_dict`). Raises `MissingWeightsFile` (a FileNotFoundError) if the file
    is missing and `WeightsError` (a ValueError) if it is not a state dict of VGG19's features.
    """
    path = existing_file(
        Path(weights).expanduser(),
        f"VGG19 weights not found at '{Path(weights).expanduser()}'. The perceptual loss needs torchvision's ImageNet "
        f"VGG19 weights (vgg19-dcbb9e9d.pth, about 550 MB), and nothing is downloaded for you: download {VGG19_URL} "
        "yourself, or reuse the copy torchvision keeps in its torch.hub cache "
        "(by default ~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth). Pass its path as `weights` of "
        "ir_lightning.losses.PerceptualLoss (the `weights:` entry of the perceptual loss in the recipe).",
    )
    return {
        key.removeprefix("features."): value
        for key, value in read_state_dict(path).items()
        if not key.startswith(TORCHVISION_HEAD_PREFIX)
    }


class VGG19Features(nn.Module):
    """Frozen VGG19 convolution stack returning the activations of named layers.

    The modules are torchvision's ``vgg19().features`` (same indices, so its state dict loads); the
    input is an image already standardised the way VGG was trained (see :class:`PerceptualLoss`).
    A ``conv*`` name returns the convolution's output before its ReLU, as BasicSR's perceptual loss
    uses them; ``relu*`` and ``pool*`` names are available too. The forward pass stops at the deepest
    requested layer. The network is never trained: its parameters do not require gradients and it
    stays in eval mode whatever ``train()`` is asked.

    Args:
        weights: path of torchvision's ``vgg19-dcbb9e9d.pth`` (or a features-only state dict).
        layers: names of the layers whose activations ``forward`` returns.
    """

    def __init__(self, weights: str, layers: Sequence[str] = tuple(PERCEPTUAL_LAYER_WEIGHTS)) -> None:
        super().__init__()
        names = vgg19_layer_names()
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            problem = f"unknown layers {unknown}" if unknown else "no layers requested"
            raise ValueError(f"VGG19Features: {problem}; choose from {names}")
        self.layers = tuple(layers)
        self.depth = max(names.index(name) for name in layers) + 1
        self.names = names[: self.depth]
        self.features = vgg19_features_stack()
        self.load_weights(weights)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, weights: str) -> None:
        """Load a torchvision VGG19 file, checking its keys and shapes first so errors name them."""
        state = load_vgg19_features_state_dict(weights)
        report = key_report(state, self.features.state_dict())
        missing, unexpected = sorted(report.missing, key=layer_order), sorted(report.unexpected, key=layer_order)
        if missing or unexpected:
            raise WeightsError(
                f"{weights}: not a VGG19 features state dict; missing keys {missing}, unexpected keys {unexpected} "
                "(expected torchvision's vgg19 layout: 'features.<i>.weight'/'features.<i>.bias', "
                "or '<i>.weight'/'<i>.bias')"
            )
        if report.mismatched:
            wrong = [f"{key}: {found} instead of {shape}" for key, found, shape in report.mismatched]
            raise WeightsError(f"{weights}: VGG19 weights of the wrong shape: {'; '.join(wrong)}")
        self.features.load_state_dict(state)

    def train(self, mode: bool = True) -> VGG19Features:
        """Stay in eval mode: the loss network is a fixed function, not a trained part of the model."""
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for name, layer in zip(self.names, self.features):
            x = layer(x)
            if name in self.layers:
                out[name] = x
        return out


def layer_order(key: str) -> tuple[int, str]:
    """Sort key for ``<index>.<param>`` state-dict keys: by layer index, others last by name."""
    head = key.split(".", 1)[0]
    return (int(head), key) if head.isdigit() else (1 << 30, key)


def vgg19_features_stack() -> nn.Sequential:
    """torchvision's ``vgg19().features`` layout: 3x3 convs (padding 1), ReLUs, 2x2 max-pools."""
    modules: list[nn.Module] = []
    in_ch = 3
    for name in vgg19_layer_names():
        if name.startswith("conv"):
            width = VGG_WIDTHS[int(name[4]) - 1]
            modules.append(nn.Conv2d(in_ch, width, 3, padding=1))
            in_ch = width
        elif name.startswith("relu"):
            modules.append(nn.ReLU())  # not in place: the conv output before it may be returned
        else:
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*modules)


class PerceptualLoss(nn.Module):
    """Weighted distance between VGG19 features of the restored image and of the ground truth.

    ``loss = perceptual_weight * sum_l w_l * mean |phi_l(norm(pred)) - phi_l(norm(target))|`` (L1;
    squared for ``criterion='l2'``), with ``norm`` the ImageNet standardisation of images in [0, 1].
    The target's features carry no gradient. (BasicSR's optional style/Gram term is not offered.)

    Args:
        weights: path of torchvision's ``vgg19-dcbb9e9d.pth``; see :class:`VGG19Features`.
        layer_weights: VGG19 layer name -> weight w_l; ``conv*`` layers are taken before the ReLU.
            Default: Real-ESRGAN's and DiffIR's {conv1_2: 0.1, conv2_2: 0.1, conv3_4/4_4/5_4: 1}.
        criterion: ``'l1'`` (the official configs) or ``'l2'``.
        use_input_norm: standardise inputs by the ImageNet mean and std (inputs in [0, 1]).
        range_norm: inputs are in [-1, 1]: map them to [0, 1] first.
        perceptual_weight: factor on the whole sum.
    """

    def __init__(
        self,
        weights: str,
        layer_weights: dict[str, float] = PERCEPTUAL_LAYER_WEIGHTS,
        criterion: str = "l1",
        use_input_norm: bool = True,
        range_norm: bool = False,
        perceptual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        distances = {"l1": F.l1_loss, "l2": F.mse_loss}
        if criterion not in distances:
            raise ValueError(f"PerceptualLoss: criterion must be one of {sorted(distances)}, got {criterion!r}")
        self.layer_weights = dict(layer_weights)
        self.distance = distances[criterion]
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        self.perceptual_weight = perceptual_weight
        self.vgg = VGG19Features(weights, layers=tuple(self.layer_weights))
        # not persistent: constants, not state, so checkpoints do not depend on them
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, img: Tensor) -> Tensor:
        """Map an image to the input statistics VGG was trained on."""
        if self.range_norm:
            img = (img + 1) / 2  # [-1, 1] -> [0, 1]
        if self.use_input_norm:
            img = (img - self.mean) / self.std
        return img

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred_features = self.vgg(self.normalise(pred))
        with torch.no_grad():
            target_features = self.vgg(self.normalise(target))
        loss = sum(
            weight * self.distance(pred_features[name], target_features[name])
            for name, weight in self.layer_weights.items()
        )
        return self.perceptual_weight * loss


class GANLoss(nn.Module):
    """Adversarial loss on (per-pixel) discriminator logits.

    ``'vanilla'``: binary cross-entropy with logits against a constant label map, averaged over all
    logits: ``mean(softplus(-z))`` for the real label 1, ``mean(softplus(z))`` for the fake label 0.
    The generator calls it on the logits of its output with ``target_is_real=True``; the
    discriminator calls it on real images with ``True`` and on generated ones with ``False``.
    ``loss_weight`` scales only the generator's term (as BasicSR does): the discriminator's own
    loss is always unweighted, so the weight trades the adversarial term against the generator's
    other losses without changing the discriminator's learning rate. DiffIR's real-SR GAN config
    uses 1.0; Real-ESRGAN's uses 0.1.

    Args:
        kind: GAN objective; only ``'vanilla'`` (the official real-SR configs).
        real_label: target value for real images.
        fake_label: target value for generated images.
        loss_weight: factor on the generator's adversarial term.
    """

    KINDS = ("vanilla",)

    def __init__(
        self, kind: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0, loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"GANLoss: kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.real_label = real_label
        self.fake_label = fake_label
        self.loss_weight = loss_weight

    def forward(self, logits: Tensor, target_is_real: bool, is_discriminator: bool = False) -> Tensor:
        label = self.real_label if target_is_real else self.fake_label
        loss = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))
        return loss if is_discriminator else self.loss_weight * loss
