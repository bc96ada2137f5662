"""Loading a method of the suite from any of its checkpoints (training, exported or imported) for restoring.

The checkpoint is a torch file (`.ckpt`), a safetensors file or a model folder (`ir-lightning export --format
...`), told apart by content (`ir_lightning.io.weights.read_checkpoint`). The method is read from it (its
hyperparameters' `_class_path`, looked up in the allow-list of `ir_lightning.class_paths`), never re-typed;
nothing the file names is imported, a torch file is read with `weights_only=True`, a safetensors file holds no
code at all. Any setting of the method's constructor can be changed for restoring (`set`: `KEY=VALUE`, the value
read as YAML; a dotted KEY such as `sampling.solver.tolerance` changes one field of a setting; `values`: the
same with Python values), with shortcuts for the usual ones (`steps`, `sampler`, `operator`, and the
post-processing every method has: `color_fix`, `consistency`, where `none` turns a checkpoint's own off). The
EMA weights (the checkpoint's `state_dict`) are used unless `no_ema` asks for the trained ones.

`read_method` is the one loader: `ir_lightning.load` (the Python API) calls it, and `ir-lightning restore` and
`evaluate` through `load_method`. torch and the methods are imported when a method is loaded, not with this
module (the commands' --help starts at once).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

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
    settings; `steps`, `sampler` and `operator` are shortcuts, and so are `color_fix` and `consistency` (the
    post-processing settings; `none` turns off the checkpoint's own; a namespace without them changes neither)."""

    method: str | None
    no_ema: bool
    set: Sequence[str]
    steps: int | None
    sampler: str | None
    operator: str | None
    color_fix: str | None
    consistency: str | None


@dataclasses.dataclass
class Options:
    """`LoadOptions` for the Python API: the same fields, and `values`, settings given as Python values
    (`{"sampling.steps": 10}` or `{"sampling": {"steps": 10}}`: a mapping given for a setting whose default is a
    dataclass changes the fields it names, on the checkpoint's value; any other value replaces the setting)."""

    method: str | None = None
    no_ema: bool = False
    set: Sequence[str] = ()
    steps: int | None = None
    sampler: str | None = None
    operator: str | None = None
    color_fix: str | None = None
    consistency: str | None = None
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class LoadedMethod(NamedTuple):
    """A method loaded for restoring, and what its file records beside the weights: `record` holds the
    checkpoint's settings and history (`hyper_parameters` in this version's names, with the restoring settings
    applied; `global_step`, `epoch`, `imported_from`, `exported_without`, `training`, `validation`, ... where
    the file has them), `weights` which set was loaded (`ema`, `trained`, or what the file says), `source` the
    path and `layout` its kind (`ckpt`, `safetensors`, `folder`)."""

    module: RestorationModule
    record: dict[str, Any]
    weights: str
    source: Path
    layout: str


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
    color_fix = getattr(options, "color_fix", None)  # namespaces of older callers have no post-processing fields
    if color_fix is not None:
        chosen.append(("--color-fix", "color_fix", check_color_fix(color_fix)))
    consistency = getattr(options, "consistency", None)
    if consistency is not None:
        chosen.append(("--consistency", "consistency", check_consistency_name(consistency)))
    return chosen


def check_color_fix(value: str) -> str:
    """A `--color-fix` value (`none`, `wavelet`, `adain`), or a RestoreError listing them."""
    from ir_lightning.inference.postprocess import COLOR_FIX_METHODS

    if value not in COLOR_FIX_METHODS:
        raise RestoreError(f"--color-fix {value}: valid: {', '.join(COLOR_FIX_METHODS)}")
    return value


def check_consistency_name(value: str) -> str | None:
    """A `--consistency` value: None for `none` (the checkpoint's own setting turned off), else an operator name
    of `make_operator`, or a RestoreError listing the names."""
    from ir_lightning.inference.postprocess import check_operator_name

    if value == "none":
        return None
    try:
        return check_operator_name(value)
    except ValueError as error:
        raise RestoreError(f"--consistency {value}: {error}") from error


def value_changes(key: str, value: Any, parameters: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(flag, dotted setting, value) for one setting given in Python: a dataclass value as its dict, and a
    mapping given for a setting whose default is a dataclass as one change per field it names (so that
    `sampling={"steps": 10}` keeps the checkpoint's other sampling settings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    top = key.split(".")[0]
    default = parameters[top].default if top in parameters else None
    for name in key.split(".")[1:]:
        default = getattr(default, name, None)
    if not (isinstance(value, Mapping) and value and dataclasses.is_dataclass(default)):
        return [(f"setting {key}", key, value)]
    return [change for name, item in value.items() for change in value_changes(f"{key}.{name}", item, parameters)]


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
    for key, value in (getattr(options, "values", None) or {}).items():  # the Python API's settings
        changes.extend(value_changes(key, value, parameters))
    settings: dict[str, Any] = {}
    for flag, key, value in [*changes, *shortcut_settings(options)]:
        top, *fields = key.split(".")
        if top not in accepted:
            what = "such" if flag.startswith(("--set", "setting")) else key
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


def layout_of(path: Path) -> str:
    """What kind of checkpoint `path` is, from its content: `folder`, `safetensors` or `ckpt` (a torch file)."""
    from ir_lightning.io.weights import is_model_folder, is_safetensors

    if is_model_folder(path):
        return "folder"
    return "safetensors" if is_safetensors(path) else "ckpt"


def weights_label(checkpoint: dict[str, Any], no_ema: bool) -> str:
    """Which set of weights loads: `trained` (asked for), `ema` (the `state_dict` of a file that also holds the
    trained weights, or that says so), or what an export recorded; else `not recorded`."""
    if no_ema:
        return "trained"
    if "current_model_state" in checkpoint:
        return "ema"
    return str(checkpoint.get("weights") or "not recorded")


def validation_record(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The validation scores a checkpoint records: an export's `validation`, or what a training checkpoint's
    `ModelCheckpoint` callbacks kept of the metric they monitored (best and last score, with the metric
    protocol of the method's settings); None when nothing was recorded (no callback monitored a metric)."""
    if checkpoint.get("validation"):
        return checkpoint["validation"]
    scores = {}
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if not (isinstance(key, str) and key.startswith("ModelCheckpoint") and isinstance(state, dict)):
            continue
        monitor, best, last = state.get("monitor"), state.get("best_model_score"), state.get("current_score")
        if isinstance(monitor, str) and best is not None:
            scores[monitor] = {"best": float(best), "last": None if last is None else float(last)}
    if not scores:
        return None
    hparams = checkpoint.get("hyper_parameters") or {}
    crop_border, y_channel = (metric_setting(hparams, name) for name in ("crop_border", "y_channel"))
    protocol = {
        "data": "the run's validation shards (data.val_shards), restored with the EMA weights",
        "crop_border": hparams.get("scale") if crop_border is None else crop_border,  # SR3's None: the scale
        "y_channel": y_channel,
        "quantised": "uint8, PSNR and SSIM per image, then the mean (ir_lightning.metrics)",
    }
    return {"scores": scores, "global_step": checkpoint.get("global_step"), "protocol": protocol}


def metric_setting(hparams: dict[str, Any], name: str) -> Any:
    """A metric setting of the checkpoint's method (`crop_border`, `y_channel`): recorded, or its default."""
    from ir_lightning.class_paths import allowed_class

    if name in hparams:
        return hparams[name]
    cls = allowed_class(str(hparams.get("_class_path")))
    parameter = cls.setting_parameters().get(name) if hasattr(cls, "setting_parameters") else None
    return None if parameter is None else parameter.default


def checkpoint_record(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records beside its weights (`ir_lightning.io.weights.RECORD_KEYS`: settings, steps,
    where it was imported from, what an export left out, the run's training and validation record)."""
    from ir_lightning.io.weights import RECORD_KEYS

    record = {key: checkpoint[key] for key in RECORD_KEYS if key in checkpoint}
    validation = validation_record(checkpoint)
    if validation is not None:
        record["validation"] = validation
    return record


def build_method(cls: type[RestorationModule], checkpoint: dict[str, Any], path: Path) -> RestorationModule:
    """The method as the checkpoint's (upgraded, overridden) hyperparameters build it, with its `state_dict`
    loaded strictly: what `load_from_checkpoint` does once it has read a file, on a checkpoint already read
    and checked (a safetensors file has no torch file to hand it; a torch file is not read twice)."""
    # Private: the two steps of Lightning's `load_from_checkpoint` after `torch.load` (the version migration, then
    # hyperparameters -> module via the recorded instantiator, `on_load_checkpoint`, strict `load_state_dict`);
    # neither has a public form that takes a dict.
    from lightning.pytorch.core.saving import _load_state
    from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

    if "pytorch-lightning_version" not in checkpoint:  # what Lightning's migration needs to read it
        raise RestoreError(f"{path}: refused, no pytorch-lightning_version: not a checkpoint Lightning wrote")
    return _load_state(cls, _pl_migrate_checkpoint(checkpoint, path), strict=None)


def read_method(path: Path, options: LoadOptions, device: torch.device) -> LoadedMethod:
    """The checkpoint's method with the requested settings and weights, in eval mode on `device`, and what the
    file records. Every way the file can fail (not a checkpoint, unsafe, of a class outside the suite, weights
    that do not fit) is one `RestoreError` naming it."""
    from ir_lightning.io.weights import WeightsError, read_checkpoint

    path = Path(path)
    if not path.exists():
        raise RestoreError(f"--ckpt {path}: no such file or folder")
    if path.is_dir() and layout_of(path) != "folder":
        raise RestoreError(
            f"--ckpt {path}: a folder without a config.json: not a model folder (export --format folder)"
        )
    try:
        checkpoint = read_checkpoint(path, mmap=True)  # a torch file's tensors mapped, read once by load_state_dict
    except WeightsError as error:
        raise RestoreError(str(error)) from error
    cls = method_class(checkpoint, path)
    if options.method is not None and options.method.lower() != cls.__name__.lower():
        raise RestoreError(f"--method {options.method}: {path} holds a {cls.__name__} checkpoint")
    hparams = cls.upgrade_hyperparameters(checkpoint.get("hyper_parameters") or {})
    settings = restoring_settings(cls, hparams, options)
    checkpoint = {**checkpoint, "hyper_parameters": {**hparams, **settings}}
    try:
        model = build_method(cls, checkpoint, path)
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
    record = checkpoint_record(checkpoint)
    return LoadedMethod(
        model.to(device).eval(), record, weights_label(checkpoint, options.no_ema), path, layout_of(path)
    )


def load_method(path: Path, options: LoadOptions, device: torch.device) -> RestorationModule:
    """The checkpoint's method with the requested settings and weights, in eval mode on `device` (`read_method`
    without the record): what `ir-lightning restore` and `evaluate` restore with."""
    return read_method(path, options, device).module
