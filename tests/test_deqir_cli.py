"""DeqIR through the real command line: the demo overlay trains the prior a few steps and restores at
validation with the parallel solver; `validate` from the checkpoint with another operator and the
sequential chain; `restore` on image files with an operator chosen on the command line gives what
the module restores; the recipe parses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ir_lightning.io.wandb_records import history, offline_runs
from ir_lightning.methods.deqir import DeqIR
from ir_lightning.training.image_grid import to_uint8_hwc
from tests.conftest import REPO
from tests.test_cli import data_args, load, run

pytestmark = pytest.mark.slow

DEQIR = [
    "-c",
    str(REPO / "recipes/deqir_faces64.yaml"),
    "-c",
    str(REPO / "recipes/demo/deqir_cpu.yaml"),
    "-c",
    str(REPO / "tests/configs/deqir_tiny.yaml"),
]


def test_demo_overlay_trains_the_prior_and_restores_in_parallel(tmp_path, sr_shards):
    run(["fit", *DEQIR, *data_args(sr_shards)], tmp_path)
    last = tmp_path / "runs/deqir_demo/checkpoints/last.ckpt"
    ckpt = load(last)
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["_class_path"] == "ir_lightning.methods.DeqIR"
    assert (
        ckpt["hyper_parameters"]["operator"] == "sr4"
        and ckpt["hyper_parameters"]["sampling"]["solver"]["method"] == "anderson"
    )
    rows = [row for run_dir in offline_runs(tmp_path / "runs/deqir_demo") for row in history(run_dir)]
    solved = [row for row in rows if "val/solver_iterations" in row]
    assert solved and 1 <= solved[-1]["val/solver_iterations"] <= 8  # the overlay's cap
    stopped = solved[-1]["val/solver_stopped_by_tolerance"]  # 1 when the tolerance ended the solve, else 0
    assert stopped == 1.0 or (stopped == 0.0 and solved[-1]["val/solver_iterations"] == 5)  # else T = 5 did
    assert any(row.get("val/psnr", 0) > 0 for row in rows)
    done = run(
        [
            "validate",
            *DEQIR,
            *data_args(sr_shards),
            f"--ckpt_path={last}",
            "--model.init_args.operator=inpaint_box",
            "--model.init_args.sampling.solver.method=sequential",
        ],
        tmp_path,
    )
    assert "val/psnr" in done.stdout + done.stderr
    # the flags won over the checkpoint's settings: the sequential solver logs no solver iterations, and the
    # run's saved config names the operator asked for
    assert "val/solver_iterations" not in done.stdout
    configs = sorted((tmp_path / "runs/deqir_demo").rglob("config*.yaml"), key=lambda p: p.stat().st_mtime)
    saved = yaml.safe_load(configs[-1].read_text())  # the validate run's (a config-<id>.yaml beside the fit's)
    assert saved["model"]["init_args"]["operator"] == "inpaint_box", [p.name for p in configs]
    restore_files_with_the_checkpoint(last, tmp_path)


def restore_files_with_the_checkpoint(ckpt, tmp_path):
    inputs, out = tmp_path / "lq", tmp_path / "restored"
    inputs.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(inputs / f"{i}.png")
    done = run(
        [
            "restore",
            "--ckpt",
            str(ckpt),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--method",
            "deqir",
            "--operator",
            "sr4",
            "--sampler",
            "picard",
        ],
        tmp_path,
    )
    assert "2 restored, 0 skipped (already there), 0 failed" in done.stdout
    assert "deq picard" in done.stderr  # the solver's progress bar, per iteration
    sampling = DeqIR.upgrade_hyperparameters(torch.load(ckpt, weights_only=True)["hyper_parameters"])["sampling"]
    sampling["solver"]["method"] = "picard"
    model = DeqIR.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, operator="sr4", sampling=sampling
    ).eval()
    for i, image in enumerate(pixels):
        with torch.no_grad():
            expected = to_uint8_hwc(model.restore(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0])
        written = np.asarray(Image.open(out / f"{i}.png"))
        assert written.shape == (32, 32, 3)
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1  # one process vs another: 1 level
