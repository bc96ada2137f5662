"""Hostile runs (issue 15, points 8, 10, 11 and 15): one fit per run directory, resuming from the furthest
checkpoint, the last steps of a finished run kept, and configuration errors in one line naming the key,
the value or the file."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from datamodules import ShardDataModule
from datamodules.stages import StreamStopped
from ir_lightning.cli import instantiation_failure, main, user_message
from ir_lightning.degradations import BicubicDownsample, Pipeline
from ir_lightning.methods.deqir import DeqIR
from ir_lightning.methods.settings import Sampling
from ir_lightning.methods.sr3 import SR3
from ir_lightning.nets.unet import UNet
from ir_lightning.training import run_lock
from ir_lightning.training.checkpoint_io import AtomicCheckpointIO
from ir_lightning.training.preemption import FinalCheckpoint, newest_checkpoint
from ir_lightning.training.run_checks import ConfigurationError, check_checkpoint_fits, check_config_files, check_scales
from ir_lightning.training.run_lock import FolderLock, RunDirectoryLocked
from tests.conftest import REPO
from tests.helpers.checkpoints import save_checkpoint, small_deqir
from tests.test_cli import RECIPE, data_args, run

TINY_UNET = dict(in_channels=6, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(), norm_groups=4)


# --- point 8: one fit per run directory ----------------------------------------------------------------


def test_a_second_lock_on_a_held_folder_names_the_holder_and_a_released_one_is_taken(tmp_path):
    first = FolderLock(tmp_path)
    first.acquire()
    with pytest.raises(
        RunDirectoryLocked,
        match=rf"{tmp_path} is in use by another run: pid {os.getpid()} on "
        rf"{socket.gethostname()} since ",
    ):
        FolderLock(tmp_path).acquire()
    first.release()
    second = FolderLock(tmp_path)
    second.acquire()
    assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    second.release()


@pytest.mark.slow
def test_the_lock_of_a_process_killed_with_sigkill_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from ir_lightning.training.run_lock import FolderLock; "
            f"FolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryLocked, match=f"pid {holder.pid} "):
            FolderLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    lock = FolderLock(tmp_path)
    lock.acquire()  # the kernel released the dead holder's flock
    lock.release()


def test_without_flock_the_lock_file_is_the_lock_and_a_dead_holders_file_is_taken_over(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    fresh = FolderLock(tmp_path / "fresh")  # the failed flock attempt's empty file is no holder's
    fresh.acquire()
    assert json.loads((tmp_path / "fresh" / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    fresh.release()
    path = tmp_path / run_lock.LOCK_NAME
    live = {"host": socket.gethostname(), "pid": os.getppid(), "since": "then", "command": "ir-lightning fit"}
    path.write_text(json.dumps(live))
    with pytest.raises(RunDirectoryLocked, match=f"pid {os.getppid()} on {socket.gethostname()}"):
        FolderLock(tmp_path).acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps(live | {"pid": int(dead.stdout)}))  # a process of this host that has exited
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    path.write_text(json.dumps(live | {"host": "another-host", "pid": int(dead.stdout)}))
    with pytest.raises(RunDirectoryLocked):  # another host's process cannot be checked: it may still run
        FolderLock(tmp_path).acquire()


@pytest.mark.slow
def test_two_fits_into_one_run_directory_the_second_stops_naming_the_first(sr_shards, tmp_path):
    """The second `fit` exits 2 with one line naming the first one's pid, before it writes anything (no W&B run
    of its own); the first goes on and finishes with its checkpoints intact."""
    words = ["fit", *RECIPE, *data_args(sr_shards), "--run_dir", "runs/shared"]
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(REPO))
    first = subprocess.Popen(
        [sys.executable, "-m", "ir_lightning", *words, "--trainer.max_steps=30"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock_file = tmp_path / "runs/shared" / run_lock.LOCK_NAME
    deadline = time.monotonic() + 120
    while not (lock_file.exists() and lock_file.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    second = run([*words, "--trainer.max_steps=2"], tmp_path, check=False)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-3000:]
    assert f"runs/shared is in use by another run: pid {first.pid} on " in errors[0]
    assert "Traceback" not in second.stderr
    assert len(list((tmp_path / "runs/shared/wandb").glob("offline-run-*"))) == 1
    assert torch.load(tmp_path / "runs/shared/checkpoints/last.ckpt", weights_only=True)["global_step"] == 30


# --- point 10: resume from the furthest checkpoint; the end of a run is saved ------------------------------


def _trainer_with_checkpoints(root: Path) -> SimpleNamespace:
    folder = root / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(default_root_dir=str(root), checkpoint_callbacks=[ModelCheckpoint(dirpath=folder)])


def _save_step(path: Path, step: int) -> None:
    state = {"optimizer_states": [], "lr_schedulers": [], "loops": {}, "epoch": 0}
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1)}, "global_step": step, **state}, path)


def test_auto_resumes_from_the_furthest_checkpoint_whatever_its_name(tmp_path):
    """A kill between ModelCheckpoint's two saves of one step leaves step00000009.ckpt ahead of last.ckpt."""
    trainer = _trainer_with_checkpoints(tmp_path)
    _save_step(tmp_path / "checkpoints/last.ckpt", 6)
    _save_step(tmp_path / "checkpoints/step00000009.ckpt", 9)
    _save_step(tmp_path / "checkpoints/step00000004.ckpt", 4)
    _save_step(tmp_path / "hpc_ckpt_1.ckpt", 8)
    assert newest_checkpoint(trainer) == tmp_path / "checkpoints/step00000009.ckpt"


def test_auto_passes_over_unreadable_files_and_refuses_when_none_reads(tmp_path):
    trainer = _trainer_with_checkpoints(tmp_path)
    (tmp_path / "checkpoints/step00000012.ckpt").write_bytes(b"PK\x03\x04 truncated by a copy")
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.ones(1)}, "global_step": 20}, tmp_path / "checkpoints/exported.ckpt"
    )  # weights only: nothing to resume
    _save_step(tmp_path / "checkpoints/last.ckpt", 6)
    with pytest.warns(UserWarning, match="passes over files that are no resumable checkpoints") as passed_over:
        assert newest_checkpoint(trainer) == tmp_path / "checkpoints/last.ckpt"
    assert "exported.ckpt" in str(passed_over[0].message) and "step00000012.ckpt" in str(passed_over[0].message)
    (tmp_path / "checkpoints/last.ckpt").write_bytes(b"")
    with pytest.raises(
        ConfigurationError, match=r"--ckpt_path auto: no checkpoint of this run reads as one to resume \(.*last\.ckpt"
    ):
        newest_checkpoint(trainer)


class _Counter(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return [torch.zeros(1)] * 100


@pytest.mark.parametrize("final", [True, False])
def test_a_run_that_ends_between_periodic_checkpoints_saves_its_last_step(tmp_path, final):
    """max_steps 5 with a checkpoint every 2 steps: last.ckpt holds step 5 (Lightning alone: step 4)."""
    callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True, save_top_k=-1)]
    trainer = pl.Trainer(
        max_steps=5,
        callbacks=callbacks + ([FinalCheckpoint()] if final else []),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(_Counter())
    step = torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"]
    assert step == (5 if final else 4)


# --- point 11: configuration errors in one line ------------------------------------------------------------


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_a_constructors_refusal_is_one_line_naming_the_key_and_value(sr_shards, capsys):
    code, err = _cli(["fit", *RECIPE, *data_args(sr_shards), "--data.init_args.crop_size=0"], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: datamodules.ShardDataModule: data.crop_size (0) must be a positive multiple of data.scale (4)"
    )
    code, err = _cli(["fit", *RECIPE, *data_args(sr_shards), "--model.init_args.warmup_steps=-1"], capsys)
    assert code == 2 and "error: ir_lightning.methods.SR3: model.init_args.warmup_steps must be >= 0, got -1" in err
    assert "Traceback" not in err


def test_instantiation_failure_reads_the_innermost_error_and_the_failing_class():
    try:
        try:
            raise ValueError("data.batch_size must be >= 1, got 0")
        except ValueError as inner:
            raise TypeError("Problem with given class_path='datamodules.ShardDataModule':\n  ...") from inner
    except TypeError as outer:
        assert instantiation_failure(outer) == "datamodules.ShardDataModule: data.batch_size must be >= 1, got 0"
    assert instantiation_failure(KeyError("x")).startswith("KeyError: 'x' (IR_LIGHTNING_TRACEBACK=1 shows")


def test_a_scale_that_contradicts_the_degradation_or_the_paired_shards_stops_before_training():
    model = SR3(net=UNet(**TINY_UNET), scale=4, sampling=Sampling(steps=2))
    check_scales(model, ShardDataModule(crop_size=32, scale=4, degradation=Pipeline([BicubicDownsample(4)])))
    with pytest.raises(
        ConfigurationError, match=r"^data.degradation reduces a 32 crop by 2, but model.init_args.scale is 4$"
    ):
        check_scales(model, ShardDataModule(crop_size=32, scale=4, degradation=Pipeline([BicubicDownsample(2)])))
    with pytest.raises(ConfigurationError, match=r"^data.init_args.scale is 2 .*, but model.init_args.scale is 4$"):
        check_scales(model, ShardDataModule(crop_size=32, scale=2))


@pytest.fixture
def deqir_checkpoints(tmp_path) -> dict[str, Path]:
    training = torch.load(save_checkpoint(small_deqir(), tmp_path / "t.ckpt"), weights_only=True)
    training |= {"optimizer_states": [], "lr_schedulers": [], "loops": {}, "global_step": 3, "epoch": 0}
    torch.save(training, tmp_path / "training.ckpt")
    export = {k: training[k] for k in ("state_dict", "hyper_parameters")}
    torch.save(export, tmp_path / "export.ckpt")
    return {"training": tmp_path / "training.ckpt", "export": tmp_path / "export.ckpt"}


def test_ckpt_path_of_another_method_or_scale_or_an_export_is_refused_naming_it(deqir_checkpoints):
    sr3 = {"class_path": "ir_lightning.methods.SR3", "init_args": {"scale": 4}}
    training, export = deqir_checkpoints["training"], deqir_checkpoints["export"]
    with pytest.raises(
        ConfigurationError, match=rf"--ckpt_path {training} is a checkpoint of DeqIR, but the recipe's model is SR3"
    ):
        check_checkpoint_fits(training, sr3, resume=True)
    deqir = {"class_path": "ir_lightning.methods.deqir.DeqIR", "init_args": {}}
    assert check_checkpoint_fits(training, deqir, resume=True)["global_step"] == 3
    with pytest.raises(
        ConfigurationError, match=rf"--ckpt_path {export} holds weights only .* give --init_weights {export}"
    ):
        check_checkpoint_fits(export, deqir, resume=True)
    check_checkpoint_fits(export, deqir, resume=False)  # validate/test/predict and --init_weights take it
    scaled = torch.load(training, weights_only=True)
    scaled["hyper_parameters"]["scale"] = 2
    torch.save(scaled, training)
    with pytest.raises(
        ConfigurationError, match=r"was trained at scale 2, but the recipe sets model.init_args.scale: 4"
    ):
        check_checkpoint_fits(
            training, {"class_path": "ir_lightning.methods.DeqIR", "init_args": {"scale": 4}}, resume=True
        )


def test_init_weights_loads_an_exports_weights_and_refuses_ones_that_do_not_fit(deqir_checkpoints):
    export = torch.load(deqir_checkpoints["export"], weights_only=True)
    fresh = small_deqir(seed=1)
    assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in export["state_dict"].items())
    fresh.load_initial_weights(export, "export.ckpt")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in export["state_dict"].items())
    wider = DeqIR(
        net=UNet(
            in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(), norm_groups=4
        ),
        train_schedule=fresh.hparams.train_schedule,
        operator="sr2",
    )
    with pytest.raises(
        ValueError, match=r"^export.ckpt: its weights do not fit DeqIR as the recipe builds it \(other shapes:"
    ):
        wider.load_initial_weights(export, "export.ckpt")
    # a file cannot excuse its missing network by listing it as left out: DeqIR trains nothing it drops
    hollow = {"state_dict": {}, "exported_without": ["net"], "hyper_parameters": export["hyper_parameters"]}
    with pytest.raises(ValueError, match=r"^hollow.ckpt: its weights do not fit DeqIR .*\(missing net\."):
        fresh.load_initial_weights(hollow, "hollow.ckpt")


def test_a_data_error_raised_in_a_loader_worker_reaches_the_user_as_its_own_line():
    """torch re-raises a worker's error with the worker's traceback as the message; the user sees the error."""
    from torch._utils import ExceptionWrapper

    try:
        try:
            raise StreamStopped(
                "51 training shard draws or samples in a row gave no sample; shards with no sample: ['e.tar']"
            )
        except StreamStopped:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()
    except StreamStopped as error:
        assert "Traceback" in str(error) or "Original" in str(error)
        assert (
            user_message(error)
            == "51 training shard draws or samples in a row gave no sample; shards with no sample: ['e.tar']"
        )
    assert (
        user_message(ConfigurationError("data.batch_size must be >= 1, got 0")) == "data.batch_size must be >= 1, got 0"
    )


@pytest.mark.slow
def test_training_on_empty_shards_with_workers_ends_in_one_line_and_leaves_no_process(sr_shards, tmp_path):
    empty = tmp_path / "empty-000000.tar"
    tarfile.open(empty, "w").close()
    before = set(psutil_children())
    proc = run(
        [
            "fit",
            *RECIPE,
            f"--data.init_args.train_shards={empty}",
            f"--data.init_args.val_shards={sr_shards['val']}",
            "--data.init_args.num_workers=2",
            "--data.init_args.max_consecutive_skips=50",
        ],
        tmp_path,
        check=False,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    expected = (
        f"error: 51 training shard draws or samples in a row gave no sample (data.max_consecutive_skips: 50); "
        f"last error: ValueError(\"shard '{empty}' holds no sample\"); shards with no sample: ['{empty}']"
    )
    # (the other worker may still be printing its warning as the error is printed: the line may run on)
    assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith(expected), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert set(psutil_children()) == before


def psutil_children() -> list[int]:
    """Pids of this process's children (from /proc: no psutil needed)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_an_export_cannot_resume_a_run_but_starts_one_with_init_weights(sr_shards, tmp_path, capsys, monkeypatch):
    """As a user types it: `fit --ckpt_path EXPORT` stops in one line that says to use --init_weights (the
    command line's own code, in this process); with `--init_weights EXPORT` (and a learning rate of 0, so that
    training leaves the weights alone) the run's trained weights are the export's, bit for bit."""
    words = ["fit", *RECIPE, *data_args(sr_shards)]
    run([*words, "--run_dir", "runs/a", "--trainer.max_steps=2"], tmp_path)
    run(["export", "runs/a/checkpoints/last.ckpt", "export.ckpt"], tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = _cli([*words, "--run_dir", "runs/b", "--ckpt_path", "export.ckpt"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: --ckpt_path export.ckpt holds weights only (no optimizer_states, lr_schedulers, loops: an exported or "
        "imported checkpoint), so a run cannot resume from it; to start a new run from its weights, drop --ckpt_path "
        "and give --init_weights export.ckpt (fit)"
    )
    run(
        [
            *words,
            "--run_dir",
            "runs/b",
            "--init_weights",
            "export.ckpt",
            "--trainer.max_steps=1",
            "--model.init_args.optimizer.init_args.lr=0",
        ],
        tmp_path,
    )
    exported = torch.load(tmp_path / "export.ckpt", weights_only=True)["state_dict"]
    trained = torch.load(tmp_path / "runs/b/checkpoints/last.ckpt", weights_only=True)["current_model_state"]
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in exported)


# --- point 15: YAML errors name the file -----------------------------------------------------------------------


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "overlay.yaml"
    bad.write_text("trainer:\n  max_steps: [1\nmodel: {}\n")
    with pytest.raises(ConfigurationError, match=rf"^{bad}: line 3, column 6: expected ',' or ']'"):
        check_config_files(["fit", "-c", str(REPO / "recipes/sr3_x4.yaml"), "--config", str(bad)])
    code, err = _cli(["fit", "-c", str(REPO / "recipes/sr3_x4.yaml"), f"--config={bad}"], capsys)
    assert code == 2 and err.startswith(f"error: {bad}: line 3, column 6") and "<unicode string>" not in err
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigurationError, match=r"binary.yaml: not a UTF-8 text file"):
        check_config_files(["-c", str(tmp_path / "binary.yaml")])
