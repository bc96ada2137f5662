"""`ir-lightning restore`: restore image files with a trained checkpoint of any method of the suite.

    ir-lightning restore --ckpt runs/sr3_x4_demo/checkpoints/last.ckpt --input photos/ --output restored/
    ir-lightning restore --ckpt runs/deqir_demo/checkpoints/last.ckpt --input lr/ --output sr/ --operator sr4

The method is read from the checkpoint (its `_class_path`), never re-typed; `--method` only checks it.
The checkpoint (a .ckpt, a .safetensors export or a model folder: `ir-lightning export --help`) is loaded as
`ir_lightning.load` loads it, with `weights_only=True` for a torch file, so loading it runs no code from the file. The EMA
weights (the checkpoint's `state_dict`) are used unless `--no-ema` asks for the trained ones. Any
setting of the method's constructor can be changed for restoring with `--set KEY=VALUE` (the value
is read as YAML; a dotted KEY such as `sampling.solver.tolerance` changes one field of a setting);
`--steps`, `--sampler` and `--operator` are shortcuts for the usual ones.

Post-processing (docs/postprocess.md), on top of the checkpoint's own settings: `--color-fix wavelet|adain`
gives the restoration the input's low frequencies (colours), `--consistency OPERATOR` (`bicubic4`, `sr4`,
`deblur_gauss`, ...: the exact degradation of the input) projects it so that degrading it gives the input
again; `none` turns off what the checkpoint sets. The command prints one line saying which ran.

Each input (PNG, JPEG, WebP, BMP, TIFF; 8 or 16 bits; grey, RGB, with or without alpha) is restored in
overlapping tiles of `--tile` input pixels, blended with a smooth window (`ir_lightning.inference.tiling`), in
batches of `--tile-batch`, so memory does not grow with the image. It is written to
`<output>/<its path relative to --input>.png` with the input's bit depth, grey-ness and alpha channel
(copied untouched, or resized when the method changes the size), through a temporary file and a
rename: an interrupted run leaves only complete images, and `--skip-existing` finishes it. Every start
removes the temporary files of killed runs (not those of a run still writing). An input that cannot be read or restored is reported by name
and skipped; the exit status is 1 when any input failed. An image smaller than the checkpoint restores
(a U-Net pads by reflection, which needs a few pixels) is named with its size and the smallest size.

Before any work, with exit status 2: an output that would replace an input or land inside the --input
folder (--output equal to or inside --input, compared with symlinks resolved; its outputs would be
restored again by the next run), a file name that is not a plain name (`ir_lightning.io.atomic.checked_key`),
and an output path that a symlinked folder would lead outside --output. --input inside --output is
allowed: an output can land on an input only where a sub-folder repeats the input's own path, and
that case is refused by the same rule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from datamodules.folders import image_files_below
from datamodules.format import IMAGE_SUFFIXES
from ir_lightning.api import native_tiling
from ir_lightning.inference.loading import RestoreError, chosen_device, load_method
from ir_lightning.io.atomic import lands_in, output_image_path

if TYPE_CHECKING:
    import torch

    from ir_lightning.methods.base import RestorationModule

# torch, the methods and the image codecs are imported once the arguments are parsed: --help starts at once.

COLOR_FIX_CHOICES = ("none", "wavelet", "adain")
"""`--color-fix`'s values: `inference.postprocess.COLOR_FIX_METHODS`, named here without importing torch."""


def input_files(root: Path) -> list[Path]:
    """The image files to restore: `root` itself, or every image file below it, sorted."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise RestoreError(f"--input {root}: no such file or folder")
    files = image_files_below(root)
    if not files:
        raise RestoreError(f"--input {root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def output_path(source: Path, root: Path, output: Path) -> Path:
    """`<output>/<source's path relative to --input>.png`, checked by `io.atomic.output_image_path`."""
    relative = Path(source.name) if root.is_file() else source.relative_to(root)
    try:
        return output_image_path(output, relative, f"--input {source}")
    except ValueError as error:
        raise RestoreError(str(error)) from error


def check_outputs(files: list[Path], root: Path, output: Path) -> None:
    """Stop the command before any work when an output would replace an input or land inside the --input
    folder (the same folder, or --output inside --input: the next run would restore its own outputs), or
    two inputs would write the same output (a.png and a.jpg). Symlinks are resolved before comparing."""
    seen: dict[Path, Path] = {}
    for source in files:
        target = output_path(source, root, output)
        if lands_in(target, [root]) is not None:
            where = "over the input" if root.is_file() else "inside --input"
            raise RestoreError(
                f"--output {output} would write {target} {where} {root}: inputs would be overwritten "
                f"or restored again; choose an --output outside {root}"
            )
        if target in seen:
            raise RestoreError(f"{seen[target]} and {source} would both be written to {target}; rename one")
        seen[target] = source


def restore_file(
    model: RestorationModule, source: Path, target: Path, args: argparse.Namespace, device: torch.device
) -> None:
    """Read one image, restore it (tiled unless the method needs whole images), write it atomically."""
    import dataclasses
    import itertools

    import torch

    from ir_lightning.inference.tiling import restored_bands, size_problem
    from ir_lightning.io.images import read_image, write_png

    image = read_image(source)
    if model.colourises:  # colorization: a grey input's restoration is its colour
        image = dataclasses.replace(image, grey=False)
    check_postprocessing(model, tuple(image.rgb[None].shape))

    def restore(lq: torch.Tensor) -> torch.Tensor:
        return model.restore(lq, progress=True)

    lq = image.rgb[None].to(device)
    try:
        with torch.no_grad():
            if args.tile > 0 and model.tileable:  # bands leave as soon as they are final: written row by row
                bands = restored_bands(restore, lq, args.tile, args.overlap, args.tile_batch, progress=True)
                first = next(bands)
                scale = first[1].shape[-1] // lq.shape[-1]
                write_png(target, itertools.chain([first], bands), image, (lq.shape[-2] * scale, lq.shape[-1] * scale))
            else:
                write_png(target, restore(lq)[0], image)
    except (RuntimeError, ValueError) as error:  # a padding error of torch, ...: say so if the image is too small
        problem = size_problem(model, lq.shape[-2], lq.shape[-1], args.tile, device)
        if problem is None:
            raise
        raise ValueError(problem) from error


def check_postprocessing(model: RestorationModule, lq_shape: tuple[int, ...]) -> None:
    """Refuse an input whose restoration the model's `consistency` operator cannot map back to it (a ValueError
    naming the operator and both shapes), before restoring it; the restored size is the input's times the
    method's scale (`ir_lightning.api.scale_of`; not checked where that is unknown, compressed sensing)."""
    from ir_lightning.api import scale_of
    from ir_lightning.inference.postprocess import check_consistency

    name = getattr(model, "consistency", None)
    scale = scale_of(model) if name is not None else None
    if scale is None:
        return
    batch, _, height, width = lq_shape
    check_consistency(name, (batch, 3, height * scale, width * scale), lq_shape)


def postprocessing_line(model: RestorationModule) -> str:
    """`post-processing: color fix wavelet, consistency bicubic4` (or `none`): what the model applies after
    restoring (`RestorationModule.postprocessed`)."""
    from ir_lightning.inference.postprocess import describe

    return describe(
        getattr(model, "color_fix", "none"),
        getattr(model, "consistency", None),
        bool(getattr(model, "colourises", False)),
    )


def remove_stale_temporaries(output: Path) -> int:
    """Delete the temporary files that killed runs left below `output` (their writer's process is gone;
    a concurrent run's files in progress are kept); returns how many."""
    from ir_lightning.io.atomic import clean_stale_temp_files

    if not output.is_dir():
        return 0
    folders = [output, *(p for p in output.rglob("*") if p.is_dir())]
    return sum(len(clean_stale_temp_files(folder)) for folder in folders)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ir-lightning restore",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt",
        type=Path,
        required=True,
        help="a checkpoint of this suite (training or exported: .ckpt, .safetensors, or a model folder)",
    )
    p.add_argument("--input", type=Path, required=True, help="an image file, or a folder searched recursively")
    p.add_argument("--output", type=Path, required=True, help="folder for the restored PNGs (created)")
    add_model_arguments(p, default_tile=256)
    p.add_argument("--skip-existing", action="store_true", help="leave inputs whose output already exists")
    return p


def add_model_arguments(p: argparse.ArgumentParser, default_tile: int) -> None:
    """The options that choose how a checkpoint restores, shared by `restore` and `evaluate`."""
    p.add_argument("--method", help="check that the checkpoint holds this method (e.g. deqir); it is never needed")
    p.add_argument("--steps", type=int, help="sampling steps (sets sampling.steps)")
    p.add_argument(
        "--sampler",
        help="sampler (sampling.sampler: ddpm|ddim) or solver (sampling.solver.method: sequential|anderson|picard)",
    )
    p.add_argument(
        "--operator",
        help="DeqIR's degradation operator, e.g. sr4, bicubic4, deblur_gauss, colorization; the measurement's noise "
        "is --set sigma_y=S on the [0, 1] scale (0.1 here = the official DeqIR --sigma_y 0.2, on [-1, 1]; DDNM's "
        "--sigma_y is on [0, 1] like ours), corrected by --set noise_aware=true (DDNM+)",
    )
    p.add_argument(
        "--color-fix",
        choices=COLOR_FIX_CHOICES,
        help="colour fix of the restored image's low frequencies to the input's (sets color_fix; none: off, "
        "whatever the checkpoint says; see docs/postprocess.md)",
    )
    p.add_argument(
        "--consistency",
        metavar="OPERATOR",
        help="project the restored image so that degrading it with OPERATOR gives the input (sets consistency): the "
        "input's exact degradation, e.g. bicubic4 (MATLAB bicubic x4), sr4 (4 x 4 box means), deblur_gauss; none: "
        "off, whatever the checkpoint says. Never for real-world or unknown degradations",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting of the method; KEY may be dotted: sampling.solver.tolerance=1e-4 (repeatable)",
    )
    p.add_argument("--no-ema", action="store_true", help="use the trained weights instead of the EMA weights")
    p.add_argument(
        "--tile",
        type=int,
        default=default_tile,
        help=f"tile side in input pixels (default {default_tile}; 0: whole images)",
    )
    p.add_argument("--overlap", type=int, default=32, help="overlap of neighbouring tiles in input pixels (default 32)")
    p.add_argument("--tile-batch", type=int, default=4, help="tiles per network call (default 4)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")


def use_native_tile(model: RestorationModule, args: argparse.Namespace) -> None:
    """Tile at the size the model's network works at, when it works at one size only (a pretrained prior:
    `RestorationModule.native_tile`), whatever `--tile` said, and say so."""
    try:
        native, overlap = native_tiling(model, args.tile, args.overlap)  # the Python API's rule
    except ValueError as error:  # a prior size the operator's scale cannot tile
        raise RestoreError(f"--ckpt {args.ckpt}: {error}") from error
    if native == args.tile:
        return
    print(
        f"{type(model).__name__}: the prior works on images of its own size only: restoring in tiles of {native} "
        f"input pixels (--tile {native}, --overlap {overlap}; an image smaller than that is refused)",
        file=sys.stderr,
    )
    args.tile, args.overlap = native, overlap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from PIL import UnidentifiedImageError
    from tqdm import tqdm

    device = chosen_device(args.device)
    try:
        if args.tile < 0 or args.tile_batch < 1 or (args.tile > 0 and not 0 <= args.overlap < args.tile):
            raise RestoreError(
                f"need --tile >= 0, 0 <= --overlap < --tile and --tile-batch >= 1; got --tile {args.tile} "
                f"--overlap {args.overlap} --tile-batch {args.tile_batch}"
            )
        files = input_files(args.input)
        check_outputs(files, args.input, args.output)
        model = load_method(args.ckpt, args, device)
        use_native_tile(model, args)
    except RestoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(postprocessing_line(model))
    if args.tile > 0 and not model.tileable:
        print(
            f"{type(model).__name__} with these settings restores whole images only (--tile ignored)", file=sys.stderr
        )
    removed = remove_stale_temporaries(args.output)
    if removed:
        print(f"removed {removed} temporary files left by an interrupted run in {args.output}", file=sys.stderr)
    failed, skipped = [], 0
    bar = tqdm(files, desc=f"restore ({type(model).__name__})", unit="image")
    for source in bar:
        target = output_path(source, args.input, args.output)
        if args.skip_existing and target.exists():
            skipped += 1
            continue
        bar.set_postfix_str(source.name)
        try:
            restore_file(model, source, target, args, device)
        except UnidentifiedImageError:
            failed.append(source)
            tqdm.write(
                f"error: {source}: not an image file that can be read (PNG, JPEG, WebP, BMP, TIFF)", file=sys.stderr
            )
            continue
        except (OSError, ValueError, RuntimeError) as error:
            failed.append(source)
            tqdm.write(
                f"error: {source}: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
                file=sys.stderr,
            )
            continue
    done = len(files) - len(failed) - skipped
    print(f"{done} restored, {skipped} skipped (already there), {len(failed)} failed -> {args.output}")
    return 1 if failed else 0
