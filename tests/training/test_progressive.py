"""Progressive patch training: ProgressivePatches sets each epoch's crop and batch size through the
data module's ``train_sizes`` hook; batches have the scheduled shapes, resume replays the same
batches, and bad schedules fail at once with the argument named."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from datamodules import ShardDataModule
from ir_lightning.training.callbacks import ProgressivePatches
from tests.datamodules.test_shards_datamodule import batch_ids, write_shard

MILESTONES, CROP_SIZES, BATCH_SIZES = [2, 6], [8, 12, 16], [3, 2, 1]
"""A three-phase schedule for epochs of 2 batches: epoch 0, epochs 1-2, epochs 3 on (GT images are 16 x 24)."""

EXPECTED_PER_STEP = [(8, 3)] * 2 + [(12, 2)] * 4 + [(16, 1)] * 2
"""(crop_size, batch_size) of training batches 0..7 under that schedule."""


def schedule() -> ProgressivePatches:
    return ProgressivePatches(milestones=MILESTONES, crop_sizes=CROP_SIZES, batch_sizes=BATCH_SIZES)


@pytest.fixture()
def train_shards(tmp_path: Path) -> str:
    """Two unpaired shards of 3 samples of 16 x 24 pixels each."""
    for index in range(2):
        write_shard(tmp_path / f"train-{index:06d}.tar", [f"s{index}x{k}" for k in range(3)], seed=index)
    return str(tmp_path / "train-{000000..000001}.tar")


def data(train_shards: str, **kwargs) -> ShardDataModule:
    """A set-up data module with 2-batch epochs whose own sizes (crop 4, batch 5) no phase uses."""
    settings = dict(
        train_shards=train_shards, crop_size=4, batch_size=5, steps_per_epoch=2, num_workers=0, shuffle_buffer=4, seed=7
    )
    datamodule = ShardDataModule(**{**settings, **kwargs})
    datamodule.setup("fit")
    return datamodule


def install(callback: ProgressivePatches, datamodule: ShardDataModule, accumulate: int = 1) -> None:
    """Run the callback's fit setup against ``datamodule`` (with the trainer attributes it reads)."""
    trainer = SimpleNamespace(datamodule=datamodule, accumulate_grad_batches=accumulate)
    callback.setup(trainer, None, "fit")


def epochs_of(datamodule: ShardDataModule, count: int, state: dict | None = None) -> list[list[dict]]:
    """``count`` epochs of training batches (epochs count iter() calls: no trainer); from ``state`` if given."""
    datamodule.trainer = None
    loader = datamodule.train_dataloader()
    if state is not None:
        loader.load_state_dict(state)
    epochs = [list(loader) for _ in range(count)]
    loader.close()
    return epochs


def shapes(batches: list[dict]) -> list[tuple[int, int]]:
    """(crop side, batch size) of each batch, checking the crops are square."""
    assert all(b["gt"].shape[-1] == b["gt"].shape[-2] for b in batches)
    return [(b["gt"].shape[-1], b["gt"].shape[0]) for b in batches]


def test_each_batch_and_epoch_falls_in_its_phase(train_shards):
    callback = schedule()
    assert [callback.sizes_at(batch) for batch in range(9)] == EXPECTED_PER_STEP + [(16, 1)]
    install(callback, data(train_shards))
    assert [callback.epoch_sizes(epoch) for epoch in range(5)] == [(8, 3), (12, 2), (12, 2), (16, 1), (16, 1)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_data_module_yields_the_scheduled_shapes_each_epoch(train_shards, num_workers):
    datamodule = data(train_shards, num_workers=num_workers)
    assert shapes(epochs_of(datamodule, 1)[0]) == [(4, 5)] * 2  # no callback: the module's own sizes
    callback = schedule()
    install(callback, datamodule)
    epochs = epochs_of(datamodule, 4)
    assert [shape for epoch in epochs for shape in shapes(epoch)] == EXPECTED_PER_STEP
    callback.teardown(SimpleNamespace(datamodule=datamodule), None, "fit")
    assert datamodule.train_sizes is None
    assert shapes(epochs_of(datamodule, 1)[0]) == [(4, 5)] * 2


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("state", [{"epoch": 2, "batches": 1, "steps": 2}, {"epoch": 1, "batches": 2, "steps": 2}])
def test_a_stream_resumed_mid_phase_continues_with_the_uninterrupted_batches(train_shards, num_workers, state):
    """Phase 1 is epochs 1-2: resume within its second epoch, or at the end of its first."""
    uninterrupted = data(train_shards, num_workers=num_workers)
    install(schedule(), uninterrupted)
    flat = [batch for epoch in epochs_of(uninterrupted, 4) for batch in epoch]

    resumed = data(train_shards, num_workers=num_workers)
    install(schedule(), resumed)
    rest = [batch for epoch in epochs_of(resumed, 4 - state["epoch"] - state["batches"] // 2, state) for batch in epoch]
    start = state["epoch"] * 2 + state["batches"]
    assert shapes(rest) == EXPECTED_PER_STEP[start:]
    assert batch_ids(rest) == batch_ids(flat[start:])  # keys and exact pixels


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(milestones=[4, 2]), r"ProgressivePatches.milestones .* strictly increasing, got \[4, 2\]"),
        (dict(milestones=[0, 2]), r"ProgressivePatches.milestones must be > 0"),
        (dict(crop_sizes=[8, 12]), r"ProgressivePatches.crop_sizes needs one entry per phase, .* = 3, got 2"),
        (dict(batch_sizes=[3, 2, 1, 1]), r"ProgressivePatches.batch_sizes needs one entry per phase, .* = 3, got 4"),
        (dict(batch_sizes=[3, 0, 1]), r"ProgressivePatches.batch_sizes must all be >= 1, got \[3, 0, 1\]"),
        (dict(crop_sizes=[8, -4, 16]), r"ProgressivePatches.crop_sizes must all be >= 1"),
    ],
)
def test_a_malformed_schedule_names_the_argument(kwargs, message):
    settings = dict(milestones=MILESTONES, crop_sizes=CROP_SIZES, batch_sizes=BATCH_SIZES)
    with pytest.raises(ValueError, match=message):
        ProgressivePatches(**{**settings, **kwargs})


def test_settings_that_do_not_fit_the_data_module_name_both_values(train_shards):
    with pytest.raises(ValueError, match=r"crop_sizes \(\[8, 12, 16\]\): 12 is not a multiple of data.scale \(8\)"):
        install(schedule(), data(train_shards, scale=8, crop_size=8))
    uneven = ProgressivePatches(milestones=[1000, 2500], crop_sizes=CROP_SIZES, batch_sizes=BATCH_SIZES)
    with pytest.raises(
        ValueError,
        match=r"milestones \[2500\] are not multiples of data.steps_per_epoch \(1000\): "
        r".* a divisor of 500 .* e\.g\. 500",
    ):
        install(uneven, data(train_shards, steps_per_epoch=1000))
    with pytest.raises(ValueError, match="needs a data module with a train_sizes hook"):
        install(schedule(), None)


def test_accumulation_warns_where_the_phases_start_in_optimizer_steps(train_shards):
    with pytest.warns(UserWarning, match=r"accumulate_grad_batches 2 the phases start at optimizer steps \[1, 3\]"):
        install(schedule(), data(train_shards), accumulate=2)


def test_resuming_with_another_epoch_length_or_shorter_epochs_is_refused(train_shards):
    callback = schedule()
    install(callback, data(train_shards))
    assert callback.state_dict() == {"steps_per_epoch": 2}
    callback.load_state_dict({"steps_per_epoch": 2})
    with pytest.raises(
        ValueError, match=r"trained with data.steps_per_epoch 4, .* resume with data.steps_per_epoch: 4"
    ):
        callback.load_state_dict({"steps_per_epoch": 4})
    limited = SimpleNamespace(num_training_batches=1, limit_train_batches=1)
    with pytest.raises(ValueError, match=r"trainer.limit_train_batches \(1\) makes them 1"):
        callback.on_train_start(limited, None)


class Recorder(Logger):
    """A logger that keeps every logged row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing to keep."""


class BatchRecorder(pl.LightningModule):
    """A one-parameter model whose loss reads the batch; records what each training step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, dict] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen[self.trainer.global_step] = {"__key__": batch["__key__"], "gt": batch["gt"].clone()}
        return (self.weight - batch["gt"].mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(train_shards: str, root: Path, num_workers: int, ckpt_path: Path | None = None) -> tuple[dict, Recorder]:
    """8 steps (4 epochs of 2) with the schedule, a checkpoint after every step; what the model saw, logged rows."""
    model, logger = BatchRecorder(), Recorder()
    checkpoints = ModelCheckpoint(
        dirpath=root, filename="step{step}", every_n_train_steps=1, save_top_k=-1, auto_insert_metric_name=False
    )
    trainer = pl.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        default_root_dir=root,
        callbacks=[schedule(), checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data(train_shards, num_workers=num_workers), ckpt_path=ckpt_path)
    assert trainer.global_step == 8
    return model.seen, logger


@pytest.mark.parametrize("num_workers", [0, 2])
def test_trainer_steps_see_the_scheduled_shapes_and_a_resumed_fit_the_same_batches(train_shards, tmp_path, num_workers):
    seen, logger = fit(train_shards, tmp_path / "uninterrupted", num_workers)
    assert sorted(seen) == list(range(8))
    assert shapes([seen[step] for step in range(8)]) == EXPECTED_PER_STEP
    logged = [(row["train/crop_size"], row["train/batch_size"]) for row in logger.rows if "train/crop_size" in row]
    assert logged == EXPECTED_PER_STEP
    for step in (3, 4):  # in phase 1: in the middle of epoch 1, and at the end of it
        resumed, _ = fit(
            train_shards, tmp_path / f"from{step}", num_workers, tmp_path / f"uninterrupted/step{step}.ckpt"
        )
        assert sorted(resumed) == list(range(step, 8))
        assert shapes([resumed[s] for s in range(step, 8)]) == EXPECTED_PER_STEP[step:]
        assert batch_ids([resumed[s] for s in range(step, 8)]) == batch_ids([seen[s] for s in range(step, 8)])
