"""The one safe reader of weight files: checkpoints of the suite and the state dicts of reference networks
(LPIPS's AlexNet, FID's Inception-v3, the perceptual loss's VGG19), with one error class and one key report.

Every file is read with `torch.load(weights_only=True)` (`load_safely`), after a look at its first bytes
refuses what is recognisably something else (`what_else`): a file whose pickle would run code or build
arbitrary objects is refused before anything in it runs, and so is every file that is no such file (text,
a shard, a truncated file, random bytes). Every failure is one `WeightsError` (a `ConfigurationError`: the
command line prints it in one line) naming the file and the reason, never a traceback; a missing file is a
`MissingWeightsFile`, which is a `WeightsError` and a `FileNotFoundError` too.

- `read_checkpoint`: a checkpoint of this suite, checked (`check_checkpoint`): a dict with a `state_dict` of
  named tensors, whose settings name only classes of the allow-list (`ir_lightning.class_paths`). It reads the
  suite's three layouts, told apart by their content, never by their name: a torch file (`.ckpt`), a safetensors
  file whose metadata holds the settings (`read_safetensors`: its header is JSON, its tensors raw data, so no
  reader of it can run code), and a model folder (`config.json` + `model.safetensors`, `read_model_folder`);
- `read_state_dict`: a file of named tensors (a reference network's weights), whose keys and shapes the
  caller compares with its network's (`key_report`, `check_keys`).
"""

from __future__ import annotations

import json
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
    if str(path).endswith(SAFETENSORS_SUFFIX):  # torch.load hands a file of this name to safetensors, whatever it is
        return safe_load(lambda: _load_opened(path, map_location), path, kind)
    mmap = mmap and _is_zip(path)
    return safe_load(lambda: torch.load(path, map_location=map_location, weights_only=True, mmap=mmap), path, kind)


def _load_opened(path: str | os.PathLike, map_location: Any) -> Any:
    """`torch.load(weights_only=True)` of an opened file: the content decides, not the name."""
    with open(path, "rb") as file:
        return torch.load(file, map_location=map_location, weights_only=True)


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
    """A checkpoint of this suite (a torch file, a safetensors file or a model folder, told apart by content),
    loaded without running or importing anything it names, and checked (`check_checkpoint`); every failure is
    one `WeightsError` naming the file. `mmap`: a torch file's tensors are mapped, not read."""
    if is_model_folder(path):
        checkpoint = read_model_folder(path)
    elif is_safetensors(path):
        checkpoint = read_safetensors(path)
    else:
        checkpoint = load_safely(path, CHECKPOINT, mmap=mmap)
    return check_checkpoint(checkpoint, path, resume=resume)


# --- safetensors files and model folders ---------------------------------------------------------------------
SAFETENSORS_SUFFIX = ".safetensors"
"""The name safetensors files go by; only torch.load goes by it (`load_safely` reads such a name by content)."""
SAFETENSORS_HEADER_LIMIT = 100_000_000
"""The longest header the safetensors library reads: a longer length field is no safetensors header."""

MODEL_CONFIG = "config.json"
"""A model folder's settings (`ir-lightning export --format folder`): the record below as JSON values."""
MODEL_WEIGHTS = "model.safetensors"
"""A model folder's weights (the file's metadata holds the same record as its `config.json`)."""

TEXT_RECORD_KEYS: tuple[str, ...] = (
    "class_path",
    "ir_lightning_version",
    "pytorch-lightning_version",
    "hparams_name",
    "weights",
    "license",
)
"""Settings a safetensors file stores as plain text in its metadata (`format` is safetensors' own: "pt")."""
JSON_RECORD_KEYS: tuple[str, ...] = (
    "hyper_parameters",
    "global_step",
    "epoch",
    "exported_without",
    "imported_from",
    "training",
    "validation",
)
"""Settings a safetensors file stores as JSON text in its metadata."""
RECORD_KEYS = TEXT_RECORD_KEYS + JSON_RECORD_KEYS
"""What a safetensors file or model folder records beside the weights: the checkpoint's settings and history
(`class_path` is the method's, also in `hyper_parameters._class_path`; `weights` says whether the tensors are
the EMA or the trained ones; `training` and `validation` what the run recorded, if anything; `license` the
licence an export declared)."""


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether the file starts as a safetensors file: an 8-byte little-endian header length that fits in the
    file, then the header's JSON object (read from the content; the name is not trusted)."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
            size = os.fstat(file.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= min(SAFETENSORS_HEADER_LIMIT, size - 8) and head[8:9] == b"{"


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding a model's `config.json` (`ir-lightning export --format folder`)."""
    return Path(path).is_dir() and (Path(path) / MODEL_CONFIG).is_file()


def safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets, `__metadata__`)."""
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(length).decode("utf-8"))
    except OSError as error:
        raise WeightsError(f"{path}: cannot be read ({error.strerror or error})") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refusal(path, f"its safetensors header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise refusal(path, "its safetensors header is not a JSON object")
    return header


def encode_record(record: dict[str, Any]) -> dict[str, str]:
    """A checkpoint's settings and history (`RECORD_KEYS`) as safetensors metadata: text, or JSON text; missing
    and None values left out. Raises ValueError naming a setting that is not plain data (JSON cannot hold it)."""
    metadata = {"format": "pt"}  # safetensors' own key, which other readers (transformers) expect
    for key in RECORD_KEYS:
        value = record.get(key)
        if value is None:
            continue
        try:
            metadata[key] = str(value) if key in TEXT_RECORD_KEYS else json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{key}: cannot be written as JSON ({error})") from error
    return metadata


def decode_record(metadata: dict[str, str], path: str | os.PathLike) -> dict[str, Any]:
    """The settings and history a safetensors file's metadata records (`encode_record`'s inverse)."""
    record: dict[str, Any] = {key: metadata[key] for key in TEXT_RECORD_KEYS if key in metadata}
    for key in JSON_RECORD_KEYS:
        if key in metadata:
            try:
                record[key] = json.loads(metadata[key])
            except json.JSONDecodeError as error:
                raise refusal(path, f"its metadata's {key} is not JSON ({error})") from error
    return record


def checkpoint_of_record(record: dict[str, Any], path: str | os.PathLike, where: str) -> dict[str, Any]:
    """The checkpoint a safetensors file's or model folder's record describes (weights still to add), after
    its method's `class_path` passed the allow-list; `where` names the record in messages ("metadata", ...)."""
    from ir_lightning.class_paths import UntrustedClassPathError, check_class_paths

    hparams = record.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise refusal(path, f"its {where} holds no hyper_parameters: weights without the settings of a method")
    class_path = record.get("class_path")
    if class_path is not None:
        try:
            check_class_paths({"class_path": class_path}, str(path), where=where)
        except UntrustedClassPathError as error:
            raise WeightsError(str(error)) from error
        if hparams.get("_class_path") != class_path:
            raise refusal(
                path,
                f"its {where} names the method {class_path!r} but its hyper_parameters {hparams.get('_class_path')!r}",
            )
    return {key: record[key] for key in RECORD_KEYS if key in record and key != "class_path"}


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """A safetensors file of this suite as a checkpoint: its tensors as the `state_dict`, the settings and
    history of its metadata (`decode_record`) beside them. Every class path the metadata names is checked
    before the tensors are read (`check_settings`); nothing is imported, and nothing in the file can run."""
    header = safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise refusal(path, "its safetensors metadata is not a map of texts")
    checkpoint = checkpoint_of_record(decode_record(metadata, path), path, "metadata")
    check_settings(checkpoint, path)
    checkpoint["state_dict"] = read_safetensors_tensors(path)
    return checkpoint


def read_safetensors_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file (on the CPU), with every failure one `WeightsError` naming the file."""
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise WeightsError(f"{path}: reading a safetensors file needs the safetensors package") from error
    try:
        return load_file(path, device="cpu")
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - SafetensorError (a malformed header or truncated data), OSError
        raise refusal(path, f"{type(error).__name__}: {error}") from error


def read_model_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """A model folder as a checkpoint: the weights of its `model.safetensors`, the settings and history of its
    `config.json` (where a user edits them; the weights file's own record is checked and then set aside)."""
    folder = Path(folder)
    config_path = folder / MODEL_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise WeightsError(f"{config_path}: cannot be read ({error.strerror or error})") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refusal(config_path, f"not JSON: {error}") from error
    if not isinstance(config, dict):
        raise refusal(config_path, "not a JSON object")
    checkpoint = checkpoint_of_record(config, config_path, MODEL_CONFIG)
    check_settings(checkpoint, config_path)
    weights = folder / MODEL_WEIGHTS
    if not weights.is_file():
        raise MissingWeightsFile(f"{folder}: no {MODEL_WEIGHTS} beside its {MODEL_CONFIG}")
    if not is_safetensors(weights):
        raise refusal(weights, "not a safetensors file")
    checkpoint["state_dict"] = read_safetensors(weights)["state_dict"]
    return checkpoint


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
