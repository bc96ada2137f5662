"""Run by tests/test_ddp.py: `python -m tests.ddp_equivalence DEVICES OUT` trains a small deterministic
restorer for a few steps on a fixed global batch of 8 (per device: 8 / DEVICES) with the suite's
base module, EMA callback and checkpoint IO, and saves the final weights, the EMA weights and,
per rank, the indices of the samples it trained on. One sample's loss is NaN at step 2, on rank 1
only when there are two ranks: every rank must skip that step together."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ir_lightning.cli import release_process_group
from ir_lightning.methods.base import RestorationModule
from ir_lightning.training.callbacks import EMA
from ir_lightning.training.checkpoint_io import AtomicCheckpointIO

GLOBAL_BATCH, STEPS, NAN_STEP, NAN_SAMPLE = 8, 5, 2, 5  # sample 5 of each global batch: rank 1's under DDP


class Pairs(Dataset):
    """STEPS * GLOBAL_BATCH fixed (gt, lq) pairs; a NaN in one lq at step NAN_STEP."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.gt = torch.rand(STEPS * GLOBAL_BATCH, 3, 8, 8, generator=generator)
        self.lq = torch.rand(STEPS * GLOBAL_BATCH, 3, 8, 8, generator=generator)
        self.lq[NAN_STEP * GLOBAL_BATCH + NAN_SAMPLE, 0, 0, 0] = float("nan")

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, index: int) -> dict:
        return {"gt": self.gt[index], "lq": self.lq[index], "index": index}


class Restorer(RestorationModule):
    def __init__(self) -> None:
        super().__init__(optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 3, 3, padding=1))
        self.seen: list[int] = []

    def training_loss(self, batch):
        self.seen += [int(i) for i in batch["index"]]
        return (self.net(batch["lq"]) - batch["gt"]).abs().mean()


class Interleaved(torch.utils.data.Sampler):
    """Global batch b = samples b G .. b G + G - 1 of `n` whatever the device count: rank r of `world` takes every
    `world`-th sample."""

    def __init__(self, rank: int, world: int, n: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Data(pl.LightningDataModule):
    """`dataset` in global batches of `global_batch`, split across the devices by `Interleaved`."""

    def __init__(self, devices: int, dataset: Dataset, global_batch: int = GLOBAL_BATCH) -> None:
        super().__init__()
        self.devices, self.dataset, self.global_batch = devices, dataset, global_batch

    def train_dataloader(self) -> DataLoader:
        sampler = Interleaved(self.trainer.global_rank, self.trainer.world_size, len(self.dataset))
        return DataLoader(self.dataset, batch_size=self.global_batch // self.devices, sampler=sampler)


def main(devices: int, out: Path) -> None:
    model = Restorer()
    ema = EMA(decay=0.5)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=[ema],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=Data(devices, Pairs()))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seen{trainer.global_rank}.json").write_text(json.dumps(model.seen))
    if trainer.global_rank == 0:
        # at the end of fit the EMA callback has copied the average into the model; it kept the trained weights
        torch.save(
            {"trained": ema._trained_state, "ema": model.state_dict(), "nonfinite": model.nonfinite_steps},
            out / "weights.pt",
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
    release_process_group()  # as the command line does: a gloo group left to the exit can abort it
