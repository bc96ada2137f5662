"""The class paths a file may name: checked before anything the file names is imported.

A checkpoint's hyperparameters (and a weights file's metadata) are a config: `class_path` entries
that jsonargparse imports and instantiates, and strings that it imports where a setting takes a class
or a callable. Loading with `weights_only=True` keeps the pickle from running code, but importing a
module runs that module's code, so a downloaded checkpoint naming `net: {class_path: this.Nope}`
would run whatever `this` does. Every such name is therefore checked here first, against the
suite's allow-list:

- every class of the suite's methods, networks, losses, degradations, diffusion math (schedules) and
  learning-rate schedules, by any path under those packages that reaches it (`ir_lightning.methods.SR3`
  and `ir_lightning.methods.sr3.SR3` alike, `ir_lightning.methods.lr.MultiStep` and
  `ir_lightning.training.optim.MultiStep`);
- the optimizers of `torch.optim` and the schedulers of `torch.optim.lr_scheduler`;
- Lightning's CLI instantiator, which the CLI records in every checkpoint.

What is checked: the values of `class_path`, `_class_path` and `_instantiator` keys at any depth,
strings that a YAML reader turns into a config (jsonargparse reads a string setting as YAML, so
`"{class_path: this.Nope}"` is one), and every other string that reads as a dotted import path whose
first part is an installed module (`os.system`, `this.Nope`): a file name such as `weights.ckpt` is no import path, but a setting
whose value is `test.ckpt` would name the standard library's `test` package and is refused (write
`./test.ckpt`). A class path without dots is looked up by jsonargparse among classes already
imported, never imported, and is allowed when it is the name of an allowed class.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import pkgutil
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

ALLOWED_PACKAGES: tuple[str, ...] = (
    "ir_lightning.methods",
    "ir_lightning.nets",
    "ir_lightning.degradations",
    "ir_lightning.diffusion",
    "ir_lightning.losses",
    "ir_lightning.training.optim",
)
"""The suite's packages (and modules) whose classes a file may name. `ir_lightning.training.optim` is the home of the
learning-rate schedules, which checkpoints name by their class path `ir_lightning.methods.lr.<Schedule>`."""

ALLOWED_INSTANTIATORS: tuple[str, ...] = ("lightning.pytorch.cli.instantiate_module",)
"""Functions a checkpoint may name as the builder of its module (Lightning's CLI records this one)."""

CLASS_PATH_KEYS: tuple[str, ...] = ("class_path", "_class_path", "_instantiator")
"""Keys whose string value is imported as it stands."""

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


class UntrustedClassPathError(ValueError):
    """A file names a class or module outside the allow-list; nothing it names was imported."""


def _own_modules(package_name: str) -> Iterator[Any]:
    """The package and every module below it (the suite's own code: importing it is safe)."""
    package = importlib.import_module(package_name)
    yield package
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), f"{package_name}."):
        yield importlib.import_module(info.name)


def _in_allowed_package(module_name: str) -> bool:
    return any(module_name == p or module_name.startswith(f"{p}.") for p in ALLOWED_PACKAGES)


@functools.cache
def allowed_classes() -> dict[str, type]:
    """Every class path a file may name -> the class it reaches (see the module docstring)."""
    allowed: dict[str, type] = {}
    for package_name in ALLOWED_PACKAGES:
        for module in _own_modules(package_name):
            for name, value in vars(module).items():
                if isinstance(value, type) and _in_allowed_package(value.__module__):
                    allowed[f"{module.__name__}.{name}"] = value
    schedulers = torch.optim.lr_scheduler
    for module, base in (
        (torch.optim, torch.optim.Optimizer),
        (schedulers, (schedulers.LRScheduler, schedulers.ReduceLROnPlateau)),
    ):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, base):
                allowed[f"{module.__name__}.{name}"] = value
                allowed[f"{value.__module__}.{value.__qualname__}"] = value
    return allowed


def allowed_class(path: str) -> type | None:
    """The class an allowed class path names (nothing is imported), else None."""
    return allowed_classes().get(path)


def _bare_names() -> frozenset[str]:
    return frozenset(cls.__name__ for cls in allowed_classes().values())


def _is_allowed(path: str, key: str | None) -> bool:
    if path in allowed_classes():
        return True
    if key == "_instantiator":
        return path in ALLOWED_INSTANTIATORS
    if "." not in path:  # jsonargparse resolves a bare name among imported classes only
        return path in _bare_names()
    return False


def _imports_something(text: str) -> bool:
    """Whether a string reads as a dotted import path of an installed module (found, not imported)."""
    if not _DOTTED.fullmatch(text):
        return False
    try:
        return importlib.util.find_spec(text.split(".", 1)[0]) is not None
    except (ImportError, ValueError):
        return False


def _as_config(text: str) -> Any:
    """What a YAML reader makes of `text` (jsonargparse parses string settings as YAML or JSON, so
    `"{class_path: x.Y}"` is a config); the text itself when it is no YAML."""
    if not any(mark in text for mark in ":[{-"):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def named_imports(tree: Any, where: str = "") -> Iterator[tuple[str, str, str | None]]:
    """(location, string, key) of every string in a nested config that would be imported if parsed."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            location = f"{where}.{key}" if where else str(key)
            if key in CLASS_PATH_KEYS:
                yield location, value if isinstance(value, str) else repr(value), key
            else:
                yield from named_imports(value, location)
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from named_imports(value, f"{where}[{index}]")
    elif isinstance(tree, str):
        parsed = _as_config(tree)
        if isinstance(parsed, (dict, list)):  # jsonargparse reads a string setting as YAML: a config in text
            yield from named_imports(parsed, where)
        elif _imports_something(tree):
            yield where, tree, None


def _plain(hint: Any) -> bool:
    """Whether a type hint takes plain values only (str, a number, a bool, a path, a Literal, None, or unions of
    them): jsonargparse reads a string given for any other type (a class, a dataclass) as a config FILE's path."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return all(_plain(arg) for arg in typing.get_args(hint))
    return origin is typing.Literal or hint in (str, int, float, bool, type(None), Path)


def _setting_types(owner: Any) -> dict[str, Any]:
    """The type hints of `owner`'s settings (a class's constructor, or a dataclass's fields); {} when unknown."""
    try:
        return typing.get_type_hints(owner if dataclasses.is_dataclass(owner) else owner.__init__)
    except Exception:  # noqa: BLE001 - an unresolvable hint: nothing is known to be plain
        return {}


def _names_a_path(text: str) -> bool:
    try:
        return bool(text.strip()) and "\0" not in text and Path(text).expanduser().exists()
    except (OSError, ValueError):
        return False


def file_settings(tree: Any, owner: Any, where: str) -> Iterator[tuple[str, str]]:
    """(location, string) of every string in settings of `owner` (a class of the suite, or None: unknown) that names
    an existing file or folder where the setting's type is not plain: jsonargparse would read that file as a config,
    which can name (and import) anything, after the allow-list has checked the settings."""
    if not isinstance(tree, dict):
        return
    if isinstance(tree.get("class_path"), str):  # a nested class: its init_args are typed by its constructor
        owner = allowed_class(tree["class_path"])
        tree = tree.get("init_args") if isinstance(tree.get("init_args"), dict) else {}
    hints = _setting_types(owner) if owner is not None else {}
    for key, value in tree.items():
        location, hint = f"{where}.{key}", hints.get(key)
        if isinstance(value, str) and not (hint is not None and _plain(hint)) and _names_a_path(value):
            yield location, value
        elif isinstance(value, dict):
            nested = hint if dataclasses.is_dataclass(hint) else None
            yield from file_settings(value, nested, location)


def check_class_paths(tree: Any, source: str, where: str = "hyper_parameters") -> None:
    """Raise `UntrustedClassPathError` naming `source` and the setting when a nested config read from a
    file names a class, function or module outside the allow-list, or names a file that a setting would be read
    from (`file_settings`; nothing is imported or read either way)."""
    if isinstance(tree, dict):
        owner = allowed_class(tree["_class_path"]) if isinstance(tree.get("_class_path"), str) else None
        for location, text in file_settings(tree, owner, where):
            raise UntrustedClassPathError(
                f"{source}: {location} names the file {text!r}, which the setting would be read from as a config "
                "(able to name any class); a checkpoint holds its settings as values: refused before reading it"
            )
    for location, path, key in named_imports(tree, where):
        if not _is_allowed(path, key):
            raise UntrustedClassPathError(
                f"{source}: {location} names {path!r}, which is not a class of this suite (methods, networks, "
                f"losses, degradations, schedules) nor a torch.optim optimizer or scheduler; refused before importing "
                f"anything it names"
            )
