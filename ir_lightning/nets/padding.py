"""Padding an image batch to the size a network takes (a U-Net's down-sampling factor, a transformer's window):
shared by the networks and the methods that pad before calling one."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, factor: int) -> Tensor:
    """Pads H and W (reflect, at the bottom and right) up to multiples of `factor`; crop back with [..., :h, :w]."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % factor, (-w) % factor
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return x
