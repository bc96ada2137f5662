"""Command line of ir-lightning: `ir-lightning` (also installed as `lightning`, and `python -m ir_lightning`).

- `ir-lightning fit|validate|test|predict -c recipes/<recipe>.yaml [-c overlay.yaml] [--key=value ...]`:
  LightningCLI, with the method (`model`) and the data module (`data`) chosen by `class_path`.
- `ir-lightning shards ...`: turn folders of images into WebDataset tar shards.
- `ir-lightning export CKPT OUT`: keep only what restoring needs (EMA weights, hyperparameters).
- `ir-lightning demo ...`: the quick-start demo (shards from scikit-image's photos, SR3 x4 on the CPU).

This is the only module that reads the environment: W&B runs offline unless `WANDB_MODE` is set.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

import datamodules  # noqa: F401  (registers the data modules as subclasses for `class_path`)
import ir_lightning.methods  # noqa: F401  (registers the methods)
from ir_lightning.io import atomic_write_text
from ir_lightning.methods.base import RestorationModule

DESCRIPTION = """\
ir-lightning: diffusion-based image restoration with PyTorch Lightning.

Run a recipe:        ir-lightning fit -c recipes/sr3_x4.yaml
Overlay a recipe:    ir-lightning fit -c recipes/sr3_x4.yaml -c recipes/demo/sr3_x4_cpu.yaml
Resume a run:        ir-lightning fit -c <same recipes> --ckpt_path runs/<name>/checkpoints/last.ckpt
See every setting:   ir-lightning fit -c recipes/sr3_x4.yaml --print_config
Other commands:      ir-lightning shards --help | export --help | demo --help
"""


class ConfigSaver(SaveConfigCallback):
    """Saves the resolved config beside the run and into the W&B run's config.

    Lightning's own callback refuses to start when `config.yaml` already exists in the log
    directory, which is what happens when a requeued job or a second run writes into the
    same directory with W&B as the first logger (W&B's log directory is not versioned). Here
    an identical config is left as it is, a different one is written under a new name
    (`config-<W&B run id or UTC time>.yaml`), and every write is atomic.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        # `trainer.log_dir` is a collective call (a broadcast): ask on every rank, here, and not
        # in `save_config`, which only rank 0 runs (asking there hangs DDP).
        self._log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        log_dir = self._log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        target = log_dir / self.config_filename
        if target.exists() and target.read_text() != text:
            target = log_dir / f"{target.stem}-{self._run_tag(trainer)}{target.suffix}"
        if not target.exists() or target.read_text() != text:
            atomic_write_text(target, text)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(yaml.safe_load(text), allow_val_change=True)

    @staticmethod
    def _run_tag(trainer: Trainer) -> str:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return str(logger.version)
        return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


class IRLightningCLI(LightningCLI):
    """LightningCLI in subclass mode for the method and the data module."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=RestorationModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=ConfigSaver,
            auto_configure_optimizers=False,
            parser_kwargs={"description": DESCRIPTION, "formatter_class": _raw_formatter()},
            args=args,
            run=run,
        )


def _raw_formatter():
    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return Formatter


SUBCOMMANDS = {
    "shards": "ir_lightning.shards",
    "demo": "ir_lightning.demo",
    "export": "ir_lightning.checkpoints",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ir-lightning` and `lightning` console scripts."""
    words = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network, unless the user asks for it
    if words and words[0] in SUBCOMMANDS:
        module = __import__(SUBCOMMANDS[words[0]], fromlist=["main"])
        return int(module.main(words[1:]) or 0)
    IRLightningCLI(args=argv)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
