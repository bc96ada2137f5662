"""The behaviour every method inherits from RestorationModule: per-(rank, step) random draws and the
handling of non-finite losses, on a tiny method trained by a real Trainer on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ir_lightning.methods.base import NonFiniteLossError, RestorationModule


class Tiny(RestorationModule):
    """A 1x1 convolution trained with L1; the loss is NaN for the batches whose index is listed."""

    def __init__(self, nan_batches: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)
        self.net = nn.Conv2d(3, 3, 1)
        self.nan_batches = set(nan_batches)
        self.weights_seen: list[torch.Tensor] = []

    def training_loss(self, batch):
        self.weights_seen.append(self.net.weight.detach().clone())
        loss = (self.net(batch["lq"]) - batch["gt"]).abs().mean()
        return loss * float("nan") if int(batch["index"][0]) in self.nan_batches else loss


def batches(count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "gt": torch.rand(2, 3, 4, 4, generator=generator),
            "lq": torch.rand(2, 3, 4, 4, generator=generator),
            "index": torch.tensor([i, i]),
        }
        for i in range(count)
    ]


def fit(model: Tiny, tmp_path, count: int) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(model, DataLoader(batches(count), batch_size=None))
    return trainer


def draws(rank: int, step: int) -> torch.Tensor:
    model = Tiny()
    model._trainer = SimpleNamespace(global_rank=rank, global_step=step)
    model._base_seed = 0  # what seed_everything(0) gives on every rank
    return torch.rand(4, generator=model.training_generator())


def test_training_draws_are_a_function_of_seed_rank_and_step():
    assert torch.equal(draws(0, 3), draws(0, 3))  # a resumed run draws what the uninterrupted one drew
    assert not torch.equal(draws(0, 3), draws(1, 3))  # ranks draw different noise
    assert not torch.equal(draws(0, 3), draws(0, 4))


def test_a_nonfinite_step_is_skipped_and_counted(tmp_path):
    model = Tiny(nan_batches=(2, 3))
    trainer = fit(model, tmp_path, count=6)
    assert trainer.global_step == 6  # skipped steps count as steps (max_steps, LR and EMA schedules)
    assert model.nonfinite_steps == {"total": 2, "consecutive": 0}
    seen = model.weights_seen  # the weights at the start of each batch
    assert not torch.equal(seen[1], seen[2])  # good step 1 moved them
    assert torch.equal(seen[2], seen[3]) and torch.equal(seen[3], seen[4])  # NaN steps 2 and 3 did not
    assert not torch.equal(seen[4], seen[5])  # good step 4 moved them again
    assert float(trainer.callback_metrics["train/nonfinite_steps"]) == 2.0
    assert torch.load(tmp_path / "ckpt/last.ckpt", weights_only=True)["nonfinite_steps"]["total"] == 2


def test_too_many_consecutive_nonfinite_steps_stop_with_the_last_good_weights_saved(tmp_path):
    model = Tiny(nan_batches=(2, 3, 4), max_nonfinite_steps=3)
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive .*saved to .*last\.ckpt"):
        fit(model, tmp_path, count=6)
    saved = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=True)
    assert torch.equal(saved["state_dict"]["net.weight"], model.weights_seen[2])  # the weights after good step 1
    assert saved["global_step"] == 4 and saved["nonfinite_steps"] == {"total": 3, "consecutive": 3}


def test_max_nonfinite_steps_must_be_positive():
    with pytest.raises(ValueError, match="max_nonfinite_steps must be >= 1, got 0"):
        Tiny(max_nonfinite_steps=0)
