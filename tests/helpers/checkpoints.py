"""Hand-made checkpoints of a small DeqIR prior, laid out as the CLI writes them (the commands' and the hostile-file
tests restore with them), and a pickle payload that would run code (what a malicious checkpoint does)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning
import torch

from ir_lightning.methods.deqir import DeqIR
from ir_lightning.methods.sr3 import NoiseSchedule
from ir_lightning.nets.unet import UNet

SCHEDULE = NoiseSchedule(kind="linear", n_steps=100, linear_start=1e-4, linear_end=0.02)
NET = {
    "class_path": "ir_lightning.nets.unet.UNet",
    "init_args": {
        "in_channels": 3,
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attn_levels": [],
        "dropout": 0.0,
        "norm_groups": 4,
    },
}


TINY_UNET_ARGS = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_levels": [], "norm_groups": 4}
"""A tiny U-Net's arguments as a checkpoint's hyperparameters hold them (lists, as YAML writes them)."""


def net_spec(class_path: str, **init_args) -> dict:
    """A network as a checkpoint's hyperparameters hold it: its class path and arguments."""
    return {"class_path": class_path, "init_args": init_args}


def small_deqir(seed: int = 0, steps: int = 3, solver: str = "sequential", **kwargs) -> DeqIR:
    torch.manual_seed(seed)
    sampling = DeqIR.DEFAULT_SAMPLING.replaced(steps=steps, solver={"method": solver})
    settings = dict(train_schedule=SCHEDULE, operator="sr2", sampling=sampling) | kwargs
    return DeqIR(net=UNet(**NET["init_args"]), **settings).eval()


def save_checkpoint(model, path: Path, trained=None, net: dict | None = None) -> Path:
    """A checkpoint of `model` (a small DeqIR by default; any method whose network is its `net`, given as `net`'s
    class_path and init_args) laid out as Lightning writes one from the CLI: the net as a class_path in the
    hyperparameters (rebuilt by the CLI's instantiator), the EMA weights in state_dict, `trained`'s as the trained
    weights."""
    cls = type(model)
    hparams = dict(model.hparams) | {
        "net": NET if net is None else net,
        "_class_path": f"ir_lightning.methods.{cls.__name__}",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": hparams,
        "pytorch-lightning_version": lightning.__version__,
    }
    if trained is not None:
        checkpoint["current_model_state"] = trained.state_dict()
    torch.save(checkpoint, path)
    return path


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
