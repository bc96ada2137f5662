"""What every official checkpoint format shares: the result of a conversion and the key renaming.

An official format (one per released file type of a paper's repository, in the sibling modules) has a
`detect(obj)` that recognises the loaded file (a dict read with `weights_only=True`) from its keys, and a
`convert(obj, variant)` that returns an `Imported`: the suite method's class path, its networks (class
path and constructor arguments, read from the weights' shapes where they can be), the official settings
that the weights need (a value range, a prior schedule), the packaged recipe it pairs with, and the
weights renamed to the method's keys. `ir-lightning import` (`ir_lightning.commands.import_`) turns that
into a checkpoint of this suite, after checking that the weights fit the method exactly.

The helpers below are what the formats share: reading shapes and indices off the keys, renaming keys (by
regular expressions, or by module prefixes both ways), and checking renamed weights against our network built
on the meta device, with refusals that name the file's keys.

Nothing here imports Lightning or a method: a format is plain dictionaries and tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


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
        reads_folders: the source is a folder (a diffusers `save_pretrained` one): `detect` and `convert` get its
            `Path` and open its files themselves, as safely; otherwise they get the file loaded with weights_only.
    """

    name: str
    source: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any, str | None], Imported]
    variants: tuple[str, ...] = ()
    reads_folders: bool = False


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


def key_renames(keys: Iterable[str], rules: Sequence[tuple[str, str]]) -> dict[str, str]:
    """{key: the key the regular-expression rules `(pattern, replacement)` make of it}, in the order of `keys`; the
    rules apply in order (each to the result of the one before; `re.sub` semantics). Two keys that end up equal
    are refused. The original keys stay at hand for messages (see `fitted_weights`)."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renames: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key in keys:
        new = key
        for pattern, replacement in compiled:
            new = pattern.sub(replacement, new)
        if new in origin:
            raise ImportRefused(f"keys {origin[new]!r} and {key!r} both map to {new!r}")
        renames[key], origin[new] = new, key
    return renames


def rename_keys(state: Mapping[str, Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """Every key rewritten by the rules of `key_renames` (two keys that end up equal are refused)."""
    return {new: state[key] for key, new in key_renames(state, rules).items()}


def drop_keys(state: Mapping[str, Tensor], patterns: Iterable[str]) -> tuple[dict[str, Tensor], list[str]]:
    """(the entries no pattern matches (`re.match`), the keys dropped)."""
    compiled = [re.compile(pattern) for pattern in patterns]
    kept = {key: value for key, value in state.items() if not any(p.match(key) for p in compiled)}
    return kept, [key for key in state if key not in kept]


def listed(keys: Sequence[str], limit: int = 5) -> str:
    """A few keys for a message: `a, b, c ... (12 in all)`."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} ... ({len(keys)} in all)"


# --- reading the keys ------------------------------------------------------------------------------------------
def shape_of(
    state: Mapping[str, Tensor], key: str, ndim: int | None = None, *, prefix: str = "", missing: str = ""
) -> torch.Size:
    """The shape of `state[key]`, which must be there (with `ndim` dimensions where given). A refusal names the
    file's key, `prefix + key` (the prefix `state` was stripped of), and adds `missing` (what its absence means)."""
    if key not in state:
        raise ImportRefused(f"key {prefix + key!r} is missing" + (f": {missing}" if missing else ""))
    shape = state[key].shape
    if ndim is not None and len(shape) != ndim:
        raise ImportRefused(f"key {prefix + key!r} has shape {tuple(shape)}, expected {ndim} dimensions")
    return shape


def indices(keys: Iterable[str], pattern: str) -> list[int]:
    """The integers that the group `(\\d+)` of `pattern`, matched at the start of a key (`re.match`), takes over the
    keys, sorted and without repeats (`downs\\.(\\d+)\\.` -> the list indices of `downs`)."""
    compiled = re.compile(pattern)
    return sorted({int(match.group(1)) for key in keys if (match := compiled.match(key))})


MAX_DIGITS = 17
"""Significant digits that identify any float64 (a float32 needs at most 9)."""


def shortest_decimal(value: float, dtype: torch.dtype) -> float:
    """The float with the fewest significant digits that rounds to `value` in `dtype`: the decimal a configuration
    gave, read back from a stored tensor (float32 1e-6 -> 1e-06, 0.0099999998 -> 0.01); `value` if none does."""
    for digits in range(1, MAX_DIGITS + 1):
        candidate = float(f"{value:.{digits}g}")
        if torch.tensor(candidate, dtype=dtype).item() == value:
            return candidate
    return value


DDPM_SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
"""The 12 schedule buffers of a DDPM wrapper in the style of Ho et al.'s code, in registration order: SR3's
`GaussianDiffusion.set_new_noise_schedule` (Janspiry) and the latent-diffusion `DDPM.register_schedule` that
DiffIR's prior diffusion uses (gamma = alpha_bar)."""


# --- prefix maps: official keys <-> ours -----------------------------------------------------------------------
Parts = tuple[tuple[str, str], ...]
"""(official, ours) names of the parts of one module, each a key prefix below the module's own."""

WHOLE: Parts = (("", ""),)
"""A module whose parts keep their names (convolutions, linear layers, ...)."""


class PrefixKeyMap:
    """Official keys <-> ours, both ways, by key prefix: each module is an (official, ours) prefix pair with its
    parts, and a key is translated by the longest prefix it starts with. Both directions, so that a refusal can
    name the official key of one of ours that is missing. A format subclasses it to list its network's modules."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def module(self, official: str, ours: str, parts: Parts = WHOLE) -> None:
        """One module: the official prefix, ours, and the (official, ours) names of its parts."""
        self.pairs += [(official + a, ours + b) for a, b in parts]

    def ours(self, key: str) -> str | None:
        """Our key for an official one (None: no module has it)."""
        return self._translate(key, 0)

    def official(self, key: str) -> str:
        """The official key for one of ours (the key itself where no module has it)."""
        return self._translate(key, 1) or key

    def translation(self, keys: Iterable[str]) -> dict[str, str | None]:
        """{official key: ours or None}, in the order of `keys` (what `fitted_weights` takes)."""
        return {key: self.ours(key) for key in keys}

    def _translate(self, key: str, side: int) -> str | None:
        matches = [pair for pair in self.pairs if key.startswith(pair[side])]
        if not matches:
            return None
        best = max(matches, key=lambda pair: len(pair[side]))
        return best[1 - side] + key[len(best[side]) :]


# --- checking converted weights against our network ----------------------------------------------------------
def meta_shapes(
    network: Callable[..., nn.Module], init_args: Mapping[str, Any], where: str | None = None
) -> dict[str, torch.Size]:
    """{key: shape} of `network(**init_args)`'s state dict, built on the meta device (no memory, no initialisation).
    With `where`, a `ValueError` of the constructor (widths it cannot take) is refused as `<where>: <error>`."""
    try:
        with torch.device("meta"):
            return {key: value.shape for key, value in network(**init_args).state_dict().items()}
    except ValueError as error:
        if where is None:
            raise
        raise ImportRefused(f"{where}: {error}") from error


class Misfits(NamedTuple):
    """What keeps a file's weights from loading into our network, each for a message."""

    unexpected: list[str]
    """The file's keys that our network has no place for."""
    missing: list[str]
    """Our network's keys that no file key fills: under their official names where known, else ours."""
    shapes: list[str]
    """`<file key> <its shape> (expected <ours>)` for each shape that differs."""


def key_misfits(
    state: Mapping[str, Tensor],
    ours: Mapping[str, str | None],
    expected: Mapping[str, torch.Size],
    prefix: str = "",
    official: Callable[[str], str] | None = None,
) -> Misfits:
    """The misfits of the file's `state` renamed by `ours` ({file key: our key, None for none}) against our
    network's `expected` shapes. File keys are named with `prefix` (the one `state` was stripped of); a missing key
    of ours by `prefix + official(key)` where `official` is given, else by our name."""
    present = {new: key for key, new in ours.items() if new is not None}
    unexpected = [prefix + key for key in state if ours[key] not in expected]
    missing = [prefix + official(key) if official else key for key in expected if key not in present]
    shapes = [
        f"{prefix + present[key]} {tuple(state[present[key]].shape)} (expected {tuple(shape)})"
        for key, shape in expected.items()
        if key in present and state[present[key]].shape != shape
    ]
    return Misfits(unexpected, missing, shapes)


def fitted_weights(
    state: Mapping[str, Tensor],
    ours: Mapping[str, str | None],
    expected: Mapping[str, torch.Size],
    network: str,
    *,
    prefix: str = "",
    official: Callable[[str], str] | None = None,
    where: str = "",
) -> dict[str, Tensor]:
    """The file's `state` under our keys (`ours`: {file key: our key}), after checking that the keys and shapes are
    exactly our network's `expected` ones (`meta_shapes`). Else a refusal, for the first of unexpected keys,
    missing keys, other shapes, that names the file's keys (see `key_misfits`), the `network` (a description,
    "the SR3 network (...)") and, where given, `where` (which weights of the file)."""
    found = key_misfits(state, ours, expected, prefix, official)
    lead = f"{where}: " if where else ""
    if found.unexpected:
        raise ImportRefused(f"{lead}keys that {network} does not have: {listed(found.unexpected)}")
    if found.missing:
        names = "" if official else " (the suite's names)"
        raise ImportRefused(f"{lead}keys missing for {network}{names}: {listed(found.missing)}")
    if found.shapes:
        raise ImportRefused(f"{lead}shapes that do not fit {network}: {listed(found.shapes)}")
    return {ours[key]: value for key, value in state.items()}  # every key has one of ours now


def multiplier(width: int, base: int, key: str) -> int:
    """A level's channel multiplier: `width` (the channels of `key`, a file key named in the refusal) over the
    network's `base` width, which it must be a whole multiple of."""
    if width % base:
        raise ImportRefused(f"{key}: {width} channels, not a multiple of the base width {base}")
    return width // base
