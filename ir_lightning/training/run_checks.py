"""Checks a run makes before it starts, so that a wrong setting or file stops it with one line naming
the key, the value or the file, not a traceback after the sanity check (`ir-lightning` prints a
`ConfigurationError` as `error: <message>` and exits with status 2).

- `check_config_files`: every `-c FILE` is YAML that parses; a syntax error names the file and line.
- `check_checkpoint_fits`: a `--ckpt_path` (or `--ckpt_path auto`'s find, or `--init_weights`) is a
  checkpoint of this suite (`ir_lightning.io.weights.read_checkpoint`), of the method and scale the recipe
  trains, and, to resume, holds the training state.
- `check_scales`: the method's scale agrees with the data: with a synthetic degradation, the size
  ratio of its output; with paired shards, `data.scale`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from ir_lightning.class_paths import allowed_class
from ir_lightning.errors import ConfigurationError
from ir_lightning.io.weights import WeightsError, read_checkpoint
from ir_lightning.packaged import config_arguments


def check_config_files(argv: list[str]) -> None:
    """Raise `ConfigurationError` naming the file, line and column of the first config file that is not
    valid YAML (jsonargparse reports it as `"<unicode string>"`, without the file). Missing files are left
    to the parser, which names them."""
    for _, _, name in config_arguments(argv):
        path = Path(name)
        if not path.is_file():
            continue
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ConfigurationError(f"{name}: not a UTF-8 text file ({error.reason} at byte {error.start})") from error
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            context = getattr(error, "context", None)
            raise ConfigurationError(f"{name}: {where}{problem}" + (f" ({context})" if context else "")) from error


def _class_of(class_path: str) -> type | None:
    """The class a config's own `class_path` names (the user's config: importing it is what they asked)."""
    cls = allowed_class(class_path)
    if cls is not None:
        return cls
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError:
        return None


def check_checkpoint_fits(
    path: str | os.PathLike, model_config: Any, resume: bool, flag: str = "--ckpt_path"
) -> dict[str, Any]:
    """The checkpoint at `path`, read safely, if it is one the run can use: of the same method as
    `model_config` (the config's `model`: `class_path` and `init_args`) and, where both name one, the same
    scale; with `resume`, holding the training state. Else `ConfigurationError` naming the file."""
    try:
        checkpoint = read_checkpoint(path, resume=resume, mmap=True)
    except WeightsError as error:
        raise ConfigurationError(f"{flag} {error}") from error
    hparams = checkpoint.get("hyper_parameters") or {}
    stored = hparams.get("_class_path")
    wanted = model_config.get("class_path") if model_config is not None else None
    if isinstance(stored, str) and isinstance(wanted, str):
        stored_cls, wanted_cls = allowed_class(stored), _class_of(wanted)
        if stored_cls is not None and wanted_cls is not None and stored_cls is not wanted_cls:
            raise ConfigurationError(
                f"{flag} {path} is a checkpoint of {stored_cls.__name__}, but the recipe's model is {wanted_cls.__name__} "
                f"(model.class_path {wanted}); give a checkpoint of {wanted_cls.__name__} or the recipe it was trained with"
            )
    init_args = model_config.get("init_args") if model_config is not None else None
    stored_scale, wanted_scale = hparams.get("scale"), init_args.get("scale") if init_args is not None else None
    if stored_scale is not None and wanted_scale is not None and stored_scale != wanted_scale:
        raise ConfigurationError(
            f"{flag} {path} was trained at scale {stored_scale}, but the recipe sets model.init_args.scale: {wanted_scale}"
        )
    return checkpoint


def degradation_scale(degradation: Any, crop_size: int) -> int | None:
    """The size ratio of `degradation` (a data module's synthetic degradation) on a `crop_size` square, found
    by running it on one black image (a degradation is a batch function; its steps need not say their
    scale); None when it does not reduce the image by a whole factor."""
    with torch.no_grad():
        lq = degradation(torch.zeros(1, 3, crop_size, crop_size), generator=torch.Generator().manual_seed(0))
    height, width = lq.shape[-2:]
    if crop_size % height or crop_size % width or crop_size // height != crop_size // width:
        return None
    return crop_size // height


def check_scales(model: Any, data: Any) -> None:
    """Raise `ConfigurationError` when the method's `scale` contradicts the data: the synthetic degradation's
    size ratio, or `data.scale` for paired shards. Methods and data modules without a scale are not checked."""
    scale = getattr(model, "scale", None)
    if not isinstance(scale, int) or isinstance(scale, bool):
        return
    degradation, crop_size = getattr(data, "degradation", None), getattr(data, "crop_size", None)
    if degradation is not None and isinstance(crop_size, int):
        try:
            made = degradation_scale(degradation, crop_size)
        except (ValueError, RuntimeError) as error:
            raise ConfigurationError(
                f"data.degradation cannot degrade a data.crop_size {crop_size} crop: {error}"
            ) from error
        if made != scale:
            what = (
                f"reduces a {crop_size} crop by {made}"
                if made is not None
                else "does not reduce the image by a whole factor"
            )
            raise ConfigurationError(f"data.degradation {what}, but model.init_args.scale is {scale}")
        return
    data_scale = getattr(data, "scale", None)
    if isinstance(data_scale, int) and data_scale != scale:
        raise ConfigurationError(
            f"data.init_args.scale is {data_scale} (the GT/LQ size ratio of the paired shards), but model.init_args.scale "
            f"is {scale}"
        )
