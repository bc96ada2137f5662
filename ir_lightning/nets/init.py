"""Weight initialisations that official code applies to whole networks (shared by the networks that reproduce it)."""

from __future__ import annotations

from torch import nn


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights (fan_in, gain sqrt(2): std sqrt(2 / fan_in)) and zero biases for every convolution
    and linear layer below `module`: Noise-DA's `init_type: kaiming` (`core/base_network.py:29-38`), which it
    applies to the restorer and the diffusion network alike. Normalisation layers keep their ones and zeros."""
    for layer in module.modules():
        if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, a=0.0, mode="fan_in")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
