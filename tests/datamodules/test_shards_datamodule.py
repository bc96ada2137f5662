"""Tests of ShardDataModule on tiny shards written in tmp_path (CPU, no network beyond 127.0.0.1)."""

import functools
import http.server
import io
import itertools
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import ShardDataModule

GT_SIZE = (16, 24)
"""Height and width of the tiny GT images, in pixels."""


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode a uint8 or uint16 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive holding ``(name, data)`` members in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def box_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of an ``H x W x C`` array (numpy reference)."""
    height, width, channels = image.shape
    blocks = image.reshape(height // factor, factor, width // factor, factor, channels)
    return blocks.mean(axis=(1, 3))


def write_shard(path: Path, keys: list[str], seed: int, paired: bool = False) -> dict[str, np.ndarray]:
    """Write RGB GT images (and exact 2x2 box-average LQ images when ``paired``); return the GTs."""
    rng = np.random.default_rng(seed)
    members, gts = [], {}
    for key in keys:
        # multiples of 4: every 2x2 block sum is a multiple of 4, so its mean is an exact uint8
        gt = (4 * rng.integers(0, 64, (*GT_SIZE, 3))).astype(np.uint8)
        members.append((f"{key}.gt.png", png_bytes(gt)))
        if paired:
            members.append((f"{key}.lq.png", png_bytes(box_average(gt, 2).astype(np.uint8))))
        gts[key] = gt
    path.write_bytes(tar_bytes(members))
    return gts


def fake_trainer(rank: int = 0, world_size: int = 1, training: bool = True, step: int = 0) -> SimpleNamespace:
    """The trainer attributes ShardDataModule reads."""
    return SimpleNamespace(
        global_rank=rank, world_size=world_size, current_epoch=0, training=training, global_step=step
    )


def module(tmp_path: Path, rank: int = 0, world_size: int = 1, **kwargs) -> ShardDataModule:
    """A set-up module with tiny defaults; ``kwargs`` override them."""
    settings = dict(crop_size=8, batch_size=2, steps_per_epoch=3, num_workers=0, shuffle_buffer=4, seed=7)
    datamodule = ShardDataModule(**{**settings, **kwargs})
    datamodule.trainer = fake_trainer(rank, world_size)
    datamodule.setup("fit" if datamodule.shards["train_shards"] is not None else "validate")
    return datamodule


def first_batches(datamodule: ShardDataModule, count: int) -> list[dict]:
    """The first ``count`` training batches (the loader's workers are stopped afterwards)."""
    loader = datamodule.train_dataloader()
    batches = list(itertools.islice(iter(loader), count))
    loader.close()
    return batches


@pytest.fixture()
def train_shards(tmp_path: Path) -> str:
    """Two unpaired shards of 3 samples each, as a brace pattern."""
    for index in range(2):
        write_shard(tmp_path / f"train-{index:06d}.tar", [f"s{index}x{k}" for k in range(3)], seed=index)
    return str(tmp_path / "train-{000000..000001}.tar")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_batches_have_crop_shape_unit_range_and_fixed_epoch_length(train_shards, tmp_path, num_workers):
    datamodule = module(tmp_path, train_shards=train_shards, num_workers=num_workers)
    loader = datamodule.train_dataloader()
    for _epoch in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == 3
        for batch in batches:
            assert batch["gt"].shape == (2, 3, 8, 8) and batch["gt"].dtype == torch.float32
            assert 0.0 <= batch["gt"].min() and batch["gt"].max() <= 1.0
            assert len(batch["__key__"]) == 2 and batch["n_skipped"].dtype == torch.int64
            assert batch["n_skipped"].ndim == 0 and int(batch["n_skipped"]) == 0
    datamodule.teardown("fit")


def test_paired_crops_stay_aligned_through_flips_and_rotations(tmp_path):
    write_shard(tmp_path / "pair-000000.tar", [f"p{k}" for k in range(4)], seed=3, paired=True)
    datamodule = module(tmp_path, train_shards=str(tmp_path / "pair-*.tar"), scale=2, steps_per_epoch=8)
    checked = 0
    for batch in datamodule.train_dataloader():
        assert batch["lq"].shape == (2, 3, 4, 4)
        gt = batch["gt"].permute(0, 2, 3, 1).numpy()
        for index in range(2):
            reference = box_average(gt[index].astype(np.float64), 2)
            lq = batch["lq"][index].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(lq, reference, atol=1e-6)
            checked += 1
    assert checked == 16


def test_crops_are_flipped_and_rotated_copies_of_the_source(tmp_path):
    gts = write_shard(tmp_path / "one-000000.tar", ["only"], seed=5)
    datamodule = module(
        tmp_path,
        train_shards=str(tmp_path / "one-000000.tar"),
        crop_size=16,
        batch_size=1,
        steps_per_epoch=40,
        shuffle_buffer=0,
    )
    source = gts["only"].astype(np.float32) / 255.0
    seen = set()
    for batch in datamodule.train_dataloader():
        crop = batch["gt"][0].permute(1, 2, 0).numpy()
        matches = [
            (mirror, turns, left)
            for mirror, turns, left in itertools.product((False, True), range(4), range(GT_SIZE[1] - 16 + 1))
            if np.array_equal(np.rot90(source[:, left : left + 16][:, :: -1 if mirror else 1], turns), crop)
        ]
        assert matches, "a crop is not a flipped/rotated window of the source"
        seen.add(matches[0][:2])
    # 40 draws from 8 equally likely symmetries miss one with probability <= 8 * (7/8)^40 ~ 0.038;
    # the seed is fixed, so this checks that flips and rotations both happen
    assert len(seen) >= 6


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_and_rank_repeat_and_other_rank_differs(train_shards, tmp_path, num_workers):
    runs = [
        first_batches(module(tmp_path, train_shards=train_shards, rank=rank, num_workers=num_workers), 2)
        for rank in (0, 0, 1)
    ]
    for first, again in zip(runs[0], runs[1]):
        assert first["__key__"] == again["__key__"]
        assert torch.equal(first["gt"], again["gt"])
    assert not all(torch.equal(a["gt"], b["gt"]) for a, b in zip(runs[0], runs[2]))


def test_undecodable_gt_is_skipped_and_counted(tmp_path):
    good = png_bytes(np.zeros((*GT_SIZE, 3), np.uint8))
    members = [("a.gt.png", good), ("bad.gt.png", b"not a png at all"), ("c.gt.png", good)]
    (tmp_path / "bad-000000.tar").write_bytes(tar_bytes(members))
    datamodule = module(
        tmp_path, train_shards=str(tmp_path / "bad-000000.tar"), batch_size=1, shuffle_buffer=0, steps_per_epoch=4
    )
    with pytest.warns(UserWarning, match="skipping corrupt"):
        batches = list(datamodule.train_dataloader())
    # one shard read twice: a, (bad skipped) c, a, (bad skipped) c
    assert [batch["__key__"][0] for batch in batches] == ["a", "c", "a", "c"]
    assert [int(batch["n_skipped"]) for batch in batches] == [0, 1, 0, 1]


def test_truncated_tar_is_skipped_and_the_stream_continues(tmp_path):
    members = [(f"k{index}.gt.png", png_bytes(np.full((*GT_SIZE, 3), index, np.uint8))) for index in range(4)]
    whole = tar_bytes(members)
    cut = whole.find(b"k2.gt.png") + 512 + 50  # header block of k2, then 50 bytes of its data
    (tmp_path / "cut-000000.tar").write_bytes(whole[:cut])
    datamodule = module(
        tmp_path, train_shards=str(tmp_path / "cut-000000.tar"), batch_size=1, shuffle_buffer=0, steps_per_epoch=6
    )
    with pytest.warns(UserWarning, match="skipping corrupt"):
        batches = list(datamodule.train_dataloader())
    assert len(batches) == 6
    assert {batch["__key__"][0] for batch in batches} == {"k0", "k1"}
    assert all(int(batch["n_skipped"]) > 0 for batch in batches if batch["__key__"][0] == "k1")


def test_a_run_of_failures_longer_than_the_limit_stops_the_stream(tmp_path):
    members = [(f"bad{index}.gt.png", b"garbage") for index in range(3)]
    (tmp_path / "junk-000000.tar").write_bytes(tar_bytes(members))
    datamodule = module(tmp_path, train_shards=str(tmp_path / "junk-000000.tar"), max_consecutive_skips=4)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="5 training shard draws or samples in a row"):
        first_batches(datamodule, 1)


def test_image_smaller_than_crop_is_skipped_with_one_warning(tmp_path):
    members = [
        ("small.gt.png", png_bytes(np.zeros((4, 4, 3), np.uint8))),
        ("big.gt.png", png_bytes(np.zeros((*GT_SIZE, 3), np.uint8))),
    ]
    (tmp_path / "mixed-000000.tar").write_bytes(tar_bytes(members))
    datamodule = module(
        tmp_path, train_shards=str(tmp_path / "mixed-000000.tar"), batch_size=1, shuffle_buffer=0, steps_per_epoch=3
    )
    with pytest.warns(UserWarning, match="small") as record:
        batches = list(datamodule.train_dataloader())
    assert sum("'small'" in str(warning.message) for warning in record) == 1
    assert [int(batch["n_skipped"]) for batch in batches] == [1, 1, 1]


def test_validation_reads_every_sample_once_in_order(tmp_path):
    write_shard(tmp_path / "val-000000.tar", ["v0", "v1", "v2"], seed=1)
    write_shard(tmp_path / "val-000001.tar", ["v3", "v4"], seed=2)
    pattern = str(tmp_path / "val-{000000..000001}.tar")
    for num_workers in (0, 2):
        datamodule = module(tmp_path, val_shards=pattern, num_workers=num_workers, persistent_workers=False)
        keys = [key for batch in datamodule.val_dataloader() for key in batch["__key__"]]
        assert keys == ["v0", "v1", "v2", "v3", "v4"]


def test_validation_splits_samples_across_two_ranks(tmp_path):
    write_shard(tmp_path / "val-000000.tar", ["v0", "v1", "v2"], seed=1)
    share = {}
    for rank in (0, 1):
        datamodule = module(tmp_path, val_shards=str(tmp_path / "val-000000.tar"), rank=rank, world_size=2)
        share[rank] = [key for batch in datamodule.val_dataloader() for key in batch["__key__"]]
    assert share == {0: ["v0", "v2"], 1: ["v1"]}


def test_validation_centre_crop_matches_numpy(tmp_path):
    gts = write_shard(tmp_path / "val-000000.tar", ["v0"], seed=4)
    datamodule = module(tmp_path, val_shards=str(tmp_path / "val-000000.tar"), val_crop_size=8)
    batch = next(iter(datamodule.val_dataloader()))
    top, left = (GT_SIZE[0] - 8) // 2, (GT_SIZE[1] - 8) // 2
    expected = gts["v0"][top : top + 8, left : left + 8].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(batch["gt"][0].numpy(), expected, atol=1e-7)


def test_missing_shards_raise_with_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-{000000..000001}.tar")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        ShardDataModule(train_shards=pattern).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"\*"):
        ShardDataModule(train_shards=str(tmp_path / "none-*.tar")).setup("fit")
    with pytest.raises(ValueError, match="data.train_shards"):
        ShardDataModule(train_shards=[]).setup("fit")


def test_http_and_pipe_urls_give_the_local_keys(tmp_path):
    write_shard(tmp_path / "val-000000.tar", ["h0", "h1", "h2"], seed=6)
    local_path = tmp_path / "val-000000.tar"

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            """Keep the test output clean."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        keys = {}
        for name, url in {
            "local": str(local_path),
            "http": f"http://127.0.0.1:{port}/val-000000.tar",
            "pipe": f"pipe:cat {local_path}",
        }.items():
            datamodule = module(tmp_path, val_shards=url)
            keys[name] = [key for batch in datamodule.val_dataloader() for key in batch["__key__"]]
    finally:
        server.shutdown()
        server.server_close()
    assert keys["local"] == ["h0", "h1", "h2"]
    assert keys["http"] == keys["local"] and keys["pipe"] == keys["local"]


class Halve:
    """A degradation that halves the image."""

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return img / 2


class AddNoise:
    """A random degradation: adds uniform noise drawn from ``generator``."""

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return img + torch.rand(img.shape, generator=generator, device=img.device)


def test_degradation_hook_makes_lq_only_when_absent():
    datamodule = ShardDataModule(degradation=Halve())
    gt = torch.rand(2, 3, 4, 4)
    batch = datamodule.on_after_batch_transfer({"gt": gt, "__key__": ["a", "b"]}, 0)
    torch.testing.assert_close(batch["lq"], gt / 2, rtol=0, atol=0)
    lq = torch.rand(2, 3, 2, 2)
    paired = datamodule.on_after_batch_transfer({"gt": gt, "lq": lq, "__key__": ["a", "b"]}, 0)
    assert paired["lq"] is lq


def test_validation_degradation_repeats_and_training_degradation_is_a_function_of_rank_and_step():
    datamodule = ShardDataModule(degradation=AddNoise())
    gt = torch.zeros(1, 3, 4, 4)

    def lq(training: bool, step: int = 0, rank: int = 0) -> torch.Tensor:
        datamodule.trainer = fake_trainer(training=training, step=step)
        datamodule.rank = rank
        return datamodule.on_after_batch_transfer({"gt": gt, "__key__": ["k"]}, 0)["lq"]

    assert torch.equal(lq(training=False), lq(training=False))
    assert torch.equal(lq(training=True, step=5), lq(training=True, step=5))  # a resumed run redraws the same
    assert not torch.equal(lq(training=True, step=5), lq(training=True, step=6))
    assert not torch.equal(lq(training=True, step=5), lq(training=True, step=5, rank=1))


class MeanModel(pl.LightningModule):
    """A one-parameter model whose loss reads the batch, to drive Trainer.fit; records val keys."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = 0
        self.val_keys: list[str] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen += len(batch["__key__"])
        return (self.weight - batch["gt"].mean()) ** 2

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_keys.extend(batch["__key__"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("with_val", "limit_val_batches", "val_keys_seen"),
    [
        (False, 1.0, 0),  # no val_shards: no validation loop
        (True, 0, 0),  # validation switched off
        (True, 1.0, 2 * 3),  # 2 epochs x the 3 validation samples
    ],
)
def test_trainer_fit_with_and_without_validation(train_shards, tmp_path, with_val, limit_val_batches, val_keys_seen):
    val_shards = None
    if with_val:
        write_shard(tmp_path / "val-000000.tar", ["v0", "v1", "v2"], seed=1)
        val_shards = str(tmp_path / "val-000000.tar")
    datamodule = ShardDataModule(
        train_shards=train_shards,
        val_shards=val_shards,
        crop_size=8,
        batch_size=2,
        steps_per_epoch=2,
        num_workers=0,
        shuffle_buffer=0,
    )
    model = MeanModel()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 4 and model.seen == 8
    assert len(model.val_keys) == val_keys_seen
    assert sorted(set(model.val_keys)) == (["v0", "v1", "v2"] if val_keys_seen else [])


def batch_ids(batches: list[dict]) -> list[tuple]:
    """What identifies a training batch: its keys and the exact pixels of its crops."""
    return [(tuple(b["__key__"]), b["gt"].numpy().tobytes()) for b in batches]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("taken", [0, 1, 4, 5])
def test_a_resumed_stream_continues_with_the_batches_of_an_uninterrupted_one(
    train_shards, tmp_path, num_workers, taken
):
    """Epochs of 5 batches; the checkpoint is taken after ``taken`` batches of epoch 1 (5 = at its end)."""

    def loader():
        datamodule = module(tmp_path, train_shards=train_shards, num_workers=num_workers, steps_per_epoch=5)
        datamodule.trainer = None  # without a trainer, epochs count the iter() calls
        return datamodule.train_dataloader()

    uninterrupted = loader()
    epochs = [batch_ids(list(uninterrupted)) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # each epoch draws anew

    interrupted = loader()
    list(interrupted)  # epoch 0
    seen = batch_ids(list(itertools.islice(iter(interrupted), taken)))
    assert seen == epochs[1][:taken]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": taken, "steps": 5}

    resumed = loader()
    resumed.load_state_dict(state)
    rest = batch_ids(list(resumed))
    if taken < 5:
        assert rest == epochs[1][taken:]  # the same batches, in order, crops and flips included
        rest = batch_ids(list(resumed))
    assert rest == epochs[2]
    for stream in (uninterrupted, interrupted, resumed):
        stream.close()  # stop the workers now, not whenever the garbage collector gets to them


def test_resuming_with_another_epoch_length_warns_and_starts_the_next_epoch(train_shards, tmp_path):
    loader = module(tmp_path, train_shards=train_shards, steps_per_epoch=4).train_dataloader()
    with pytest.warns(UserWarning, match="steps_per_epoch changed from 5 to 4"):
        loader.load_state_dict({"epoch": 2, "batches": 3, "steps": 5})
    iter(loader)
    assert loader.epoch == 3


def test_one_shard_feeds_two_ranks_of_two_workers_each(tmp_path):
    """Fewer shards than ranks x workers: training resamples shards, so every worker of every rank
    streams (no rank waits for a shard of its own), and the ranks' batches differ."""
    write_shard(tmp_path / "only-000000.tar", ["a", "b", "c"], seed=1)
    streams = []
    for rank in (0, 1):
        datamodule = module(
            tmp_path,
            train_shards=str(tmp_path / "only-000000.tar"),
            rank=rank,
            world_size=2,
            num_workers=2,
            steps_per_epoch=4,
        )
        loader = datamodule.train_dataloader()
        streams.append(batch_ids(list(loader)))
        loader.close()
    assert [len(s) for s in streams] == [4, 4]
    assert streams[0] != streams[1]


def test_val_resize_scales_every_image_to_the_protocol_size(tmp_path):
    """The fixed-size protocol: GT to val_resize, a 2x smaller LQ to val_resize / 2, by antialiased
    bicubic (checked against torch directly), values kept in [0, 1]."""
    gts = write_shard(tmp_path / "pair-000000.tar", ["p0"], seed=9, paired=True)
    datamodule = module(tmp_path, val_shards=str(tmp_path / "pair-000000.tar"), scale=2, val_resize=8)
    (batch,) = list(datamodule.val_dataloader())
    assert batch["gt"].shape == (1, 3, 8, 8) and batch["lq"].shape == (1, 3, 4, 4)
    source = torch.from_numpy(gts["p0"].astype(np.float32)).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(source, size=(8, 8), mode="bicubic", antialias=True).clamp(0, 255) / 255
    torch.testing.assert_close(batch["gt"], expected, rtol=0, atol=1e-6)
    assert 0 <= float(batch["lq"].min()) and float(batch["lq"].max()) <= 1
    with pytest.raises(ValueError, match=r"data.val_resize \(7\) must be a positive multiple of data.scale \(2\)"):
        ShardDataModule(scale=2, crop_size=8, val_resize=7)


def test_train_resize_feeds_whole_images_resized_to_the_crop_size(tmp_path):
    """RDDM's official training: the whole image resized (antialiased bicubic, as val_resize), not a crop; the
    resized image of each key, up to a flip, is what the batch holds."""
    gts = write_shard(tmp_path / "pair-000000.tar", ["p0", "p1"], seed=3, paired=True)
    datamodule = module(
        tmp_path, train_shards=str(tmp_path / "pair-000000.tar"), scale=2, crop_size=8, train_resize=True, rot90=False
    )
    (batch,) = first_batches(datamodule, 1)
    assert batch["gt"].shape == (2, 3, 8, 8) and batch["lq"].shape == (2, 3, 4, 4)
    for index, key in enumerate(batch["__key__"]):
        source = torch.from_numpy(gts[key].astype(np.float32)).permute(2, 0, 1)[None]
        expected = torch.nn.functional.interpolate(source, size=(8, 8), mode="bicubic", antialias=True)
        expected = expected.clamp(0, 255)[0] / 255
        seen = batch["gt"][index]
        assert min(float((seen - view).abs().max()) for view in (expected, expected.flip(-1))) < 1e-6, key
