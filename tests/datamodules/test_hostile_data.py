"""Hostile data (issue 15): keys that would escape an output folder, sizes of zero, empty shards, loader
workers orphaned by a kill -9, shard servers that stall or fail, corrupt or empty validation sets, and
paired data sets whose first sample lacks ``lq``. Real shards on disk, real loader workers, local
servers on 127.0.0.1; every wait is bounded (``deadline``) so that a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import gc
import http.server
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from datamodules import AdaptationDataModule, ShardDataModule
from datamodules.reading import ShardReadError
from datamodules.stages import Collate, SkipCounter, StreamStopped
from ir_lightning.degradations import (
    JPEG,
    BicubicDownsample,
    CameraNoise,
    GaussianBlur,
    GaussianNoise,
    Pipeline,
    RealESRGANDegradation,
)
from ir_lightning.io.atomic import UnsafeKeyError
from tests.datamodules.test_shards_datamodule import (
    GT_SIZE,
    MeanModel,
    box_average,
    first_batches,
    module,
    png_bytes,
    tar_bytes,
    write_shard,
)

REPO = Path(__file__).resolve().parents[2]
EMPTY_TAR = tar_bytes([])
"""A valid tar archive without a member (two zero blocks, padded)."""


class Overdue(BaseException):
    """Raised in the main thread when a ``deadline`` passes (a BaseException: no ``except Exception`` eats it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail with Overdue if the block runs longer than ``seconds`` (SIGALRM; pytest-timeout's alarm is
    saved and re-armed)."""

    def overdue(signum, frame):
        raise Overdue(f"still running after {seconds} s")

    previous_handler = signal.signal(signal.SIGALRM, overdue)
    previous_delay, _ = signal.getitimer(signal.ITIMER_REAL)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:
            signal.setitimer(signal.ITIMER_REAL, max(previous_delay - (time.monotonic() - start), 0.001))


def batches_of(loader, count: int | None = None) -> list[dict]:
    """The first ``count`` batches of ``loader`` (all if None). On an error the iterator is dropped with the
    traceback's frames, so its workers stop now (when only the garbage collector finds it, torch waits
    5 s for each worker)."""
    batches = iter(loader)
    try:
        return list(itertools.islice(batches, count))
    except Exception as error:
        del batches
        raise error.with_traceback(None)  # noqa: B904 - the frames are what must go


def val_keys(datamodule: ShardDataModule, argument: str = "val") -> list[str]:
    """Every key of an evaluation loader, in order."""
    return [key for batch in batches_of(getattr(datamodule, f"{argument}_dataloader")()) for key in batch["__key__"]]


def gt_png(value: int = 0) -> bytes:
    return png_bytes(np.full((*GT_SIZE, 3), value, np.uint8))


# ---------------------------------------------------------------- 1: keys become file names


@pytest.mark.parametrize("bad_key", ["../../x", "/abs/path/x", "sub/x"])
@pytest.mark.parametrize("argument", ["val", "predict"])
def test_an_unsafe_key_stops_evaluation_naming_the_shard_and_the_key(tmp_path, bad_key, argument):
    shard = tmp_path / "val-000000.tar"
    shard.write_bytes(tar_bytes([("a.gt.png", gt_png()), (f"{bad_key}.gt.png", gt_png())]))
    datamodule = ShardDataModule(**{f"{argument}_shards": str(shard)}, num_workers=0)
    with pytest.raises(UnsafeKeyError, match=rf"shard '{shard}': sample key '{bad_key}' holds a '/'"):
        val_keys(datamodule, argument)


def test_an_unsafe_key_in_training_is_skipped_and_counted(tmp_path):
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(tar_bytes([("a.gt.png", gt_png()), ("../../x.gt.png", gt_png()), ("c.gt.png", gt_png())]))
    datamodule = module(tmp_path, train_shards=str(shard), batch_size=1, shuffle_buffer=0, steps_per_epoch=4)
    with pytest.warns(UserWarning, match=r"skipping unsafe key .*'\.\./\.\./x'"):
        batches = first_batches(datamodule, 4)
    assert [batch["__key__"][0] for batch in batches] == ["a", "c", "a", "c"]
    assert [int(batch["n_skipped"]) for batch in batches] == [0, 1, 0, 1]


# ---------------------------------------------------------------- 2: sizes, counts, probabilities


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be an integer >= 1, got 0"),
        ({"batch_size": -3}, "data.batch_size must be an integer >= 1, got -3"),
        ({"val_batch_size": 0}, "data.val_batch_size must be an integer >= 1, got 0"),
        ({"steps_per_epoch": 0}, "data.steps_per_epoch must be an integer >= 1, got 0"),
        ({"num_workers": -1}, "data.num_workers must be an integer >= 0, got -1"),
        ({"shuffle_buffer": -1}, "data.shuffle_buffer must be an integer >= 0, got -1"),
        ({"max_consecutive_skips": -1}, "data.max_consecutive_skips must be an integer >= 0, got -1"),
        ({"retries": -1}, "data.retries must be an integer >= 0, got -1"),
        ({"batch_size": 2.5}, "data.batch_size must be an integer >= 1, got 2.5"),
        ({"read_timeout": 0}, "data.read_timeout must be a number of seconds > 0, got 0"),
        ({"read_timeout": math.inf}, "data.read_timeout must be a number of seconds > 0, got inf"),
        ({"require_gt": False, "require_lq": False}, "data.require_gt and data.require_lq are both false"),
    ],
)
def test_shard_datamodule_refuses_bad_sizes_and_counts_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        ShardDataModule(**kwargs)


def test_adaptation_datamodule_refuses_bad_arguments_at_construction():
    synthetic, real = ShardDataModule(seed=0), ShardDataModule(seed=1)
    with pytest.raises(ValueError, match="^data.real must be a datamodules.ShardDataModule, got 'shards/'"):
        AdaptationDataModule(synthetic, "shards/")
    with pytest.raises(ValueError, match="^data.real_key_prefix must be a non-empty string, got 3"):
        AdaptationDataModule(synthetic, real, real_key_prefix=3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BicubicDownsample(scale=2.5), "scale must be an integer >= 1, got 2.5"),
        (lambda: GaussianBlur(kernel_size=True), "kernel_size must be a positive odd integer"),
        (lambda: GaussianBlur(sigma=(1.0, math.inf)), r"sigma must be a \(low, high\) pair of finite numbers"),
        (lambda: GaussianNoise(sigma=(1.0,)), r"sigma must be a \(low, high\) pair"),
        (lambda: GaussianNoise(sigma=(math.nan, 1.0)), r"sigma must be a \(low, high\) pair"),
        (lambda: GaussianNoise(gray_prob=1.5), r"gray_prob must be a probability in \[0, 1\], got 1.5"),
        (lambda: JPEG(quality=(90.0, 10.0)), "quality must satisfy"),
        (lambda: Pipeline([GaussianNoise(), 3]), r"steps\[1\] must be a degradation"),
        (lambda: CameraNoise(gamma=math.inf), "gamma must be positive"),
        (lambda: RealESRGANDegradation(sinc_small_below=0), "sinc_small_below must be an integer >= 1, got 0"),
        (lambda: RealESRGANDegradation(kernel_sizes=(7, 21, 23)), "kernel_sizes must be odd sizes"),
        (lambda: RealESRGANDegradation(rotation_range=(0.0, math.inf)), "rotation_range must be a"),
        (lambda: RealESRGANDegradation(kernel_prob=(math.nan, 1, 1, 1, 1, 1)), "kernel_prob must be 6 non-negative"),
    ],
)
def test_degradations_refuse_bad_arguments_naming_them(build, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        build()


# ---------------------------------------------------------------- 3a: shards that give no sample


@pytest.mark.parametrize(
    "empty", [EMPTY_TAR, tar_bytes([("README", b"no key.ext member here")])], ids=["no member", "no sample member"]
)
def test_an_empty_shard_among_good_ones_is_skipped_and_counted(tmp_path, empty):
    write_shard(tmp_path / "train-000000.tar", ["a", "b", "c"], seed=0)
    (tmp_path / "train-000001.tar").write_bytes(empty)
    datamodule = module(
        tmp_path,
        train_shards=str(tmp_path / "train-{000000..000001}.tar"),
        batch_size=1,
        shuffle_buffer=0,
        steps_per_epoch=12,
    )
    with deadline(20), pytest.warns(UserWarning, match=r"skipping empty shard .*train-000001\.tar"):
        batches = first_batches(datamodule, 12)
    assert len(batches) == 12 and {key for batch in batches for key in batch["__key__"]} == {"a", "b", "c"}
    assert sum(int(batch["n_skipped"]) for batch in batches) > 0  # 12 draws from 2 shards: the empty one came up


@pytest.mark.parametrize("num_workers", [0, 1])
def test_all_empty_training_shards_stop_within_seconds_naming_them(tmp_path, num_workers):
    for index in range(2):
        (tmp_path / f"empty-{index:06d}.tar").write_bytes(EMPTY_TAR)
    datamodule = module(tmp_path, train_shards=str(tmp_path / "empty-{000000..000001}.tar"), num_workers=num_workers)
    start = time.monotonic()
    expected = (
        r"1001 training shard draws or samples in a row gave no sample .*shards with no sample: "
        rf"\['{tmp_path}/empty-00000[01].tar', '{tmp_path}/empty-00000[01].tar'\]"
    )
    with deadline(30), warnings.catch_warnings(), pytest.raises(RuntimeError, match=expected):
        warnings.simplefilter("ignore")  # (a worker's warnings do not reach this process)
        batches_of(datamodule.train_dataloader(), 1)
    print(f"all-empty training shards, {num_workers} workers: error after {time.monotonic() - start:.2f} s")
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------- 3b: workers die with their parent

SPINNING_LOADER = """
import sys
from datamodules import ShardDataModule
datamodule = ShardDataModule(train_shards=sys.argv[1], crop_size=8, batch_size=1, steps_per_epoch=2,
                             num_workers=1, max_consecutive_skips=10**9)
datamodule.setup("fit")
print("iterating", flush=True)
next(iter(datamodule.train_dataloader()))
"""


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc/*/stat."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_loader_workers_die_when_the_main_process_is_killed(tmp_path):
    """A worker spinning on an all-empty stream (no skip limit) outlives a kill -9 of its parent unless
    it asked the kernel to kill it then."""
    (tmp_path / "empty-000000.tar").write_bytes(EMPTY_TAR)
    main = subprocess.Popen(
        [sys.executable, "-c", SPINNING_LOADER, str(tmp_path / "empty-000000.tar")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    workers: list[int] = []
    try:
        with deadline(120):
            assert main.stdout.readline().strip() == "iterating"
            while not workers:
                workers = children(main.pid)
                time.sleep(0.05)
        time.sleep(0.5)  # the worker has run its init function and is spinning
        main.kill()
        main.wait()
        start = time.monotonic()
        while any(alive(pid) for pid in workers) and time.monotonic() - start < 5:
            time.sleep(0.05)
        survivors = [pid for pid in workers if alive(pid)]
        print(f"workers {workers} gone {time.monotonic() - start:.2f} s after the kill -9; survivors {survivors}")
        assert survivors == []
    finally:
        for pid in [main.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- 4: shard servers that stall or fail


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in [*held, listener]:
            connection.close()


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


class FlakyShardHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``self.server.shard``; the first request fails as ``self.server.first`` says ("503": status
    503; "cut": the headers promise every byte but the body stops at 60 % and the connection closes).
    Honours ``Range: bytes=N-`` when ``self.server.ranges``. Records each request's Range header."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        server = self.server
        server.requests.append(self.headers.get("Range"))
        server.authorizations.append(self.headers.get("Authorization"))
        data = server.shard
        if len(server.requests) == 1 and server.first == "503":
            self.send_error(503, "try again")
            return
        offset = int(self.headers["Range"][len("bytes=") : -1]) if self.headers.get("Range") and server.ranges else 0
        self.send_response(206 if offset else 200)
        self.send_header("Content-Length", str(len(data) - offset))
        self.end_headers()
        body = data[offset:]
        if len(server.requests) == 1 and server.first == "cut":
            body = body[: int(len(body) * 0.6)]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        """Keep the test output clean."""


@contextlib.contextmanager
def flaky_server(shard: bytes, first: str, ranges: bool = False) -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyShardHandler)
    server.shard, server.first, server.ranges, server.requests, server.authorizations = shard, first, ranges, [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_never_answers_fails_naming_the_url_within_the_timeout(tmp_path):
    with silent_server() as port:
        url = f"http://127.0.0.1:{port}/val-000000.tar"
        datamodule = module(tmp_path, val_shards=url, read_timeout=0.5, retries=1)
        start = time.monotonic()
        with deadline(20), pytest.raises(ShardReadError, match=rf"shard '{url}': no byte for 0.5 s .*after 2 tries"):
            val_keys(datamodule)
    elapsed = time.monotonic() - start
    print(f"silent HTTP server: error after {elapsed:.2f} s (read_timeout 0.5 s, 1 retry after 1 s)")
    assert 1.9 < elapsed < 5  # 0.5 s stall + 1 s back-off + 0.5 s stall


def test_a_refused_connection_is_retried_then_named(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/val-000000.tar"
    datamodule = module(tmp_path, val_shards=url, read_timeout=0.5, retries=1)
    start = time.monotonic()
    with deadline(20), pytest.raises(ShardReadError, match=rf"shard '{url}': .*Connection refused.* after 2 tries"):
        val_keys(datamodule)
    assert 0.9 < time.monotonic() - start < 5  # one back-off of 1 s


def test_a_training_source_that_is_down_stops_after_its_shards_stay_unreachable(tmp_path):
    """Every training shard refused (retries included): the stream stops after one draw of each distinct
    shard (at most UNREACHABLE_SHARDS_LIMIT), naming them, not after max_consecutive_skips slow draws."""
    urls = [f"http://127.0.0.1:{free_port()}/train-{i:06d}.tar" for i in range(3)]
    datamodule = module(tmp_path, train_shards=urls, retries=0, num_workers=0, max_consecutive_skips=1000)
    start = time.monotonic()
    with deadline(30), warnings.catch_warnings(), pytest.raises(StreamStopped) as stopped:
        warnings.simplefilter("ignore")
        batches_of(datamodule.train_dataset(), 1)
    assert str(stopped.value).startswith("3 training shards in a row could not be read, retries included: ")
    assert all(url in str(stopped.value) for url in urls)
    assert time.monotonic() - start < 10


def test_unreachable_shards_between_good_samples_are_only_skipped():
    """Two shards of a stream of two refused in turn, each followed by a good sample: skipped and counted.
    Refused one after the other with no good sample between: the source is down, the stream stops."""
    refusals = []
    for name in ("a", "b"):
        refused = ShardReadError(f"shard 'http://x/{name}.tar': refused")
        refused.url, refused.unreachable = f"http://x/{name}.tar", True
        refusals.append(refused)
    broken_tar = ShardReadError("shard 'http://x/c.tar' at member 'k.gt.png': ReadError")  # fetched, not a tar
    counter = SkipCounter(max_consecutive=100, shards=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for refused in refusals * 5:
            counter.shard_failed(refused)
            counter.shard_failed(broken_tar)
            counter.good()
        assert counter.take() == 20
        counter.shard_failed(refusals[0])
        with pytest.raises(StreamStopped, match=r"^2 training shards in a row could not be read.*a\.tar.*b\.tar"):
            counter.shard_failed(refusals[1])


@pytest.mark.parametrize(("first", "ranges"), [("503", False), ("cut", False), ("cut", True)])
def test_a_transient_failure_is_retried_and_every_sample_arrives_once(tmp_path, first, ranges):
    """A 503, or a body cut off mid-shard (server with or without Range support): the retry continues at
    the byte where the failed read stopped, so the keys come once each, in order."""
    keys = [f"h{index}" for index in range(6)]
    write_shard(tmp_path / "val-000000.tar", keys, seed=6)
    with flaky_server((tmp_path / "val-000000.tar").read_bytes(), first, ranges) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/val-000000.tar"
        with deadline(20):
            got = val_keys(module(tmp_path, val_shards=url, read_timeout=2.0, retries=2))
    assert got == keys
    assert len(server.requests) == 2
    resumed_at = server.requests[1]
    assert (resumed_at is None) if first == "503" else (resumed_at is not None and resumed_at != "bytes=0-")


def test_credentials_in_an_http_url_are_sent_as_basic_authentication(tmp_path):
    """curl took ``http://user:password@host/...``; the urllib reader must too (base64 of "reader:s3cr%t")."""
    write_shard(tmp_path / "val-000000.tar", ["a0", "a1"], seed=4)
    with flaky_server((tmp_path / "val-000000.tar").read_bytes(), first="none") as server:
        url = f"http://reader:s3cr%25t@127.0.0.1:{server.server_address[1]}/val-000000.tar"
        with deadline(20):
            assert val_keys(module(tmp_path, val_shards=url)) == ["a0", "a1"]
    assert server.authorizations == ["Basic cmVhZGVyOnMzY3IldA=="]


def test_a_stalled_pipe_is_killed_and_named(tmp_path):
    datamodule = module(tmp_path, val_shards="pipe:sleep 30", read_timeout=0.5, retries=0)
    start = time.monotonic()
    with deadline(20), pytest.raises(ShardReadError, match=r"shard 'pipe:sleep 30': no byte for 0.5 s .*not retried"):
        val_keys(datamodule)
    assert time.monotonic() - start < 3
    assert not [pid for pid in children(os.getpid()) if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"]


def test_pipe_commands_stream_shards_and_failing_ones_are_named(tmp_path):
    write_shard(tmp_path / "val-000000.tar", ["p0", "p1"], seed=2)
    with deadline(20):
        cat = f"pipe:cat {tmp_path / 'val-000000.tar'}"
        assert val_keys(module(tmp_path, val_shards=cat, retries=0)) == ["p0", "p1"]
        with pytest.raises(ShardReadError, match=r"shard 'pipe:exit 3': .*exited with status 3"):
            val_keys(module(tmp_path, val_shards="pipe:exit 3", retries=0))


# ---------------------------------------------------------------- 5: data errors name the shard and the key


def test_a_truncated_image_in_validation_names_the_shard_and_the_key(tmp_path):
    shard = tmp_path / "val-000000.tar"
    whole = gt_png(7)
    shard.write_bytes(tar_bytes([("v0.gt.png", gt_png()), ("v1.gt.png", whole[: len(whole) // 2])]))
    with pytest.raises(
        ValueError,
        match=rf"^sample 'v1' of shard '{shard}': its gt image does not decode: "
        r"OSError\('image file is truncated",
    ):
        val_keys(module(tmp_path, val_shards=str(shard)))


@pytest.mark.parametrize("stage", ["validation", "training"])
def test_all_members_corrupt_name_the_sample_not_a_bytesio(tmp_path, stage):
    shard = tmp_path / "junk-000000.tar"
    shard.write_bytes(tar_bytes([(f"bad{index}.gt.png", b"garbage") for index in range(3)]))
    if stage == "validation":
        with pytest.raises(ValueError) as caught:
            val_keys(module(tmp_path, val_shards=str(shard)))
    else:
        with pytest.warns(UserWarning), pytest.raises(RuntimeError) as caught:
            first_batches(module(tmp_path, train_shards=str(shard), max_consecutive_skips=4), 1)
    message = str(caught.value)
    assert f"sample 'bad0' of shard '{shard}'" in message if stage == "validation" else f"of shard '{shard}'" in message
    assert "not an image file PIL can read" in message and "BytesIO" not in message


def test_a_truncated_validation_tar_names_the_shard_and_the_member(tmp_path):
    members = [(f"k{index}.gt.png", gt_png(index)) for index in range(4)]
    whole = tar_bytes(members)
    cut = whole.find(b"k2.gt.png") + 512 + 50  # header block of k2, then 50 bytes of its data
    (tmp_path / "val-000000.tar").write_bytes(whole[:cut])
    with pytest.raises(ShardReadError, match=r"shard '.*val-000000\.tar' at member 'k2.gt.png': ReadError"):
        val_keys(module(tmp_path, val_shards=str(tmp_path / "val-000000.tar")))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_empty_validation_set_is_an_error_naming_the_shards(tmp_path, num_workers):
    for index in range(2):
        (tmp_path / f"val-{index:06d}.tar").write_bytes(EMPTY_TAR)
    datamodule = module(
        tmp_path,
        val_shards=str(tmp_path / "val-{000000..000001}.tar"),
        num_workers=num_workers,
        persistent_workers=False,
    )
    expected = rf"data.val_shards \['{tmp_path}/val-000000.tar', '{tmp_path}/val-000001.tar'\] hold no sample"
    with deadline(30), pytest.raises(ValueError, match=expected):
        val_keys(datamodule)


def test_trainer_validate_on_an_empty_set_fails_instead_of_reporting_nan(tmp_path):
    (tmp_path / "val-000000.tar").write_bytes(EMPTY_TAR)
    datamodule = ShardDataModule(val_shards=str(tmp_path / "val-000000.tar"), num_workers=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="hold no sample: the evaluation set is empty"):
        trainer.validate(MeanModel(), datamodule=datamodule)


def test_a_rank_without_a_share_of_a_nonempty_set_is_not_an_error(tmp_path):
    write_shard(tmp_path / "val-000000.tar", ["only"], seed=1)
    assert val_keys(module(tmp_path, val_shards=str(tmp_path / "val-000000.tar"), rank=1, world_size=2)) == []


# ---------------------------------------------------------------- 6: the layout comes from the configuration


class Halve:
    """A degradation: LQ = GT / 2 (only its presence matters to the layout)."""

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return img / 2


def paired_shard_whose_first_sample_lacks_lq(path: Path) -> None:
    """8 samples: ``s0`` gt only, ``s1``..``s7`` gt + a 2x smaller lq."""
    rng = np.random.default_rng(0)
    members = []
    for index in range(8):
        gt = (4 * rng.integers(0, 64, (*GT_SIZE, 3))).astype(np.uint8)
        members.append((f"s{index}.gt.png", png_bytes(gt)))
        if index:
            members.append((f"s{index}.lq.png", png_bytes(box_average(gt, 2).astype(np.uint8))))
    path.write_bytes(tar_bytes(members))


def train_on(tmp_path: Path, steps: int = 16, **kwargs) -> list[dict]:
    paired_shard_whose_first_sample_lacks_lq(tmp_path / "pairs-000000.tar")
    settings = dict(
        train_shards=str(tmp_path / "pairs-000000.tar"), batch_size=1, shuffle_buffer=0, scale=2, steps_per_epoch=steps
    )
    return first_batches(module(tmp_path, **{**settings, **kwargs}), steps)


def test_with_a_degradation_the_shards_lq_is_ignored_and_every_sample_used(tmp_path):
    with pytest.warns(UserWarning, match=r"training ignores the shards' lq images .*data.degradation makes lq"):
        batches = train_on(tmp_path, degradation=Halve())
    assert [batch["__key__"][0] for batch in batches] == [f"s{index}" for index in range(8)] * 2
    assert all("lq" not in batch and int(batch["n_skipped"]) == 0 for batch in batches)


def test_without_a_degradation_a_mixed_set_stops_and_asks_for_require_lq(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"mix samples with and without lq \(sample 's1' .* has one, sample 's0' "
        r".* has none\) and data.require_lq is not set",
    ):
        train_on(tmp_path)


def test_require_lq_skips_and_counts_samples_without_lq_naming_the_setting(tmp_path):
    with pytest.warns(UserWarning, match=r"sample 's0' of shard .* has no lq image .*data.require_lq is true"):
        batches = train_on(tmp_path, steps=14, require_lq=True)
    assert [batch["__key__"][0] for batch in batches] == [f"s{index}" for index in range(1, 8)] * 2
    assert all(batch["lq"].shape == (1, 3, 4, 4) for batch in batches)
    assert [int(batch["n_skipped"]) for batch in batches] == ([1] + [0] * 6) * 2


def test_require_lq_false_trains_on_every_gt(tmp_path):
    with pytest.warns(UserWarning, match=r"training ignores the shards' lq images .*data.require_lq is false"):
        batches = train_on(tmp_path, require_lq=False)
    assert sorted({batch["__key__"][0] for batch in batches}) == [f"s{index}" for index in range(8)]
    assert all(set(batch) == {"__key__", "gt", "n_skipped"} for batch in batches)


def test_an_lq_only_stream_ignores_gt_and_needs_lq(tmp_path):
    """require_gt=False: lq is what training reads; the shards' gt is ignored, and a gt-only sample is
    skipped and counted with a message naming the setting."""
    with pytest.warns(UserWarning) as record:
        batches = train_on(tmp_path, steps=14, require_gt=False, scale=1, crop_size=4)
    messages = [str(warning.message) for warning in record]
    assert any(
        "ignores the shards' gt images (warned once per worker): data.require_gt is false" in message
        for message in messages
    )
    assert any("'s0'" in message and "an LQ-only stream (data.require_gt: false)" in message for message in messages)
    assert all(set(batch) == {"__key__", "lq", "n_skipped"} for batch in batches)
    assert [batch["__key__"][0] for batch in batches] == [f"s{index}" for index in range(1, 8)] * 2


def test_a_batch_keeps_masks_only_when_every_sample_has_one_and_fills_missing_meta():
    pixels = (np.zeros((4, 4, 3), np.uint8), 255.0)
    mask = (np.zeros((4, 4, 1), np.uint8), 255.0)
    samples = [
        {"__key__": "a", "__url__": "u", "gt": pixels, "mask": mask, "meta": {"iso": 100}},
        {"__key__": "b", "__url__": "u", "gt": pixels},
    ]
    collate = Collate(SkipCounter(0))
    with pytest.warns(UserWarning, match=r"dropping the masks of batch \['a', 'b'\]"):
        batch = collate(samples)
    assert "mask" not in batch and batch["meta"] == [{"iso": 100}, {}]
    samples[1]["mask"] = mask
    assert collate(samples)["mask"].shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"samples \['a', 'b'\] of shards \['u'\] do not all have the same images"):
        collate([samples[0], {**samples[1], "lq": pixels}])


def test_an_adaptation_real_stream_of_paired_shards_trains_on_their_lq(tmp_path):
    """The real stream (require_gt=False) of AdaptationDataModule over paired shards: lq only, every sample."""
    write_shard(tmp_path / "real-000000.tar", ["r0", "r1"], seed=3, paired=True)
    real = module(tmp_path, train_shards=str(tmp_path / "real-000000.tar"), require_gt=False, scale=2, seed=8)
    with pytest.warns(UserWarning, match="ignores the shards' gt images"):
        batches = first_batches(real, 2)
    assert all(set(batch) == {"__key__", "lq", "n_skipped"} and batch["lq"].shape == (2, 3, 4, 4) for batch in batches)


@pytest.fixture(autouse=True)
def _no_leftover_children():
    """No test here may leave a process of its own behind (a pipe command, a loader worker)."""
    yield
    gc.collect()  # a loader whose iterator raised stops its workers when it is collected
    start = time.monotonic()
    while children(os.getpid()) and time.monotonic() - start < 5:  # workers being shut down
        time.sleep(0.05)
    leftovers = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in children(os.getpid())}
    assert not leftovers, f"processes left behind: {leftovers}"
