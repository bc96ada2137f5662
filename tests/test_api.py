"""The Python API (issue 20): `ir_lightning.load(...).restore(image)` on tensors, PIL images and numpy arrays, grey and
RGBA included, gives what `ir-lightning restore` writes for the same image, in the kind, dtype and layout it came in;
`info()` says what the model is; settings reach the method; and `import ir_lightning` stays light."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from PIL import Image

import ir_lightning
from ir_lightning.api import RestorationModel, native_tiling
from ir_lightning.commands.restore import main as restore_main
from ir_lightning.inference.loading import RestoreError
from ir_lightning.methods.base import RestorationModule
from ir_lightning.methods.deqir import DeqIR
from tests.conftest import REPO
from tests.helpers.checkpoints import save_checkpoint, small_deqir

TILING = {"tile": 8, "overlap": 2}
"""A tile smaller than the test images, so that the tiled path is the one compared."""
STEPS = 1
"""One sampling step: the API's conventions, not the sampler, are under test."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A small DeqIR (x2 SR) training checkpoint: EMA weights (seed 0) and trained weights (seed 1)."""
    return save_checkpoint(small_deqir(seed=0), tmp_path_factory.mktemp("api") / "deqir.ckpt", trained=small_deqir(1))


@pytest.fixture(scope="module")
def model(ckpt) -> RestorationModel:
    return ir_lightning.load(ckpt, device="cpu", steps=STEPS, **TILING)


def pixels(shape: tuple[int, ...], dtype=np.uint8, seed: int = 0) -> np.ndarray:
    peak = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, peak + 1, shape, dtype=dtype)


def png16_grey(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    png.Writer(array.shape[1], array.shape[0], greyscale=True, bitdepth=16).write(buffer, array)
    return buffer.getvalue()


def test_pil_images_of_every_mode_family_come_back_as_restore_writes_them(model, ckpt, tmp_path):
    """RGB, grey, grey + alpha, RGBA, 16-bit grey and palette files: `ir-lightning restore` (tiled) writes the same
    pixels as the API returns for the image opened with PIL, and the mode family is kept."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(pixels((12, 10, 3))).save(inputs / "rgb.png")
    Image.fromarray(pixels((12, 10), seed=1)).save(inputs / "grey.png")
    Image.fromarray(pixels((12, 10, 2), seed=2), "LA").save(inputs / "grey_alpha.png")
    Image.fromarray(pixels((12, 10, 4), seed=3)).save(inputs / "rgba.png")
    (inputs / "grey16.png").write_bytes(png16_grey(pixels((12, 10), np.uint16, seed=4)))
    Image.fromarray(pixels((12, 10, 3), seed=5)).quantize(16).save(inputs / "palette.png")
    arguments = ["--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "out"), "--device", "cpu"]
    assert restore_main([*arguments, "--tile", "8", "--overlap", "2", "--steps", str(STEPS)]) == 0
    modes = {"rgb": "RGB", "grey": "L", "grey_alpha": "LA", "rgba": "RGBA", "grey16": "I;16", "palette": "RGB"}
    for name, mode in modes.items():
        with Image.open(inputs / f"{name}.png") as image:
            restored = model.restore(image)
        with Image.open(tmp_path / "out" / f"{name}.png") as written:
            assert restored.mode == written.mode == mode, name
            assert restored.size == (20, 24), name  # x2
            np.testing.assert_array_equal(np.asarray(restored), np.asarray(written), err_msg=name)


def test_other_pil_modes_come_back_in_their_family(model):
    rgb = pixels((6, 6, 3), seed=6)
    palette = Image.fromarray(rgb).quantize(4)
    palette.info["transparency"] = 0  # a transparent palette entry: alpha, as `ir-lightning restore` reads it
    images = {
        "1": (Image.fromarray(rgb[..., 0] > 127), "L"),
        "I": (Image.fromarray(rgb[..., 0].astype(np.int32) * 257), "I"),
        "F": (Image.fromarray(rgb[..., 0].astype(np.float32) / 255), "F"),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), "RGB"),
        "P": (palette, "RGBA"),
    }
    for name, (image, mode) in images.items():
        restored = model.restore(image)
        assert (restored.mode, restored.size) == (mode, (12, 12)), name
    grey = np.asarray(images["F"][0])
    assert np.array_equal(np.asarray(model.restore(images["F"][0])), model.restore(grey))  # F: float grey


def test_numpy_arrays_keep_dtype_and_layout(model):
    from ir_lightning.degradations.resize import bicubic_resize

    rgb, grey = pixels((12, 10, 3)), pixels((12, 10), seed=1)
    restored = model.restore(rgb)
    assert restored.dtype == np.uint8 and restored.shape == (24, 20, 3)
    unit = rgb.astype(np.float32) / np.float32(255)  # what a uint8 image is read as
    floats = model.restore(unit.astype(np.float64))
    assert floats.dtype == np.float64 and np.array_equal(np.rint(floats * 255).astype(np.uint8), restored)
    assert model.restore(grey).shape == (24, 20)
    assert np.array_equal(model.restore(grey[..., None])[..., 0], model.restore(grey))
    assert model.restore(pixels((12, 10), np.uint16, seed=4)).dtype == np.uint16
    alpha = np.linspace(0, 1, 120, dtype=np.float32).reshape(12, 10, 1)
    out = model.restore(np.concatenate([unit, alpha], axis=-1))
    assert out.dtype == np.float32 and out.shape == (24, 20, 4) and np.array_equal(out[..., :3], floats)
    resized = bicubic_resize(torch.from_numpy(alpha[..., 0])[None, None], (24, 20)).clamp(0, 1)[0, 0].numpy()
    assert np.array_equal(out[..., 3], resized)  # the alpha, resized with the image (x2)


def test_an_alpha_channel_is_untouched_where_the_size_is_kept(ckpt):
    same_size = ir_lightning.load(ckpt, device="cpu", operator="colorization", steps=STEPS, **TILING)
    rgba = pixels((12, 10, 4), seed=3)
    restored = same_size.restore(rgba)
    assert restored.shape == rgba.shape and np.array_equal(restored[..., 3], rgba[..., 3])
    image = same_size.restore(Image.fromarray(rgba))
    assert image.mode == "RGBA" and np.array_equal(np.asarray(image)[..., 3], rgba[..., 3])
    tensor = torch.from_numpy(rgba).permute(2, 0, 1).contiguous()
    assert torch.equal(same_size.restore(tensor)[3], tensor[3])


def test_tensors_keep_dtype_layout_and_device_and_equal_the_module_s_tiled_restoration(model):
    from ir_lightning.inference.tiling import restore_tiled

    rgb = pixels((12, 10, 3))
    uint8 = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    floats = uint8.float() / 255
    with torch.no_grad():
        expected = restore_tiled(model.module.restore, floats[None], tile=8, overlap=2, batch=4)[0].clamp(0, 1)
    restored = model.restore(floats)
    assert restored.dtype == torch.float32 and restored.device == floats.device and torch.equal(restored, expected)
    assert torch.equal(model.restore(uint8), (expected * 255).round().to(torch.uint8))  # as the PNG writer rounds
    batch = model.restore(torch.stack([floats, floats.flip(-1)]).double())
    assert batch.dtype == torch.float64 and batch.shape == (2, 3, 24, 20)
    assert torch.equal(batch[0], restored.double())  # image by image
    grey = floats[:1]
    assert torch.equal(model.restore(grey), model.restore(grey.expand(3, -1, -1)).mean(0, keepdim=True))


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        ([[0.5]], TypeError, "a torch tensor, a PIL image or a numpy array; got a list"),
        (np.zeros((4, 4, 3), np.int32), TypeError, "a numpy image must be uint8, uint16 or float .* got int32"),
        (torch.zeros(3, 4, 4, dtype=torch.int64), TypeError, "a tensor image must be uint8 or float .* got int64"),
        (np.zeros((4, 4, 5), np.uint8), ValueError, r"C = 1 \(grey\), 2 .* got \(4, 4, 5\)"),
        (torch.zeros(4, 4), ValueError, r"C x H x W or B x C x H x W; got shape \(4, 4\)"),
        (
            np.full((4, 4, 3), 200.0),
            ValueError,
            r"a numpy image of floats must hold values in \[0, 1\]; got 200 \.\. 200",
        ),
        (torch.full((3, 4, 4), float("nan")), ValueError, "a tensor image of floats must hold values in"),
        (torch.full((3, 4, 4), -0.5), ValueError, r"got -0\.5 \.\. -0\.5"),
    ],
)
def test_what_cannot_be_an_image_is_refused_naming_why(model, image, error, message):
    with pytest.raises(error, match=message):
        model.restore(image)


def test_info_says_what_the_model_is(model, ckpt):
    info = model.info()
    assert isinstance(model.module, RestorationModule) and isinstance(model.module, DeqIR)
    assert info["method"] == "DeqIR" and info["class_path"] == "ir_lightning.methods.DeqIR"
    assert info["scale"] == 2 and info["operator"] == "sr2"
    assert info["sampling"]["steps"] == STEPS and info["sampling"]["solver"]["method"] == "sequential"
    assert info["weights"] == "ema" and info["source"] == str(ckpt) and info["format"] == "ckpt"
    assert info["tile"] == 8 and info["overlap"] == 2 and info["tileable"] and info["device"] == "cpu"
    assert info["training"] is None and info["validation"] is None and info["global_step"] is None
    assert info["parameters"] == sum(p.numel() for p in small_deqir().parameters())
    assert info["hyper_parameters"]["net"]["class_path"] == "ir_lightning.nets.unet.UNet"
    info["hyper_parameters"]["operator"] = "changed"
    assert model.info()["hyper_parameters"]["operator"] == "sr2"  # a copy


def test_settings_shortcuts_and_the_trained_weights_reach_the_method(ckpt):
    lq = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    changed = ir_lightning.load(ckpt, device="cpu", sampling={"steps": 2}, **{"sampling.solver.tolerance": 1e-5})
    sampling = changed.module.sampling
    assert sampling.steps == 2 and sampling.solver.tolerance == 1e-5 and sampling.solver.method == "sequential"
    assert ir_lightning.load(ckpt, device="cpu", steps=4, operator="sr4").info()["sampling"]["steps"] == 4
    trained = ir_lightning.load(ckpt, device="cpu", ema=False, tile=0)
    with torch.no_grad():
        assert torch.equal(trained.restore(lq), small_deqir(seed=1).restore(lq[None])[0].clamp(0, 1))
    assert trained.info()["weights"] == "trained"
    with pytest.raises(RestoreError, match="setting no_such_setting: DeqIR has no such setting; its settings: net, "):
        ir_lightning.load(ckpt, device="cpu", no_such_setting=1)
    with pytest.raises(RestoreError, match="holds a DeqIR checkpoint"):
        ir_lightning.load(ckpt, device="cpu", method="sr3")
    with pytest.raises(ValueError, match="0 <= overlap < tile"):
        ir_lightning.load(ckpt, device="cpu", tile=8, overlap=8)


def test_a_method_working_at_one_size_is_tiled_at_it(ckpt, monkeypatch):
    class Prior:
        def __init__(self, native):
            self.native = native

        def native_tile(self):
            return self.native

    assert native_tiling(Prior(None), 256, 32) == (256, 32)
    assert native_tiling(Prior(64), 256, 48) == (64, 32) and native_tiling(Prior(64), 64, 48) == (64, 48)
    monkeypatch.setattr(DeqIR, "native_tile", lambda self: 8)
    info = ir_lightning.load(ckpt, device="cpu").info()
    assert (info["tile"], info["overlap"]) == (8, 4)  # what `ir-lightning restore` says and does


def test_importing_the_package_imports_no_torch_until_a_model_is_loaded():
    code = "import sys, ir_lightning; ir_lightning.load; ir_lightning.RestorationModel; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ir_lightning.nope  # noqa: B018


def test_colorization_keeps_the_colour_it_makes_from_a_grey_input(tmp_path):
    """A grey image is what colorization takes: its restoration comes back (and is written) as RGB, equal to the
    module's restoration of the grey image repeated to three channels; other methods average back to grey."""
    module = small_deqir(operator="colorization")
    assert module.colourises and not small_deqir().colourises
    path = save_checkpoint(module, tmp_path / "colour.ckpt")
    grey = pixels((12, 10))
    restored = ir_lightning.load(path, device="cpu", tile=0).restore(grey)
    lq = torch.from_numpy(grey).float().div(255).expand(1, 3, -1, -1)
    with torch.no_grad():
        expected = np.rint(module.restore(lq)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert restored.shape == (12, 10, 3) and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, expected)
    assert np.ptp(restored.astype(int), axis=-1).max() > 0  # colour, not grey
    (tmp_path / "in").mkdir()
    Image.fromarray(grey).save(tmp_path / "in/g.png")
    assert (
        restore_main(
            ["--ckpt", str(path), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--tile", "0"]
        )
        == 0
    )
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/g.png")), expected)
