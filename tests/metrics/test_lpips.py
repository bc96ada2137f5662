"""LPIPS from local files: it computes what an independent numpy implementation of LPIPS v0.1 on AlexNet
computes, is a distance (0 on identical images, symmetric, growing with noise), loads torchvision's and the
lpips package's file formats strictly, refuses bad files by name and key, and never reaches the network."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from ir_lightning.metrics.lpips import LPIPS, MIN_SIDE, AlexNetFeatures, LPIPSWeightsError

# torchvision's alexnet(): features.N (conv: out, in, kernel) and the stride and padding of each conv
TORCHVISION_CONVS = {
    0: (64, 3, 11, 4, 2),
    3: (192, 64, 5, 1, 2),
    6: (384, 192, 3, 1, 1),
    8: (256, 384, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
LIN_CHANNELS = (64, 192, 384, 256, 256)  # channels of the five tapped ReLUs: lin0 ... lin4


# --- weight files in the two formats, random ---------------------------------------------------------------
def alexnet_state(seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-format AlexNet state dict with random weights (He-scaled so the deep maps do not vanish),
    with a `classifier` entry as the real file has (not the whole classifier: 150 MB for nothing)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_out, c_in, k, _, _) in TORCHVISION_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2.0 / (c_in * k * k)) ** 0.5
        state[f"features.{index}.bias"] = 0.1 * torch.randn(c_out, generator=g)
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


def lin_state(seed: int) -> dict[str, torch.Tensor]:
    """The lpips package's format: linK.model.1.weight, 1 x C x 1 x 1, non-negative as the trained ones are."""
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(LIN_CHANNELS)}


def weight_files(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Writes the two files; returns (backbone, linear)."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone, linear = folder / "alexnet-owt-random.pth", folder / "alex-lin-random.pth"
    torch.save(alexnet_state(seed), backbone)
    torch.save(lin_state(seed + 1), linear)
    return backbone, linear


# --- an independent reference, numpy only, float64 ------------------------------------------------
def ref_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Cross-correlation of C x H x W with O x C x k x k, zero padding: an explicit loop over the kernel's
    offsets (a, b), each adding weight[:, :, a, b] times the input pixels it meets at every output."""
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    k = weight.shape[-1]
    height, width = (padded.shape[1] - k) // stride + 1, (padded.shape[2] - k) // stride + 1
    out = np.zeros((weight.shape[0], height, width))
    for a in range(k):
        for b in range(k):
            seen = padded[:, a : a + stride * (height - 1) + 1 : stride, b : b + stride * (width - 1) + 1 : stride]
            out += np.einsum("oc,chw->ohw", weight[:, :, a, b], seen)
    return out + bias[:, None, None]


def ref_maxpool(x: np.ndarray) -> np.ndarray:
    """3 x 3 windows, stride 2, no padding, incomplete windows dropped: an explicit loop over the outputs."""
    height, width = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = np.empty((x.shape[0], height, width))
    for i in range(height):
        for j in range(width):
            out[:, i, j] = x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
    return out


def ref_taps(img: np.ndarray, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The five ReLU outputs of AlexNet: conv1 relu pool conv2 relu pool conv3 relu conv4 relu conv5 relu."""
    taps, x = [], img
    for index, (_, _, _, stride, padding) in TORCHVISION_CONVS.items():
        if index in (3, 6):  # a pooling precedes conv2 and conv3
            x = ref_maxpool(x)
        x = np.maximum(
            ref_conv(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], stride, padding), 0
        )
        taps.append(x)
    return taps


def ref_lpips(img0: np.ndarray, img1: np.ndarray, backbone: dict, lins: dict) -> float:
    """LPIPS v0.1 of two 3 x H x W images in [0, 1], written from the paper's recipe and the package's constants."""
    shift = np.array([-0.030, -0.088, -0.188])[:, None, None]
    scale = np.array([0.458, 0.448, 0.450])[:, None, None]
    feats = [ref_taps((2 * img - 1 - shift) / scale, backbone) for img in (img0, img1)]
    total = 0.0
    for k, (f0, f1) in enumerate(zip(*feats)):
        u0 = f0 / (np.sqrt((f0**2).sum(axis=0)) + 1e-10)
        u1 = f1 / (np.sqrt((f1**2).sum(axis=0)) + 1e-10)
        w = lins[f"lin{k}.model.1.weight"].reshape(-1)
        total += np.mean(np.einsum("c,chw->hw", w, (u0 - u1) ** 2))
    return float(total)


def as_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in state.items()}


@pytest.fixture
def files(tmp_path):
    return weight_files(tmp_path / "weights")


def images(seed: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Smooth colour ramps plus noise in [0, 1], so the deep maps are not flat."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    ramps = torch.stack([yy, xx, 1 - yy * xx])[None] * torch.rand(batch, 3, 1, 1, generator=g)
    return (ramps + 0.2 * torch.rand(batch, 3, height, width, generator=g)).clamp(0, 1)


# --- tests --------------------------------------------------------------------------------------------------
def test_the_backbone_has_torchvision_s_feature_keys_and_shapes():
    state = AlexNetFeatures().state_dict()
    expected = {}
    for index, (c_out, c_in, k, _, _) in TORCHVISION_CONVS.items():
        expected[f"features.{index}.weight"] = (c_out, c_in, k, k)
        expected[f"features.{index}.bias"] = (c_out,)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_lpips_matches_the_numpy_reference(files):
    backbone, linear = files
    lpips = LPIPS.from_files(backbone, linear)
    x, y = images(1, 2, 67, 45), images(2, 2, 67, 45)  # odd, non-square sizes: floor modes matter
    got = lpips(x, y)
    assert got.shape == (2,)
    ref_backbone, ref_lins = (
        as_numpy(torch.load(backbone, weights_only=True)),
        as_numpy(torch.load(linear, weights_only=True)),
    )
    expected = [ref_lpips(x[i].double().numpy(), y[i].double().numpy(), ref_backbone, ref_lins) for i in range(2)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    assert min(expected) > 0.05 and abs(expected[0] - expected[1]) > 1e-3  # a real distance, per image


def test_lpips_at_the_smallest_size_matches_the_reference_and_smaller_is_refused(files):
    backbone, linear = files
    lpips = LPIPS.from_files(backbone, linear)
    x, y = images(3, 1, MIN_SIDE, MIN_SIDE + 5), images(4, 1, MIN_SIDE, MIN_SIDE + 5)
    expected = ref_lpips(
        x[0].double().numpy(), y[0].double().numpy(), as_numpy(alexnet_state(0)), as_numpy(lin_state(1))
    )
    assert float(lpips(x, y)[0]) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match=f"at least {MIN_SIDE} x {MIN_SIDE} pixels, got {MIN_SIDE - 1} x 40"):
        lpips(images(3, 1, MIN_SIDE - 1, 40), images(4, 1, MIN_SIDE - 1, 40))
    with pytest.raises(ValueError, match="B x 3 x H x W batches of one shape"):
        lpips(x, y[..., :-1])


def test_lpips_is_zero_on_identical_images_symmetric_and_grows_with_noise(files):
    lpips = LPIPS.from_files(*files)
    x = images(5, 2, 48, 56)
    assert torch.equal(lpips(x, x), torch.zeros(2))
    y = images(6, 2, 48, 56)
    torch.testing.assert_close(lpips(x, y), lpips(y, x), rtol=0, atol=1e-7)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    distances = torch.stack([lpips(x, (x + sigma * noise).clamp(0, 1)) for sigma in (0.01, 0.03, 0.1, 0.3)])
    assert (distances[0] > 0).all()
    assert (distances.diff(dim=0) > 0).all(), distances


def test_from_files_uses_the_files_weights(files):
    backbone, linear = files
    lpips = LPIPS.from_files(backbone, linear)
    for key, value in alexnet_state(0).items():
        if key.startswith("features."):
            assert torch.equal(lpips.backbone.state_dict()[key], value), key
    for k, lin in enumerate(lpips.lins):
        assert torch.equal(lin.weight, lin_state(1)[f"lin{k}.model.1.weight"])


def test_nothing_is_downloaded(files, monkeypatch):
    """Loading and scoring open no socket and never ask torch.hub for a file."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    x = images(8, 1, 40, 40)
    assert float(LPIPS.from_files(*files)(x, 1 - x)[0]) > 0


def test_bad_files_are_refused_with_the_file_and_the_keys_named(tmp_path, files):
    backbone, linear = files

    def refused(backbone_file: Path, linear_file: Path) -> str:
        with pytest.raises(LPIPSWeightsError) as info:
            LPIPS.from_files(backbone_file, linear_file)
        return str(info.value)

    state = alexnet_state(0)
    del state["features.3.bias"]
    torch.save(state, tmp_path / "no_bias.pth")
    message = refused(tmp_path / "no_bias.pth", linear)
    assert (
        message.startswith(f"{tmp_path / 'no_bias.pth'}: not torchvision's AlexNet weights")
        and "missing keys features.3.bias" in message
    )

    state = alexnet_state(0) | {"features.13.weight": torch.zeros(3)}  # a deeper network's file
    torch.save(state, tmp_path / "deeper.pth")
    message = refused(tmp_path / "deeper.pth", linear)
    assert (
        message
        == f"{tmp_path / 'deeper.pth'}: not torchvision's AlexNet weights (features.N.weight/bias): unexpected keys features.13.weight"
    )

    lins = lin_state(1) | {"lin2.model.1.weight": torch.rand(1, 100, 1, 1)}
    torch.save(lins, tmp_path / "narrow.pth")
    assert f"{tmp_path / 'narrow.pth'}: not the lpips package's v0.1 AlexNet linear layers" in refused(
        backbone, tmp_path / "narrow.pth"
    )
    assert "mis-shaped lin2.model.1.weight (1, 100, 1, 1) (expected (1, 384, 1, 1))" in refused(
        backbone, tmp_path / "narrow.pth"
    )

    lins = lin_state(1)
    lins["lin5.model.1.weight"] = torch.rand(1, 512, 1, 1)  # the SqueezeNet variant has seven layers
    del lins["lin0.model.1.weight"]
    torch.save(lins, tmp_path / "squeeze.pth")
    message = refused(backbone, tmp_path / "squeeze.pth")
    assert "missing keys lin0.model.1.weight; unexpected keys lin5.model.1.weight" in message

    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    assert refused(tmp_path / "text.pth", linear).startswith(f"{tmp_path / 'text.pth'}: not a PyTorch weights file")
    torch.save(
        {"lin0.model.1.weight": socket.AF_INET}, tmp_path / "pickled_object.pth"
    )  # weights_only refuses the enum
    assert refused(backbone, tmp_path / "pickled_object.pth").startswith(
        f"{tmp_path / 'pickled_object.pth'}: not a PyTorch weights file"
    )
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert (
        refused(backbone, tmp_path / "list.pth")
        == f"{tmp_path / 'list.pth'}: expected a state dict (names -> tensors), found a list"
    )
    assert refused(tmp_path / "absent.pth", linear) == f"{tmp_path / 'absent.pth'}: no such file"
