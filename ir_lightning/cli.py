"""Command line of ir-lightning: `ir-lightning` (also installed as `lightning`, and `python -m ir_lightning`).

- `ir-lightning fit|validate|test|predict -c recipes/<recipe>.yaml [-c overlay.yaml] [--key=value ...]`:
  LightningCLI, with the method (`model`) and the data module (`data`) chosen by `class_path`.
- `ir-lightning shards ...`: turn folders of images into WebDataset tar shards.
- `ir-lightning export CKPT OUT`: keep only what restoring needs (EMA weights, hyperparameters).
- `ir-lightning restore --ckpt CKPT --input FILE_OR_DIR --output DIR`: restore image files with any method.
- `ir-lightning demo ...`: the quick-start demo (shards from scikit-image's photos, SR3 x4 on the CPU).

This is the only module that reads the environment: W&B runs offline unless `WANDB_MODE` is set.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

import datamodules  # noqa: F401  (registers the data modules as subclasses for `class_path`)
import ir_lightning.methods  # noqa: F401  (registers the methods)
from ir_lightning.checkpoint_io import AtomicCheckpointIO
from ir_lightning.io import atomic_write_text
from ir_lightning.methods.base import RestorationModule
from ir_lightning.preemption import SlurmRequeue, in_slurm_job, newest_checkpoint

DESCRIPTION = """\
ir-lightning: diffusion-based image restoration with PyTorch Lightning.

Run a recipe:        ir-lightning fit -c recipes/sr3_x4.yaml
Overlay a recipe:    ir-lightning fit -c recipes/sr3_x4.yaml -c recipes/demo/sr3_x4_cpu.yaml
Resume a run:        ir-lightning fit -c <same recipes> --ckpt_path auto   (newest of last.ckpt and
                     the preemption checkpoints; or give a checkpoint's path)
Move a whole run:    ir-lightning fit -c <recipes> --run_dir runs/lr2e-4   (checkpoints, W&B files, config)
See every setting:   ir-lightning fit -c recipes/sr3_x4.yaml --print_config
SLURM:               sbatch slurm/train.sbatch <recipes and overrides>; ir-lightning sweep --help
Restore images:      ir-lightning restore --ckpt CKPT --input FILE_OR_DIR --output DIR
Score a test set:    ir-lightning evaluate --ckpt CKPT --preset set5_x4 --gt DIR [--lq DIR] --out DIR
Other commands:      ir-lightning shards --help | export --help | restore --help | demo --help
"""

RUN_DIR_HELP = """The run's directory: sets trainer.default_root_dir (preemption checkpoints), the dirpath of every
ModelCheckpoint (<run_dir>/checkpoints) and the save_dir of every WandbLogger, overriding the
recipe. Two runs of one recipe with different run_dir never overwrite or resume each other.
Applied after parsing: --print_config shows run_dir beside the recipe's own paths."""


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
    """LightningCLI in subclass mode for the method and the data module, with:

    - `--run_dir DIR`: one switch that moves every output of a run (see RUN_DIR_HELP);
    - `--ckpt_path auto`: resume from the run's newest checkpoint, or start afresh if it has none;
    - atomic checkpoint writes (`AtomicCheckpointIO`) unless the recipe brings its own checkpoint IO;
    - under SLURM, `SlurmRequeue` in place of Lightning's signal handler.
    """

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

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=Optional[str], default=None, help=RUN_DIR_HELP)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("run_dir"):
            place_run(config, config.run_dir)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not the user's choice
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if in_slurm_job() and not any(isinstance(c, SlurmRequeue) for c in trainer.callbacks):
            trainer.callbacks.append(SlurmRequeue())
        return trainer

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "auto":
            found = newest_checkpoint(self.trainer)
            where = f"{self.trainer.default_root_dir} and the checkpoint folders"
            rank_zero_info(f"--ckpt_path auto: resuming from {found}" if found else
                           f"--ckpt_path auto: no checkpoint in {where}; starting afresh")
            config["ckpt_path"] = str(found) if found else None


def place_run(config: Namespace, run_dir: str) -> None:
    """Point the config's run outputs into `run_dir` (see RUN_DIR_HELP)."""
    trainer = config.trainer
    trainer.default_root_dir = run_dir
    for entry in _class_entries(trainer.get("callbacks")):
        if entry.class_path.endswith("ModelCheckpoint"):
            entry.init_args.dirpath = os.path.join(run_dir, "checkpoints")
    for entry in _class_entries(trainer.get("logger")):
        if entry.class_path.endswith("WandbLogger"):
            entry.init_args.save_dir = run_dir


def _class_entries(value: Any) -> list[Namespace]:
    """The `class_path` entries of a config value that is one entry, a list of them, or anything else."""
    entries = value if isinstance(value, list) else [value]
    return [e for e in entries if isinstance(e, Namespace) and "class_path" in e and e.get("init_args") is not None]


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
    "restore": "ir_lightning.restore",
    "evaluate": "ir_lightning.evaluate",
    "sweep": "ir_lightning.sweep",
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
