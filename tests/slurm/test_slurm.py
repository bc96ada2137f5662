"""The project's own batch scripts on a real single-node SLURM cluster (tests/slurm/cluster.sh):
a 2-task DDP job, a 3-task array sweep, and a job warned with USR1 that saves an HPC checkpoint,
requeues itself and resumes. Skipped, with the reason, only where the machine cannot install and
start SLURM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ir_lightning.io.wandb_records import offline_runs, run_identity
from tests.conftest import REPO
from tests.test_cli import RECIPE, data_args

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLUSTER = REPO / "tests/slurm/cluster.sh"
CPU = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.limit_val_batches=0"]


@pytest.fixture(scope="module")
def cluster():
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode == 3:
        pytest.skip(f"no SLURM on this machine: {started.stderr.strip()}")
    assert started.returncode == 0, f"cluster.sh start failed:\n{started.stdout}\n{started.stderr}"
    exports = subprocess.run(["bash", str(CLUSTER), "env"], capture_output=True, text=True, check=True).stdout
    with pytest.MonkeyPatch.context() as patch:
        for name, value in re.findall(r"export (\w+)=(\S+)", exports):  # SLURM_CONF when /etc/slurm is not ours
            patch.setenv(name, value.strip("'\""))
        yield
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


def job_env() -> dict:
    """The submitting shell's environment: the jobs inherit it (sbatch exports everything)."""
    return dict(
        os.environ, IR_LIGHTNING_PYTHON=sys.executable, PYTHONPATH=str(REPO), WANDB_MODE="offline", WANDB_SILENT="true"
    )


def sbatch(cwd: Path, *args: str) -> str:
    (cwd / "logs").mkdir(exist_ok=True)
    done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=job_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_states(job: str) -> dict[str, dict[str, str]]:
    """`scontrol show job` fields of the job (every task of an array), by job id."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    jobs = {}
    for line in shown.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        jobs[fields["JobId"]] = fields
    return jobs


def wait_until_done(job: str, timeout: float) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = job_states(job)
        if states and all(s["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states.values()):
            return states
        time.sleep(1)
    raise AssertionError(f"job {job} not done after {timeout} s: {job_states(job)}")


def log_text(cwd: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((cwd / "logs").glob("*.out")))


def test_two_task_ddp_job_completes_with_world_size_two(cluster, sr_shards, tmp_path):
    probe = tmp_path / "probe"
    job = sbatch(
        tmp_path,
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        str(REPO / "slurm/train.sbatch"),
        *RECIPE,
        *data_args(sr_shards),
        *CPU,
        "--trainer.callbacks+=tests.ddp_probe.RankProbe",
        f"--trainer.callbacks.out_dir={probe}",
    )
    states = wait_until_done(job, timeout=300)
    assert states[job]["JobState"] == "COMPLETED", log_text(tmp_path)[-4000:]
    ranks = [(probe / f"rank{r}.json").read_text() for r in (0, 1)]
    assert all('"world": 2' in r for r in ranks)
    last = torch.load(tmp_path / f"runs/ir-lightning-{job}/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4


def test_three_task_array_writes_three_runs_in_one_wandb_group(cluster, sr_shards, tmp_path):
    recipe = " ".join(RECIPE)
    data = " ".join(f"'{a}'" for a in data_args(sr_shards))
    sweep = tmp_path / "seeds.txt"
    sweep.write_text(f"# three seeds\nfit {recipe} {data} --trainer.max_steps=2 --seed_everything={{{{1,2,3}}}}\n")
    submitted = subprocess.run(
        [sys.executable, "-m", "ir_lightning", "sweep", str(sweep), "--submit", "--sbatch=--cpus-per-task=1"],
        cwd=tmp_path,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().splitlines()[-1]
    states = wait_until_done(job, timeout=420)
    assert sorted(s["JobState"] for s in states.values()) == ["COMPLETED"] * 3, log_text(tmp_path)[-4000:]
    runs = sorted((tmp_path / "runs/sweeps").glob("seeds-*/*_*"))
    assert [r.name for r in runs] == [f"{job}_{i}" for i in range(3)]
    weights = []
    for index, run in enumerate(runs):
        last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
        weights.append(last["state_dict"]["net.head.weight"])
        (wandb_run,) = offline_runs(run)
        assert run_identity(wandb_run)["id"] == f"{job}_{index}"
        assert run_identity(wandb_run)["group"] == f"sweep-{job}"
    assert not torch.equal(weights[0], weights[1])  # three seeds, three different runs


def test_usr1_saves_hpc_checkpoint_requeues_and_resumes_to_max_steps(cluster, sr_shards, tmp_path):
    beat = tmp_path / "step.txt"
    job = sbatch(
        tmp_path,
        "--cpus-per-task=1",
        str(REPO / "slurm/train.sbatch"),
        *RECIPE,
        *data_args(sr_shards),
        *CPU,
        "--trainer.max_steps=60",
        "--trainer.callbacks+=tests.resume_probe.Heartbeat",
        f"--trainer.callbacks.path={beat}",
    )
    deadline = time.monotonic() + 240
    while not (beat.exists() and int(beat.read_text() or 0) >= 3):
        assert time.monotonic() < deadline, f"training did not start:\n{log_text(tmp_path)[-3000:]}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    states = wait_until_done(job, timeout=420)
    log = log_text(tmp_path)
    assert states[job]["JobState"] == "COMPLETED", log[-4000:]
    assert states[job]["Restarts"] == "1"
    run_dir = tmp_path / f"runs/ir-lightning-{job}"
    saved_at = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"]
    assert 3 <= saved_at < 60
    assert f"resuming from {run_dir.relative_to(tmp_path)}/hpc_ckpt_1.ckpt" in log
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 60
    ids = [run_identity(p)["id"] for p in offline_runs(run_dir)]
    assert ids == [f"ir-lightning-{job}"] * 2  # the requeued job continued the same W&B run
