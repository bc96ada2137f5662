"""The DDIM / SDEdit `Model` (DeqIR's CelebA-HQ prior): the official function (the fixture's state dict loads
strictly under its own key names), the official CelebA-HQ parameter count, timesteps as int or float, padding
of other sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ir_lightning.nets.ddim_model import DDIMUNet
from ir_lightning.nets.padding import pad_to_multiple

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "ddim_model" / "fixture.pt"
OFFICIAL_COMMIT = "5ca8c9faf2818b53ace9697599f297091c0984cc"
CELEBA_HQ_PARAMETERS = 113_673_219
"""Measured with the official `Model` at `configs/celeba_hq.yml` on the meta device (the fixture records it too)."""


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def official_network(fixture: dict) -> DDIMUNet:
    """The tiny official configuration with the fixture's weights, loaded strictly under the official key names."""
    config = {k: v for k, v in fixture["config"].items() if k != "type"}
    net = DDIMUNet(**config, norm_groups=fixture["norm_groups"])
    net.load_state_dict(fixture["state_dict"], strict=True)
    return net.eval()


def test_fixture_is_from_the_official_snapshot(fixture: dict) -> None:
    assert fixture["commit"] == OFFICIAL_COMMIT
    assert FIXTURE.stat().st_size < 300_000


def test_reproduces_the_official_output(fixture: dict) -> None:
    net = official_network(fixture)
    with torch.no_grad():
        eps = net(fixture["x"], fixture["t"])
    assert eps.shape == fixture["eps"].shape
    assert (eps - fixture["eps"]).abs().max().item() < 1e-5


def test_float_timesteps_give_the_same_output(fixture: dict) -> None:
    net = official_network(fixture)
    with torch.no_grad():
        eps = net(fixture["x"], fixture["t"].float())
    assert (eps - fixture["eps"]).abs().max().item() < 1e-5


def test_celeba_hq_parameter_count(fixture: dict) -> None:
    with torch.device("meta"):
        net = DDIMUNet()
    assert sum(p.numel() for p in net.parameters()) == CELEBA_HQ_PARAMETERS == fixture["celeba_hq_parameters"]
    config = fixture["celeba_hq_config"]
    assert (net.ch, net.num_res_blocks, net.down_factor) == (config["ch"], config["num_res_blocks"], 32)


def test_odd_sizes_are_padded_and_cropped(fixture: dict) -> None:
    net = official_network(fixture)
    x = torch.randn(1, 3, 13, 15)
    with torch.no_grad():
        eps = net(x, torch.tensor([500]))
        padded = net(pad_to_multiple(x, 2), torch.tensor([500]))
    assert eps.shape == x.shape
    assert torch.equal(eps, padded[..., :13, :15])


def test_celeba_hq_keys_are_the_official_ones(fixture: dict) -> None:
    """`celeba_hq.ckpt` (a raw state dict of the official `Model`) loads without renaming."""
    with torch.device("meta"):
        net = DDIMUNet()
    ours = {key: list(value.shape) for key, value in net.state_dict().items()}
    assert ours == fixture["celeba_hq_shapes"]
