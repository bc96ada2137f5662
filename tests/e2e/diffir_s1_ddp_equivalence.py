"""Run by tests/e2e/test_ddp_every_method.py: `python -m tests.e2e.diffir_s1_ddp_equivalence DEVICES OUT` trains
the real `DiffIRS1` (tiny networks of `tests.helpers.nets.tiny_diffir(4, stage=1)`, x4) for a few steps on a fixed
global batch of 8 (per device: 8 / DEVICES) with the suite's EMA callback, and saves the final trained weights, the
EMA weights, the weights it started from and, per rank, the indices of the samples it trained on.

DiffIR stage 1 draws nothing at random in a training step (CPEN_S1 sees the LQ and the GT; L1 on pixels, no noise,
no dropout), so one process and two processes on the same global batch must end with the same weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

from ir_lightning.callbacks import EMA
from ir_lightning.cli import release_process_group
from ir_lightning.methods import DiffIRS1
from tests.ddp_equivalence import Data
from tests.helpers.nets import tiny_diffir

GLOBAL_BATCH, STEPS, SCALE, LQ_SIZE = 8, 4, 4, 8


class Pairs(Dataset):
    """STEPS * GLOBAL_BATCH fixed (gt, lq) pairs, x4: a 32 x 32 GT and its 8 x 8 average-pooled LQ."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.gt = torch.rand(STEPS * GLOBAL_BATCH, 3, LQ_SIZE * SCALE, LQ_SIZE * SCALE, generator=generator)
        self.lq = torch.nn.functional.avg_pool2d(self.gt, SCALE)

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, index: int) -> dict:
        return {"gt": self.gt[index], "lq": self.lq[index], "index": index}


class Recorded(DiffIRS1):
    """DiffIRS1 that records which samples each rank trained on."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[int] = []

    def training_loss(self, batch):
        self.seen += [int(i) for i in batch["index"]]
        return super().training_loss(batch)


def main(devices: int, out: Path) -> None:
    torch.manual_seed(1)  # the same initial weights in every process
    model = Recorded(**tiny_diffir(SCALE, stage=1), scale=SCALE, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
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
        default_root_dir=out,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=Data(devices, Pairs(), GLOBAL_BATCH))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seen{trainer.global_rank}.json").write_text(json.dumps(model.seen))
    # at the end of fit the EMA callback has copied the average into the model; it kept the trained weights
    torch.save(
        {"trained": ema._trained_state, "ema": model.state_dict(), "initial": initial},
        out / f"weights{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
    release_process_group()  # as the command line does: a gloo group left to the exit can abort it
