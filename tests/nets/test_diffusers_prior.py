"""`DiffusersUNet`: a diffusers `UNet2DModel` built from its config, called `net(x, t)` with integer timesteps, equal
to the diffusers module called directly; JSON-plain config without diffusers' private keys; class-conditional and
unknown settings refused by name; an allowed class of checkpoints; and the suite imports without diffusers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from ir_lightning.class_paths import allowed_class, check_class_paths
from ir_lightning.nets.diffusers_prior import DiffusersUNet

diffusers = pytest.importorskip("diffusers")
UNet2DModel = diffusers.UNet2DModel  # diffusers imports lazily: at collection, not in the first test

ROOT = Path(__file__).resolve().parents[2]

TINY: dict[str, Any] = dict(
    sample_size=16,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
"""A UNet2DModel of 45,259 parameters: two levels, attention at the second and in the middle."""


def tiny_unet(**changes: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet2DModel(**TINY | changes).eval()


def saved_config(unet: torch.nn.Module) -> dict[str, Any]:
    """The config as `save_pretrained` writes it: the private keys included."""
    return dict(unet.config) | {"_class_name": "UNet2DModel", "_diffusers_version": diffusers.__version__}


def test_the_network_is_the_diffusers_module_called_with_integer_timesteps():
    unet = tiny_unet()
    net = DiffusersUNet(saved_config(unet)).eval()
    net.unet.load_state_dict(unet.state_dict())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 999])
    with torch.no_grad():
        expected = unet(x, t).sample
        assert torch.equal(net(x, t), expected)
        assert torch.equal(net(x, t.float()), expected)  # TimestepPrior passes the steps as floats
        assert not torch.allclose(net(x, t.flip(0)), expected)  # each image its own step
        odd = torch.randn(1, 3, 13, 10)  # two levels: padded to 14 x 10 (reflect), cropped back
        padded = torch.nn.functional.pad(odd, (0, 0, 0, 1), mode="reflect")
        assert torch.equal(net(odd, t[:1]), unet(padded, t[:1]).sample[..., :13, :])
    assert float(expected.abs().max()) > 0.1
    with pytest.raises(ValueError, match=r"timesteps must be integers, got \[2.5\]"):
        net(x[:1], torch.tensor([2.5]))


def test_the_config_is_plain_json_without_private_keys():
    unet = tiny_unet()
    net = DiffusersUNet(saved_config(unet))
    assert not any(key.startswith("_") for key in net.config)
    assert net.config["block_out_channels"] == [8, 16] and net.config["down_block_types"][1] == "AttnDownBlock2D"
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in unet.parameters()) == 45_259
    with torch.device("meta"):  # how the import checks the weights' shapes: nothing allocated
        assert next(DiffusersUNet(net.config).parameters()).is_meta
    with pytest.raises(ValueError, match="must be plain JSON"):
        DiffusersUNet(net.config | {"sample_size": torch.tensor(16)})


@pytest.mark.parametrize(
    ("key", "value"), [("num_class_embeds", 10), ("class_embed_type", "timestep"), ("class_embed_type", "identity")]
)
def test_a_class_conditional_config_is_refused_by_name(key, value):
    with pytest.raises(ValueError, match=f"config key '{key}' = '?{value}'? makes a class-conditional UNet2DModel"):
        DiffusersUNet(dict(TINY) | {key: value})


def test_a_key_this_diffusers_does_not_take_is_refused():
    with pytest.raises(ValueError, match="does not take: attention_kind, time_cond"):
        DiffusersUNet(dict(TINY) | {"time_cond": 1, "attention_kind": "x", "_name_or_path": "google/ddpm"})


def test_checkpoints_may_name_the_class_and_its_config():
    path = "ir_lightning.nets.diffusers_prior.DiffusersUNet"
    assert allowed_class(path) is DiffusersUNet
    config = DiffusersUNet(dict(TINY)).config
    hparams = {"net": {"class_path": path, "init_args": {"config": config}}}
    check_class_paths(hparams, "prior.ckpt")  # no string of a UNet2DModel config reads as an import path


HIDDEN = textwrap.dedent(
    """
    import sys
    sys.modules["diffusers"] = None  # import diffusers now raises ImportError, as where it is not installed
    import ir_lightning.importing.diffusers_
    from ir_lightning.nets.diffusers_prior import DiffusersUNet
    try:
        DiffusersUNet({"sample_size": 16})
    except ImportError as error:
        print(error)
    """
)


def test_the_suite_imports_without_diffusers_and_building_names_the_extra():
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "needs the diffusers package: pip install 'ir-lightning[priors]'" in done.stdout
