"""A callback for the DDP test: each rank records what it trained on and where it ended."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl


class RankProbe(pl.Callback):
    """Writes `<out_dir>/rank<r>.json`: per step the batch keys and a checksum of the crops,
    and at the end the sum of all parameters (equal on every rank if DDP kept them in sync)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.steps.append({"keys": list(batch["__key__"]), "checksum": float(batch["gt"].double().sum())})

    def on_train_end(self, trainer, pl_module) -> None:
        total = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "steps": self.steps, "param_sum": total}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
