"""Denoising as Adaptation through the real command line on photo shards: both streams under
2-process DDP, then an export that holds the restorer alone, validated and predicted from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_cli import load, run

pytestmark = pytest.mark.slow

DA = [
    "-c",
    str(REPO / "recipes/da_denoise.yaml"),
    "-c",
    str(REPO / "recipes/demo/da_denoise_cpu.yaml"),
    "-c",
    str(REPO / "tests/configs/da_tiny.yaml"),
    "-c",
    str(REPO / "tests/configs/quiet.yaml"),
]


def streams(shards: dict[str, str]) -> list[str]:
    return [
        f"--data.init_args.synthetic.init_args.train_shards={shards['train']}",
        f"--data.init_args.real.init_args.train_shards={shards['train']}",  # same photos, another seed and degradation
        f"--data.init_args.real.init_args.val_shards={shards['val']}",
    ]


def test_two_streams_under_ddp_then_export_restores(tmp_path: Path, sr_shards):
    done = run(["fit", *DA, *streams(sr_shards), "--trainer.devices=2", "--trainer.strategy=ddp"], tmp_path)
    assert "Starting with 2 processes" in done.stdout + done.stderr
    last = tmp_path / "runs/da_denoise_demo/checkpoints/last.ckpt"
    ckpt = load(last)
    assert ckpt["global_step"] == 4 and ckpt["training_only"] == ["diffusion"]
    assert set(ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]) == {"synthetic", "real"}
    run(["export", str(last), str(tmp_path / "restorer.ckpt")], tmp_path)
    exported = load(tmp_path / "restorer.ckpt")
    assert all(key.startswith("restorer.") for key in exported["state_dict"])
    assert exported["exported_without"] == ["diffusion"]
    full = run(["validate", *DA, *streams(sr_shards), f"--ckpt_path={last}"], tmp_path)
    small = run(["validate", *DA, *streams(sr_shards), f"--ckpt_path={tmp_path / 'restorer.ckpt'}"], tmp_path)
    assert psnr(full.stdout) == psnr(small.stdout)  # the same restorer, the same real-domain validation


def psnr(stdout: str) -> float:
    for line in stdout.splitlines():
        if "val/psnr" in line:
            return float(line.split()[-2] if line.split()[-1] == "│" else line.split()[-1])
    raise AssertionError(f"no val/psnr in:\n{stdout[-2000:]}")
