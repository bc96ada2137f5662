"""The one safe reader of weight files: checkpoints of the suite and the state dicts of reference networks
(LPIPS's AlexNet, FID's Inception-v3, the perceptual loss's VGG19), with one error class and one key report.

Every file is read with `torch.load(weights_only=True)` (`load_safely`), after a look at its first bytes
refuses what is recognisably something else (`what_else`): a file whose pickle would run code or build
arbitrary objects is refused before anything in it runs, and so is every file that is no such file (text,
a shard, a truncated file, random bytes). Every failure is one `WeightsError` (a `ConfigurationError`: the
command line prints it in one line) naming the file and the reason, never a traceback; a missing file is a
`MissingWeightsFile`, which is a `WeightsError` and a `FileNotFoundError` too.

- `read_checkpoint`: a checkpoint of this suite, checked (`check_checkpoint`): a dict with a `state_dict` of
  named tensors, whose settings name only classes of the allow-list (`ir_lightning.class_paths`);
- `read_state_dict`: a file of named tensors (a reference network's weights), whose keys and shapes the
  caller compares with its network's (`key_report`, `check_keys`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ir_lightning.errors import ConfigurationError


class WeightsError(ConfigurationError):
    """A weight file or checkpoint that cannot serve: refused by `torch.load(weights_only=True)`, not such a
    file at all (text, a shard, truncated, random bytes), of another layout, with missing, unexpected or
    mis-shaped keys, or naming classes outside the allow-list. The message is one line naming the file and
    the reason."""


class MissingWeightsFile(WeightsError, FileNotFoundError):
    """A weight file or checkpoint that does not exist (named in the message)."""


CHECKPOINT = "checkpoint"
"""`load_safely`'s kind for a checkpoint of this suite (refusals say "not a checkpoint of this suite")."""
STATE_DICT = "state dict"
"""`load_safely`'s kind for a file of named tensors (refusals say "not a PyTorch weights file")."""

LIGHTNING_PAST_HPARAMS_KEYS: tuple[str, ...] = ("hparams", "module_arguments")
"""Lightning's `CHECKPOINT_PAST_HPARAMS_KEYS` (`lightning.pytorch.core.saving`), written out so that reading
a checkpoint imports no Lightning (tests/io/test_weights.py checks that the two agree)."""

SETTINGS_KEYS: tuple[str, ...] = ("hyper_parameters", "datamodule_hyper_parameters", *LIGHTNING_PAST_HPARAMS_KEYS)
"""Where a checkpoint keeps settings that Lightning hands to a constructor (the older keys are still merged
into the hyperparameters when a module loads)."""

RESUME_KEYS: tuple[str, ...] = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "global_step", "epoch")
"""What a training checkpoint holds beyond the weights, and `fit --ckpt_path` needs to resume."""

_TORCH_ADVICE = (
    "Weights only load failed",
    "Please file an issue",
    "Check the documentation",
    "WeightsUnpickler error:",
    "In PyTorch 2.6",
    "You can use",
    "Re-running",
    "Do it only if",
    "weights_only=False",
)
"""Where torch's general advice starts in a load error (never repeated: retrying with weights_only=False
would run the file's code)."""

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (257, b"ustar", "a tar archive: a data shard, or torch's legacy .tar format, which cannot load safely"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"\x1f\x8b", "a gzip-compressed file"),
    (0, b"{", "a JSON or other text file"),
)
"""(offset, bytes, what) of files that are recognisably something else than a torch file."""


def load_failure_reason(error: Exception) -> str:
    """The informative line of a failed `torch.load(weights_only=True)`: the unpickler's reason (an
    unsupported global, an opcode of a file that is no pickle) without torch's general advice around it
    (never its suggestion to retry with weights_only=False: that would run the file's code)."""
    for line in (line.strip() for line in str(error).splitlines()):
        cut = min([line.find(marker) for marker in _TORCH_ADVICE if marker in line] + [len(line)])
        reason = line[:cut].strip()
        if reason:
            return f"{type(error).__name__}: {reason}"
    return type(error).__name__


def what_else(path: str | os.PathLike) -> str | None:
    """What a file is when it is recognisably no torch file (empty, a tar archive, an image, text, neither a
    zip archive nor a pickle); None when it may be one (a zip archive or a pickle)."""
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "the file is empty"
    for offset, magic, what in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return f"it is {what}"
    if head.startswith(b"PK\x03\x04") or head[0] == 0x80:  # a zip archive, or a pickle of protocol 2 or later
        return None
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return "it is neither a zip archive nor a pickle"


def refusal(path: str | os.PathLike, reason: str, kind: str = CHECKPOINT) -> WeightsError:
    """The error refusing `path` (a `kind` file) for `reason`."""
    if kind == CHECKPOINT:
        return WeightsError(f"{path}: refused, not a checkpoint of this suite ({reason}); nothing in it was run")
    return WeightsError(f"{path}: not a PyTorch weights file that loads with weights_only=True ({reason})")


def safe_load(load: Callable[[], Any], path: str | os.PathLike, kind: str = CHECKPOINT) -> Any:
    """`load()` (a `torch.load(..., weights_only=True)` of `path`), with every way a file can fail to be a
    `kind` file (refused pickle, no pickle at all, truncated zip, legacy tar, random bytes) turned into a
    `WeightsError` naming the file and the reason; a missing file is a `MissingWeightsFile`. Running out of
    memory, or a device error, stays what it is."""
    try:
        return load()
    except FileNotFoundError as error:
        raise MissingWeightsFile(f"{path}: no such file") from error
    except OSError as error:  # a folder, no permission, an I/O error: the file cannot be read
        raise WeightsError(f"{path}: cannot be read ({error.strerror or error})") from error
    except MemoryError:
        raise
    except RuntimeError as error:
        if any(word in str(error) for word in ("CUDA", "out of memory", "device")) and "PytorchStreamReader" not in str(
            error
        ):
            raise  # a device or memory problem: not the file's fault
        raise refusal(path, load_failure_reason(error), kind) from error
    except Exception as error:  # noqa: BLE001 - UnpicklingError, EOFError, KeyError, IndexError, struct.error, ...
        raise refusal(path, load_failure_reason(error), kind) from error


def _is_zip(path: str | os.PathLike) -> bool:
    """Whether `path` reads as a zip archive (`zipfile.is_zipfile` raises on some broken central directories)."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def load_safely(path: str | os.PathLike, kind: str = CHECKPOINT, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with the errors of `safe_load`, after a look at the file's first
    bytes refuses what is recognisably something else (`what_else`). `mmap`: tensors are mapped, not read,
    so looking at a large checkpoint's metadata is cheap (zip archives only; others are read)."""
    found = safe_load(lambda: what_else(path), path, kind)
    if found is not None:
        raise refusal(path, found, kind)
    mmap = mmap and _is_zip(path)
    return safe_load(lambda: torch.load(path, map_location=map_location, weights_only=True, mmap=mmap), path, kind)


# --- checkpoints of the suite --------------------------------------------------------------------------------
def check_settings(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise `WeightsError` naming the file unless its settings (`hyper_parameters`, `datamodule_hyper_parameters`
    and Lightning's older keys) are dicts of named settings in which every class path is allowed
    (`ir_lightning.class_paths`): nothing they name is imported either way."""
    from ir_lightning.class_paths import UntrustedClassPathError, check_class_paths

    for key in SETTINGS_KEYS:
        settings = checkpoint.get(key)
        if settings is None:
            continue
        if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
            raise refusal(path, f"its {key} are not a dict of named settings")
        try:
            check_class_paths(settings, str(path), where=key)
        except UntrustedClassPathError as error:
            raise WeightsError(str(error)) from error


def check_checkpoint(checkpoint: Any, path: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """`checkpoint` (a loaded file) if it is laid out as a checkpoint of this suite (a dict with a `state_dict`
    of named tensors) and its settings pass `check_settings`; else `WeightsError` naming the file and what is
    wrong. `resume`: it must also hold the training state `fit --ckpt_path` resumes."""
    if not isinstance(checkpoint, dict):
        raise refusal(path, f"it holds a {type(checkpoint).__name__}, not a dict of weights and settings")
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()
    ):
        raise refusal(path, "no state_dict of named tensors")
    check_settings(checkpoint, path)
    if resume:
        missing = [key for key in RESUME_KEYS if key not in checkpoint]
        if missing:
            raise WeightsError(
                f"{path} holds weights only (no {', '.join(missing)}: an exported or imported checkpoint), so a run "
                f"cannot resume from it; to start a new run from its weights, drop --ckpt_path and give "
                f"--init_weights {path} (fit)"
            )
        if not isinstance(checkpoint["global_step"], int) or not isinstance(checkpoint["optimizer_states"], list):
            raise refusal(path, "its training state (global_step, optimizer_states) is malformed")
    return checkpoint


def read_checkpoint(path: str | os.PathLike, resume: bool = False, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file of this suite, loaded without running or importing anything it names, and checked
    (`check_checkpoint`); every failure is one `WeightsError` naming the file."""
    return check_checkpoint(load_safely(path, CHECKPOINT, mmap=mmap), path, resume=resume)


# --- state dicts of reference networks ---------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a state-dict file (names -> tensors); every failure is one `WeightsError` naming the file."""
    state = load_safely(path, STATE_DICT)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict (names -> tensors), found a {type(state).__name__}")
    return dict(state)


@dataclass(frozen=True)
class KeyReport:
    """How a state dict's keys differ from a network's: `missing` (in the network's order), `unexpected` (in
    the file's order) and `mismatched` (key, shape in the file, shape the network has; in the network's order)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def text(self) -> str:
        """`missing keys a, b; unexpected keys c; mis-shaped k (file's shape) (expected (network's))`."""
        problems = []
        if self.missing:
            problems.append(f"missing keys {', '.join(self.missing)}")
        if self.unexpected:
            problems.append(f"unexpected keys {', '.join(self.unexpected)}")
        if self.mismatched:
            problems.append(
                f"mis-shaped {', '.join(f'{key} {found} (expected {shape})' for key, found, shape in self.mismatched)}"
            )
        return "; ".join(problems)


def key_report(found: Mapping[str, Tensor], expected: Mapping[str, Any]) -> KeyReport:
    """Compare the tensors `found` in a file with the shapes (or tensors) a network `expected`."""
    shapes = {key: tuple(value.shape if isinstance(value, Tensor) else value) for key, value in expected.items()}
    return KeyReport(
        missing=[key for key in shapes if key not in found],
        unexpected=[key for key in found if key not in shapes],
        mismatched=[
            (key, tuple(found[key].shape), shape)
            for key, shape in shapes.items()
            if key in found and tuple(found[key].shape) != shape
        ],
    )


def check_keys(path: str | os.PathLike, found: Mapping[str, Tensor], expected: Mapping[str, Any], what: str) -> None:
    """Raise `WeightsError` unless `found` has exactly the keys of `expected`, each with its shape; the message
    names the file, what it should be, and every key that differs (`KeyReport.text`)."""
    report = key_report(found, expected)
    if report:
        raise WeightsError(f"{path}: not {what}: {report.text()}")


def existing_file(path: str | Path, message: str) -> Path:
    """`path` as a Path if it names an existing file, else `MissingWeightsFile(message)`."""
    path = Path(path)
    if not path.exists():
        raise MissingWeightsFile(message)
    return path
