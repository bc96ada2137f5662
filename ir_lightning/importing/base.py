"""What every official checkpoint format shares: the result of a conversion and the key renaming.

An official format (one per released file type of a paper's repository, in the sibling modules) has a
`detect(obj)` that recognises the loaded file (a dict read with `weights_only=True`) from its keys, and a
`convert(obj, variant)` that returns an `Imported`: the suite method's class path, its networks (class
path and constructor arguments, read from the weights' shapes where they can be), the official settings
that the weights need (a value range, a prior schedule), the packaged recipe it pairs with, and the
weights renamed to the method's keys. `ir-lightning import` (`ir_lightning.commands.import_`) turns that
into a checkpoint of this suite, after checking that the weights fit the method exactly.

Nothing here imports Lightning or a method: a format is plain dictionaries and tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


class ImportRefused(ValueError):
    """A file that is not of the format asked for, or whose weights do not fit: the message names the
    file's keys that are the problem (`ir-lightning import` prints it and exits with status 2)."""


@dataclass
class Imported:
    """One official checkpoint, converted.

    Attributes:
        method: the suite method's class path (`ir_lightning.methods.SR3`).
        networks: the method's network arguments, each `{"class_path": ..., "init_args": {...}}`.
        settings: other constructor arguments of the method that these weights need (the value range
            they were trained in, a schedule stored in the file, ...); they override the recipe's.
        state_dict: the weights used for restoring (the EMA weights where the file has them), under the
            method's keys (`net.`, `restorer.`, ...).
        trained_state_dict: the non-EMA weights where the file has both (`restore --no-ema` uses them).
        recipe: the packaged recipe whose other model settings the checkpoint takes (`None`: none).
        report: one line per fact the user should see: what was mapped, dropped, assumed.
        exported_without: submodules the file does not hold and that restoring does not need (the
            method's `TRAINING_ONLY`, e.g. Denoising-as-Adaptation's diffusion network).
    """

    method: str
    networks: dict[str, dict[str, Any]]
    state_dict: dict[str, Tensor]
    settings: dict[str, Any] = field(default_factory=dict)
    trained_state_dict: dict[str, Tensor] | None = None
    recipe: str | None = None
    report: list[str] = field(default_factory=list)
    exported_without: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OfficialFormat:
    """One file type released by an official repository.

    Attributes:
        name: what `--format` takes (`sr3-janspiry`).
        source: the repository and the released files, for `--help` and the report.
        detect: True when a loaded file is of this format (from its keys; cheap, never raises).
        convert: `(loaded file, variant) -> Imported`; raises `ImportRefused` naming the keys that do not fit.
        variants: the values `--variant` takes where the weights alone do not say (e.g. the value range of
            Noise-DA's tasks); the first is the default. Empty: the weights say everything.
    """

    name: str
    source: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any, str | None], Imported]
    variants: tuple[str, ...] = ()


def tensors(obj: Any, where: str) -> dict[str, Tensor]:
    """`obj` as a flat state dict of tensors (a refusal naming `where` otherwise)."""
    if not isinstance(obj, Mapping) or not obj:
        raise ImportRefused(f"{where}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [key for key, value in obj.items() if not isinstance(value, Tensor)]
    if bad:
        raise ImportRefused(f"{where}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return dict(obj)


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under `prefix`, with the prefix removed (the others are left out)."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def with_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + key: value for key, value in state.items()}


def rename_keys(state: Mapping[str, Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """Every key rewritten by the regular-expression rules `(pattern, replacement)`, applied in order
    (each rule to the result of the one before; `re.sub` semantics). Two keys that end up equal are refused."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in compiled:
            new = pattern.sub(replacement, new)
        if new in renamed:
            raise ImportRefused(f"keys {origin[new]!r} and {key!r} both map to {new!r}")
        renamed[new], origin[new] = value, key
    return renamed


def drop_keys(state: Mapping[str, Tensor], patterns: Iterable[str]) -> tuple[dict[str, Tensor], list[str]]:
    """(the entries no pattern matches (`re.match`), the keys dropped)."""
    compiled = [re.compile(pattern) for pattern in patterns]
    kept = {key: value for key, value in state.items() if not any(p.match(key) for p in compiled)}
    return kept, [key for key in state if key not in kept]


def listed(keys: Sequence[str], limit: int = 5) -> str:
    """A few keys for a message: `a, b, c ... (12 in all)`."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} ... ({len(keys)} in all)"
