"""End to end through the real command line, in subprocesses, in tmp_path: fit, resume from
last.ckpt with optimizer and EMA state, validate/test/predict, --print_config, a second run in
the same directory, the W&B offline run's records, and clear errors for bad shard patterns."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ir_lightning.io.wandb_records import config as wandb_config
from ir_lightning.io.wandb_records import history, metric_definitions
from tests.conftest import REPO
from tests.processes import run_group

pytestmark = pytest.mark.slow

RECIPE = [
    "-c",
    str(REPO / "recipes/sr3_x4.yaml"),
    "-c",
    str(REPO / "recipes/demo/sr3_x4_cpu.yaml"),
    "-c",
    str(REPO / "tests/configs/sr3_tiny.yaml"),
]


def run(
    args: list[str], cwd: Path, timeout: float = 240, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(REPO), **(env or {}))
    proc = run_group([sys.executable, "-m", "ir_lightning", *args], cwd=cwd, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc


def data_args(shards: dict[str, str]) -> list[str]:
    return [f"--data.init_args.train_shards={shards['train']}", f"--data.init_args.val_shards={shards['val']}"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def adam_steps(ckpt: dict) -> set[int]:
    return {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, sr_shards) -> Path:
    """A 4-step run (validation at step 4) whose directory later tests read."""
    cwd = tmp_path_factory.mktemp("run")
    run(["fit", *RECIPE, *data_args(sr_shards)], cwd)
    return cwd


def test_fit_writes_last_checkpoint_with_ema_and_optimizer_state(first_run):
    ckpt = load(first_run / "runs/sr3_x4_demo/checkpoints/last.ckpt")
    assert ckpt["global_step"] == 4
    assert adam_steps(ckpt) == {4}
    assert int(ckpt["averaging_state"]["n_averaged"]) == 4  # EMA updated after every step
    # state_dict holds the EMA weights, current_model_state the raw ones: they differ after 4 steps
    key = "net.head.weight"
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    assert ckpt["hyper_parameters"]["_class_path"] == "ir_lightning.methods.SR3"


def test_resume_continues_from_the_step_with_optimizer_and_ema_restored(first_run, sr_shards, tmp_path):
    work = tmp_path / "resume"
    shutil.copytree(first_run / "runs", work / "runs")
    last = work / "runs/sr3_x4_demo/checkpoints/last.ckpt"
    before = load(last)
    run(["fit", *RECIPE, *data_args(sr_shards), "--trainer.max_steps=7", f"--ckpt_path={last}"], work)
    after = load(last)
    assert after["global_step"] == 7
    assert adam_steps(after) == {7}  # a fresh optimizer would count 3
    assert int(after["averaging_state"]["n_averaged"]) == 7  # a fresh EMA would count 3
    assert after["lr_schedulers"][0]["last_epoch"] == 7
    assert not torch.equal(before["state_dict"]["net.head.weight"], after["state_dict"]["net.head.weight"])


def test_validate_test_and_predict_from_the_checkpoint(first_run, sr_shards, tmp_path):
    last = first_run / "runs/sr3_x4_demo/checkpoints/last.ckpt"
    common = [*RECIPE, *data_args(sr_shards), f"--ckpt_path={last}"]
    out = run(["validate", *common], tmp_path).stdout
    assert "val/psnr" in out and "val/ssim" in out
    out = run(["test", *common, f"--data.init_args.test_shards={sr_shards['val']}"], tmp_path).stdout
    assert "test/psnr" in out
    pred_dir = tmp_path / "pred"
    run(
        [
            "predict",
            *common,
            f"--data.init_args.predict_shards={sr_shards['val']}",
            "--trainer.callbacks+=ir_lightning.callbacks.PredictionWriter",
            f"--trainer.callbacks.output_dir={pred_dir}",
        ],
        tmp_path,
    )
    written = sorted(p.name for p in pred_dir.iterdir())
    assert written == ["v0.png", "v1.png"]


def test_print_config_is_complete_and_reusable(sr_shards, tmp_path):
    printed = run(["fit", *RECIPE, *data_args(sr_shards), "--print_config"], tmp_path).stdout
    config = yaml.safe_load(printed)
    assert config["model"]["class_path"] == "ir_lightning.methods.SR3"
    assert config["model"]["init_args"]["net"]["init_args"]["base_channels"] == 16  # overlay applied
    assert config["model"]["init_args"]["train_schedule"]["n_steps"] == 2000  # recipe kept
    assert config["data"]["init_args"]["degradation"]["init_args"]["steps"][0]["init_args"]["scale"] == 4
    (tmp_path / "printed.yaml").write_text(printed)
    again = run(["fit", "-c", "printed.yaml", "--print_config"], tmp_path).stdout
    assert again == printed


def test_a_second_run_in_the_same_directory_keeps_both_configs(first_run, sr_shards):
    run(["fit", *RECIPE, *data_args(sr_shards), "--trainer.max_steps=2", "--trainer.val_check_interval=2"], first_run)
    configs = sorted(p.name for p in (first_run / "runs/sr3_x4_demo").glob("config*.yaml"))
    assert "config.yaml" in configs and len(configs) == 2, configs
    texts = [yaml.safe_load((first_run / "runs/sr3_x4_demo" / n).read_text()) for n in configs]
    assert {t["trainer"]["max_steps"] for t in texts} == {4, 2}


def test_wandb_offline_run_holds_metrics_config_images_and_summaries(first_run):
    files = glob.glob(str(first_run / "runs/sr3_x4_demo/wandb/offline-run-*/run-*.wandb"))
    assert files, "no offline W&B run written"
    path = Path(sorted(files)[0])
    rows = history(path)
    logged = {k for row in rows for k in row}
    assert {"train/loss", "val/psnr", "val/ssim", "trainer/global_step", "train/images_per_sec"} <= logged
    assert any(k.startswith("val/samples/") for k in logged)  # the image grid
    val = [r for r in rows if "val/psnr" in r]
    assert val[-1]["trainer/global_step"] == 3  # Lightning logs after step index 3 (the 4th step)
    assert 0 < val[-1]["val/psnr"] < 60 and 0 <= val[-1]["val/ssim"] <= 1
    config = wandb_config(path)
    assert config["model"]["class_path"] == "ir_lightning.methods.SR3"
    assert config["data"]["init_args"]["crop_size"] == 32
    metrics = metric_definitions(path)
    assert "val/psnr" in metrics and metrics["val/psnr"].summary.max
    images = list(path.parent.glob("files/media/images/val/samples_*.png"))
    assert images


def test_a_shard_pattern_matching_no_file_stops_with_its_name(tmp_path, sr_shards):
    proc = run(
        ["fit", *RECIPE, "--data.init_args.train_shards=nowhere/train-{000000..000003}.tar"], tmp_path, check=False
    )
    assert proc.returncode != 0
    assert "nowhere/train-{000000..000003}.tar" in proc.stderr


def test_console_scripts_and_module_entry_point_show_help(tmp_path):
    bin_dir = Path(sys.executable).parent
    for script in ("ir-lightning", "lightning"):
        exe = bin_dir / script
        if not exe.exists():
            pytest.skip(f"{script} console script not installed in {bin_dir} (pip install -e . first)")
        proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "ir-lightning fit -c recipes/sr3_x4.yaml" in proc.stdout
        assert "{fit,validate,test,predict}" in proc.stdout
    proc = run(["shards", "--help"], tmp_path)
    assert "--maxcount" in proc.stdout


def test_export_keeps_ema_weights_and_hparams_and_restores_alike(first_run, tmp_path):
    from ir_lightning.methods.sr3 import SR3

    last = first_run / "runs/sr3_x4_demo/checkpoints/last.ckpt"
    small, half = tmp_path / "small.ckpt", tmp_path / "half.ckpt"
    assert "MB" in run(["export", str(last), str(small)], tmp_path).stdout
    run(["export", str(last), str(half), "--half"], tmp_path)
    full = load(last)
    assert set(load(small)) <= {
        "state_dict",
        "hyper_parameters",
        "hparams_name",
        "pytorch-lightning_version",
        "global_step",
        "epoch",
    }
    assert small.stat().st_size < last.stat().st_size / 2  # no optimizer state, no copy of the trained weights
    assert half.stat().st_size < small.stat().st_size * 0.6
    a, b = (SR3.load_from_checkpoint(p, map_location="cpu", weights_only=True).eval() for p in (last, small))
    lq = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.restore(lq), b.restore(lq))  # the same EMA weights and settings
    c = SR3.load_from_checkpoint(half, map_location="cpu", weights_only=True)
    torch.testing.assert_close(c.net.head.weight, full["state_dict"]["net.head.weight"], atol=1e-3, rtol=1e-3)
    bad = tmp_path / "bad.ckpt"
    torch.save({"weights": torch.zeros(1)}, bad)
    proc = run(["export", str(bad), str(tmp_path / "x.ckpt")], tmp_path, check=False)
    assert proc.returncode == 2 and "bad.ckpt" in proc.stderr
