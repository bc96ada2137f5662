"""`ir-lightning restore` and `evaluate` with `--color-fix` and `--consistency` on a tiny SR3 x4 checkpoint: the
restored file degrades back to the input, the command says which post-processing ran, results.json records it,
the flags override the checkpoint's own settings (`none` turns them off), and an operator that cannot map the
output back to the input is refused naming both shapes, before restoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import ir_lightning
from ir_lightning.commands import evaluate, restore
from ir_lightning.commands.restore import COLOR_FIX_CHOICES
from ir_lightning.degradations.resize import bicubic_matrix, matlab_bicubic_downsample
from ir_lightning.inference import postprocess
from ir_lightning.inference.loading import Options, RestoreError, load_method
from ir_lightning.methods.settings import Sampling
from ir_lightning.methods.sr3 import SR3
from ir_lightning.nets.unet import UNet
from tests.helpers.checkpoints import save_checkpoint
from tests.helpers.nets import TINY_UNET

SCALE = 4
NET = {"class_path": "ir_lightning.nets.unet.UNet", "init_args": {"in_channels": 6, **TINY_UNET}}


def tiny_sr3_checkpoint(path: Path, **settings) -> Path:
    """An SR3 x4 checkpoint (an untrained tiny U-Net, 2 DDIM steps) laid out as the CLI writes one."""
    torch.manual_seed(0)
    net = UNet(**NET["init_args"])
    model = SR3(net=net, scale=SCALE, sampling=Sampling(steps=2, sampler="ddim"), **settings)
    return save_checkpoint(model, path, net=NET)


def low_resolution_photo(folder: Path, size: int = 64) -> Path:
    """A MATLAB-bicubic x4 down-scaling of an astronaut crop (squeezed into [0.15, 0.85]), as an 8-bit PNG."""
    crop = skimage.data.astronaut()[100 : 100 + size, 180 : 180 + size]
    gt = 0.15 + 0.7 * torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].double() / 255
    lr = matlab_bicubic_downsample(gt, SCALE)[0].clamp(0, 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "photo.png"
    Image.fromarray(np.rint(lr.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.float64) / 255


def matlab_bicubic_down(image: np.ndarray) -> np.ndarray:
    """MATLAB `imresize(image, 1/4, 'bicubic')` of an H x W x 3 array: the matrices of `bicubic_matrix`."""
    rows, cols = (bicubic_matrix(n, SCALE).numpy() for n in image.shape[:2])
    return np.einsum("ih,hwc,jw->ijc", rows, image, cols)


def quantisation_bound() -> float:
    """How far A q can be from A x when q is x rounded to 8 bits: half a level times the largest row sum of |A|
    (the 2-D kernel is the outer product of the 1-D ones, so |A|'s row sums are products of theirs)."""
    row_sum = float(bicubic_matrix(32, SCALE).abs().sum(1).max())
    return 0.5 / 255 * row_sum**2


def test_restore_with_both_writes_an_image_that_degrades_back_to_the_input_and_says_so(tmp_path, capsys):
    ckpt = tiny_sr3_checkpoint(tmp_path / "sr3.ckpt")
    source = low_resolution_photo(tmp_path / "in", size=32)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--input", str(source), "--output", str(out), "--device", "cpu"]
    assert restore.main([*args, "--color-fix", "wavelet", "--consistency", "bicubic4"]) == 0
    assert "post-processing: color fix wavelet, consistency bicubic4" in capsys.readouterr().out.splitlines()
    restored = pixels(out / "photo.png")
    assert restored.shape == (32, 32, 3)
    error_levels = np.abs(matlab_bicubic_down(restored) - pixels(source)) * 255
    # Tolerance: rounding the output to 8 bits moves A x by at most half a level times the largest row sum of
    # |A| (`quantisation_bound`: 0.69 levels for x4 bicubic), plus 0.31 levels for what the 20 clamped rounds
    # leave of A x - y where the untrained network's saturated output had to be pulled into [0, 1]: 1 level in
    # all. Measured: max 0.15, mean 0.04 levels. Without post-processing the same checkpoint is 129 levels off
    # at most (mean 46), with the colour fix alone 84 (mean 31).
    assert 0.6 < quantisation_bound() * 255 < 0.7
    assert error_levels.max() < quantisation_bound() * 255 + 0.31 and error_levels.mean() < 0.1
    assert restore.main([*args[:-4], "--output", str(tmp_path / "plain"), "--device", "cpu"]) == 0
    assert "post-processing: none" in capsys.readouterr().out.splitlines()
    plain_levels = np.abs(matlab_bicubic_down(pixels(tmp_path / "plain/photo.png")) - pixels(source)) * 255
    assert plain_levels.max() > 10 * error_levels.max()


def test_the_flags_override_the_checkpoint_s_settings_and_none_turns_them_off(tmp_path, capsys):
    ckpt = tiny_sr3_checkpoint(tmp_path / "sr3.ckpt", color_fix="adain", consistency="bicubic4")
    source = low_resolution_photo(tmp_path / "in", size=32)
    args = ["--ckpt", str(ckpt), "--input", str(source), "--output", str(tmp_path / "off"), "--device", "cpu"]
    assert restore.main([*args, "--color-fix", "none", "--consistency", "none"]) == 0
    assert "post-processing: none" in capsys.readouterr().out.splitlines()
    own = load_method(ckpt, Options(), torch.device("cpu"))
    assert (own.color_fix, own.consistency) == ("adain", "bicubic4")  # the checkpoint's own settings
    lq = torch.from_numpy(pixels(source)).permute(2, 0, 1)[None].float()
    plain = own.restoration(lq).image[0].permute(1, 2, 0).double().numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "off/photo.png")), np.rint(plain * 255))
    assert np.abs(own.restore(lq)[0].permute(1, 2, 0).numpy() - plain).max() > 0.1  # what they would have done
    assert "post-processing: color fix adain, consistency bicubic4" in restore.postprocessing_line(own)
    model = ir_lightning.load(ckpt, device="cpu", color_fix="wavelet", consistency="none")  # the Python API
    assert (model.module.color_fix, model.module.consistency) == ("wavelet", None)
    assert model.info()["post_processing"] == {"color_fix": "wavelet", "consistency": None}
    assert ir_lightning.load(ckpt, device="cpu").info()["post_processing"]["consistency"] == "bicubic4"


def test_an_operator_that_cannot_give_the_input_back_is_refused_naming_the_shapes(tmp_path, capsys):
    ckpt = tiny_sr3_checkpoint(tmp_path / "sr3.ckpt")
    source = low_resolution_photo(tmp_path / "in", size=96)  # 24 x 24 in, 96 x 96 out: bicubic3 gives 32 x 32
    args = ["--ckpt", str(ckpt), "--input", str(source), "--output", str(tmp_path / "out"), "--device", "cpu"]
    assert restore.main([*args, "--consistency", "bicubic3"]) == 1
    err = capsys.readouterr().err
    assert "consistency 'bicubic3': the output is (1, 3, 96, 96) and the input (1, 3, 24, 24)" in err
    assert "A x would be (1, 3, 32, 32)" in err and not (tmp_path / "out/photo.png").exists()
    assert restore.main([*args, "--consistency", "bicubic"]) == 2
    assert "--consistency bicubic: 'bicubic' is no operator name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        restore.main([*args, "--color-fix", "auto"])
    with pytest.raises(RestoreError, match="--color-fix auto: valid: none, wavelet, adain"):
        load_method(ckpt, Options(color_fix="auto"), torch.device("cpu"))
    assert COLOR_FIX_CHOICES == postprocess.COLOR_FIX_METHODS


def test_evaluate_prints_and_records_the_post_processing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    ckpt = tiny_sr3_checkpoint(tmp_path / "sr3.ckpt")
    crop = skimage.data.astronaut()[100:132, 180:212]
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.ascontiguousarray(crop)).save(tmp_path / "gt/astronaut.png")
    common = ["--ckpt", str(ckpt), "--preset", "set5_x4", "--gt", str(tmp_path / "gt"), "--device", "cpu"]
    flags = ["--color-fix", "adain", "--consistency", "bicubic4", "--no-wandb"]
    assert evaluate.main([*common, "--out", str(tmp_path / "out"), *flags]) == 0
    assert "post-processing: color fix adain, consistency bicubic4" in capsys.readouterr().out.splitlines()
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["post_processing"] == {
        "color_fix": "adain",
        "consistency": "bicubic4",
        "line": "post-processing: color fix adain, consistency bicubic4",
    }
    assert (results["settings"]["color_fix"], results["settings"]["consistency"]) == ("adain", "bicubic4")
    assert "- post-processing: color fix adain, consistency bicubic4\n" in (tmp_path / "out/results.md").read_text()
    assert evaluate.main([*common, "--out", str(tmp_path / "bad"), "--consistency", "sr3", "--no-wandb"]) == 2
    assert "consistency 'sr3': the output is (1, 3, 32, 32) and the input (1, 3, 8, 8)" in capsys.readouterr().err
