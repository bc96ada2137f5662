"""FID from a local weight file: the Frechet distance matches closed forms and scipy's matrix square root,
the network's keys and shapes are those of torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`
(written out below), its resize is TensorFlow 1's bilinear, its features are 2048-d and deterministic and, with
fixed random weights, those torch-fidelity's own network computes (recorded once in tests/fixtures), bad files
are refused by file and key, and nothing reaches the network."""

from __future__ import annotations

import json
import socket
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from ir_lightning.metrics.fid import (
    FIDWeightsError,
    InceptionFID,
    fid,
    frechet_distance,
    resize_bilinear_tf1,
    statistics,
)

# The file's convolutions, `<layer>: <branch> out x in x kh x kw` (each also has bn.weight, bias, running_mean,
# running_var of `out` values), as torch-fidelity 0.4.0's FeatureExtractorInceptionV3 loads them; plus fc.
FILE_CONVS = """
Conv2d_1a_3x3: 32x3x3x3
Conv2d_2a_3x3: 32x32x3x3
Conv2d_2b_3x3: 64x32x3x3
Conv2d_3b_1x1: 80x64x1x1
Conv2d_4a_3x3: 192x80x3x3
Mixed_5b: branch1x1 64x192x1x1, branch5x5_1 48x192x1x1, branch5x5_2 64x48x5x5, branch3x3dbl_1 64x192x1x1,
    branch3x3dbl_2 96x64x3x3, branch3x3dbl_3 96x96x3x3, branch_pool 32x192x1x1
Mixed_5c: branch1x1 64x256x1x1, branch5x5_1 48x256x1x1, branch5x5_2 64x48x5x5, branch3x3dbl_1 64x256x1x1,
    branch3x3dbl_2 96x64x3x3, branch3x3dbl_3 96x96x3x3, branch_pool 64x256x1x1
Mixed_5d: branch1x1 64x288x1x1, branch5x5_1 48x288x1x1, branch5x5_2 64x48x5x5, branch3x3dbl_1 64x288x1x1,
    branch3x3dbl_2 96x64x3x3, branch3x3dbl_3 96x96x3x3, branch_pool 64x288x1x1
Mixed_6a: branch3x3 384x288x3x3, branch3x3dbl_1 64x288x1x1, branch3x3dbl_2 96x64x3x3, branch3x3dbl_3 96x96x3x3
Mixed_6b: branch1x1 192x768x1x1, branch7x7_1 128x768x1x1, branch7x7_2 128x128x1x7, branch7x7_3 192x128x7x1,
    branch7x7dbl_1 128x768x1x1, branch7x7dbl_2 128x128x7x1, branch7x7dbl_3 128x128x1x7, branch7x7dbl_4
    128x128x7x1, branch7x7dbl_5 192x128x1x7, branch_pool 192x768x1x1
Mixed_6c: branch1x1 192x768x1x1, branch7x7_1 160x768x1x1, branch7x7_2 160x160x1x7, branch7x7_3 192x160x7x1,
    branch7x7dbl_1 160x768x1x1, branch7x7dbl_2 160x160x7x1, branch7x7dbl_3 160x160x1x7, branch7x7dbl_4
    160x160x7x1, branch7x7dbl_5 192x160x1x7, branch_pool 192x768x1x1
Mixed_6d: branch1x1 192x768x1x1, branch7x7_1 160x768x1x1, branch7x7_2 160x160x1x7, branch7x7_3 192x160x7x1,
    branch7x7dbl_1 160x768x1x1, branch7x7dbl_2 160x160x7x1, branch7x7dbl_3 160x160x1x7, branch7x7dbl_4
    160x160x7x1, branch7x7dbl_5 192x160x1x7, branch_pool 192x768x1x1
Mixed_6e: branch1x1 192x768x1x1, branch7x7_1 192x768x1x1, branch7x7_2 192x192x1x7, branch7x7_3 192x192x7x1,
    branch7x7dbl_1 192x768x1x1, branch7x7dbl_2 192x192x7x1, branch7x7dbl_3 192x192x1x7, branch7x7dbl_4
    192x192x7x1, branch7x7dbl_5 192x192x1x7, branch_pool 192x768x1x1
Mixed_7a: branch3x3_1 192x768x1x1, branch3x3_2 320x192x3x3, branch7x7x3_1 192x768x1x1, branch7x7x3_2
    192x192x1x7, branch7x7x3_3 192x192x7x1, branch7x7x3_4 192x192x3x3
Mixed_7b: branch1x1 320x1280x1x1, branch3x3_1 384x1280x1x1, branch3x3_2a 384x384x1x3, branch3x3_2b 384x384x3x1,
    branch3x3dbl_1 448x1280x1x1, branch3x3dbl_2 384x448x3x3, branch3x3dbl_3a 384x384x1x3, branch3x3dbl_3b
    384x384x3x1, branch_pool 192x1280x1x1
Mixed_7c: branch1x1 320x2048x1x1, branch3x3_1 384x2048x1x1, branch3x3_2a 384x384x1x3, branch3x3_2b 384x384x3x1,
    branch3x3dbl_1 448x2048x1x1, branch3x3dbl_2 384x448x3x3, branch3x3dbl_3a 384x384x1x3, branch3x3dbl_3b
    384x384x3x1, branch_pool 192x2048x1x1
"""
FC_SHAPES = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


def file_format() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the weights file, parsed from FILE_CONVS."""
    shapes: dict[str, tuple[int, ...]] = {}
    text = FILE_CONVS.strip().replace("\n    ", " ")
    for line in text.splitlines():
        layer, items = line.split(": ")
        for item in items.split(", "):
            *branch, dims = item.split()
            out, c_in, kh, kw = (int(d) for d in dims.split("x"))
            prefix = ".".join([layer, *branch])
            shapes[f"{prefix}.conv.weight"] = (out, c_in, kh, kw)
            shapes |= {f"{prefix}.bn.{name}": (out,) for name in ("weight", "bias", "running_mean", "running_var")}
    return shapes | FC_SHAPES


def random_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict in the file's format with random weights: He-scaled convolutions and batch norms that
    neither vanish nor explode, so the 2048 features are of order one."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in file_format().items():
        if key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def inception_file(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "weights-inception-random.pth"
    torch.save(random_state(seed), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return inception_file(tmp_path_factory.mktemp("fid"))


@pytest.fixture(scope="module")
def network(weights: Path) -> InceptionFID:
    return InceptionFID.from_file(weights)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


# --- the Frechet distance ---------------------------------------------------------------------------------------
def test_equal_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_spd(rng, 16)
    assert frechet_distance(t(mu), t(sigma), t(mu), t(sigma)) == pytest.approx(0.0, abs=1e-10)


def test_diagonal_covariances_give_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    a, b = rng.uniform(0.1, 3, size=10), rng.uniform(0.1, 3, size=10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(t(mu1), t(np.diag(a)), t(mu2), t(np.diag(b))) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_random_spd_covariances_match_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    mu1, mu2, s1, s2 = rng.normal(size=20), rng.normal(size=20), random_spd(rng, 20), random_spd(rng, 20)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    assert frechet_distance(t(mu1), t(s1), t(mu2), t(s2)) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(t(mu2), t(s2), t(mu1), t(s1)) == pytest.approx(expected, rel=1e-10)  # symmetric


def test_statistics_are_numpy_s_and_fid_of_few_samples_agrees_with_the_full_frechet_distance():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(12, 6))
    mu, sigma = statistics(t(features))
    np.testing.assert_allclose(mu.numpy(), features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(features, rowvar=False), rtol=1e-12)
    a, b = t(rng.normal(size=(5, 40))), t(rng.normal(size=(5, 40)) + 1.0)  # 5 samples in 40-d: singular
    value = fid(a, b)  # the N x N form (5 samples, 40 features)
    assert np.isfinite(value) and value > 40 * 0.9  # the mean shift alone is 40
    # the D x D form: equal up to the noise its square roots of a singular matrix carry (relative 1e-8 here)
    assert value == pytest.approx(frechet_distance(*statistics(a), *statistics(b)), rel=1e-7)
    c, d = t(rng.normal(size=(50, 8))), t(rng.normal(size=(60, 8)) * 2)  # more samples than features: D x D
    assert fid(c, d) == pytest.approx(frechet_distance(*statistics(c), *statistics(d)), rel=1e-12)
    # 0 up to the rounding that the square root of a singular matrix amplifies (sqrt of ~1e-16 noise)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-7 * float(2 * statistics(a)[1].trace()))
    with pytest.raises(ValueError, match="N >= 2"):
        statistics(torch.zeros(1, 6))


# --- the resize -------------------------------------------------------------------------------------------------
def ref_resize_tf1(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """TensorFlow 1 resize_bilinear (align_corners=False, no half-pixel centres) of an H x W array, by loops."""
    h, w = x.shape
    out = np.zeros((height, width))
    for i in range(height):
        y = i * h / height
        y0, fy = int(np.floor(y)), y - np.floor(y)
        y1 = min(y0 + 1, h - 1)
        for j in range(width):
            s = j * w / width
            x0, fx = int(np.floor(s)), s - np.floor(s)
            x1 = min(x0 + 1, w - 1)
            top = x[y0, x0] + (x[y0, x1] - x[y0, x0]) * fx
            bottom = x[y1, x0] + (x[y1, x1] - x[y1, x0]) * fx
            out[i, j] = top + (bottom - top) * fy
    return out


def test_resize_is_tensorflow1_bilinear():
    ramp = torch.arange(7.0).expand(1, 1, 5, 7)  # x = column index: TF1 samples column j * 7 / 19
    resized = resize_bilinear_tf1(ramp, 5, 19)
    expected = np.minimum(np.arange(19) * 7 / 19, 6.0)  # the last column is repeated past the edge
    np.testing.assert_allclose(resized[0, 0].numpy(), np.broadcast_to(expected, (5, 19)), atol=1e-5)
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 255
    assert torch.equal(resize_bilinear_tf1(image, 8, 12), image)  # same size: unchanged
    assert torch.equal(resize_bilinear_tf1(image, 4, 6), image[..., ::2, ::2])  # halving: no antialiasing
    for height, width in [(299, 299), (3, 17)]:
        ours = resize_bilinear_tf1(image, height, width)[0, 1].double().numpy()
        np.testing.assert_allclose(ours, ref_resize_tf1(image[0, 1].double().numpy(), height, width), atol=1e-3)


# --- the network and its file -----------------------------------------------------------------------------------
def test_the_network_has_the_file_format_s_keys_and_shapes():
    own = {k: tuple(v.shape) for k, v in InceptionFID().state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = {k: v for k, v in file_format().items() if k not in FC_SHAPES}
    assert len(expected) == 94 * 5
    assert own == expected


def test_features_are_2048_d_deterministic_and_from_8_bit_levels(network):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 45, 61, generator=g)
    features = network(images)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.std() > 1e-3
    levels = torch.round(images * 255) / 255
    # the same features again (deterministic, whatever the batch), from an image of the same uint8 levels
    torch.testing.assert_close(network(levels[1:] + 0.3 / 255), features[1:], rtol=1e-5, atol=1e-5)


def test_bad_files_are_refused_naming_the_file_and_key(weights, tmp_path):
    def message(state_or_bytes) -> str:
        path = tmp_path / "bad.pth"
        if isinstance(state_or_bytes, bytes):
            path.write_bytes(state_or_bytes)
        else:
            torch.save(state_or_bytes, path)
        with pytest.raises(FIDWeightsError) as error:
            InceptionFID.from_file(path)
        assert str(path) in str(error.value)
        return str(error.value)

    with pytest.raises(FIDWeightsError, match="no such file"):
        InceptionFID.from_file(tmp_path / "absent.pth")
    assert "not a PyTorch weights file" in message(b"not a pickle")
    # the file's keys and shapes as views of one zero (a few bytes on disk): the checks read only keys and shapes
    state = {k: torch.zeros(()).expand(v.shape) for k, v in torch.load(weights, weights_only=True).items()}
    missing = {k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.bn.running_var"}
    assert "missing keys Mixed_7c.branch_pool.bn.running_var" in message(missing)
    assert "missing keys fc.weight, fc.bias" in message({k: v for k, v in state.items() if not k.startswith("fc.")})
    assert "unexpected keys AuxLogits.conv0.conv.weight" in message(
        state | {"AuxLogits.conv0.conv.weight": torch.zeros(1)}
    )
    shaped = state | {"Mixed_5b.branch5x5_2.conv.weight": torch.zeros(64, 48, 3, 3)}
    assert "mis-shaped Mixed_5b.branch5x5_2.conv.weight (64, 48, 3, 3) (expected (64, 48, 5, 5))" in message(shaped)
    assert "expected a state dict" in message([torch.zeros(1)])
    tracked = state | {"Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(7)}  # a module's state dict: accepted
    InceptionFID.from_file(torch.save(tracked, tmp_path / "tracked.pth") or tmp_path / "tracked.pth")


def test_no_network_access(weights, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    network = InceptionFID.from_file(weights)
    assert network(torch.rand(1, 3, 300, 20)).shape == (1, 2048)  # any size


# --- the network against the reference implementation -----------------------------------------------------------
# tests/fixtures/fid_reference_features.npz holds the 2048-d features that torch-fidelity's own network
# (FeatureExtractorInceptionV3, feature "2048") computed for `reference_images` with `reference_weights`; the
# .json beside it says which commit, how, and when (tests/fixtures/record_fid_reference.py wrote both). The stage
# compared is the whole path from a uint8 image to the pool features: both resize with TF1's bilinear, map levels
# by (x - 128) / 128, run the graph and average the 8 x 8 map (torch-fidelity is given the uint8 levels, ours the
# same levels / 255, which its quantisation maps back to the same levels).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REFERENCE_FEATURES = FIXTURES / "fid_reference_features.npz"
REFERENCE_SEED = 2015
# H x W: both sides upscaled; the graph's own size (no resize); width shrunk and height upscaled
REFERENCE_SIZES = ((64, 48), (299, 299), (37, 410))
# Ours agree with the recorded features to float32 rounding: bit for bit on one thread (as recorded), within
# 2e-7 of the largest feature on two; the float32 path itself is off float64 by 5e-7 of it. The breaks this
# tolerance guards against are far larger (difference relative to the largest feature, measured):
# Mixed_7c pooling by average 0.3, batch-norm eps 1e-5 300, average pools counting padding 0.07, torch's
# half-pixel bilinear resize 0.01, levels centred at 127.5 0.004.
REFERENCE_TOLERANCE = 1e-4


def reference_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for the tensors of one layer (or image): each layer's draws do not depend on the others'."""
    return torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))


def reference_weights(seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the file's format (fc included) whose activations stay of order one through the 17 blocks
    with the graph's batch-norm eps 1e-3, and whose features depend strongly on that eps: each layer's running_var
    is drawn small, uniform in [1e-4, 1e-2], and its He-scaled convolution is scaled per output channel by
    sqrt(running_var + 1e-3), so that the graph's batch norm maps it to order one (with eps 1e-5 the channels of
    small variance are amplified up to 3.3 times, layer after layer)."""
    shapes = file_format()
    state = {}
    for key in (key for key in shapes if key.endswith(".conv.weight")):
        layer = key.removesuffix(".conv.weight")
        g = reference_generator(seed, layer)
        out, c_in, kh, kw = shapes[key]
        variance = 1e-4 + (1e-2 - 1e-4) * torch.rand(out, generator=g)
        scale = (variance + 1e-3).sqrt()
        he = (2.0 / (c_in * kh * kw)) ** 0.5
        state[key] = torch.randn(shapes[key], generator=g) * he * scale[:, None, None, None]
        state[f"{layer}.bn.weight"] = 0.8 + 0.4 * torch.rand(out, generator=g)
        state[f"{layer}.bn.bias"] = 0.1 * torch.randn(out, generator=g)
        state[f"{layer}.bn.running_mean"] = 0.1 * scale * torch.randn(out, generator=g)
        state[f"{layer}.bn.running_var"] = variance
    g = reference_generator(seed, "fc")
    state["fc.weight"] = torch.randn(FC_SHAPES["fc.weight"], generator=g) * FC_SHAPES["fc.weight"][1] ** -0.5
    state["fc.bias"] = 0.1 * torch.randn(FC_SHAPES["fc.bias"], generator=g)
    return state


def reference_images(seed: int) -> list[torch.Tensor]:
    """One 1 x 3 x H x W uint8 image of random levels for each of REFERENCE_SIZES."""
    return [
        torch.randint(0, 256, (1, 3, h, w), generator=reference_generator(seed, f"image {h}x{w}"), dtype=torch.uint8)
        for h, w in REFERENCE_SIZES
    ]


def checksums(weights: dict[str, torch.Tensor], images: list[torch.Tensor]) -> np.ndarray:
    """Sums (float64) of the weights, their absolute values and the images' levels: they tell a change of torch's
    random streams (the inputs are no longer those recorded) from a change of the network."""
    total = sum(float(v.sum(dtype=torch.float64)) for v in weights.values())
    absolute = sum(float(v.abs().sum(dtype=torch.float64)) for v in weights.values())
    return np.array([total, absolute, *(float(image.sum(dtype=torch.float64)) for image in images)])


def test_features_are_those_of_the_reference_implementation(tmp_path):
    recorded = np.load(REFERENCE_FEATURES)
    note = json.loads(REFERENCE_FEATURES.with_suffix(".json").read_text())
    assert int(recorded["seed"]) == REFERENCE_SEED and [tuple(s) for s in recorded["sizes"]] == list(REFERENCE_SIZES)
    assert note["repository"] == "toshas/torch-fidelity" and len(note["commit"]) == 40
    weights, images = reference_weights(REFERENCE_SEED), reference_images(REFERENCE_SEED)
    np.testing.assert_allclose(
        checksums(weights, images),
        recorded["checksums"],
        rtol=1e-9,
        err_msg="the weights or images are not those recorded (torch's CPU random streams changed?): re-record",
    )
    path = tmp_path / "weights-inception-reference.pth"
    torch.save(weights, path)
    network = InceptionFID.from_file(path)
    for image, expected in zip(images, torch.from_numpy(recorded["features"]), strict=True):
        features = network(image.float() / 255)[0]
        scale = float(expected.abs().max())
        assert scale > 1.0  # order-one features: neither vanished nor exploded
        difference = float((features - expected).abs().max())
        assert difference <= REFERENCE_TOLERANCE * scale, (
            f"{tuple(image.shape[2:])} image: features differ from torch-fidelity's by up to {difference:.3g} "
            f"({difference / scale:.3g} of the largest feature, {scale:.3g})"
        )
