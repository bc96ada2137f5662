"""Loading a method of the suite from any of its checkpoints (training, exported or imported) for restoring.

The method is read from the checkpoint (its hyperparameters' `_class_path`, looked up in the allow-list of
`ir_lightning.class_paths`), never re-typed; nothing the file names is imported, and the file is read with
`weights_only=True` (`ir_lightning.io.weights`). Any setting of the method's constructor can be changed for
restoring (`set`: `KEY=VALUE`, the value read as YAML; a dotted KEY such as `sampling.solver.tolerance`
changes one field of a setting), with shortcuts for the usual ones (`steps`, `sampler`, `operator`). The EMA
weights (the checkpoint's `state_dict`) are used unless `no_ema` asks for the trained ones.

`ir-lightning restore` and `evaluate` load through `load_method`; torch and the methods are imported when a
method is loaded, not with this module (the commands' --help starts at once).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from ir_lightning.methods.base import RestorationModule

SOLVER_NAMES = ("sequential", "anderson", "picard", "anderson_official")
"""`sampler` values that choose the solver (`sampling.solver.method`); others choose `sampling.sampler`."""

MESSAGE_LIMIT = 400
"""Characters of a library's error message quoted in one line (a state_dict mismatch lists every key)."""


class RestoreError(Exception):
    """A checkpoint, or a setting for restoring with it, that cannot serve: reported in one line naming it
    (`ir-lightning restore` and `evaluate` exit with status 2)."""


class LoadOptions(Protocol):
    """How to load a checkpoint for restoring (the argparse Namespace of `restore` and `evaluate` has these):
    `method` checks the checkpoint's method by name; `no_ema` loads the trained weights; `set` holds `KEY=VALUE`
    settings; `steps`, `sampler` and `operator` are shortcuts."""

    method: str | None
    no_ema: bool
    set: Sequence[str]
    steps: int | None
    sampler: str | None
    operator: str | None


def chosen_device(name: str) -> torch.device:
    """The device a command's `--device` names: `auto` is CUDA when available, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def method_class(checkpoint: dict[str, Any], path: Path) -> type[RestorationModule]:
    """The method a checkpoint of this suite was trained with, from its hyperparameters' `_class_path`,
    looked up in the allow-list: nothing the file names is imported (importing a module runs its code,
    which a checkpoint from the internet must not be able to trigger)."""
    from ir_lightning.class_paths import allowed_class
    from ir_lightning.methods.base import RestorationModule

    hparams = checkpoint.get("hyper_parameters")
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if not isinstance(class_path, str):
        raise RestoreError(f"{path}: not a checkpoint of this suite (no hyper_parameters._class_path)")
    cls = allowed_class(class_path)
    if not (isinstance(cls, type) and issubclass(cls, RestorationModule)):
        raise RestoreError(f"{path}: its class {class_path!r} is not a method of this suite")
    return cls


def shortcut_settings(options: LoadOptions) -> list[tuple[str, str, Any]]:
    """(flag, dotted setting, value) for the shortcut options given."""
    chosen = []
    if options.steps is not None:
        chosen.append(("--steps", "sampling.steps", options.steps))
    if options.sampler is not None:
        setting = "sampling.solver.method" if options.sampler in SOLVER_NAMES else "sampling.sampler"
        chosen.append(("--sampler", setting, options.sampler))
    if options.operator is not None:
        chosen.append(("--operator", "operator", options.operator))
    return chosen


def check_fields(flag: str, default: Any, top: str, fields: list[str]) -> None:
    """Refuse a dotted setting that names no field of the setting's dataclass (`default`, the constructor's)."""
    node, path = default, top
    for name in fields:
        if not dataclasses.is_dataclass(node):
            raise RestoreError(f"{flag}: {path} has no fields to set")
        names = [item.name for item in dataclasses.fields(node)]
        if name not in names:
            raise RestoreError(f"{flag}: {path} has no field {name!r}; its fields: {', '.join(names)}")
        node, path = getattr(node, name), f"{path}.{name}"


def restoring_settings(cls: type[RestorationModule], hparams: dict[str, Any], options: LoadOptions) -> dict[str, Any]:
    """The constructor arguments to override, from `set` and the shortcut options, checked by name; a dotted
    name changes one field of a setting, on the checkpoint's value (`hparams`, in this version's names)."""
    import yaml

    parameters = cls.setting_parameters()
    accepted = list(parameters)
    changes: list[tuple[str, str, Any]] = []
    for item in options.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RestoreError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sampling.steps=50")
        changes.append((f"--set {key}", key, yaml.safe_load(text)))
    settings: dict[str, Any] = {}
    for flag, key, value in [*changes, *shortcut_settings(options)]:
        top, *fields = key.split(".")
        if top not in accepted:
            what = "such" if flag.startswith("--set") else key
            raise RestoreError(f"{flag}: {cls.__name__} has no {what} setting; its settings: {', '.join(accepted)}")
        if not fields:
            settings[top] = value
            continue
        current = settings.get(top, copy.deepcopy(hparams.get(top)))
        if not isinstance(current, dict):
            raise RestoreError(f"{flag}: {cls.__name__}'s {top} has no fields to set")
        check_fields(flag, parameters[top].default, top, fields)
        node = current
        for name in fields[:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise RestoreError(f"{flag}: {'.'.join([top, *fields[:-1]])} has no fields to set")
        node[fields[-1]] = value
        settings[top] = current
    for top, value in settings.items():  # a typed setting (Sampling, ...) checks its fields together, here
        default = parameters[top].default
        if isinstance(value, dict) and dataclasses.is_dataclass(default) and hasattr(default, "of"):
            try:
                type(default).of(value)
            except (TypeError, ValueError) as error:
                raise RestoreError(f"{top}: {error}") from error
    return settings


def load_method(path: Path, options: LoadOptions, device: torch.device) -> RestorationModule:
    """The checkpoint's method with the requested settings and weights, in eval mode on `device`. Every way
    the file can fail (not a checkpoint, unsafe, of a class outside the suite, weights that do not fit)
    is one `RestoreError` naming it."""
    from ir_lightning.io.weights import WeightsError, read_checkpoint

    if not path.is_file():
        raise RestoreError(f"--ckpt {path}: no such file")
    try:
        checkpoint = read_checkpoint(path, mmap=True)  # tensors mapped, not read: Lightning loads the weights
    except WeightsError as error:
        raise RestoreError(str(error)) from error
    cls = method_class(checkpoint, path)
    if options.method is not None and options.method.lower() != cls.__name__.lower():
        raise RestoreError(f"--method {options.method}: {path} holds a {cls.__name__} checkpoint")
    hparams = cls.upgrade_hyperparameters(checkpoint.get("hyper_parameters") or {})
    settings = restoring_settings(cls, hparams, options)
    try:
        model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True, **settings)
        if options.no_ema:
            trained = checkpoint.get("current_model_state")
            if trained is None:
                raise RestoreError(f"--no-ema: {path} holds only one set of weights (exported, or trained without EMA)")
            model.load_state_dict(trained)
    except RestoreError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - a bad setting (the method's own check, or the CLI's type check), or
        # weights or settings of the file that do not fit the method: whatever it is, one line naming the file
        reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        raise RestoreError(
            f"{path}: {reason if len(reason) <= MESSAGE_LIMIT else reason[:MESSAGE_LIMIT] + ' ...'}"
        ) from error
    return model.to(device).eval()
