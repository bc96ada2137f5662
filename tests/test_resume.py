"""Exact resume through the real command line: a run interrupted at step k and resumed ends with
the same bits as an uninterrupted run (weights, EMA, optimizer moments, LR schedule, data
position), whether it was killed with SIGKILL and restarted with `--ckpt_path auto`, or warned
with SLURM's SIGUSR1, saved an HPC checkpoint, asked for a requeue and stopped."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.test_cli import RECIPE, data_args, load, run

pytestmark = pytest.mark.slow

RESUME = [*RECIPE, "-c", str(REPO / "tests/configs/resume.yaml")]
LAST = "runs/sr3_x4_demo/checkpoints/last.ckpt"


def fit(cwd: Path, shards: dict, *extra: str, env: dict | None = None, check: bool = True):
    return run(["fit", *RESUME, *data_args(shards), *extra], cwd, check=check, env=env)


def tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every tensor that determines how training continues, by a flat name."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}/{index}", item)

    for part in ("state_dict", "current_model_state", "averaging_state", "optimizer_states"):
        walk(part, ckpt[part])
    return flat


def assert_same_training_state(resumed: dict, uninterrupted: dict) -> None:
    a, b = tensors(resumed), tensors(uninterrupted)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    assert resumed["global_step"] == uninterrupted["global_step"] == 8
    assert resumed["lr_schedulers"] == uninterrupted["lr_schedulers"]
    loader = lambda c: c["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # noqa: E731
    assert loader(resumed) == loader(uninterrupted)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sr_shards) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    fit(cwd, sr_shards)
    return load(cwd / LAST)


def test_two_uninterrupted_runs_agree_bitwise(uninterrupted, sr_shards, tmp_path):
    """The reference the resume tests compare with is itself reproducible (otherwise they prove nothing)."""
    fit(tmp_path, sr_shards)
    assert_same_training_state(load(tmp_path / LAST), uninterrupted)


def test_killed_with_sigkill_then_restarted_with_ckpt_path_auto(uninterrupted, sr_shards, tmp_path):
    killed = fit(tmp_path, sr_shards, "--trainer.callbacks.at_step=5", check=False)
    assert killed.returncode == -9  # died at the start of step 5; last.ckpt is from step 4
    assert load(tmp_path / LAST)["global_step"] == 4
    resumed = fit(tmp_path, sr_shards, "--ckpt_path=auto")
    assert "resuming from" in resumed.stderr + resumed.stdout
    assert_same_training_state(load(tmp_path / LAST), uninterrupted)


def fake_slurm(tmp_path: Path) -> dict:
    """Environment of a one-task SLURM job whose `scontrol` records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "resume-test",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }


def test_sigusr1_saves_an_hpc_checkpoint_requeues_and_the_restart_resumes_exactly(uninterrupted, sr_shards, tmp_path):
    env = fake_slurm(tmp_path)
    warned = fit(
        tmp_path,
        sr_shards,
        "--trainer.callbacks.at_step=5",
        "--trainer.callbacks.signal_name=SIGUSR1",
        "--ckpt_path=auto",
        env=env,
    )
    hpc = tmp_path / "runs/sr3_x4_demo/hpc_ckpt_1.ckpt"
    assert load(hpc)["global_step"] == 6  # the signal came during step 5; saved at its end
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    resumed = fit(tmp_path, sr_shards, "--ckpt_path=auto", env=env)
    assert "resuming from runs/sr3_x4_demo/hpc_ckpt_1.ckpt" in resumed.stderr + resumed.stdout
    assert_same_training_state(load(tmp_path / LAST), uninterrupted)
    assert warned.returncode == 0
