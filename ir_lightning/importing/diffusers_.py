"""Any diffusers `UNet2DModel` saved in a local folder, as a DeqIR prior (`--format diffusers`).

The source is a folder (nothing is downloaded), either
- a pipeline, `DDPMPipeline(unet, scheduler).save_pretrained(folder)` (or `DDIMPipeline`): `model_index.json`,
  `unet/` (`config.json` and `diffusion_pytorch_model.safetensors` or `.bin`) and
  `scheduler/scheduler_config.json`; or
- a bare `UNet2DModel.save_pretrained(folder)` (`config.json` and the weights), with the training schedule beside
  it: a `scheduler_config.json` in the folder, or a sibling `scheduler/` folder (a pipeline's `unet/` given
  directly). The weights do not say how the model was trained, so a UNet without a scheduler config is refused,
  saying what to add.

What is read:
- the UNet's `config.json`, which becomes `DiffusersUNet(config)`'s argument (`ir_lightning.nets.diffusers_prior`):
  diffusers' private keys are dropped, the keys it leaves out take this diffusers version's defaults, written
  out, so the checkpoint's config is complete; class-conditional models and inputs other than RGB are refused;
- the weights, with safetensors (or `torch.load(weights_only=True)` for `.bin`), in float32, under diffusers'
  own key names; the attention names of checkpoints saved before diffusers 0.14 (`query`, `key`, `value`,
  `proj_attn`) are renamed as diffusers' loader renames them; keys and shapes must fit the network exactly;
- the training schedule from `scheduler_config.json` (`DDPMScheduler` / `DDIMScheduler`): `beta_schedule`
  linear, scaled_linear and squaredcos_cap_v2 are the suite's linear, quad and cosine with the same
  `beta_start`, `beta_end` and `num_train_timesteps`, checked against diffusers' own `alphas_cumprod` to its
  float32 rounding; other schedules, `trained_betas`, `rescale_betas_zero_snr` and `prediction_type`s other than
  epsilon are refused naming the key and value.

The checkpoint is a DeqIR one whose `net` is `TimestepPrior(DiffusersUNet(config))` on that schedule (the level
sqrt(alpha_bar_t) -> the integer step t; the first 3 output channels, eps, so learned-variance models with 6
work), with DeqIR's `train_schedule` the same schedule and the other settings from recipe `deqir_faces64`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas
from ir_lightning.importing.base import (
    Imported,
    ImportRefused,
    OfficialFormat,
    fitted_weights,
    key_renames,
    listed,
    meta_shapes,
    tensors,
    with_prefix,
)
from ir_lightning.importing.priors import EPS_CHANNELS, METHOD, NET, PRIOR, RECIPE, WRAPPER_CLASS, float32
from ir_lightning.importing.sr3 import noise_schedule, schedule_text
from ir_lightning.nets.diffusers_prior import INSTALL, DiffusersUNet, plain_config, private_keys

PRIOR_CLASS = "ir_lightning.nets.diffusers_prior.DiffusersUNet"
UNET = "unet."
"""`DiffusersUNet` holds the `UNet2DModel` as `unet`: the file's keys sit at `net.prior.unet.*`."""

MODEL_INDEX = "model_index.json"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
UNET_FOLDER, SCHEDULER_FOLDER = "unet", "scheduler"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
"""The weight files of `save_pretrained`, in the order diffusers prefers them."""
SHARDED = "diffusion_pytorch_model.safetensors.index.json"

UNET_CLASS = "UNet2DModel"
PIPELINES = ("DDPMPipeline", "DDIMPipeline")
"""Pipelines of a pixel-space unconditional UNet2DModel and a DDPM schedule (no latent autoencoder)."""
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine"}
"""diffusers' `beta_schedule` -> the suite's kind (`ir_lightning.diffusion.schedules`): linspace of beta, linspace of
sqrt(beta) squared, Nichol & Dhariwal's cosine clipped at 0.999."""
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
    "prediction_type",
)
"""The scheduler settings that say how the model was trained; the others are diffusers' sampler's."""
RGB = 3

LEGACY_ATTENTION = (
    (r"(\.attentions\.\d+)\.query\.", r"\1.to_q."),
    (r"(\.attentions\.\d+)\.key\.", r"\1.to_k."),
    (r"(\.attentions\.\d+)\.value\.", r"\1.to_v."),
    (r"(\.attentions\.\d+)\.proj_attn\.", r"\1.to_out.0."),
)
"""The attention key names of diffusers before 0.14 -> today's (what `ModelMixin` renames when it loads one)."""


@dataclass(frozen=True)
class Layout:
    """Where a folder keeps the UNet (`config.json` and weights) and the scheduler config (None: none found)."""

    unet: Path
    scheduler: Path | None
    pipeline: str | None


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ImportRefused(f"{path}: not readable as JSON ({error})") from error
    if not isinstance(value, dict):
        raise ImportRefused(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def refuse(path: Path, key: str, value: Any, why: str) -> ImportRefused:
    return ImportRefused(f"{path}: {key!r} = {json.dumps(value)}: {why}")


def pipeline_layout(folder: Path) -> Layout:
    index_path = folder / MODEL_INDEX
    index = read_json(index_path)
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise refuse(
            index_path,
            "_class_name",
            pipeline,
            f"not a pipeline of an unconditional pixel-space UNet2DModel and a DDPM schedule ({', '.join(PIPELINES)})",
        )
    unet = index.get(UNET_FOLDER)
    if not isinstance(unet, list) or unet[-1:] != [UNET_CLASS]:
        raise refuse(index_path, UNET_FOLDER, unet, f"the pipeline's unet is not a {UNET_CLASS}")
    scheduler = folder / SCHEDULER_FOLDER / SCHEDULER_CONFIG
    return Layout(folder / UNET_FOLDER, scheduler if scheduler.is_file() else None, pipeline)


def layout(folder: Path) -> Layout:
    """The folder's layout: a pipeline (`model_index.json`), else a bare UNet (`config.json`) with its scheduler
    config in the folder or in a sibling `scheduler/`."""
    if not folder.is_dir():
        raise ImportRefused(f"{folder}: not a folder (a diffusers model is a save_pretrained folder)")
    if (folder / MODEL_INDEX).is_file():
        return pipeline_layout(folder)
    if not (folder / CONFIG).is_file():
        raise ImportRefused(
            f"{folder}: neither {MODEL_INDEX} (a DDPMPipeline folder) nor {CONFIG} (a UNet2DModel folder)"
        )
    for scheduler in (folder / SCHEDULER_CONFIG, folder.parent / SCHEDULER_FOLDER / SCHEDULER_CONFIG):
        if scheduler.is_file():
            return Layout(folder, scheduler, None)
    return Layout(folder, None, None)


def detect(obj: Any) -> bool:
    """A folder holding a DDPM / DDIM pipeline or a UNet2DModel (cheap: two small JSON files at most)."""
    try:
        if not isinstance(obj, Path) or not obj.is_dir():
            return False
        if (obj / MODEL_INDEX).is_file():
            return json.loads((obj / MODEL_INDEX).read_text()).get(UNET_FOLDER, [None])[-1] == UNET_CLASS
        return json.loads((obj / CONFIG).read_text()).get("_class_name") == UNET_CLASS
    except Exception:  # noqa: BLE001 - detect never raises
        return False


# --- the UNet ------------------------------------------------------------------------------------------------------
def unet_config(folder: Path, report: list[str]) -> dict[str, Any]:
    """`DiffusersUNet`'s config: the file's, without the private keys, with this diffusers version's defaults for
    the keys it leaves out (so the checkpoint says everything); an RGB, unconditional UNet2DModel."""
    path = folder / CONFIG
    if not path.is_file():
        raise ImportRefused(f"{folder}: no {CONFIG} (the UNet2DModel's settings)")
    config = read_json(path)
    if config.get("_class_name", UNET_CLASS) != UNET_CLASS:
        raise refuse(path, "_class_name", config["_class_name"], f"not a {UNET_CLASS}")
    dropped = private_keys(config)
    try:
        with torch.device("meta"):
            network = DiffusersUNet(config)
    except (ImportError, ValueError, TypeError) as error:  # no diffusers, a conditional model, unknown keys
        raise ImportRefused(f"{path}: {error}") from error
    full = plain_config(network.unet.config)
    if full["in_channels"] != RGB:
        raise refuse(path, "in_channels", full["in_channels"], "DeqIR restores RGB images: the prior must take 3")
    if full["out_channels"] not in (RGB, 2 * RGB):
        raise refuse(path, "out_channels", full["out_channels"], "expected 3 (eps) or 6 (eps and learned variance)")
    defaults = sorted(set(full) - set(config))
    filled = (
        f"; {len(defaults)} it leaves out take diffusers {diffusers_version()}'s defaults ({listed(defaults)})"
        if defaults
        else ""
    )
    report.append(
        f"UNet2DModel settings from {path}{filled}, all written into the checkpoint; diffusers' private keys "
        f"dropped: {', '.join(dropped) or 'none'}"
    )
    return full


def diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def weights_file(folder: Path) -> Path:
    for name in WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    if (folder / SHARDED).is_file():
        raise ImportRefused(f"{folder / SHARDED}: sharded weights are not read; save the UNet as one file")
    held = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    raise ImportRefused(f"{folder}: no weights ({' or '.join(WEIGHTS)}); it holds {', '.join(held) or 'nothing'}")


def read_weights(path: Path) -> dict[str, Tensor]:
    """The file's tensors: safetensors, or a pickled state dict read with `weights_only=True`."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportRefused(f"{path}: reading safetensors needs the safetensors package: {INSTALL}") from error
        try:
            return load_file(path)
        except Exception as error:  # noqa: BLE001 - safetensors' own errors: one line naming the file
            raise ImportRefused(f"{path}: not a readable safetensors file ({error})") from error
    from ir_lightning.io.weights import STATE_DICT, WeightsError, load_safely

    try:
        return load_safely(path, STATE_DICT)
    except WeightsError as error:
        raise ImportRefused(str(error)) from error


def unet_weights(folder: Path, config: dict[str, Any], report: list[str]) -> dict[str, Tensor]:
    """The weights under `DiffusersUNet`'s keys (`unet.*`), checked against the network built on the meta device."""
    path = weights_file(folder)
    state = float32(tensors(read_weights(path), str(path)), report)
    renames = key_renames(state, LEGACY_ATTENTION)
    legacy = [key for key, new in renames.items() if key != new]
    if legacy:
        report.append(f"attention keys of diffusers < 0.14 renamed as diffusers loads them: {listed(legacy)}")
    state = {renames[key]: value for key, value in state.items()}
    expected = meta_shapes(DiffusersUNet, {"config": config}, where=str(folder / CONFIG))
    network = f"the UNet2DModel of {folder / CONFIG}"
    ours = {key: UNET + key for key in state}
    weights = fitted_weights(
        state, ours, expected, network, official=lambda key: key.removeprefix(UNET), where=str(path)
    )
    report.append(f"weights {path.name}: {len(weights)} tensors under diffusers' key names")
    return weights


# --- the schedule --------------------------------------------------------------------------------------------------
def scheduler_settings(path: Path) -> tuple[dict[str, Any], dict[str, Any], type]:
    """(the file's config without private keys, the same with the scheduler class's defaults filled in, the class)."""
    config = read_json(path)
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise refuse(path, "_class_name", name, f"the training schedule is read from {' or '.join(SCHEDULERS)}")
    import diffusers

    cls = getattr(diffusers, name)
    parameters = inspect.signature(cls.__init__).parameters
    given = {key: value for key, value in config.items() if key not in private_keys(config)}
    defaults = {key: p.default for key, p in parameters.items() if p.default is not inspect.Parameter.empty}
    return given, defaults | {key: value for key, value in given.items() if key in parameters}, cls


def training_schedule(path: Path, report: list[str]) -> dict[str, Any]:
    """The suite's `train_schedule` (`NoiseSchedule`'s fields) of the scheduler config at `path`; what the suite
    cannot rebuild exactly, or a model that does not predict eps, is refused naming the key."""
    given, settings, cls = scheduler_settings(path)
    if settings["prediction_type"] != "epsilon":
        raise refuse(
            path, "prediction_type", settings["prediction_type"], "DeqIR's chain needs an eps-prediction model"
        )
    if settings["trained_betas"] is not None:
        raise ImportRefused(f"{path}: 'trained_betas' is set: explicit betas are not a schedule the suite can rebuild")
    if settings.get("rescale_betas_zero_snr"):
        raise refuse(path, "rescale_betas_zero_snr", True, "zero-terminal-SNR betas are not a schedule of the suite")
    kind = BETA_SCHEDULES.get(settings["beta_schedule"])
    if kind is None:
        raise refuse(
            path, "beta_schedule", settings["beta_schedule"], f"the suite rebuilds {', '.join(BETA_SCHEDULES)} only"
        )
    schedule = noise_schedule(kind, settings["num_train_timesteps"], settings["beta_start"], settings["beta_end"])
    check_alpha_bars(path, cls.from_config(given).alphas_cumprod, schedule)
    sampler = sorted(set(given) - set(SCHEDULE_KEYS))
    report.append(
        f"train_schedule {schedule_text(schedule)} from {path} (beta_schedule {settings['beta_schedule']}, "
        f"prediction_type epsilon); its alphas_cumprod equal the suite's to float32 rounding; diffusers' sampler "
        f"settings are not used (DeqIR samples with its own chain): {listed(sampler) or 'none'}"
    )
    return schedule


def check_alpha_bars(path: Path, theirs: Tensor, schedule: dict[str, Any]) -> None:
    """diffusers' `alphas_cumprod` (float32, a product of t float32 factors) against the suite's float64 ones:
    within t float32 epsilons, relatively (the rounding of t products; measured: at most 0.2 t)."""
    ends = {key: value for key, value in schedule.items() if key.startswith("linear_")}
    ours = gammas_from_betas(make_betas(schedule["kind"], schedule["n_steps"], **ends))
    if theirs.shape != ours.shape:
        raise ImportRefused(
            f"{path}: diffusers' alphas_cumprod has shape {tuple(theirs.shape)}, ours {tuple(ours.shape)}"
        )
    steps = torch.arange(1, ours.numel() + 1, dtype=torch.float64)
    relative = (theirs.double() - ours).abs() / ours
    worst = int((relative / steps).argmax())
    if not bool((relative <= steps * torch.finfo(torch.float32).eps).all()):
        raise ImportRefused(
            f"{path}: diffusers' alphas_cumprod[{worst}] = {float(theirs[worst]):.8g} is not the suite's "
            f"{schedule_text(schedule)} ({float(ours[worst]):.8g}) to float32 rounding"
        )


# --- the checkpoint ------------------------------------------------------------------------------------------------
def wrapped(
    config: dict[str, Any], schedule: dict[str, Any], eps_channels: int, image_size: int | None
) -> dict[str, dict[str, Any]]:
    """DeqIR's `net`: `DiffusersUNet(config)` behind `TimestepPrior` on the model's training schedule, restoring
    `image_size` images (None: any size)."""
    ends = {key: schedule[key] for key in ("linear_start", "linear_end") if key in schedule}
    init_args = {
        "prior": {"class_path": PRIOR_CLASS, "init_args": {"config": config}},
        "schedule": schedule["kind"],
        "n_steps": schedule["n_steps"],
        **ends,
        "eps_channels": eps_channels,
        "image_size": image_size,
    }
    return {"net": {"class_path": WRAPPER_CLASS, "init_args": init_args}}


def square_size(config: Mapping[str, Any]) -> int | None:
    """The side of the square images the UNet was trained on (`sample_size`: an int or [H, W]); None otherwise."""
    size = config.get("sample_size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def size_line(config: Mapping[str, Any]) -> str:
    side = square_size(config)
    if side is None:
        return (
            f"sample_size {json.dumps(config.get('sample_size'))} is no square size: the prior takes any size "
            "(restore images of the size it was trained on)"
        )
    return (
        f"a {side} x {side} prior (sample_size): other image sizes are refused; ir-lightning restore and evaluate "
        "cut larger images into tiles of it"
    )


def convert(obj: Any, variant: str | None) -> Imported:
    if not isinstance(obj, Path):
        raise ImportRefused(f"the diffusers format reads a save_pretrained folder, got a {type(obj).__name__}")
    found = layout(obj)
    report = [f"a {found.pipeline} folder" if found.pipeline else "a UNet2DModel folder"]
    if found.scheduler is None:
        raise ImportRefused(
            f"{found.unet}: no {SCHEDULER_CONFIG} beside the UNet (in the folder or in a sibling {SCHEDULER_FOLDER}/): "
            f"the weights do not say how the model was trained; add the {SCHEDULER_CONFIG} of its training "
            'scheduler, e.g. {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, '
            '"beta_end": 0.02, "num_train_timesteps": 1000, "prediction_type": "epsilon"}'
        )
    config = unet_config(found.unet, report)
    schedule = training_schedule(found.scheduler, report)
    weights = unet_weights(found.unet, config, report)
    eps_channels = min(EPS_CHANNELS, config["out_channels"])
    variance = config["out_channels"] - eps_channels
    report.append(
        "wrapped in TimestepPrior: DeqIR's level sqrt(alpha_bar_t) -> the integer step t of that schedule; the "
        f"first {eps_channels} output channels are eps"
        + (f" (the other {variance}, the learned variance, are dropped)" if variance else "")
    )
    report.append(size_line(config))
    report.append(f"recipe {RECIPE} gives DeqIR's other settings (its 64 px crops are not this prior's)")
    return Imported(
        method=METHOD,
        networks=wrapped(config, schedule, eps_channels, square_size(config)),
        state_dict=with_prefix(weights, NET + PRIOR),
        settings={"train_schedule": dict(schedule)},
        recipe=RECIPE,
        report=report,
    )


FORMATS = (
    OfficialFormat(
        name="diffusers",
        source="a diffusers save_pretrained FOLDER: DDPMPipeline / DDIMPipeline (model_index.json, unet/, "
        "scheduler/) or a UNet2DModel with its scheduler_config.json (a DeqIR prior)",
        detect=detect,
        convert=convert,
        reads_folders=True,
    ),
)
