"""`ir-lightning export`: a checkpoint -> a file or folder for restoring and publishing.

    ir-lightning export runs/sr3_x4/checkpoints/last.ckpt sr3_x4.ckpt
    ir-lightning export runs/sr3_x4/checkpoints/last.ckpt sr3_x4.safetensors --format safetensors
    ir-lightning export runs/sr3_x4/checkpoints/last.ckpt sr3_x4/ --format folder --license cc-by-4.0

A training checkpoint holds the EMA weights (`state_dict`), the trained weights, the optimizer and scheduler
states and the callbacks' states. Restoring needs only the EMA weights of the networks restoration runs (the
method's `TRAINING_ONLY` submodules, listed in the checkpoint, are left out: a diffusion network that only
shaped the loss, a teacher, a discriminator) and the hyperparameters that rebuild the method. The source may be
any checkpoint of the suite (training, exported, imported; a torch file, a safetensors file or a model folder).

Formats (`--format`; `WRITERS` maps each to its writer, so a format is one more entry):

- `ckpt` (default): a torch file that `load_from_checkpoint` reads as it reads a full checkpoint, with
  `weights_only=True`;
- `safetensors`: the same weights as a safetensors file (raw tensors: loading it runs nothing), the settings and
  history in its metadata as text (`ir_lightning.io.weights.encode_record`: the method's class path, its
  hyperparameters in this version's names, the suite's version, steps, what was left out, where it was imported
  from, which weights, the run's training and validation record where there is one);
- `folder`: a model folder in the layout of Hugging Face's `save_pretrained`: `model.safetensors`, `config.json`
  (the same record as JSON, the licence and the versions) and `README.md` (a model card: method and paper,
  training, data, steps, validation scores with their protocol or "not recorded", how to load it).

Every command that takes `--ckpt` (`restore`, `evaluate`, `fit --init_weights`) and `ir_lightning.load` read all
three. Nothing is uploaded or downloaded.

- `onnx`, `torchscript`: the method's whole restoration as one graph for deployment (`ir_lightning.deploy`: DiffIR
  stage 2 with its prior steps, the Denoising-as-Adaptation restorer, RDDM at its step count), with dynamic height
  and width, checked against PyTorch (1e-4) at two sizes before the file is kept; SR3's sampling loop, DeqIR's
  solve and DiffIR stage 1 are refused, naming the network to export instead (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ir_lightning.io.atomic import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from torch import Tensor

KEPT = (
    "state_dict",
    "hyper_parameters",
    "hparams_name",
    "pytorch-lightning_version",
    "global_step",
    "epoch",
    "imported_from",
)
"""What a `ckpt` export keeps of a checkpoint (beside `exported_without`)."""

DEFAULT_LICENSE = "unknown"
"""The licence an export declares unless `--license` names one (a Hugging Face licence identifier)."""

PAPERS: dict[str, str] = {
    "SR3": '"Image Super-Resolution via Iterative Refinement", Saharia et al., IEEE TPAMI 2023 (arXiv:2104.07636)',
    "RDDM": '"Residual Denoising Diffusion Models", Liu et al., CVPR 2024 (arXiv:2308.13712)',
    "DiffIR": '"DiffIR: Efficient Diffusion Model for Image Restoration", Xia et al., ICCV 2023 (arXiv:2303.09472)',
    "DenoisingAsAdaptation": (
        '"Denoising as Adaptation: Noise-Space Domain Adaptation for Image Restoration", Liao et al., '
        "ICLR 2025 (arXiv:2406.18516)"
    ),
    "DeqIR": '"Deep Equilibrium Diffusion Restoration with Parallel Sampling", Cao et al., CVPR 2024 (arXiv:2311.11600)',
}
"""The paper of each method, by the method's class name (DiffIR's stages and its GAN variant share one)."""

NOT_RECORDED = "not recorded"


# --- what every format writes ----------------------------------------------------------------------------------
def exported_checkpoint(src: str | Path, half: bool = False, settings: Sequence[str] = ()) -> dict[str, Any]:
    """The restoring part of checkpoint `src`: the `KEPT` entries (and the record of a safetensors file or model
    folder), without the weights of `TRAINING_ONLY` submodules, listed in `exported_without`; float16 weights
    with `half`; `settings` (`KEY=VALUE`, as `restore --set` takes them) change the restoring settings the export
    carries, so that a published model restores with them by default (a shipped model's `color_fix`, its sampling
    steps). Refused, naming the file, unless a checkpoint of this suite."""
    from ir_lightning.inference.loading import checkpoint_record
    from ir_lightning.io.weights import read_checkpoint

    checkpoint = read_checkpoint(src)
    if "hyper_parameters" not in checkpoint:
        raise ValueError(f"{src} is not a Lightning checkpoint of this suite (no state_dict/hyper_parameters)")
    slim = checkpoint_record(checkpoint) | {k: checkpoint[k] for k in KEPT if k in checkpoint}
    if "current_model_state" in checkpoint:  # the state_dict of a file holding both sets is the EMA's
        slim["weights"] = "ema"
    dropped = list(checkpoint.get("training_only", ()))  # e.g. a diffusion network that only shaped the loss
    if dropped:
        prefixes = tuple(f"{name}." for name in dropped)
        slim["state_dict"] = {k: v for k, v in slim["state_dict"].items() if not k.startswith(prefixes)}
    left_out = list(dict.fromkeys([*checkpoint.get("exported_without", ()), *dropped]))  # an import's, then ours
    if left_out:
        slim["exported_without"] = left_out
    if half:
        slim["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in slim["state_dict"].items()}
    if settings:
        slim["hyper_parameters"] = with_settings(checkpoint, settings, Path(src))
    return slim


def with_settings(checkpoint: dict[str, Any], settings: Sequence[str], src: Path) -> dict[str, Any]:
    """The checkpoint's hyperparameters (in this version's names) with `settings` applied, checked by name and
    type as `restore --set` checks them; a ValueError naming the setting otherwise."""
    from ir_lightning.inference.loading import Options, RestoreError, method_class, restoring_settings

    cls = method_class(checkpoint, src)
    hparams = cls.upgrade_hyperparameters(dict(checkpoint.get("hyper_parameters") or {}))
    try:
        return {**hparams, **restoring_settings(cls, hparams, Options(set=tuple(settings)))}
    except RestoreError as error:
        raise ValueError(str(error).replace("--set", "export --set")) from error


def export_weights(
    src: str | Path, dst: str | Path, half: bool = False, settings: Sequence[str] = ()
) -> dict[str, int]:
    """Writes the restoring part of checkpoint `src` to `dst` as a torch file (atomically); returns sizes in bytes."""
    import torch  # here, not above: `ir-lightning export --help` imports no torch

    slim = exported_checkpoint(src, half, settings)
    buffer = io.BytesIO()
    torch.save({k: slim[k] for k in (*KEPT, "exported_without") if k in slim}, buffer)
    atomic_write_bytes(dst, buffer.getvalue())
    return sizes(src, dst)


# --- safetensors ------------------------------------------------------------------------------------------------
def published_record(slim: dict[str, Any], source: Path, license: str | None) -> dict[str, Any]:
    """The record a safetensors file or model folder carries (`ir_lightning.io.weights.RECORD_KEYS`): the
    method's class path, its hyperparameters in this version's names, the suite's version, the export's
    `license`, and the training record of the run (`run_record`) where the checkpoint has none of its own."""
    import ir_lightning
    from ir_lightning.class_paths import allowed_class

    hparams = slim["hyper_parameters"]
    cls = allowed_class(hparams.get("_class_path", ""))  # checked by the reader: None only for a foreign class
    upgraded = cls.upgrade_hyperparameters(hparams) if hasattr(cls, "upgrade_hyperparameters") else hparams
    record = {k: v for k, v in slim.items() if k != "state_dict"}
    record |= {"class_path": hparams.get("_class_path"), "hyper_parameters": upgraded}
    record["ir_lightning_version"] = ir_lightning.__version__
    record["training"] = slim.get("training") or run_record(source)
    if license is not None or "license" not in record:
        record["license"] = license or DEFAULT_LICENSE
    return record


def plain_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors as safetensors stores them: contiguous, each with storage of its own (tied weights copied)."""
    seen: set[int] = set()
    plain = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        plain[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return plain


def safetensors_bytes(slim: dict[str, Any], record: dict[str, Any]) -> bytes:
    """A safetensors file of the export's weights with `record` in its metadata."""
    from safetensors.torch import save

    from ir_lightning.io.weights import encode_record

    return save(plain_tensors(slim["state_dict"]), metadata=encode_record(record))


def export_safetensors(
    src: str | Path, dst: str | Path, half: bool = False, license: str | None = None, settings: Sequence[str] = ()
) -> dict:
    """Writes the restoring part of checkpoint `src` to `dst` as a safetensors file (atomically); returns sizes."""
    slim = exported_checkpoint(src, half, settings)
    atomic_write_bytes(dst, safetensors_bytes(slim, published_record(slim, Path(src), license)))
    return sizes(src, dst)


# --- model folders ----------------------------------------------------------------------------------------------
def export_folder(
    src: str | Path, dst: str | Path, half: bool = False, license: str | None = None, settings: Sequence[str] = ()
) -> dict:
    """Writes checkpoint `src` as a model folder `dst` (created; its three files replaced atomically):
    `model.safetensors`, `config.json` and `README.md`; returns sizes in bytes."""
    import lightning
    import safetensors
    import torch

    from ir_lightning.io.weights import MODEL_CONFIG, MODEL_WEIGHTS

    folder = Path(dst)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file: a model folder needs a folder of its own")
    slim = exported_checkpoint(src, half, settings)
    record = published_record(slim, Path(src), license)
    config = record | {
        "versions": {
            "ir_lightning": record["ir_lightning_version"],
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    weights = safetensors_bytes(slim, record)  # before any write: settings JSON cannot hold fail here
    text, card = json.dumps(config, indent=2) + "\n", model_card(record, folder.name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / MODEL_WEIGHTS, weights)
    atomic_write_text(folder / MODEL_CONFIG, text)
    atomic_write_text(folder / "README.md", card)
    return sizes(src, folder)


def run_record(source: Path) -> dict[str, Any] | None:
    """What the run that wrote `source` recorded of its training, when `source` lies in a run's `checkpoints/`
    folder beside the resolved config `ir-lightning fit` saved (`<run>/config*.yaml`, the newest): the run's
    name, seed, steps and data settings (shard paths reduced to their file names). None otherwise: a checkpoint
    does not record its recipe and overlays themselves, only the config they resolved to."""
    import yaml

    run = source.parent.parent
    configs = (
        sorted(run.glob("config*.yaml"), key=lambda p: p.stat().st_mtime) if source.parent.name == "checkpoints" else []
    )
    if not configs:
        return None
    try:
        config = yaml.safe_load(configs[-1].read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    return {
        "config": f"{run.name}/{configs[-1].name} (the run's resolved recipe, overlays and flags)",
        "run_name": config.get("run_name"),
        "seed": config.get("seed_everything"),
        "max_steps": trainer.get("max_steps"),
        "data": summarised(config.get("data")),
    }


def summarised(node: Any) -> Any:
    """A config entry with class paths reduced to class names and paths to file names (no local folders in a
    published record)."""
    if isinstance(node, dict):
        if "class_path" in node:
            return {"class": str(node["class_path"]).rsplit(".", 1)[-1], **summarised(node.get("init_args") or {})}
        return {key: summarised(value) for key, value in node.items()}
    if isinstance(node, list):
        return [summarised(value) for value in node]
    if isinstance(node, str) and "/" in node:
        return Path(node).name
    return node


def model_card(record: dict[str, Any], name: str) -> str:
    """The folder's README.md: a model card with a `license:` field, the method and its paper, training, data,
    steps, validation scores with their protocol (or "not recorded"), the settings, and how to load it."""
    hparams = record["hyper_parameters"]
    method = str(record["class_path"]).rsplit(".", 1)[-1]
    paper = PAPERS.get("DiffIR" if method.startswith("DiffIR") else method, NOT_RECORDED)
    lines = [
        "---",
        f"license: {record['license']}",
        "library_name: ir-lightning",
        f"tags: [image-restoration, diffusion, ir-lightning, {method.lower()}]",
        "---",
        "",
        f"# {name}: {method} (ir-lightning)",
        "",
        f"- method: `{record['class_path']}`",
        f"- paper: {paper}",
        f"- licence: {record['license']}",
        "",
        "## Training",
        "",
        f"- steps: {record.get('global_step', NOT_RECORDED)} (epoch {record.get('epoch', NOT_RECORDED)})",
        f"- weights: {WEIGHTS.get(record.get('weights'), WEIGHTS[None])}",
        *training_lines(record.get("training")),
        *imported_lines(record),
        "",
        "## Validation",
        "",
        *validation_lines(record.get("validation")),
        "",
        "## Settings",
        "",
        *setting_lines(hparams),
        "",
        "All settings are in `config.json` (`hyper_parameters`: what rebuilds the method; edit a value there to",
        "change how the folder restores). The weights are `model.safetensors`; its metadata holds the same record.",
        "",
        "## Use",
        "",
        "```python",
        "import ir_lightning",
        "from PIL import Image",
        "",
        f'model = ir_lightning.load("{name}")  # or ir_lightning.RestorationModel.from_pretrained("{name}")',
        'restored = model.restore(Image.open("photo.png"))  # a PIL image, a numpy array or a tensor',
        "print(model.info())",
        "```",
        "",
        "```bash",
        f"ir-lightning restore --ckpt {name} --input photos/ --output restored/",
        f"ir-lightning evaluate --ckpt {name} --preset <preset> --gt <folder> --out results/",
        "```",
        "",
    ]
    return "\n".join(lines)


WEIGHTS = {
    "ema": "EMA (the exponential moving average of the run's weights)",
    "trained": "trained (the run's weights, not their average)",
    None: "the checkpoint's only set (whether they are the EMA weights was not recorded)",
}
"""How the card names the weights a file holds (`weights` in its record)."""


def training_lines(training: Any) -> list[str]:
    if not isinstance(training, dict):
        return [
            f"- recipe and overlays: {NOT_RECORDED} (the checkpoint does not keep them, and no run config was "
            "found beside it)",
            f"- data: {NOT_RECORDED}",
        ]
    return [
        f"- recipe and overlays: {training.get('config', NOT_RECORDED)}",
        f"- run: {training.get('run_name', NOT_RECORDED)}, seed {training.get('seed', NOT_RECORDED)}, "
        f"max_steps {training.get('max_steps', NOT_RECORDED)}",
        *data_lines(training.get("data")),
    ]


def data_lines(data: Any) -> list[str]:
    """The run's data settings in the card: a YAML block (as the run's config writes them), or "not recorded"."""
    import yaml

    if not data:
        return [f"- data: {NOT_RECORDED}"]
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    return ["- data (the run's `data` settings, shard folders left out):", "", "```yaml", text, "```"]


def imported_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    imported = record.get("imported_from")
    if isinstance(imported, dict):
        lines.append(
            f"- imported from: `{imported.get('file')}` ({imported.get('format')}; {imported.get('source')}), "
            "converted by `ir-lightning import`"
        )
    if record.get("exported_without"):
        lines.append(f"- left out (training only): {', '.join(record['exported_without'])}")
    return lines


def validation_lines(validation: Any) -> list[str]:
    if not isinstance(validation, dict) or not validation.get("scores"):
        return [
            f"Validation scores: {NOT_RECORDED} in the checkpoint (no checkpoint callback of the run monitored one)."
        ]
    protocol = validation.get("protocol") or {}
    crop = protocol.get("crop_border")
    lines = [
        f"At step {validation.get('global_step', NOT_RECORDED)}; protocol: {protocol.get('data', NOT_RECORDED)}; "
        f"{'Y channel (BT.601)' if protocol.get('y_channel', True) else 'RGB'}, "
        f"{NOT_RECORDED if crop is None else crop} pixels cropped per side, {protocol.get('quantised', '')}.",
        "",
        "| metric | best | last |",
        "|---|---:|---:|",
    ]
    for metric, score in validation["scores"].items():
        lines.append(f"| {metric} | {score.get('best')} | {score.get('last')} |")
    return lines


def setting_lines(hparams: dict[str, Any]) -> list[str]:
    shown = ("scale", "operator", "sigma_y", "sampling", "prior_schedule", "objective", "schedule", "train_schedule")
    lines = [f"- {key}: `{json.dumps(hparams[key])}`" for key in shown if key in hparams]
    return lines or ["- (see config.json)"]


# --- the command ------------------------------------------------------------------------------------------------
def sizes(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Sizes in bytes of the source and of what was written (a folder's files summed)."""

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size

    return {"source": size(Path(src)), "exported": size(Path(dst))}


Writer = Callable[[argparse.Namespace], dict[str, int]]
"""Writes `args.checkpoint` to `args.output` in one format, reading any options it adds from `args`; returns
`sizes`. Raises OSError, ValueError or RuntimeError (a `WeightsError` is a ValueError) naming what is wrong."""


def export_graph(args: argparse.Namespace) -> dict[str, int]:
    """`--format onnx|torchscript`: the method's whole restoration as one graph (`ir_lightning.deploy`), traced on
    a random `--example-size` image, its parity with PyTorch checked at that size and another before it is kept;
    methods that cannot export (a sampling loop, a solve) are refused naming what to export instead."""
    import torch

    from ir_lightning import deploy
    from ir_lightning.inference.loading import Options, RestoreError, load_method

    if args.half:
        raise ValueError(f"--half: an {args.format} graph is exported in float32 (give no --half)")
    missing = [name for name in ("onnx", "onnxruntime") if args.format == "onnx" and find_spec(name) is None]
    if missing:
        raise ValueError(f"--format onnx needs {' and '.join(missing)}: pip install 'ir-lightning[deploy]'")
    try:
        module = load_method(args.checkpoint, Options(set=tuple(args.set)), torch.device("cpu"))
    except RestoreError as error:
        raise ValueError(str(error)) from error
    refusal = deploy.deployable(module)
    if refusal is not None:
        raise ValueError(f"{args.checkpoint}: {refusal}")
    example = torch.rand(1, 3, args.example_size, args.example_size, generator=torch.Generator().manual_seed(0))
    if args.format == "onnx":
        report = deploy.export_onnx(module, args.output, example, opset=args.opset)
    else:
        report = deploy.export_torchscript(module, args.output, example)
    print("\n".join(report.lines()))
    return sizes(args.checkpoint, args.output)


WRITERS: dict[str, Writer] = {
    "ckpt": lambda args: export_weights(args.checkpoint, args.output, half=args.half, settings=args.set),
    "safetensors": lambda args: export_safetensors(
        args.checkpoint, args.output, half=args.half, license=args.license, settings=args.set
    ),
    "folder": lambda args: export_folder(
        args.checkpoint, args.output, half=args.half, license=args.license, settings=args.set
    ),
    "onnx": export_graph,
    "torchscript": export_graph,
}
"""`--format` -> its writer; a new format is one more entry (and its options in `parser`)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ir-lightning export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint", type=Path, help="a checkpoint of the suite (e.g. runs/<run>/checkpoints/last.ckpt, or an export)"
    )
    p.add_argument("output", type=Path, help="where to write the export (a file; a folder for --format folder)")
    p.add_argument("--format", choices=list(WRITERS), default="ckpt", help="what to write (default ckpt)")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a restoring setting the export carries, as restore --set takes it (repeatable), e.g. --set "
        "color_fix=wavelet --set sampling.steps=20: the model restores with it by default",
    )
    p.add_argument(
        "--license",
        help=f"the licence the export declares (safetensors, folder: a Hugging Face identifier such as mit or "
        f"cc-by-4.0; default {DEFAULT_LICENSE}, or the source's)",
    )
    p.add_argument(
        "--example-size",
        type=int,
        default=64,
        help="onnx, torchscript: side of the random image the graph is traced with (default 64; any size runs)",
    )
    p.add_argument("--opset", type=int, default=18, help="onnx: the ONNX opset (default 18)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        written = WRITERS[args.format](args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.output}: {written['exported'] / 1e6:.1f} MB (from {written['source'] / 1e6:.1f} MB)")
    return 0
