"""`ir-lightning import`: a checkpoint released by a paper's official repository -> a checkpoint of this suite.

    ir-lightning import I640000_E37_gen.pth sr3_faces.ckpt              # format detected from the keys
    ir-lightning import derain.pth da_derain.ckpt --variant derain      # what the weights cannot say
    ir-lightning import model-100.pt rddm.ckpt --format rddm --recipe rddm_generation
    ir-lightning import ddpm-celebahq-256/ celebahq_prior.ckpt        # a diffusers save_pretrained folder
    ir-lightning import --list-formats

The file is read with `weights_only=True` (nothing in it runs), its format is detected from its keys (or
named with `--format`); a folder (a diffusers `save_pretrained` one) is passed, as its path, to the formats that
read folders (`reads_folders`), which read its files as safely. Its weights are renamed to the suite network that
computes the official function, with the network's configuration read from the weights' shapes, and the method's
other settings are taken from the packaged recipe that pairs with the file (or `--recipe`), with what the file
itself says (its noise schedule, its value range) on top. The weights must fit the method exactly: every key
mapped, none left over, every shape equal; otherwise the import is refused naming the keys. The written checkpoint
holds weights only (no training state): `restore` and `evaluate` take it as `--ckpt`, `validate`, `test` and `predict`
as `--ckpt_path`, `export` slims it, and `fit --init_weights` starts a new run from it. An existing output file
is not replaced without `--force` (and never when it is the source).
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ir_lightning.io.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from ir_lightning.importing import Imported, OfficialFormat

INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
"""The builder Lightning's CLI records in a checkpoint; a module loads its hyperparameters through it."""


class ImportFailed(Exception):
    """The import cannot go on: one line naming the file, the format or the keys (exit status 2)."""


def source_kind(folder: bool) -> str:
    return "a folder" if folder else "a file"


def choose_format(obj: Any, path: Path, name: str | None) -> OfficialFormat:
    """The format named (`--format`), else the one format whose `detect` accepts the source: among the formats
    that read folders when `obj` is a folder's path, else among those that read files."""
    from ir_lightning.importing import official_formats

    folder = isinstance(obj, Path)
    formats = official_formats()
    if name is not None:
        if name not in formats:
            raise ImportFailed(f"--format {name}: no such format; the formats: {', '.join(formats)}")
        if formats[name].reads_folders != folder:
            wanted = source_kind(formats[name].reads_folders)
            raise ImportFailed(f"{path}: --format {name} reads {wanted}, this is {source_kind(folder)}")
        return formats[name]
    formats = {key: fmt for key, fmt in formats.items() if fmt.reads_folders == folder}
    found = [fmt for fmt in formats.values() if fmt.detect(obj)]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(fmt.name for fmt in found)
        raise ImportFailed(f"{path}: the keys fit several formats ({names}); name one with --format")
    if folder:
        held = sorted(entry.name for entry in obj.iterdir())
        what = f"a folder holding {', '.join(held[:6]) or 'nothing'}" + (" ..." if len(held) > 6 else "")
    else:
        keys = list(obj)[:6] if isinstance(obj, dict) else []
        what = f"top-level keys {', '.join(map(str, keys))}" if keys else f"a {type(obj).__name__}"
    raise ImportFailed(
        f"{path}: no official format recognises it ({what}); name one with --format ({', '.join(formats)}), "
        "or see --list-formats"
    )


def recipe_model(name: str, flag: str) -> tuple[str, dict[str, Any]]:
    """(class path, init_args) of the `model` of recipe `name`: a YAML file where one exists, else the packaged
    recipe of that name (the rule of `-c`); `flag` names where the name came from, for the errors."""
    import yaml

    from ir_lightning.packaged import recipe_path

    path = Path(name) if Path(name).is_file() else recipe_path(name)
    if path is None:
        raise ImportFailed(f"{flag} {name}: no packaged recipe or file of that name (ir-lightning recipes lists them)")
    model = (yaml.safe_load(path.read_text()) or {}).get("model")
    if not isinstance(model, dict) or not isinstance(model.get("class_path"), str):
        raise ImportFailed(f"{flag} {name}: {path} has no model with a class_path")
    return model["class_path"], dict(model.get("init_args") or {})


def hyperparameters(imported: Imported, recipe: str | None, flag: str) -> dict[str, Any]:
    """The checkpoint's hyperparameters: the recipe's model settings, then the file's settings and networks."""
    from ir_lightning.class_paths import allowed_class

    settings: dict[str, Any] = {}
    if recipe is not None:
        class_path, settings = recipe_model(recipe, flag)
        if allowed_class(class_path) is not allowed_class(imported.method):
            raise ImportFailed(f"{flag} {recipe}: it trains {class_path}, the file holds a {imported.method}")
    return {"_class_path": imported.method, **settings, **imported.settings, **imported.networks}


def checkpoint_of(imported: Imported, hparams: dict[str, Any], source: Path, fmt: OfficialFormat) -> dict[str, Any]:
    import lightning

    from ir_lightning.class_paths import allowed_class

    checkpoint: dict[str, Any] = {
        "state_dict": imported.state_dict,
        "hyper_parameters": {**hparams, "_instantiator": INSTANTIATOR},
        "pytorch-lightning_version": lightning.__version__,
        "global_step": 0,
        "epoch": 0,
        "imported_from": {"file": source.name, "format": fmt.name, "source": fmt.source},
    }
    if imported.trained_state_dict is not None:
        checkpoint["current_model_state"] = imported.trained_state_dict
    if imported.exported_without:
        checkpoint["exported_without"] = list(imported.exported_without)
    checkpoint["training_only"] = list(allowed_class(imported.method).TRAINING_ONLY)  # what `export` leaves out
    return checkpoint


def serialised(checkpoint: dict[str, Any]) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def check_fit(checkpoint: dict[str, Any], source: Path) -> int:
    """Build the method as the checkpoint describes it and compare its keys and shapes with the weights (every
    key mapped, none left over, equal shapes; the trained weights too); returns the parameter count."""
    from ir_lightning.class_paths import allowed_class

    cls = allowed_class(checkpoint["hyper_parameters"]["_class_path"])
    bare = {**checkpoint, "state_dict": {}}
    bare.pop("current_model_state", None)
    try:
        with warnings.catch_warnings():  # Lightning lists every key of the bare load: the comparison below says more
            warnings.simplefilter("ignore")
            model = cls.load_from_checkpoint(io.BytesIO(serialised(bare)), map_location="cpu", strict=False)
    except Exception as error:  # noqa: BLE001 - a setting the method refuses: one line naming the file
        raise ImportFailed(f"{source}: the method cannot be built from the converted settings: {error}") from error
    for what in ("state_dict", "current_model_state"):
        misfit = (
            model.weights_misfit(checkpoint[what], checkpoint.get("exported_without", ()))
            if what in checkpoint
            else None
        )
        if misfit is not None:
            raise ImportFailed(f"{source}: its weights do not fit {cls.__name__} ({what}): {misfit}")
    return sum(tensor.numel() for tensor in checkpoint["state_dict"].values() if tensor.is_floating_point())


def read_source(source: Path) -> Any:
    """A folder as its path (the formats that read folders open its files); a file loaded with `weights_only=True`."""
    from ir_lightning.io.weights import STATE_DICT, WeightsError, load_safely

    if source.is_dir():
        return source
    try:
        return load_safely(source, STATE_DICT)
    except WeightsError as error:
        raise ImportFailed(str(error)) from error


def import_checkpoint(
    source: Path,
    output: Path,
    fmt_name: str | None = None,
    variant: str | None = None,
    recipe: str | None = None,
    force: bool = False,
) -> list[str]:
    """Converts `source` (a file, or a folder for the formats that read folders) and writes `output` (atomically);
    returns the report lines."""
    from ir_lightning.importing import ImportRefused

    if output.exists():
        if output.resolve() == source.resolve():
            raise ImportFailed(f"{output} exists: it is the {'folder' if source.is_dir() else 'file'} to import")
        if output.is_dir():
            raise ImportFailed(f"{output} exists: a folder: name the checkpoint file to write")
        if not force:
            raise ImportFailed(f"{output} exists: give --force to replace it")
    obj = read_source(source)
    fmt = choose_format(obj, source, fmt_name)
    if variant is not None and variant not in fmt.variants:
        choices = ", ".join(fmt.variants) if fmt.variants else "none: the weights say everything"
        raise ImportFailed(f"--variant {variant}: format {fmt.name} has variants {choices}")
    try:
        imported = fmt.convert(obj, variant)
    except ImportRefused as error:
        raise ImportFailed(f"{source} ({fmt.name}): {error}") from error
    flag = "--recipe" if recipe else "the paired recipe"
    recipe = recipe or imported.recipe
    checkpoint = checkpoint_of(imported, hyperparameters(imported, recipe, flag), source, fmt)
    data = serialised(checkpoint)
    parameters = check_fit(checkpoint, source)
    atomic_write_bytes(output, data)
    method = imported.method.rsplit(".", 1)[-1]
    weights = "EMA weights (state_dict) and trained weights (--no-ema)" if imported.trained_state_dict else "weights"
    return [
        f"{source}: format {fmt.name} ({fmt.source})" + (f", variant {variant}" if variant else ""),
        *imported.report,
        f"settings from recipe {recipe}" if recipe else "settings: the method's defaults (no recipe)",
        f"{output}: {method}, {len(imported.state_dict)} tensors, {parameters / 1e6:.2f} M parameters, {weights}",
        f"restore with: ir-lightning restore --ckpt {output} --input LQ_DIR --output OUT_DIR",
    ]


def format_list() -> str:
    from ir_lightning.importing import official_formats

    lines = []
    for fmt in official_formats().values():
        variants = f" (--variant {'|'.join(fmt.variants)})" if fmt.variants else ""
        lines.append(f"  {fmt.name:<18} {fmt.source}{variants}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ir-lightning import",
        description="Turn a checkpoint released by a paper's official repository into a checkpoint of this suite "
        "(weights only: restore and evaluate take it as --ckpt, validate/test/predict as --ckpt_path; "
        "fit --init_weights starts from it).",
        epilog="The file is read with weights_only=True; a folder (a diffusers save_pretrained folder: a DDPMPipeline, "
        "or a UNet2DModel with its scheduler_config.json) is read by the formats that read folders (safetensors, "
        "or .bin with weights_only=True). --list-formats shows the formats and what they read.",
    )
    parser.add_argument(
        "source",
        type=Path,
        nargs="?",
        help="the official file (e.g. I640000_E37_gen.pth), or a folder (a diffusers save_pretrained folder)",
    )
    parser.add_argument("output", type=Path, nargs="?", help="where to write the suite checkpoint (.ckpt)")
    parser.add_argument("--format", dest="fmt", help="the source's format, where it is not detected (from the keys)")
    parser.add_argument("--variant", help="what the weights cannot tell (a task's value range, a configuration)")
    parser.add_argument("--recipe", help="take the method's other settings from this recipe (default: the paired one)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--list-formats", action="store_true", help="list the formats and exit")
    args = parser.parse_args(argv)
    if args.list_formats:
        print(format_list())
        return 0
    if args.source is None or args.output is None:
        parser.error("give the official file (or folder) and the output checkpoint (or --list-formats)")
    try:
        lines = import_checkpoint(args.source, args.output, args.fmt, args.variant, args.recipe, args.force)
    except ImportFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
