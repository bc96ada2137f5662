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

import glob
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

import ir_lightning.methods  # noqa: F401  (registers the methods)
from datamodules import AdaptationDataModule, ShardDataModule  # noqa: F401  (registers the subclasses)
from ir_lightning import entry
from ir_lightning.errors import DataError
from ir_lightning.io.atomic import atomic_write_text
from ir_lightning.io.weights import is_model_folder, is_safetensors
from ir_lightning.methods.base import RestorationModule
from ir_lightning.packaged import BASE_RECIPE, resolve_configs
from ir_lightning.training.callbacks import EMA, ImageGridLogger, Throughput, WandbSummaries
from ir_lightning.training.checkpoint_io import AtomicCheckpointIO
from ir_lightning.training.preemption import FinalCheckpoint, SlurmRequeue, newest_checkpoint
from ir_lightning.training.run_checks import ConfigurationError, check_checkpoint_fits, check_config_files, check_scales
from ir_lightning.training.run_lock import RunLock, lock_before_fit

DESCRIPTION = """\
ir-lightning: diffusion-based image restoration with PyTorch Lightning.

Run a recipe:        ir-lightning fit -c recipes/sr3_x4.yaml   (or -c sr3_x4: the recipe installed with the
                     package; `ir-lightning recipes` lists them)
Overlay a recipe:    ir-lightning fit -c recipes/sr3_x4.yaml -c recipes/demo/sr3_x4_cpu.yaml
Resume a run:        ir-lightning fit -c <same recipes> --ckpt_path auto   (newest of last.ckpt and
                     the preemption checkpoints; or give a checkpoint's path)
Move a whole run:    ir-lightning fit -c <recipes> --run_dir runs/lr2e-4   (checkpoints, W&B files, config)
See every setting:   ir-lightning fit -c recipes/sr3_x4.yaml --print_config
SLURM:               sbatch slurm/train.sbatch <recipes and overrides>; ir-lightning sweep --help
Restore images:      ir-lightning restore --ckpt CKPT --input FILE_OR_DIR --output DIR
Score a test set:    ir-lightning evaluate --ckpt CKPT --preset set5_x4 --gt DIR [--lq DIR] --out DIR
Other commands:      ir-lightning shards --help | export --help | restore --help | demo --help | recipes
Version:             ir-lightning --version
"""

RUN_NAME_HELP = """The run's name (each recipe gives one). Where the config leaves them unset, it names every
WandbLogger's run and puts the run in runs/<run_name>: trainer.default_root_dir, checkpoint.dirpath
(runs/<run_name>/checkpoints) and every WandbLogger's save_dir. --print_config shows the values it sets."""

RUN_DIR_HELP = """The run's directory, in place of runs/<run_name>: sets trainer.default_root_dir (preemption
checkpoints), the dirpath of every ModelCheckpoint (<run_dir>/checkpoints) and the save_dir of every
WandbLogger, overriding the config. Two runs of one recipe with different run_dir never overwrite or
resume each other; the W&B run keeps its name (run_name)."""

SUITE_CALLBACKS: dict[str, tuple[type[Callback], str]] = {
    "ema": (
        EMA,
        "The EMA of the weights, with which validation runs and exports are made: "
        "`ema: {decay: 0.9999}` in a recipe, --ema.decay on the command line.",
    ),
    "checkpoint": (
        ModelCheckpoint,
        "The periodic checkpoints and last.ckpt, in runs/<run_name>/checkpoints "
        "unless dirpath is set (--run_dir moves them).",
    ),
    "lr_monitor": (LearningRateMonitor, "Logs the learning rate of every parameter group."),
    "image_grid": (ImageGridLogger, "Logs a grid of the first validation images."),
    "throughput": (Throughput, "Logs train/images_per_sec."),
    "wandb_summaries": (WandbSummaries, "Makes the W&B summary hold the best val/psnr and val/ssim."),
}
"""The suite's callbacks: one config key each, their settings in recipes/base.yaml (read before the -c files),
a recipe's key changing one setting (`checkpoint: {every_n_train_steps: 10000}`) or leaving the callback out
(`image_grid: null`). They come first in the trainer's callbacks, then those of trainer.callbacks."""

INIT_WEIGHTS_HELP = """fit only: start the run from the weights of this checkpoint (an exported, imported or training
checkpoint of the same method and configuration; its EMA weights), with a fresh optimizer, schedule and
step count. Ignored when the run resumes (--ckpt_path), whose checkpoint holds the weights."""

TRACEBACK_VARIABLE = "IR_LIGHTNING_TRACEBACK"
"""Set to 1 to see the traceback behind a one-line configuration error."""


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
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


EVALUATING = ("validate", "test", "predict")
"""Subcommands whose `--model.*` flags win over a `--ckpt_path` checkpoint's settings (fit resumes as trained)."""


def model_flags(words: list[str]) -> dict[str, Any]:
    """The method settings given as `--model.init_args.KEY=VALUE` / `--model.init_args.KEY VALUE` (or
    `--model.KEY`), as a nested dict of YAML values; `net` and `class_path` are left out (the checkpoint's)."""
    overrides: dict[str, Any] = {}
    for index, word in enumerate(words):
        if not word.startswith("--model."):
            continue
        key, sep, text = word[len("--model.") :].partition("=")
        if not sep:
            if index + 1 >= len(words):
                continue
            text = words[index + 1]
        key = key.removeprefix("init_args.")
        top = key.split(".")[0]
        if top in ("net", "class_path", "init_args", "dict_kwargs"):
            continue
        node = overrides
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(text)
    return overrides


def kept_network_flags(words: list[str]) -> list[str]:
    """The `--model...` flags `model_flags` leaves out because they would change the checkpoint's network."""
    prefixes = (
        "--model.init_args.net",
        "--model.net",
        "--model.class_path",
        "--model.init_args=",
        "--model.init_args ",
    )
    return [word for word in words if word.startswith(prefixes) or word == "--model.init_args"]


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` put over it, dicts merged key by key (a flag changes one field of a setting)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class IRLightningCLI(LightningCLI):
    """LightningCLI in subclass mode for the method and the data module, with:

    - recipes/base.yaml, the suite's shared settings, read before the -c files of every subcommand;
    - the suite's callbacks as config keys (`ema`, `checkpoint`, ...: SUITE_CALLBACKS), with
      trainer.callbacks for any other;
    - `run_name`: the W&B run's name and the run's directory runs/<run_name> (where the config sets no
      other), and `--run_dir DIR`, one switch that moves every output of a run (see RUN_NAME_HELP,
      RUN_DIR_HELP); --print_config shows the paths they set;
    - `--ckpt_path auto`: resume from the run's furthest checkpoint, or start afresh if it has none;
    - `--init_weights FILE`: start a fit from a checkpoint's weights without resuming its training state;
    - a checkpoint given to `--ckpt_path` is read safely and checked (a checkpoint of this suite, of the
      recipe's method and scale, resumable for fit) before its hyperparameters reach the parser, and
      nothing it names outside the allow-list is imported (`ir_lightning.class_paths`);
    - configuration errors (a constructor's check, a scale that contradicts the data) stop the run with
      one line (`ConfigurationError`);
    - atomic checkpoint writes (`AtomicCheckpointIO`) unless the recipe brings its own checkpoint IO;
    - a lock on the run's folders for the whole fit (`RunLock`), and the final state saved when training
      ends after the last checkpoint (`FinalCheckpoint`);
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
            parser_class=RunArgumentParser,
            parser_kwargs={"description": DESCRIPTION, "formatter_class": _raw_formatter()},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        if not BASE_RECIPE.is_file():
            raise ConfigurationError(f"the suite's base recipe is missing: {BASE_RECIPE} (a broken installation)")
        parser.default_config_files = [glob.escape(str(BASE_RECIPE))]  # a pattern: a path is taken literally
        parser.add_argument("--run_name", type=str | None, default=None, help=RUN_NAME_HELP)
        parser.add_argument("--run_dir", type=str | None, default=None, help=RUN_DIR_HELP)
        for key, (callback, help_text) in SUITE_CALLBACKS.items():
            parser.add_subclass_arguments(
                callback,
                key,
                required=False,
                fail_untyped=False,
                help=f"{help_text} null: none. Default: recipes/base.yaml.",
            )
        parser.add_argument("--init_weights", type=str | None, default=None, help=INIT_WEIGHTS_HELP)

    def _parse_ckpt_path(self) -> None:  # private LightningCLI hook: no public one runs before the checkpoint is read
        """Check a `--ckpt_path` file before its hyperparameters reach the parser, which would import every class
        path in them, then rebuild the method from them as Lightning does (they replace the recipe's settings),
        except that for validate, test and predict the method settings given as flags win (`model_flags`)."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and (is_model_folder(path) or (Path(path).is_file() and is_safetensors(path))):
            raise ConfigurationError(
                f"--ckpt_path {path}: a safetensors export or model folder holds weights and settings, not a state "
                "Lightning loads: give a .ckpt (ir-lightning export --format ckpt), or --init_weights to fit from it"
            )
        if not (path and Path(path).is_file()):
            return
        checkpoint = check_checkpoint_fits(path, self.config[subcommand].get("model"), resume=subcommand == "fit")
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        if not hparams or class_path is None:
            return
        if subcommand in EVALUATING:
            hparams = merged(hparams, model_flags(self.command_line))
            for word in kept_network_flags(self.command_line):
                rank_zero_info(f"{word.split('=')[0]}: ignored, the network is the checkpoint's (its weights must fit)")
        model = {"class_path": class_path, "dict_kwargs": hparams}  # Lightning's layout of a checkpoint's settings
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except SystemExit:
            sys.stderr.write(f"--ckpt_path {path}: its settings, with the --model flags over them, do not parse\n")
            raise

    def parse_arguments(self, parser, args) -> None:
        self.command_line = list(sys.argv[1:] if args is None else args) if isinstance(args, list | None) else []
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        place_run(self.config[self.subcommand] if self.subcommand else self.config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ConfigurationError:
            raise
        except Exception as error:  # noqa: BLE001 - a constructor refused a setting: say which, in one line
            raise ConfigurationError(instantiation_failure(error)) from error

    def after_instantiate_classes(self) -> None:
        if self.datamodule is not None:
            check_scales(self.model, self.datamodule)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        instances = self.config_init[self.subcommand] if self.subcommand else self.config_init
        kwargs.setdefault("callbacks", suite_callbacks(instances))
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not the user's choice
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if in_slurm_job() and not any(isinstance(c, SlurmRequeue) for c in trainer.callbacks):
            trainer.callbacks.append(SlurmRequeue())
        for callback in trainer.callbacks:
            if isinstance(callback, SlurmRequeue) and callback.job_id is None:
                callback.job_id = slurm_job_id()  # SLURM's environment is read here, not in the callback
        trainer.callbacks.insert(0, RunLock())  # first: before any callback writes into the run's folders
        trainer.callbacks.append(FinalCheckpoint())
        return trainer

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        model_config = self.config[self.subcommand].get("model")
        if lock_before_fit(self.trainer):  # before the logger starts a run; other ranks learn it in RunLock.setup
            for callback in self.trainer.callbacks:
                if isinstance(callback, RunLock):
                    callback.acquire(self.trainer)
        if config.get("ckpt_path") == "auto":
            found = newest_checkpoint(self.trainer)
            where = f"{self.trainer.default_root_dir} and the checkpoint folders"
            rank_zero_info(
                f"--ckpt_path auto: resuming from {found}"
                if found
                else f"--ckpt_path auto: no checkpoint in {where}; starting afresh"
            )
            if found is not None:
                check_checkpoint_fits(found, model_config, resume=True)
            config["ckpt_path"] = str(found) if found else None
        if config.get("init_weights"):
            if config.get("ckpt_path"):
                rank_zero_info(f"--init_weights {config.init_weights} ignored: the run resumes from {config.ckpt_path}")
                return
            checkpoint = check_checkpoint_fits(config.init_weights, model_config, resume=False, flag="--init_weights")
            try:
                self.model.load_initial_weights(checkpoint, config.init_weights)
            except ValueError as error:
                raise ConfigurationError(str(error)) from error
            rank_zero_info(f"--init_weights: starting from the weights of {config.init_weights}")


def instantiation_failure(error: BaseException) -> str:
    """One line for an error raised while the config's classes were built: the innermost error's message (a
    constructor's own check names the key), after the class path of the entry that failed."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    class_paths = [m.group(1) for e in chain if (m := re.search(r"class_path='([\w.]+)'", str(e)))]
    root = chain[-1]
    message = " ".join(line.strip() for line in str(root).splitlines() if line.strip()) or type(root).__name__
    if not isinstance(root, (ValueError, TypeError, OSError)):
        message = f"{type(root).__name__}: {message} ({TRACEBACK_VARIABLE}=1 shows the traceback)"
    return f"{class_paths[-1]}: {message}" if class_paths else message


class RunArgumentParser(LightningArgumentParser):
    """The suite's parser: what it writes out (--print_config, the config saved beside the run) shows the paths
    and the W&B name that `run_name` and `--run_dir` set (`place_run`), not the values they replace."""

    def dump(self, cfg: Namespace, *args: Any, **kwargs: Any) -> str:
        if isinstance(cfg, Namespace) and "trainer" in cfg:  # a subcommand's config, not the root's
            cfg = cfg.clone()
            place_run(cfg)
        return super().dump(cfg, *args, **kwargs)


def place_run(config: Namespace) -> None:
    """Place the run's outputs: `run_dir` moves all of them, overriding the config (RUN_DIR_HELP); then `run_name`
    fills what is still unset (RUN_NAME_HELP; a WandbLogger's save_dir is unset at its default, "."), so a path
    or name the config gives is kept. Idempotent: --print_config's output places a run where its config did."""
    name, run_dir, trainer = config.get("run_name"), config.get("run_dir"), config.trainer
    loggers = [e for e in _class_entries(trainer.get("logger")) if e.class_path.endswith("WandbLogger")]
    suite_checkpoint = _class_entries(config.get("checkpoint"))
    if run_dir:
        trainer.default_root_dir = run_dir
        checkpoints = [e for e in _class_entries(trainer.get("callbacks")) if e.class_path.endswith("ModelCheckpoint")]
        for entry in suite_checkpoint + checkpoints:
            entry.init_args.dirpath = os.path.join(run_dir, "checkpoints")
        for entry in loggers:
            entry.init_args.save_dir = run_dir
    if not name:
        return
    home = os.path.join("runs", name)
    if trainer.get("default_root_dir") is None:
        trainer.default_root_dir = home
    for entry in suite_checkpoint:
        if entry.init_args.get("dirpath") is None:
            entry.init_args.dirpath = os.path.join(home, "checkpoints")
    for entry in loggers:
        if entry.init_args.get("name") is None:
            entry.init_args.name = name
        if entry.init_args.get("save_dir") in (None, "."):
            entry.init_args.save_dir = home


def suite_callbacks(instances: Namespace) -> list[Callback]:
    """The suite's callbacks that the config keeps (SUITE_CALLBACKS, in that order), then trainer.callbacks. An
    entry of trainer.callbacks of the same class as one of the suite's is refused (it would run twice), except a
    ModelCheckpoint: a run may keep several."""
    suite = [instances[key] for key in SUITE_CALLBACKS if instances.get(key) is not None]
    extra = instances.trainer.get("callbacks") or []
    extra = extra if isinstance(extra, list) else [extra]
    for callback in extra:
        twin = next((key for key in SUITE_CALLBACKS if type(instances.get(key)) is type(callback)), None)
        if twin is not None and not isinstance(callback, ModelCheckpoint):
            raise ConfigurationError(
                f"trainer.callbacks repeats {type(callback).__name__}, the suite's `{twin}` (recipes/base.yaml): "
                f"set its settings under `{twin}:`, or `{twin}: null` to use your own"
            )
    return [*suite, *extra]


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


def main(argv: list[str] | None = None) -> int:
    """The console scripts' entry point (`ir_lightning.entry.main`): kept here for `ir_lightning.cli:main`."""
    return entry.main(argv)


def run_lightning(words: list[str], from_sys_argv: bool) -> int:
    """fit / validate / test / predict with the suite's LightningCLI; configuration and data errors become one
    line on stderr (exit 2 and 1). `from_sys_argv`: the words are sys.argv[1:], which LightningCLI reads itself."""
    words = resolve_configs(words)  # `-c sr3_x4`: an installed recipe, unless such a file exists here
    if from_sys_argv:
        sys.argv[1:] = words  # LightningCLI reads sys.argv itself (and warns when given both)
    try:
        check_config_files(words)
        IRLightningCLI(args=None if from_sys_argv else words)
    except ConfigurationError as error:  # a DataError too: a setting, a file or the data is wrong
        if os.environ.get(TRACEBACK_VARIABLE) == "1":
            raise
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 1 if isinstance(error, DataError) else 2
    finally:
        release_process_group()
    return 0


def release_process_group() -> None:
    """Destroy torch.distributed's default process group, if a run made one, while the interpreter is still whole.

    Lightning destroys it at exit for NCCL only. A gloo group (DDP on CPUs) left to the interpreter's finalisation
    can end a finished run with `terminate called without an active exception` (SIGABRT, exit -6: its worker
    threads still hold work objects with Python references), or hang there: a rank that never exits holds its
    job, and under Lightning's launcher rank 0's output pipes, open. Both were seen in this suite's tests."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def user_message(error: BaseException) -> str:
    """The message of a configuration or data error, also when a loader worker raised it: torch re-raises a
    worker's error in the main process with the worker's traceback as its message, whose last line is
    `<module>.<class>: <the message>`."""
    text = str(error).strip()
    lines = text.splitlines()
    if not lines or "DataLoader worker" not in lines[0]:
        return text or type(error).__name__
    last = lines[-1]
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last[len(name) :] if last.startswith(name) else last


def in_slurm_job() -> bool:
    """True inside a SLURM batch or srun job (Lightning's own test of SLURM's environment variables: not an
    interactive allocation)."""
    return SLURMEnvironment.detect()


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` needs, from SLURM's environment: `<array job>_<task>` for an array task, else the
    job id; None outside SLURM (`SlurmRequeue` is given it: nothing below this module reads the environment)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


if __name__ == "__main__":
    raise SystemExit(main())
