"""A diffusers `UNet2DModel` (any unconditional one, built from its `config.json`) as a network of the suite.

The pretrained DDPMs published in the diffusers format are `UNet2DModel`s: a `config.json` of constructor
arguments beside the weights. `DiffusersUNet(config)` builds `diffusers.UNet2DModel.from_config(config)`, so the
function is diffusers' own, and is called `net(x, t) -> eps` with the integer timestep t of each image, as the
model was trained. DeqIR calls its prior with the level sqrt(alpha_bar_t): wrap it in
`ir_lightning.nets.timestep_prior.TimestepPrior`, which recovers t and keeps eps (learned-variance models return
6 channels). `ir-lightning import` of a diffusers folder (`ir_lightning.importing.diffusers_`) writes such a
checkpoint.

The config is stored in a checkpoint's hyperparameters, so it must be plain JSON (numbers, strings, booleans,
None, lists, dicts). diffusers' private keys (`_class_name`, `_diffusers_version`, `_name_or_path`,
`_use_default_values`: bookkeeping of `save_pretrained`, no constructor arguments) are dropped; a key that is no
argument of this diffusers version's `UNet2DModel` is refused (diffusers would ignore it with a warning, which may
change the function). Class-conditional models (`num_class_embeds`, `class_embed_type`) are refused: the suite's
priors are unconditional.

diffusers is imported when a network is built, not with this module: the suite imports (and lists its classes)
without it; building one without it raises an ImportError naming the `priors` extra.

Sizes: `UNet2DModel` needs H and W divisible by 2**(len(block_out_channels) - 1) (its skip connections); other
sizes are padded (reflect, bottom and right, `pad_to_multiple`) and the output cropped back, as `DDIMUNet` does.
At divisible sizes the function is diffusers'.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ir_lightning.nets.padding import pad_to_multiple

EXTRA = "priors"
"""The extra of the ir-lightning package that installs diffusers."""
INSTALL = f"pip install 'ir-lightning[{EXTRA}]'"

CLASS_CONDITIONING = ("num_class_embeds", "class_embed_type")
"""`UNet2DModel` settings that make it class-conditional (its forward then needs class labels)."""

DEFAULT_BLOCKS = 4
"""`UNet2DModel`'s default number of blocks (`block_out_channels` (224, 448, 672, 896))."""


def diffusers_unet_class() -> type[nn.Module]:
    """`diffusers.UNet2DModel`, or an ImportError naming the extra that installs it."""
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise ImportError(
            f"a diffusers UNet2DModel prior needs the diffusers package: {INSTALL} (or pip install diffusers)"
        ) from error
    return UNet2DModel


def private_keys(config: Mapping[str, Any]) -> list[str]:
    """diffusers' bookkeeping keys of a config (`_class_name`, `_diffusers_version`, ...): those starting with `_`."""
    return [key for key in config if str(key).startswith("_")]


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` without its private keys, as plain JSON (tuples become lists); a ValueError names a value that is
    not JSON."""
    kept = {key: value for key, value in config.items() if key not in private_keys(config)}
    try:
        return json.loads(json.dumps(kept))
    except (TypeError, ValueError) as error:
        raise ValueError(f"DiffusersUNet: the config must be plain JSON: {error}") from error


def check_config(config: Mapping[str, Any], unet_class: type[nn.Module]) -> None:
    """A ValueError naming the key for a class-conditional config or a key `unet_class` does not take."""
    for key in CLASS_CONDITIONING:
        if config.get(key) is not None:
            raise ValueError(
                f"DiffusersUNet: config key {key!r} = {config[key]!r} makes a class-conditional UNet2DModel; the "
                "suite's priors are unconditional (set it to null)"
            )
    accepted = set(inspect.signature(unet_class.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(
            f"DiffusersUNet: config keys that this diffusers' UNet2DModel does not take: {', '.join(unknown)} "
            "(written by another diffusers version?)"
        )


class DiffusersUNet(nn.Module):
    """`forward(x, t) = UNet2DModel.from_config(config)(x, t).sample`.

    Args:
        config: `UNet2DModel`'s constructor arguments, as its `config.json` holds them (plain JSON; the private
            `_...` keys are dropped). Keys left out take this diffusers version's defaults. No default: the
            network is what the file says.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, Mapping):
            raise ValueError(f"DiffusersUNet: config must be a mapping of UNet2DModel's arguments, got {config!r}")
        unet_class = diffusers_unet_class()
        self.config = plain_config(config)
        check_config(self.config, unet_class)
        self.unet = unet_class.from_config(self.config)
        blocks = len(self.config.get("block_out_channels", range(DEFAULT_BLOCKS)))
        self.down_factor = 2 ** (blocks - 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """eps (and, for a learned-variance model, its variance channels) of x_t (B x C x H x W) at the integer
        timesteps t (int64, or floats holding integers, shape (B,) or a scalar)."""
        t = torch.as_tensor(t, device=x.device)
        if t.is_floating_point():
            if not bool((t == t.round()).all()):
                raise ValueError(f"DiffusersUNet: timesteps must be integers, got {t.tolist()}")
            t = t.long()
        h, w = x.shape[-2:]
        out = self.unet(pad_to_multiple(x, self.down_factor), t.reshape(-1).expand(x.shape[0]), return_dict=False)
        return out[0][..., :h, :w]
