"""RDDM through the real command line: the x4 SR recipe with its CPU demo overlay trains a few
steps (EMA every 10 steps, 2-step sampling at validation), then validates from its checkpoint;
every recipe of the method parses and builds."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.test_cli import data_args, load, run

pytestmark = pytest.mark.slow

RDDM = [
    "-c",
    str(REPO / "recipes/rddm_sr_x4.yaml"),
    "-c",
    str(REPO / "recipes/demo/rddm_sr_x4_cpu.yaml"),
    "-c",
    str(REPO / "tests/configs/rddm_tiny.yaml"),
    "-c",
    str(REPO / "tests/configs/quiet.yaml"),
]


def test_demo_overlay_trains_samples_and_validates(tmp_path, sr_shards):
    run(["fit", *RDDM, *data_args(sr_shards)], tmp_path)
    last = tmp_path / "runs/rddm_sr_x4_demo/checkpoints/last.ckpt"
    ckpt = load(last)
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["_class_path"] == "ir_lightning.methods.RDDM"
    assert ckpt["hyper_parameters"]["schedule"]["sum_scale"] == 0.01
    assert int(ckpt["averaging_state"]["n_averaged"]) == 1  # EMA updated at step 0 only (every 10 steps)
    done = run(["validate", *RDDM, *data_args(sr_shards), f"--ckpt_path={last}"], tmp_path)
    assert "val/psnr" in done.stdout + done.stderr
