"""AtomicCheckpointIO: whole checkpoints after full disks, interrupts and SIGKILL; clear errors; Trainer use."""

from __future__ import annotations

import errno
import io
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from ir_lightning.io.atomic import clean_stale_temp_files, host_tag
from ir_lightning.io.weights import WeightsError as UnsafeCheckpointError
from ir_lightning.training import checkpoint_io
from ir_lightning.training.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError


def temp_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".tmp"))


def write_previous(target: Path) -> bytes:
    """A first checkpoint at `target`, saved by the plugin; returns its bytes to compare with later."""
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(1000.0), "step": 1}, target)
    return target.read_bytes()


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_save_round_trips_with_a_normal_file_mode_and_no_temp_file(tmp_path, as_url):
    target = tmp_path / "new_dir" / "last.ckpt"
    checkpoint = {"state_dict": {"w": torch.randn(3, 4)}, "global_step": 7}
    old_umask = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint, f"file://{target}" if as_url else target)
        plain = tmp_path / "plain"
        plain.write_bytes(b"")  # what any program's new file gets under this umask (0o640)
    finally:
        os.umask(old_umask)
    loaded = torch.load(target, weights_only=True)
    assert torch.equal(loaded["state_dict"]["w"], checkpoint["state_dict"]["w"])
    assert loaded["global_step"] == 7
    assert os.listdir(target.parent) == ["last.ckpt"]
    assert oct(target.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == oct(0o640)


def assert_write_error_kept_previous(error: CheckpointWriteError, code: int, target: Path, previous: bytes) -> None:
    message = str(error)
    assert error.errno == code
    assert str(target) in message
    assert errno.errorcode[code] in message and os.strerror(code) in message
    assert "free on the filesystem of" in message
    assert f"The previous checkpoint at {target} is intact." in message
    assert target.read_bytes() == previous
    assert temp_files(target.parent) == []


def test_full_tmpfs_raises_enospc_and_keeps_the_previous_checkpoint(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a 1 MB tmpfs needs root and mount(8)")
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused here: {mounted.stderr.strip()}")
    try:
        target = mount_point / "last.ckpt"
        previous = write_previous(target)
        with pytest.raises(CheckpointWriteError) as raised:
            AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(500_000), "step": 2}, target)  # 2 MB > 1 MB disk
        assert_write_error_kept_previous(raised.value, errno.ENOSPC, target, previous)
        assert "about 2.0 MB of tensors" in str(raised.value)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


class QuotaFile:
    """A temp file on a simulated disk that fills after `quota` bytes: the write that crosses it writes what
    fits, then fails with `code`, as a real full disk does."""

    def __init__(self, file, quota: int, code: int) -> None:
        self.file, self.room, self.code = file, quota, code

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def __enter__(self) -> QuotaFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO], ids=errno.errorcode.get)
def test_simulated_full_disk_raises_the_errno_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code):
    target = tmp_path / "last.ckpt"
    previous = write_previous(target)
    real_create = checkpoint_io._create_temp_file
    monkeypatch.setattr(checkpoint_io, "_create_temp_file", lambda path: QuotaFile(real_create(path), 65_536, code))
    with pytest.raises(CheckpointWriteError) as raised:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(250_000), "step": 2}, target)  # 1 MB, real torch.save
    assert_write_error_kept_previous(raised.value, code, target, previous)
    assert "about 1.0 MB of tensors" in str(raised.value)


def test_failure_without_a_previous_checkpoint_says_none_was_left(tmp_path, monkeypatch):
    real_create = checkpoint_io._create_temp_file
    monkeypatch.setattr(checkpoint_io, "_create_temp_file", lambda path: QuotaFile(real_create(path), 0, errno.ENOSPC))
    with pytest.raises(CheckpointWriteError, match="No checkpoint existed at .* before, and none was left behind"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(10)}, tmp_path / "last.ckpt")
    assert os.listdir(tmp_path) == []


def interrupt_half_way(obj, file, save) -> None:
    """A `torch.save` hit by Ctrl-C half way through: it writes half of the real bytes, then raises."""
    buffer = io.BytesIO()
    save(obj, buffer)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise KeyboardInterrupt


def test_interrupt_mid_write_removes_the_temp_file_and_propagates(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    previous = write_previous(target)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, **kw: interrupt_half_way(obj, f, save=real_save))
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(10_000)}, target)
    assert target.read_bytes() == previous
    assert temp_files(tmp_path) == []


def test_unpicklable_checkpoint_raises_its_own_error_and_removes_the_temp_file(tmp_path):
    target = tmp_path / "last.ckpt"
    previous = write_previous(target)
    with pytest.raises(Exception) as raised:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(10), "fn": lambda: 0}, target)
    assert not isinstance(raised.value, OSError)  # a programming error is not reported as a disk problem
    assert target.read_bytes() == previous
    assert temp_files(tmp_path) == []


def test_failed_directory_sync_says_the_new_checkpoint_is_in_place(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    write_previous(target)

    def broken_sync(directory):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(checkpoint_io, "_fsync_directory", broken_sync)
    with pytest.raises(CheckpointWriteError, match="EIO .*The new checkpoint is in place") as raised:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(10), "step": 2}, target)
    assert raised.value.errno == errno.EIO
    assert torch.load(target, weights_only=True)["step"] == 2


def test_clean_stale_temp_files_removes_only_this_hosts_files_of_dead_processes(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # reaped: its pid names no process (unless reused within these milliseconds)
    host = host_tag()
    dead = tmp_path / f".last.ckpt.partial-{host}-{finished.pid}-0123abcd.tmp"
    alive = tmp_path / f".last.ckpt.partial-{host}-{os.getpid()}-0123abcd.tmp"
    other_host = tmp_path / f".last.ckpt.partial-{host}x-{finished.pid}-0123abcd.tmp"
    not_ours = tmp_path / ".config.yaml.k2j_x9a1.tmp"  # ir_lightning.io.atomic's writes
    for path in (dead, alive, other_host, not_ours):
        path.write_bytes(b"partial")
    assert clean_stale_temp_files(tmp_path) == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (alive, other_host, not_ours))
    assert clean_stale_temp_files(tmp_path / "missing") == []


def test_remote_urls_use_lightnings_implementation(tmp_path):
    memory = fsspec.filesystem("memory")
    url = "memory://atomic_ckpt_test/last.ckpt"
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.arange(3.0)}, url)
        with memory.open("/atomic_ckpt_test/last.ckpt", "rb") as f:
            assert torch.equal(torch.load(f, weights_only=True)["w"], torch.arange(3.0))
    finally:
        memory.rm("/atomic_ckpt_test", recursive=True)


def test_storage_options_are_refused_as_lightning_does(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1)}, tmp_path / "x.ckpt", storage_options={"a": 1})


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(0.002)


def signature(path: Path) -> tuple[int, int]:
    """Changes when the file at `path` is replaced or rewritten."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a saving process to SIGKILL it")
def test_sigkill_during_repeated_saves_always_leaves_a_whole_checkpoint(tmp_path):
    big = torch.arange(6_000_000, dtype=torch.float32)  # 24 MB: a save takes long enough to be killed inside
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"big": big, "step": -1}, target)
    delays = random.Random(0)
    kills_mid_write = 0
    for round_ in range(5):
        before = signature(target)
        pid = os.fork()  # the child shares the imports (a fresh interpreter takes ~6 s to import Lightning)
        if pid == 0:
            try:
                for i in itertools.count():
                    AtomicCheckpointIO().save_checkpoint({"big": big, "step": round_ * 1000 + i}, target)
            finally:
                os._exit(1)
        try:
            # Kill once the child has replaced the checkpoint at least once and is writing the next one.
            wait_for(lambda: signature(target) != before and temp_files(tmp_path), timeout=30)  # noqa: B023 (called within this iteration)
            time.sleep(delays.uniform(0.0, 0.03))  # inside the write: a save took 50-90 ms on a 2-core VM
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        leftovers = temp_files(tmp_path)
        loaded = torch.load(target, weights_only=True)
        assert torch.equal(loaded["big"], big)
        assert loaded["step"] >= round_ * 1000  # written by this round's child, not an older file
        assert clean_stale_temp_files(tmp_path) == leftovers
        assert temp_files(tmp_path) == []
        kills_mid_write += bool(leftovers)
    assert kills_mid_write >= 1  # else the kills never landed inside a write and the test proved nothing


class TinyModule(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 4)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_writes_last_ckpt_through_the_atomic_path(tmp_path, monkeypatch):
    atomic_saves = []
    real_save = checkpoint_io._save_atomically

    def spy(checkpoint, target):
        atomic_saves.append(target)
        real_save(checkpoint, target)

    monkeypatch.setattr(checkpoint_io, "_save_atomically", spy)
    plugin = AtomicCheckpointIO()
    model = TinyModule()
    trainer = Trainer(
        max_epochs=1,
        plugins=[plugin],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
    )
    trainer.fit(model)
    assert trainer.strategy.checkpoint_io is plugin
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last in atomic_saves
    loaded = torch.load(last, weights_only=True)
    assert loaded["global_step"] == 2
    assert torch.equal(loaded["state_dict"]["layer.weight"], model.layer.weight.detach())
    assert temp_files(last.parent) == []


def test_loading_refuses_a_pickle_that_would_run_code_even_when_asked_not_to_check(tmp_path):
    from tests.helpers.checkpoints import RunsCode

    marker = tmp_path / "code_ran"
    crafted = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, crafted)
    with pytest.raises(UnsafeCheckpointError, match=rf"{crafted}: refused, not a checkpoint of this suite \(.*system"):
        AtomicCheckpointIO().load_checkpoint(crafted, weights_only=False)  # Lightning's trainer may pass False
    assert not marker.exists()
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, good)
    assert AtomicCheckpointIO().load_checkpoint(good)["global_step"] == 3
    with pytest.raises(FileNotFoundError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_loading_keeps_tensors_on_the_cpu_by_default(tmp_path, monkeypatch):
    """Lightning's strategy passes no map_location: the default must stay Lightning's (the CPU), or every
    DDP rank would load a GPU checkpoint onto cuda:0."""
    path = tmp_path / "c.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, path)
    seen = {}
    load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    AtomicCheckpointIO().load_checkpoint(path)
    assert seen["weights_only"] is True and callable(seen["map_location"])
    assert seen["map_location"]("storage", "cuda:0") == "storage"
