"""`ir-lightning evaluate`: every preset scores a folder set as an independent numpy implementation of its
protocol does (MATLAB Y, border crop, modcrop, Wang's SSIM on valid windows); the synthetic LR images are
MATLAB's bicubic imresize; results.json, results.md, the saved images and the W&B table hold what a real
checkpoint restores; errors name the bad preset, folder or file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ir_lightning.commands import evaluate
from ir_lightning.io.wandb_records import history, offline_runs, records
from ir_lightning.metrics import protocols
from ir_lightning.training.image_grid import to_uint8_hwc
from tests.degradations.test_resize import matlab_downscale_axis
from tests.helpers.checkpoints import save_checkpoint, small_deqir

pytestmark = pytest.mark.usefixtures("wandb_service_stopped")

SAME_SIZE_PROTOCOLS = {  # preset: (crop_border, Y channel), from the official scripts (see ir_lightning/metrics/protocols.py)
    "gopro": (0, False),
    "hide": (0, False),
    "sidd": (0, False),
    "rain100l": (0, True),
    "rain100h": (0, True),
    "lol": (0, True),
}
SR_PRESETS = [
    f"{name}_x{s}" for name in ("set5", "set14", "b100", "urban100", "manga109", "div2k_val") for s in (2, 3, 4)
]
GT_SIZES = {"a": (37, 34), "sub/b": (30, 41)}  # not multiples of 2, 3 or 4: modcrop matters


# --- an independent reference of the protocol, in numpy ------------------------------------------------
def y_of(rgb: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr's Y of uint8 RGB (H x W x 3), as float: 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def planes(img: np.ndarray, crop: int, y_channel: bool) -> np.ndarray:
    """C x H x W float64 planes to score: border cropped, Y or the three RGB channels."""
    img = img[crop : img.shape[0] - crop, crop : img.shape[1] - crop]
    return y_of(img)[None] if y_channel else img.astype(np.float64).transpose(2, 0, 1)


def ref_psnr(pred: np.ndarray, gt: np.ndarray, crop: int, y_channel: bool) -> float:
    mse = np.mean((planes(pred, crop, y_channel) - planes(gt, crop, y_channel)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def gaussian_filter_valid(x: np.ndarray) -> np.ndarray:
    """Correlation with fspecial('gaussian', 11, 1.5), 'valid' windows only."""
    t = np.arange(11) - 5
    g = np.exp(-(t**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    views = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
    return np.einsum("ijkl,kl->ij", views, window)


def ref_ssim(pred: np.ndarray, gt: np.ndarray, crop: int, y_channel: bool) -> float:
    """Wang et al.'s SSIM_index (K = 0.01, 0.03; L = 255) per plane, mean of the valid map, mean of planes."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for a, b in zip(planes(pred, crop, y_channel), planes(gt, crop, y_channel)):
        mu_a, mu_b = gaussian_filter_valid(a), gaussian_filter_valid(b)
        var_a = gaussian_filter_valid(a * a) - mu_a**2
        var_b = gaussian_filter_valid(b * b) - mu_b**2
        cov = gaussian_filter_valid(a * b) - mu_a * mu_b
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(ssim_map.mean())
    return float(np.mean(values))


def matlab_bicubic_lr(gt: np.ndarray, scale: int) -> np.ndarray:
    """im2uint8(imresize(im2double(gt), 1/scale, 'bicubic')) of a uint8 H x W x 3 image."""
    x = gt.astype(np.float64) / 255.0
    lr = matlab_downscale_axis(matlab_downscale_axis(x, scale, 0), scale, 1)
    return np.rint(np.clip(lr, 0, 1) * 255).astype(np.uint8)


# --- fixtures ---------------------------------------------------------------------------------------------
class Nearest(torch.nn.Module):
    """A stand-in method: nearest-neighbour up-sampling by `scale` (identity at 1); records its inputs."""

    tileable = True

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale, self.inputs = scale, []

    def native_tile(self) -> None:
        return None  # any size

    def restore(self, lq: torch.Tensor, *, size=None, mask=None, progress=False) -> torch.Tensor:
        self.inputs.append(lq.clone())
        return lq.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)


def use_method(monkeypatch, model: torch.nn.Module) -> torch.nn.Module:
    monkeypatch.setattr(evaluate, "load_method", lambda path, args, device: model)
    return model


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 RGB image: a colour ramp plus noise, so PSNR and SSIM are neither 0 nor perfect."""
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = np.stack([4 * yy + 2 * xx, 255 - 3 * xx, 3 * yy + 40], axis=-1).astype(np.float64)
    return np.clip(ramp + rng.normal(0, 12, ramp.shape), 0, 255).astype(np.uint8)


def folder_set(
    root: Path, scale: int, lq_suffix: str = "", grey: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GT images of GT_SIZES (plus a grey one) in root/gt, their LQ (every scale-th pixel of the modcropped
    GT, plus noise) in root/lq named with `lq_suffix`; returns name -> (modcropped GT, LQ) as uint8 RGB."""
    rng = np.random.default_rng(scale)
    sizes = dict(GT_SIZES) | ({"grey": (29, 31)} if grey else {})
    pairs = {}
    for name, (h, w) in sizes.items():
        gt = smooth_image(rng, h, w)
        if name == "grey":
            gt = np.repeat(gt[..., :1], 3, axis=-1)
        save(root / "gt" / f"{name}.png", gt[..., 0] if name == "grey" else gt)
        gt_mod = gt[: h - h % scale, : w - w % scale]
        lq = np.clip(
            gt_mod[::scale, ::scale].astype(int) + rng.integers(-20, 21, gt_mod[::scale, ::scale].shape), 0, 255
        ).astype(np.uint8)
        save(root / "lq" / f"{name}{lq_suffix}.png", lq)
        pairs[name] = (gt_mod, lq)
    return pairs


def nearest(lq: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(lq, scale, axis=0), scale, axis=1)


def run(tmp_path: Path, *args: str) -> int:
    return evaluate.main(
        ["--ckpt", str(tmp_path / "unused.ckpt"), "--out", str(tmp_path / "out"), "--device", "cpu", *args]
    )


# --- tests ------------------------------------------------------------------------------------------------
def test_the_presets_are_the_brief_s_protocols():
    assert set(protocols.PRESETS) == set(SR_PRESETS) | set(SAME_SIZE_PROTOCOLS)
    for name, p in protocols.PRESETS.items():
        scale = int(name[-1]) if name in SR_PRESETS else 1
        crop, y_channel = (scale, True) if name in SR_PRESETS else SAME_SIZE_PROTOCOLS[name]
        assert (p.scale, p.modcrop, p.crop_border, p.y_channel) == (scale, scale, crop, y_channel), name
        assert p.source, name


@pytest.mark.parametrize("name", sorted(protocols.PRESETS))
def test_each_preset_scores_a_folder_set_as_the_numpy_reference_of_its_protocol(name, tmp_path, monkeypatch):
    scale = int(name[-1]) if name in SR_PRESETS else 1
    crop, y_channel = (scale, True) if name in SR_PRESETS else SAME_SIZE_PROTOCOLS[name]
    pairs = folder_set(tmp_path, scale, lq_suffix=f"x{scale}")
    use_method(monkeypatch, Nearest(scale))
    args = [
        "--preset",
        name,
        "--gt",
        str(tmp_path / "gt"),
        "--lq",
        str(tmp_path / "lq"),
        "--lq-suffix",
        f"x{scale}",
        "--no-wandb",
    ]
    assert run(tmp_path, *args) == 0
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert [row["name"] for row in results["images"]] == ["a", "grey", "sub/b"]
    for row in results["images"]:
        gt, lq = pairs[row["name"]]
        pred = nearest(lq, scale)
        assert row["psnr"] == pytest.approx(ref_psnr(pred, gt, crop, y_channel), abs=1e-9)
        assert row["ssim"] == pytest.approx(ref_ssim(pred, gt, crop, y_channel), abs=1e-9)
        assert 5 < row["psnr"] < 40 and 0 < row["ssim"] < 1  # a real score, not a floor or a perfect match
    assert results["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in results["images"]]))
    assert results["mean"]["ssim"] == pytest.approx(np.mean([r["ssim"] for r in results["images"]]))
    assert results["protocol"]["crop_border"] == crop and results["protocol"]["y_channel"] == y_channel


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_without_lq_the_lr_images_are_matlab_bicubic_of_the_modcropped_gt(scale, tmp_path, monkeypatch):
    pairs = folder_set(tmp_path, scale, grey=False)
    model = use_method(monkeypatch, Nearest(scale))
    assert run(tmp_path, "--preset", f"set14_x{scale}", "--gt", str(tmp_path / "gt"), "--no-wandb") == 0
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert "synthetic" in results["settings"]["lq"]
    for lq_seen, row in zip(model.inputs, results["images"]):
        gt = pairs[row["name"]][0]
        expected = matlab_bicubic_lr(gt, scale)
        got = np.rint(lq_seen[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert got.shape == (gt.shape[0] // scale, gt.shape[1] // scale, 3)
        np.testing.assert_array_equal(got, expected)
        assert row["lq"] == "synthetic"
        assert row["psnr"] == pytest.approx(ref_psnr(nearest(expected, scale), gt, scale, True), abs=1e-9)


def test_tiled_restoration_scores_as_whole_images_for_a_local_method(tmp_path, monkeypatch):
    folder_set(tmp_path, 2, grey=False)
    use_method(monkeypatch, Nearest(2))
    common = ["--preset", "urban100_x2", "--gt", str(tmp_path / "gt"), "--no-wandb"]
    assert run(tmp_path, *common) == 0
    whole = json.loads((tmp_path / "out/results.json").read_text())
    model = use_method(monkeypatch, Nearest(2))
    assert run(tmp_path, *common, "--tile", "8", "--overlap", "4", "--tile-batch", "3") == 0
    tiled = json.loads((tmp_path / "out/results.json").read_text())
    assert max(x.shape[-1] for x in model.inputs) == 8  # it was cut into tiles
    assert [r["psnr"] for r in tiled["images"]] == pytest.approx([r["psnr"] for r in whole["images"]], abs=1e-9)
    assert tiled["settings"]["tile"] == 8


def test_a_checkpoint_s_results_json_markdown_images_and_wandb_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    model = small_deqir(operator="sr2")
    ckpt = save_checkpoint(model, tmp_path / "deqir.ckpt")
    rng = np.random.default_rng(0)
    gts = {"baby": smooth_image(rng, 25, 23), "bird": smooth_image(rng, 24, 26)}  # modcrop 2: 24 x 22, 24 x 26
    for name, gt in gts.items():
        save(tmp_path / "gt" / f"{name}.png", gt)
        h, w = gt.shape[0] // 2, gt.shape[1] // 2
        save(tmp_path / "lq" / f"{name}x2.png", smooth_image(rng, h, w))
    out = tmp_path / "out"
    status = evaluate.main(
        [
            "--ckpt",
            str(ckpt),
            "--preset",
            "set5_x2",
            "--gt",
            str(tmp_path / "gt"),
            "--lq",
            str(tmp_path / "lq"),
            "--lq-suffix",
            "x2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--save-images",
        ]
    )
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["preset"], results["method"], results["checkpoint"]) == ("set5_x2", "DeqIR", str(ckpt))
    assert results["protocol"] | {"source": None} == {
        "name": "set5_x2",
        "task": "bicubic SR x2",
        "scale": 2,
        "modcrop": 2,
        "crop_border": 2,
        "y_channel": True,
        "source": None,
    }
    assert results["settings"]["ema"] is True and results["settings"]["tile"] == 0
    for row in results["images"]:
        gt = gts[row["name"]]
        gt = gt[: gt.shape[0] - gt.shape[0] % 2, : gt.shape[1] - gt.shape[1] % 2]
        lq = (
            torch.from_numpy(np.array(Image.open(tmp_path / "lq" / f"{row['name']}x2.png")))
            .permute(2, 0, 1)[None]
            .float()
            / 255
        )
        with torch.no_grad():
            restored = to_uint8_hwc(model.restore(lq)[0].clamp(0, 1))
        assert row["psnr"] == pytest.approx(ref_psnr(restored, gt, 2, True), abs=1e-6)
        assert row["ssim"] == pytest.approx(ref_ssim(restored, gt, 2, True), abs=1e-6)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / f"{row['name']}.png")), restored)
    mean = results["mean"]
    text = (out / "results.md").read_text()
    assert text.startswith("# set5_x2: DeqIR\n")
    assert "PSNR/SSIM on Y (BT.601, MATLAB rgb2ycbcr), GT modcrop 2, 2 px border cropped" in text
    for row in results["images"]:
        assert f"| {row['name']} | {row['psnr']:.2f} | {row['ssim']:.4f} |" in text
    assert text.rstrip().endswith(f"| **mean** | **{mean['psnr']:.2f}** | **{mean['ssim']:.4f}** |")
    assert not [p for p in out.rglob(".*.tmp")]  # atomic writes leave no temporary file

    (run_file,) = offline_runs(out / "wandb")
    key = evaluate.WANDB_TABLE_KEY
    (row,) = [r for r in history(run_file) if f"{key}/_type" in r]  # a logged table: nested keys of its file
    assert row[f"{key}/_type"] == "table-file"
    table = json.loads((run_file.parent / "files" / row[f"{key}/path"]).read_text())
    assert table["columns"] == ["image", "psnr", "ssim"]
    assert table["data"] == [[r["name"], r["psnr"], r["ssim"]] for r in results["images"]]
    (run_record,) = [r.run for r in records(run_file) if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}  # given to wandb.init
    assert (config["preset"], config["method"], config["protocol"]["crop_border"]) == ("set5_x2", "DeqIR", 2)
    assert run_record.project == "ir-lightning"


def test_errors_name_the_bad_preset_folder_or_file(tmp_path, monkeypatch, capsys):
    folder_set(tmp_path, 4, lq_suffix="x4", grey=False)
    use_method(monkeypatch, Nearest(4))
    gt, lq = str(tmp_path / "gt"), str(tmp_path / "lq")

    def error(*args: str) -> str:
        assert run(tmp_path, *args, "--no-wandb") == 2
        return capsys.readouterr().err

    assert "--preset set5_x8: no such preset; presets: set5_x2, set5_x3, set5_x4" in error(
        "--preset", "set5_x8", "--gt", gt
    )
    assert f"--gt {tmp_path / 'nowhere'}: no such folder" in error(
        "--preset", "set5_x4", "--gt", str(tmp_path / "nowhere")
    )
    assert "--preset gopro (motion deblurring) needs --lq" in error("--preset", "gopro", "--gt", gt)
    message = error("--preset", "set5_x4", "--gt", gt, "--lq", lq)  # names are babyx4-style, no --lq-suffix
    assert f"no LQ image named like the GT {tmp_path / 'gt/a.png'}" in message and "--lq-suffix x4" in message
    save(tmp_path / "lq/c_x4.png", np.zeros((8, 8, 3), np.uint8))
    assert f"no GT image in {gt} for {tmp_path / 'lq/c_x4.png'}" in error(
        "--preset", "set5_x4", "--gt", gt, "--lq", lq, "--lq-suffix", "x4"
    )
    (tmp_path / "lq/c_x4.png").unlink()
    save(tmp_path / "lq/ax4.png", np.zeros((10, 8, 3), np.uint8))
    message = error("--preset", "set5_x4", "--gt", gt, "--lq", lq, "--lq-suffix", "x4")
    assert (
        f"{tmp_path / 'lq/ax4.png'}: 10 x 8 pixels, but {tmp_path / 'gt/a.png'} cropped to a multiple of 4 is 36 x 32"
        in message
    )
    assert "must be 9 x 8" in message
    assert "a: the restored image is (72, 68) but its GT is (36, 34)" in error(
        "--preset", "set5_x2", "--gt", gt
    )  # an x4 model
    save(tmp_path / "gt/tiny.png", np.zeros((18, 17, 3), np.uint8))  # 16 x 16 once modcropped, 8 x 8 after the crop
    assert f"{tmp_path / 'gt/tiny.png'}: SSIM needs at least 11 x 11 pixels after cropping" in error(
        "--preset", "set5_x4", "--gt", gt
    )
    (tmp_path / "gt/tiny.png").unlink()
    (tmp_path / "gt/a.png").write_bytes(b"not an image")
    assert f"{tmp_path / 'gt/a.png'}: not an image file" in error("--preset", "set5_x4", "--gt", gt)
    assert not (tmp_path / "out/results.json").exists()


def test_the_cli_dispatches_evaluate(capsys):
    from ir_lightning.cli import main

    assert main(["evaluate", "--presets"]) == 0
    listed = capsys.readouterr().out
    assert "set5_x4" in listed and "rain100h" in listed


def test_lpips_from_local_weight_files_or_reported_as_skipped(tmp_path, monkeypatch, capsys):
    from tests.metrics.test_lpips import alexnet_state, as_numpy, lin_state, ref_lpips, weight_files

    monkeypatch.setenv("WANDB_MODE", "offline")
    backbone, linear = weight_files(tmp_path / "weights")  # random weights in torchvision's and lpips' formats
    rng = np.random.default_rng(3)
    pairs = {}
    for name, (h, w) in {"baby": (39, 36), "bird": (42, 40)}.items():  # modcrop 2 and 2 px cropped: >= 31 px left
        gt = smooth_image(rng, h, w)[: h - h % 2, : w - w % 2]
        lq = smooth_image(rng, gt.shape[0] // 2, gt.shape[1] // 2)
        pairs[name] = (save(tmp_path / "gt" / f"{name}.png", gt), gt, save(tmp_path / "lq" / f"{name}.png", lq), lq)
    use_method(monkeypatch, Nearest(2))
    common = ["--preset", "set5_x2", "--gt", str(tmp_path / "gt"), "--lq", str(tmp_path / "lq")]

    def error(*args: str) -> str:
        assert run(tmp_path, *common, *args, "--no-wandb") == 2
        return capsys.readouterr().err

    assert "--lpips-backbone needs --lpips-linear too" in error("--lpips-backbone", str(backbone))
    assert "--lpips-linear needs --lpips-backbone too" in error("--lpips-linear", str(linear))
    message = error("--lpips-backbone", str(linear), "--lpips-linear", str(backbone))  # the two files swapped
    assert (
        f"LPIPS weights: {linear}: not torchvision's AlexNet weights" in message
        and "missing keys features.0.weight" in message
    )
    assert not (tmp_path / "out/results.json").exists()

    assert run(tmp_path, *common, "--lpips-backbone", str(backbone), "--lpips-linear", str(linear)) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["lpips"]["backbone"] == str(backbone) and results["lpips"]["linear"] == str(linear)
    ref_backbone, ref_lins = as_numpy(alexnet_state(0)), as_numpy(lin_state(1))
    for row in results["images"]:
        _, gt, _, lq = pairs[row["name"]]
        pred = nearest(lq, 2)
        cropped = [img[2:-2, 2:-2].astype(np.float64).transpose(2, 0, 1) / 255 for img in (pred, gt)]
        assert row["lpips"] == pytest.approx(ref_lpips(*cropped, ref_backbone, ref_lins), abs=1e-5)
        assert row["psnr"] == pytest.approx(ref_psnr(pred, gt, 2, True), abs=1e-9)  # PSNR/SSIM as before
    mean = results["mean"]
    assert mean["lpips"] == pytest.approx(np.mean([r["lpips"] for r in results["images"]])) and mean["lpips"] > 0
    text = (out / "results.md").read_text()
    assert "| image | PSNR (dB) | SSIM | LPIPS |" in text and "skipped" not in text
    assert f"- LPIPS (v0.1, AlexNet, RGB, same crop): mean {mean['lpips']:.4f}; backbone `{backbone}`" in text
    for row in results["images"]:
        assert f"| {row['name']} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['lpips']:.4f} |" in text
    assert text.rstrip().endswith(
        f"| **mean** | **{mean['psnr']:.2f}** | **{mean['ssim']:.4f}** | **{mean['lpips']:.4f}** |"
    )
    (run_file,) = offline_runs(out / "wandb")
    key = evaluate.WANDB_TABLE_KEY
    (row,) = [r for r in history(run_file) if f"{key}/_type" in r]
    table = json.loads((run_file.parent / "files" / row[f"{key}/path"]).read_text())
    assert table["columns"] == ["image", "psnr", "ssim", "lpips"]
    assert table["data"] == [[r["name"], r["psnr"], r["ssim"], r["lpips"]] for r in results["images"]]
    assert f"LPIPS {mean['lpips']:.4f}" in capsys.readouterr().out

    assert run(tmp_path, *common, "--no-wandb") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["lpips"] == "skipped (no weights given)"
    assert all("lpips" not in row for row in results["images"]) and set(results["mean"]) == {"psnr", "ssim"}
    text = (out / "results.md").read_text()
    assert "- LPIPS: skipped (no weights given)\n" in text and "| image | PSNR (dB) | SSIM |\n" in text

    save(tmp_path / "small/baby.png", pairs["baby"][1][:34, :34])  # 30 x 30 once 2 px are cropped
    save(tmp_path / "small_lq/baby.png", pairs["baby"][3][:17, :17])
    weights = ["--lpips-backbone", str(backbone), "--lpips-linear", str(linear)]
    message = error("--gt", str(tmp_path / "small"), "--lq", str(tmp_path / "small_lq"), *weights)
    assert (
        f"{tmp_path / 'small/baby.png'}: LPIPS (AlexNet) needs images of at least 31 x 31 pixels, got 30 x 30"
        in message
    )


def test_fid_from_a_local_weight_file_or_reported_as_skipped(tmp_path, monkeypatch, capsys):
    from ir_lightning.metrics.fid import InceptionFID
    from tests.metrics.test_fid import inception_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    weights = inception_file(tmp_path / "weights")  # random weights in torch-fidelity's file format
    rng = np.random.default_rng(4)
    pairs = {}
    for name, (h, w) in {"baby": (30, 26), "bird": (24, 34)}.items():
        gt = smooth_image(rng, h, w)
        pairs[name] = (
            save(tmp_path / "gt" / f"{name}.png", gt),
            gt,
            save(tmp_path / "lq" / f"{name}.png", gt[::2, ::2]),
            gt[::2, ::2],
        )
    use_method(monkeypatch, Nearest(2))
    common = ["--preset", "set5_x2", "--gt", str(tmp_path / "gt"), "--lq", str(tmp_path / "lq")]
    out = tmp_path / "out"

    assert run(tmp_path, *common, "--fid-weights", str(weights)) == 0
    results = json.loads((out / "results.json").read_text())
    # reference: the features of the 2 px-cropped uint8 images, and the Frechet distance of N = 2 samples in closed
    # form: with centred samples X (N x D), S = X^T X / (N - 1) and tr((S1 S2)^(1/2)) is the nuclear norm of
    # X1 X2^T / (N - 1) (the nonzero eigenvalues of S1 S2 are those of the N x N product)
    network = InceptionFID.from_file(weights)
    features = []
    for name in sorted(pairs):
        _, gt, _, lq = pairs[name]
        batch = np.stack([nearest(lq, 2)[2:-2, 2:-2], gt[2:-2, 2:-2]]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            features.append(network(torch.from_numpy(batch).float() / 255).double().numpy())
    restored, target = (np.stack([f[k] for f in features]) for k in (0, 1))
    x1, x2 = restored - restored.mean(0), target - target.mean(0)
    n = len(pairs)
    expected = (
        np.sum((restored.mean(0) - target.mean(0)) ** 2)
        + (np.sum(x1**2) + np.sum(x2**2)) / (n - 1)
        - 2 * np.linalg.norm(x1 @ x2.T, "nuc") / (n - 1)
    )
    assert results["fid"] == pytest.approx(expected, rel=1e-4) and results["fid"] > 0
    assert results["fid_weights"] == str(weights)
    assert results["fid_warning"].startswith("FID on 2 images: a covariance of 2048-d features needs at least 2049")
    text = (out / "results.md").read_text()
    assert (
        f"- FID (Inception-v3 pool features, restored vs GT set, RGB, same crop): {results['fid']:.4f}; weights `{weights}`"
        in text
    )
    assert f"- warning: {results['fid_warning']}\n" in text
    (run_file,) = offline_runs(out / "wandb")
    summary = {
        i.key: json.loads(i.value_json)
        for r in records(run_file)
        if r.WhichOneof("record_type") == "summary"
        for i in r.summary.update
    }
    assert (
        summary["eval/fid"] == pytest.approx(results["fid"]) and summary["eval/fid_warning"] == results["fid_warning"]
    )
    captured = capsys.readouterr()
    assert f"FID {results['fid']:.4f}" in captured.out and "warning: FID on 2 images" in captured.err

    assert run(tmp_path, *common, "--no-wandb") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["fid"] == "skipped (no weights given)" and "fid_warning" not in results
    assert "- FID: not computed (no --fid-weights given)\n" in (out / "results.md").read_text()

    bad = save(tmp_path / "not-inception.png", pairs["baby"][1])
    assert run(tmp_path, *common, "--no-wandb", "--fid-weights", str(bad)) == 2
    assert f"FID weights: {bad}: not a PyTorch weights file" in capsys.readouterr().err
