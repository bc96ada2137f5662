"""`ir-lightning demo`'s evaluation (issue 21): every shipped model restores the held-out photos of its task, a table
per task (one row per model and baseline, finite figures, "vs baseline" the PSNR difference to the task's baseline)
printed and written to results.md and results.json, and one comparison image with a titled block per task; a missing
checkpoint is named with docs/models.md. The models are tiny stand-ins built here, exported in the shipped form
(`export --half`); the photos are 2 of the held-out ones at 32 x 32. Also `titled_grid`, the comparison's grid of
panels with column titles."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_module
from PIL import Image

from ir_lightning.class_paths import allowed_class
from ir_lightning.commands import demo
from ir_lightning.commands.export import export_weights
from ir_lightning.degradations.resize import bicubic_upsample
from ir_lightning.metrics.psnr_ssim import psnr_per_image
from ir_lightning.shipped import SHIPPED
from ir_lightning.training.image_grid import TITLE_PAD, title_band_height, titled_grid
from tests.helpers.checkpoints import TINY_UNET_ARGS as TINY_UNET
from tests.helpers.checkpoints import net_spec as net

REPO = Path(__file__).resolve().parents[2]
UNET = "ir_lightning.nets.unet.UNet"
CPEN = "ir_lightning.nets.diffir.CPEN"
DIRFORMER = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 1, 1], "ipr_dim": 32}
SCHEDULE = {"kind": "linear", "n_steps": 100, "linear_start": 1e-4, "linear_end": 0.02}
CROP = 32
PHOTOS = ("astronaut", "coffee")


STAND_INS = {
    "sr3_x4": {
        "_class_path": "ir_lightning.methods.SR3",
        "scale": 4,
        "net": net(UNET, in_channels=6, **TINY_UNET),
        "sampling": {"steps": 2, "sampler": "ddim"},
    },
    "rddm_x4": {
        "_class_path": "ir_lightning.methods.RDDM",
        "scale": 4,
        "net": net("ir_lightning.nets.rddm.TwoUNets", **TINY_UNET),
        "sampling": {"steps": 2},
    },
    "diffir_x4": {
        "_class_path": "ir_lightning.methods.DiffIRS2",
        "scale": 4,
        "restorer": net("ir_lightning.nets.diffir.DIRformer", scale=4, **DIRFORMER),
        "cpen_s1": net(CPEN, scale=4, with_gt=True, res_blocks=1, features=8),
        "cpen_s2": net(CPEN, scale=4, with_gt=False, res_blocks=1, features=8),
        "denoiser": net("ir_lightning.nets.diffir.IPRDenoiser", ipr_dim=32),
    },
    "deqir_x4": {
        "_class_path": "ir_lightning.methods.DeqIR",
        "net": net(UNET, in_channels=3, **TINY_UNET),
        "operator": "bicubic4",
        "train_schedule": SCHEDULE,
        "sampling": {"steps": 2, "sampler": "ddim", "clip": False, "solver": {"method": "sequential"}},
    },
    "da_denoise": {
        "_class_path": "ir_lightning.methods.DenoisingAsAdaptation",
        "restorer": net("ir_lightning.nets.restorer.ResidualUNet", width=8, depth=2),
        "diffusion": net(UNET, in_channels=9, **TINY_UNET),
    },
}
"""A tiny untrained network of each shipped model's method, as LightningCLI records it (networks as class paths)."""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """The shipped models' files, of tiny stand-ins: a training checkpoint each, exported as the package ships them."""
    folder = tmp_path_factory.mktemp("assets")
    assert sorted(STAND_INS) == sorted(m.name for m in SHIPPED)
    for seed, (name, settings) in enumerate(STAND_INS.items()):
        torch.manual_seed(seed)
        module = instantiate_module(allowed_class(settings["_class_path"]), copy.deepcopy(settings))
        checkpoint = {
            "state_dict": module.state_dict(),
            "current_model_state": module.state_dict(),
            "hyper_parameters": {**settings, "_instantiator": "lightning.pytorch.cli.instantiate_module"},
            "pytorch-lightning_version": lightning.__version__,
        }
        torch.save(checkpoint, folder / f"{name}_last.ckpt")
        export_weights(folder / f"{name}_last.ckpt", folder / f"{name}.ckpt", half=True)
    return folder


def shrink(patch: pytest.MonkeyPatch) -> None:
    """The demo on 2 held-out photos at 32 x 32 and one training photo (its shards are written anyway)."""
    patch.setattr(demo, "HELD_OUT_PHOTOS", PHOTOS)
    patch.setattr(demo, "TRAIN_PHOTOS", ("rocket",))
    patch.setattr(demo, "stereo_pngs", lambda: [])
    patch.setattr(demo, "VAL_CROP", CROP)


@pytest.fixture
def small_photos(monkeypatch):
    shrink(monkeypatch)


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    """`ir-lightning demo --no-train` with the stand-ins: (exit status, what it printed, its output folder)."""
    out = tmp_path_factory.mktemp("demo_out")
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as printed:
        shrink(patch)
        status = demo.main(["--no-train", "--assets", str(assets), "--out", str(out)])
    return status, printed.getvalue(), out


def rows_of(results: dict, task: str) -> dict[str, dict]:
    return {row["name"]: row for row in results["tasks"][task]["rows"]}


def test_every_shipped_model_and_baseline_is_a_row_with_finite_figures_and_its_gain_over_the_baseline(run):
    status, printed, out = run
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    sr, noise = rows_of(results, "sr_x4"), rows_of(results, "camera_noise")
    assert list(sr) == ["bicubic", "A^+ y (bicubic4)", "SR3", "RDDM", "DiffIR (stage 2)", "DeqIR"]
    assert list(noise) == ["noisy input", "Denoising as Adaptation"]
    assert [r["kind"] for r in sr.values()] == ["baseline", "baseline", "model", "model", "model", "model"]
    for task, rows in (("sr_x4", sr), ("camera_noise", noise)):
        baseline = rows[results["tasks"][task]["baseline"]]
        for row in rows.values():
            assert list(row["psnr"]) == list(PHOTOS) and list(row["ssim"]) == list(PHOTOS)
            figures = [*row["psnr"].values(), *row["ssim"].values(), *row["color_error"].values()]
            figures += [row["psnr_mean"], row["ssim_mean"], row["color_error_mean"], row["seconds_per_image"]]
            assert all(math.isfinite(x) for x in figures), row["name"]
            assert row["psnr_mean"] == pytest.approx(np.mean(list(row["psnr"].values())), abs=1e-12)
            assert row["vs_baseline_db"] == pytest.approx(row["psnr_mean"] - baseline["psnr_mean"], abs=1e-12)
        assert baseline["vs_baseline_db"] == 0.0
    assert sr["DeqIR"]["vs_compared_db"] == pytest.approx(
        sr["DeqIR"]["psnr_mean"] - sr["A^+ y (bicubic4)"]["psnr_mean"], abs=1e-12
    )
    assert sr["SR3"]["shipped"] == "sr3_x4" and sr["SR3"]["sampling"]["steps"] == 2  # its own settings
    assert results["tasks"]["sr_x4"]["protocol"]["crop_border"] == 4
    assert results["tasks"]["camera_noise"]["protocol"]["crop_border"] == 0


def test_the_baselines_scores_are_the_protocol_s_on_the_photos_the_models_restored(run):
    _, _, out = run
    results = json.loads((out / "results.json").read_text())
    pattern = str(out / "shards" / "val-000000.tar")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "VAL_CROP", CROP)
        batches = demo.held_out_batches(pattern, "sr_x4")
        noisy = demo.held_out_batches(pattern, "camera_noise")
    for b, n in zip(batches, noisy):
        key = b["__key__"][0]
        assert b["lq"].shape[-1] == CROP // 4 and n["lq"].shape == n["gt"].shape == b["gt"].shape
        up = bicubic_upsample(b["lq"], (CROP, CROP)).clamp(0, 1)
        assert rows_of(results, "sr_x4")["bicubic"]["psnr"][key] == pytest.approx(
            psnr_per_image(up, b["gt"], 4, True).item(), abs=1e-9
        )
        assert rows_of(results, "camera_noise")["noisy input"]["psnr"][key] == pytest.approx(
            psnr_per_image(n["lq"], n["gt"], 0, True).item(), abs=1e-9
        )
    scores, _ = demo.evaluate(batches, {"bicubic": demo.bicubic})  # the restorer-by-restorer form bench/ uses
    assert scores["bicubic"]["psnr"] == list(rows_of(results, "sr_x4")["bicubic"]["psnr"].values())
    assert demo.table(scores, list(PHOTOS)).splitlines()[-1].startswith("bicubic ")


def test_the_camera_noise_is_the_da_recipe_s_validation_noise_drawn_the_same_every_run(small_photos, tmp_path):
    recipe = yaml.safe_load((REPO / "recipes/demo/da_denoise_cpu.yaml").read_text())["data"]["init_args"]["real"]
    pipeline = recipe["init_args"]["degradation"]["init_args"]
    (step,) = pipeline["steps"]
    assert step["class_path"].endswith("CameraNoise") and pipeline["quantize"] is True
    assert {k: tuple(v) for k, v in step["init_args"].items()} == demo.CAMERA_NOISE
    assert recipe["init_args"]["seed"] == demo.CAMERA_NOISE_SEED
    pattern = demo.build_shards(tmp_path)["val"]
    first, second = (demo.held_out_batches(pattern, "camera_noise") for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a["lq"], b["lq"])
        assert torch.equal(a["lq"] * 255, (a["lq"] * 255).round())  # 8-bit levels
        assert 5 / 255 < float((a["lq"] - a["gt"]).std()) < 60 / 255  # noise, of a camera's strength


def test_the_table_is_printed_and_written_with_the_same_figures(run):
    _, printed, out = run
    results = json.loads((out / "results.json").read_text())
    written = (out / "results.md").read_text()
    for task in results["tasks"].values():
        for row in task["rows"]:
            figures = [f"{row['psnr'][k]:.2f}" for k in PHOTOS]
            figures += [f"{row['psnr_mean']:.2f}", f"{row['ssim_mean']:.4f}", f"{row['color_error_mean']:.2f}"]
            figures += [f"{row['vs_baseline_db']:+.2f}"]
            for text in (printed, written):
                (line,) = [x for x in text.splitlines() if x.startswith(f"| {row['name']} ")]
                cells = [c.strip() for c in line.strip("|").split("|")]
                assert cells[1:6] + cells[-1:] == figures, line
    assert "Demo finished in" in printed.splitlines()[-1]
    assert "DeqIR vs A^+ y (bicubic4)" in written


def test_the_comparison_has_a_titled_block_per_task_of_a_column_per_row_and_a_row_per_photo(run):
    _, _, out = run
    image = np.asarray(Image.open(out / "comparison.png").convert("RGB"))
    band, gap = title_band_height(), 4
    sr_columns = 1 + 6 + 1  # LR (nearest) | bicubic, A^+ y, SR3, RDDM, DiffIR, DeqIR | HR
    noise_columns = 1 + 1 + 1  # noisy input | DA | clean
    block_height = 2 * band + len(PHOTOS) * CROP + (len(PHOTOS) - 1) * gap
    assert image.shape == (2 * block_height + demo.BLOCK_GAP, sr_columns * CROP + (sr_columns - 1) * gap, 3)
    for top, columns in ((0, sr_columns), (block_height + demo.BLOCK_GAP, noise_columns)):
        assert (image[top : top + band] < 128).any()  # the heading
        for j in range(columns):
            title = image[top + band : top + 2 * band, j * (CROP + gap) : j * (CROP + gap) + CROP]
            assert (title < 128).any(), f"no title drawn over column {j}"
    hr = image[2 * band : 2 * band + CROP, (sr_columns - 1) * (CROP + gap) :]
    lr = image[2 * band : 2 * band + CROP, :CROP]
    assert hr.std() > 10 and float(np.abs(hr.astype(float) - lr).mean()) > 1  # photos, the LR coarser than the HR
    assert (image[block_height : block_height + demo.BLOCK_GAP] == 255).all()  # white between the blocks


def test_a_missing_checkpoint_is_named_with_the_models_document_and_nothing_is_restored(small_photos, tmp_path, capsys):
    assert demo.main(["--no-train", "--assets", str(tmp_path), "--models", "sr3_x4", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "sr3_x4.ckpt") in err and "docs/models.md" in err
    assert not (tmp_path / "shards").exists() and not (tmp_path / "results.json").exists()
    with pytest.raises(SystemExit) as done:
        demo.main(["--models", "sr3_x4,nope"])
    assert done.value.code == 2 and "no shipped model nope; shipped: sr3_x4" in capsys.readouterr().err


def test_models_chooses_which_are_shown(assets, small_photos, tmp_path, capsys):
    args = ["--no-train", "--assets", str(assets), "--models", "da_denoise", "--out", str(tmp_path)]
    assert demo.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["tasks"]) == ["camera_noise"]
    assert [r["name"] for r in results["tasks"]["camera_noise"]["rows"]] == ["noisy input", "Denoising as Adaptation"]


# --- titled_grid -------------------------------------------------------------------------------------------------
def flat(colour: tuple[float, float, float], height: int, width: int) -> torch.Tensor:
    return torch.tensor(colour).view(3, 1, 1).expand(3, height, width).clone()


def test_titled_grid_puts_each_panel_at_its_cell_and_draws_each_title_over_its_column():
    red, green, blue, grey = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5)
    rows = [
        [flat(red, 20, 30), flat(green, 20, 10), flat(blue, 12, 40)],
        [flat(grey, 24, 30)[:1], flat(red, 24, 16), flat(green, 24, 40)],  # a grey panel; a taller row
    ]
    grid = titled_grid(rows, ["a long title cut at its column", "", "HR"], heading="x4 SR", gap=2)
    band = title_band_height()
    widths, heights, lefts = [30, 16, 40], [20, 24], [0, 32, 50]
    assert grid.shape == (3, 2 * band + 20 + 2 + 24, 30 + 2 + 16 + 2 + 40)
    image = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    tops = [2 * band, 2 * band + 20 + 2]
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            h, w = panel.shape[-2:]
            cell = image[tops[i] : tops[i] + heights[i], lefts[j] : lefts[j] + widths[j]]
            expected = np.rint(panel.expand(3, -1, -1)[:, 0, 0].numpy() * 255)
            assert (cell[:h, :w] == expected).all(), (i, j)
            assert (cell[h:] == 255).all() and (cell[:, w:] == 255).all()  # the rest of the cell is white
    titles = image[band : 2 * band]
    assert (titles[:, :30] < 128).any() and (titles[:, 50:] < 128).any()  # drawn
    assert (titles[:, 30:50] == 255).all()  # the long title is cut at its column, the empty one left blank
    assert (image[:band] < 128).any() and (image[:TITLE_PAD] == 255).all()  # the heading, with its margin
    with pytest.raises(ValueError, match="one per title"):
        titled_grid(rows, ["a", "b"])


def test_titled_grid_without_a_heading_has_one_title_band():
    grid = titled_grid([[flat((0.0, 0.0, 0.0), 8, 8)]], ["t"], gap=4)
    assert grid.shape == (3, title_band_height() + 8, 8)
    assert float(grid[:, -8:].max()) == 0.0  # the panel right below the title band


def test_the_model_just_trained_is_a_row_of_its_own_with_eval_trained(run, assets, small_photos, tmp_path):
    _, _, out = run
    pattern = str(out / "shards" / "val-000000.tar")
    results = demo.evaluate_shipped(pattern, [], assets, tmp_path, trained=assets / "sr3_x4_last.ckpt")
    assert list(results["tasks"]) == ["sr_x4"]
    bicubic, trained = results["tasks"]["sr_x4"]["rows"]
    assert (bicubic["name"], trained["name"]) == ("bicubic", "SR3 (this run)")
    assert trained["vs_baseline_db"] == pytest.approx(trained["psnr_mean"] - bicubic["psnr_mean"], abs=1e-12)
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "results.md").is_file()
