"""`ir-lightning evaluate`: restore a test set from folders and score it the way the papers did.

    ir-lightning evaluate --ckpt runs/sr3_x4/checkpoints/last.ckpt --preset set5_x4 --gt Set5/HR --out results/
    ir-lightning evaluate --ckpt CKPT --preset set5_x4 --gt Set5/HR --lq Set5/LR_bicubic/X4 --lq-suffix x4 --out results/
    ir-lightning evaluate --ckpt CKPT --preset gopro --gt GoPro/test/target --lq GoPro/test/input --out results/

A preset names a test set and the protocol its papers report numbers with: the colour space (Y of BT.601
with MATLAB's coefficients, or RGB), the border cropped before scoring, and, for super-resolution, the
scale and the modcrop of the ground truth (GT cropped to a multiple of the scale). PSNR and SSIM are
`ir_lightning.metrics`' (uint8 quantisation, per image, then the mean); `--presets` lists them all.

Pairs: every GT image is matched with the LQ image of the same name without extension, below the same
sub-folder; `--lq-suffix x4` matches `baby.png` with `babyx4.png` (BasicSR's `filename_tmpl: '{}x4'`).
Without `--lq` (SR presets only), each LQ is made from the modcropped GT as the SR papers' test sets were:
MATLAB `imresize(gt, 1/scale, 'bicubic')` (antialiased cubic, symmetric border), rounded to 8 bits.

The method is read from the checkpoint (as `ir-lightning restore` does, `weights_only` load, EMA weights
unless `--no-ema`), with its post-processing (`--color-fix`, `--consistency`: docs/postprocess.md), which the
command prints in one line and results.json records (`post_processing`). Writes `<out>/results.json`
(per-image and mean PSNR/SSIM, preset, protocol, checkpoint, method, settings, post-processing) and
`<out>/results.md` atomically, the per-image scores as a W&B table in
an offline run under `<out>/wandb` (`--no-wandb` skips it), and with `--save-images` the restored
images as `<out>/images/<name>.png` (`<name>` keeps the GT's sub-folders); an `--out` whose images would
land on or among the --gt/--lq images (symlinks resolved) is refused before any work. Errors name the bad
folder, preset or unmatched file; exit status 2.

LPIPS (v0.1, AlexNet; `ir_lightning.metrics.lpips`) is added when both `--lpips-backbone` (torchvision's
`alexnet-owt-7be5be79.pth`) and `--lpips-linear` (the lpips package's `weights/v0.1/alex.pth`) name local
files: on the same uint8-quantised, border-cropped images as PSNR/SSIM, always in RGB. Without them the
results say "skipped (no weights given)": no weights are ever downloaded.

FID (`ir_lightning.metrics.fid`: the TF Inception-v3 pool features, 2048-d) of the restored set against the GT set is
added when `--fid-weights` names a local copy of torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`,
on the same uint8-quantised, border-cropped RGB images; otherwise "skipped (no weights given)". FID on fewer
than 2049 images (a 2048-d covariance of N images has rank N - 1 at most) is not comparable with the papers'
numbers (computed on thousands of images); results.json and results.md then carry a warning saying so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.folders import images_by_stem, pair_by_stem, suffix_rule
from datamodules.format import IMAGE_SUFFIXES
from ir_lightning.commands.restore import (
    add_model_arguments,
    check_postprocessing,
    postprocessing_line,
    use_native_tile,
)
from ir_lightning.inference.loading import RestoreError, chosen_device, load_method
from ir_lightning.io.atomic import atomic_write_text, lands_in, output_image_path
from ir_lightning.metrics.protocols import PRESETS, Protocol, bicubic_lq, modcrop, presets_table, protocol_line

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from ir_lightning.io.images import ImageFile
    from ir_lightning.methods.base import RestorationModule
    from ir_lightning.metrics.fid import InceptionFID
    from ir_lightning.metrics.lpips import LPIPS

# torch, the methods and the metrics' networks are imported once the arguments are parsed: --help starts at once.

WANDB_PROJECT = "ir-lightning"  # the project of the training runs (recipes' WandbLogger), so both sit together
WANDB_TABLE_KEY = "eval/per_image"
LPIPS_SKIPPED = "skipped (no weights given)"
FID_SKIPPED = "skipped (no weights given)"


class EvaluateError(RestoreError):
    """A bad folder, preset, pair of images or checkpoint: reported in one line, exit status 2."""


@dataclass(frozen=True)
class Pair:
    """One test image: its name (path below --gt without extension), its GT file and its LQ file (None: synthetic)."""

    name: str
    gt: Path
    lq: Path | None


def preset(name: str) -> Protocol:
    if name not in PRESETS:
        raise EvaluateError(f"--preset {name}: no such preset; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def image_files(root: Path, flag: str) -> dict[str, Path]:
    """The image files below `root` by name (relative path without extension); a name used twice is an error."""
    if not root.is_dir():
        raise EvaluateError(f"{flag} {root}: no such folder")
    groups = images_by_stem(root)
    twice = min(((paths[1], paths[0], name) for name, paths in groups.items() if len(paths) > 1), default=None)
    if twice is not None:  # the first second file met in listing order
        second, first, name = twice
        raise EvaluateError(f"{flag} {root}: two images named {name!r} ({first.name} and {second.name})")
    if not groups:
        raise EvaluateError(f"{flag} {root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return {name: paths[0] for name, paths in groups.items()}


def _listed(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def pair_files(gt_root: Path, lq_root: Path | None, lq_suffix: str) -> list[Pair]:
    """GT images matched by name with LQ images (LQ name = GT name + `lq_suffix`); every file must match."""
    gts = image_files(gt_root, "--gt")
    if lq_root is None:
        return [Pair(name, path, None) for name, path in gts.items()]
    pairing = pair_by_stem(gts, image_files(lq_root, "--lq"), suffix_rule(lq_suffix))
    if pairing.lonely_gt:
        hint = "" if lq_suffix else " (LQ names such as 'babyx4.png' for 'baby.png' need --lq-suffix x4)"
        raise EvaluateError(f"--lq {lq_root}: no LQ image named like the GT {_listed(pairing.lonely_gt)}{hint}")
    if pairing.lonely_lq:
        raise EvaluateError(
            f"--lq {lq_root}: no GT image in {gt_root} for {_listed(pairing.lonely_lq)} (--lq-suffix {lq_suffix!r})"
        )
    return [Pair(pair.gt_stem, pair.gt, pair.lq) for pair in pairing.pairs]


def image_target(out: Path, pair: Pair) -> Path:
    """Where `--save-images` writes the restored `pair`: `<out>/images/<name>.png`, checked to stay there."""
    try:
        return output_image_path(out / "images", Path(f"{pair.name}.png"), f"--gt {pair.gt}")
    except ValueError as error:
        raise EvaluateError(str(error)) from error


def check_image_targets(out: Path, pairs: list[Pair], inputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an `--out` whose saved images would replace or join the input images
    (`--out` equal to or inside `--gt`/`--lq`, or `--gt` being `<out>/images`)."""
    folders = {flag: folder for flag, folder in inputs.items() if folder is not None}
    for pair in pairs:
        target = image_target(out, pair)
        hit = lands_in(target, folders.values())
        if hit is not None:
            flag = next(flag for flag, folder in folders.items() if folder == hit)
            raise EvaluateError(
                f"--out {out} would write {target} inside {flag} {hit}: the inputs would be overwritten "
                f"or scored again; choose an --out outside {hit}"
            )


def read(path: Path) -> ImageFile:
    """`read_image`, with a failure reported as an EvaluateError that names the file."""
    from PIL import UnidentifiedImageError

    from ir_lightning.io.images import read_image

    try:
        return read_image(path)
    except UnidentifiedImageError as error:
        raise EvaluateError(f"{path}: not an image file that can be read (PNG, JPEG, WebP, BMP, TIFF)") from error
    except (OSError, ValueError) as error:
        raise EvaluateError(f"{path}: cannot be read ({first_line(error)})") from error


def first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def load_pair(pair: Pair, protocol: Protocol) -> tuple[ImageFile, Tensor, Tensor]:
    """(GT file, modcropped GT, LQ), both 3 x H x W in [0, 1]; checks that the LQ fits the GT."""
    gt_file = read(pair.gt)
    gt = modcrop(gt_file.rgb, protocol.modcrop)
    if min(gt.shape[-2:]) == 0:
        raise EvaluateError(f"{pair.gt}: {tuple(gt_file.rgb.shape[-2:])} is smaller than the scale {protocol.scale}")
    if pair.lq is None:
        return gt_file, gt, bicubic_lq(gt, protocol.scale)
    lq = read(pair.lq).rgb
    expected = (gt.shape[-2] // protocol.scale, gt.shape[-1] // protocol.scale)
    if tuple(lq.shape[-2:]) != expected:
        cropped = f" cropped to a multiple of {protocol.modcrop}" if protocol.modcrop > 1 else ""
        raise EvaluateError(
            f"{pair.lq}: {lq.shape[-2]} x {lq.shape[-1]} pixels, but {pair.gt}{cropped} is {gt.shape[-2]} x "
            f"{gt.shape[-1]}, so the LQ of {protocol.name} must be {expected[0]} x {expected[1]}"
        )
    return gt_file, gt, lq


def restore_image(model: RestorationModule, lq: Tensor, args: argparse.Namespace, device: torch.device) -> Tensor:
    """The method's restoration of one LQ image (3 x h x w) on `device`, clamped to [0, 1]; tiled when asked
    and allowed. As in `ir-lightning restore`, the method picks the output size from its own scale (no GT
    size is passed), so a checkpoint of another scale than the preset's shows as a size mismatch."""
    import torch

    from ir_lightning.inference.tiling import restore_tiled

    def restore(tiles: Tensor) -> Tensor:
        return model.restore(tiles, progress=True)

    with torch.no_grad():
        batch = lq[None].to(device)
        if args.tile > 0 and model.tileable:
            restored = restore_tiled(restore, batch, args.tile, args.overlap, args.tile_batch, progress=True)
        else:
            restored = restore(batch)
    return restored[0].float().cpu()


def post_processing_of(model: RestorationModule) -> dict[str, Any]:
    """What the model applied after restoring (its settings, the checkpoint's or the flags'), and the line
    the command prints."""
    return {
        "color_fix": getattr(model, "color_fix", "none"),
        "consistency": getattr(model, "consistency", None),
        "line": postprocessing_line(model),
    }


def score(restored: Tensor, gt: Tensor, protocol: Protocol, lpips: LPIPS | None = None) -> dict[str, float]:
    """PSNR and SSIM of one image under the preset's protocol (the metric contract of `ir_lightning.metrics`),
    and LPIPS when given: RGB, on the uint8-quantised images with the protocol's border cropped."""
    import torch

    from ir_lightning.metrics.psnr_ssim import crop_border, psnr_per_image, quantize, ssim_per_image

    pred, target = restored[None], gt[None]
    scores = {
        "psnr": float(psnr_per_image(pred, target, protocol.crop_border, protocol.y_channel)[0]),
        "ssim": float(ssim_per_image(pred, target, protocol.crop_border, protocol.y_channel)[0]),
    }
    if lpips is not None:
        pred01, target01 = (crop_border(quantize(img), protocol.crop_border) / 255.0 for img in (pred, target))
        device = lpips.shift.device
        with torch.no_grad():
            scores["lpips"] = float(lpips(pred01.to(device), target01.to(device))[0])
    return scores


def fid_features(network: InceptionFID, restored: Tensor, gt: Tensor, protocol: Protocol) -> tuple[Tensor, Tensor]:
    """The 2048-d FID features of one restored image and its GT: RGB, uint8-quantised, protocol border cropped
    (the images LPIPS sees)."""
    import torch

    from ir_lightning.metrics.psnr_ssim import crop_border, quantize

    device = next(network.parameters()).device
    pred01, target01 = (crop_border(quantize(img[None]), protocol.crop_border) / 255.0 for img in (restored, gt))
    with torch.no_grad():
        return network(pred01.to(device))[0].cpu(), network(target01.to(device))[0].cpu()


def fid_results(args: argparse.Namespace, restored: list[Tensor], gt: list[Tensor]) -> dict[str, Any]:
    """The `fid`, `fid_weights` (and, for a small set, `fid_warning`) entries of results.json."""
    import torch

    from ir_lightning.metrics.fid import FEATURES, FULL_RANK_IMAGES
    from ir_lightning.metrics.fid import fid as frechet_inception_distance

    if args.fid_weights is None:
        return {"fid": FID_SKIPPED, "fid_weights": None}
    count = len(restored)
    if count < 2:
        return {"fid": f"skipped (FID needs at least 2 images, got {count})", "fid_weights": str(args.fid_weights)}
    value = frechet_inception_distance(torch.stack(restored), torch.stack(gt))
    results: dict[str, Any] = {"fid": value, "fid_weights": str(args.fid_weights)}
    if count < FULL_RANK_IMAGES:
        results["fid_warning"] = (
            f"FID on {count} images: a covariance of {FEATURES}-d features needs at least {FULL_RANK_IMAGES} images "
            f"to be full rank, so this value is not comparable with papers' FID (computed on thousands of images)"
        )
    return results


def markdown(results: dict[str, Any]) -> str:
    protocol = PRESETS[results["preset"]]
    mean = results["mean"]
    with_lpips = "lpips" in mean
    if with_lpips:
        lpips_line = (
            f"- LPIPS (v0.1, AlexNet, RGB, same crop): mean {mean['lpips']:.4f}; backbone "
            f"`{results['lpips']['backbone']}`, linear layers `{results['lpips']['linear']}`"
        )
    else:
        lpips_line = f"- LPIPS: {results['lpips']}"
    lines = [
        f"# {results['preset']}: {results['method']}",
        "",
        f"- checkpoint: `{results['checkpoint']}`",
        f"- task: {protocol.task}; protocol: {protocol_line(protocol)}",
        f"- protocol source: {protocol.source}",
        f"- LQ: {results['settings']['lq']}",
        f"- {results['post_processing']['line']}",
        f"- images: {len(results['images'])}; mean PSNR {mean['psnr']:.2f} dB, mean SSIM {mean['ssim']:.4f}",
        lpips_line,
        fid_line(results),
        *([f"- warning: {results['fid_warning']}"] if "fid_warning" in results else []),
        "",
        "| image | PSNR (dB) | SSIM |" + (" LPIPS |" if with_lpips else ""),
        "|---|---:|---:|" + ("---:|" if with_lpips else ""),
    ]
    for row in results["images"] + [{"name": "**mean**"} | mean]:
        cells = [f"{row['psnr']:.2f}", f"{row['ssim']:.4f}"] + ([f"{row['lpips']:.4f}"] if with_lpips else [])
        if row["name"] == "**mean**":
            cells = [f"**{cell}**" for cell in cells]
        lines.append(f"| {row['name']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def fid_line(results: dict[str, Any]) -> str:
    if results["fid"] == FID_SKIPPED:  # worded apart from LPIPS's "skipped": a run with LPIPS alone reads clean
        return "- FID: not computed (no --fid-weights given)"
    if isinstance(results["fid"], str):
        return f"- FID: {results['fid']}"
    return (
        f"- FID (Inception-v3 pool features, restored vs GT set, RGB, same crop): {results['fid']:.4f}; "
        f"weights `{results['fid_weights']}`"
    )


def log_to_wandb(results: dict[str, Any], out: Path) -> str:
    """The per-image scores as a W&B table (and the means in the run summary); returns the run's folder.

    The mode comes from W&B's own settings: `ir-lightning` sets WANDB_MODE=offline unless the user set it."""
    import wandb

    name = f"eval-{results['preset']}-{Path(results['checkpoint']).stem}"
    config = {k: results[k] for k in ("preset", "protocol", "checkpoint", "method", "settings", "lpips", "fid_weights")}
    run = wandb.init(project=WANDB_PROJECT, job_type="evaluate", name=name, dir=str(out), config=config)
    try:
        metrics = [k for k in ("psnr", "ssim", "lpips") if k in results["mean"]]
        table = wandb.Table(
            columns=["image", *metrics], data=[[row["name"], *(row[k] for k in metrics)] for row in results["images"]]
        )
        run.log({WANDB_TABLE_KEY: table})
        run.summary.update({f"eval/{k}": v for k, v in results["mean"].items()})
        run.summary.update({f"eval/{k}": results[k] for k in ("fid", "fid_warning") if k in results})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ir-lightning evaluate",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt",
        type=Path,
        help="a checkpoint of this suite (training or exported: .ckpt, .safetensors, or a model folder)",
    )
    p.add_argument(
        "--preset", help="the test set and its protocol, e.g. set5_x4, gopro, rain100l (--presets lists them)"
    )
    p.add_argument("--gt", type=Path, help="folder of the ground-truth images (searched recursively)")
    p.add_argument(
        "--lq",
        type=Path,
        help="folder of the degraded inputs; without it (SR only) bicubic LR images are made from --gt",
    )
    p.add_argument("--lq-suffix", default="", help="LQ name = GT name + this, e.g. x4 for babyx4.png (default: none)")
    p.add_argument("--out", type=Path, help="folder for results.json, results.md, wandb/ and images/ (created)")
    p.add_argument("--save-images", action="store_true", help="also write the restored images to <out>/images/")
    p.add_argument("--no-wandb", action="store_true", help="do not log the per-image table to W&B")
    p.add_argument("--presets", action="store_true", help="list the presets with their settings and exit")
    p.add_argument(
        "--lpips-backbone",
        type=Path,
        metavar="FILE",
        help="torchvision's AlexNet weights (alexnet-owt-7be5be79.pth) for LPIPS; with --lpips-linear",
    )
    p.add_argument(
        "--lpips-linear",
        type=Path,
        metavar="FILE",
        help="the lpips package's weights/v0.1/alex.pth; with --lpips-backbone (without both: LPIPS skipped)",
    )
    p.add_argument(
        "--fid-weights",
        type=Path,
        metavar="FILE",
        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth for FID (without it: FID skipped)",
    )
    add_model_arguments(p, default_tile=0)  # whole images by default, as the papers test
    return p


def check_arguments(args: argparse.Namespace) -> Protocol:
    missing = [flag for flag in ("ckpt", "preset", "gt", "out") if getattr(args, flag) is None]
    if missing:
        raise EvaluateError(f"missing {', '.join('--' + m for m in missing)} (see ir-lightning evaluate --help)")
    protocol = preset(args.preset)
    if args.lq is None and protocol.scale == 1:
        raise EvaluateError(
            f"--preset {protocol.name} ({protocol.task}) needs --lq: only SR presets make their LQ images"
        )
    if args.tile < 0 or args.tile_batch < 1 or (args.tile > 0 and not 0 <= args.overlap < args.tile):
        raise EvaluateError(
            f"need --tile >= 0, 0 <= --overlap < --tile and --tile-batch >= 1; got --tile {args.tile} "
            f"--overlap {args.overlap} --tile-batch {args.tile_batch}"
        )
    if (args.lpips_backbone is None) != (args.lpips_linear is None):
        given, needed = (
            ("--lpips-backbone", "--lpips-linear")
            if args.lpips_linear is None
            else ("--lpips-linear", "--lpips-backbone")
        )
        raise EvaluateError(f"{given} needs {needed} too: LPIPS is built from both files")
    return protocol


def load_lpips(args: argparse.Namespace, device: torch.device) -> LPIPS | None:
    """The LPIPS network from the two local files, or None when they are not given (never downloaded)."""
    if args.lpips_backbone is None:
        return None
    from ir_lightning.io.weights import WeightsError
    from ir_lightning.metrics.lpips import LPIPS

    try:
        return LPIPS.from_files(args.lpips_backbone, args.lpips_linear).to(device)
    except WeightsError as error:
        raise EvaluateError(f"LPIPS weights: {error}") from error


def load_fid(args: argparse.Namespace, device: torch.device) -> InceptionFID | None:
    """The FID Inception-v3 from the local file, or None when it is not given (never downloaded)."""
    if args.fid_weights is None:
        return None
    from ir_lightning.io.weights import WeightsError
    from ir_lightning.metrics.fid import InceptionFID

    try:
        return InceptionFID.from_file(args.fid_weights).to(device)
    except WeightsError as error:
        raise EvaluateError(f"FID weights: {error}") from error


def evaluate(
    args: argparse.Namespace,
    protocol: Protocol,
    pairs: list[Pair],
    model: RestorationModule,
    device: torch.device,
    lpips: LPIPS | None = None,
    fid_network: InceptionFID | None = None,
) -> dict[str, Any]:
    """Restore and score every pair; the results as written to results.json."""
    from tqdm import tqdm

    from ir_lightning.inference.tiling import size_problem
    from ir_lightning.io.images import ImageFile, write_png

    rows = []
    restored_features: list[Tensor] = []
    gt_features: list[Tensor] = []
    for pair in tqdm(pairs, desc=f"evaluate {protocol.name} ({type(model).__name__})", unit="image"):
        gt_file, gt, lq = load_pair(pair, protocol)
        try:
            check_postprocessing(model, (1, *lq.shape))
        except ValueError as error:
            raise EvaluateError(f"{pair.lq or f'{pair.gt} (its bicubic LQ)'}: {first_line(error)}") from error
        try:
            restored = restore_image(model, lq, args, device)
        except (RuntimeError, ValueError) as error:  # out of memory, a size the network cannot take, ...
            reason = (
                size_problem(model, lq.shape[-2], lq.shape[-1], args.tile, device)
                or f"restoring failed ({first_line(error)})"
            )
            raise EvaluateError(f"{pair.lq or f'{pair.gt} (its bicubic LQ)'}: {reason}") from error
        if restored.shape != gt.shape:
            raise EvaluateError(
                f"{pair.name}: the restored image is {tuple(restored.shape[-2:])} but its GT is {tuple(gt.shape[-2:])}: "
                f"does the checkpoint restore at the scale of {protocol.name} (x{protocol.scale})?"
            )
        try:
            scores = score(restored, gt, protocol, lpips)
        except ValueError as error:  # too small for the SSIM (or LPIPS) window once the border is cropped
            raise EvaluateError(f"{pair.gt}: {first_line(error)}") from error
        rows.append({"name": pair.name, "gt": str(pair.gt), "lq": str(pair.lq) if pair.lq else "synthetic"} | scores)
        if fid_network is not None:
            features = fid_features(fid_network, restored, gt, protocol)
            restored_features.append(features[0])
            gt_features.append(features[1])
        if args.save_images:
            like = ImageFile(rgb=gt, alpha=None, bit_depth=gt_file.bit_depth, grey=gt_file.grey)
            write_png(image_target(args.out, pair), restored, like)
    mean = {k: math.fsum(row[k] for row in rows) / len(rows) for k in ("psnr", "ssim", "lpips") if k in rows[0]}
    lq = (
        (f"{args.lq} (names + {args.lq_suffix!r})" if args.lq_suffix else str(args.lq))
        if args.lq
        else (f"synthetic: MATLAB imresize(gt, 1/{protocol.scale}, 'bicubic') of the modcropped GT, rounded to 8 bits")
    )
    settings = {
        "lq": lq,
        "gt": str(args.gt),
        "ema": not args.no_ema,
        "set": list(args.set),
        "steps": args.steps,
        "sampler": args.sampler,
        "operator": args.operator,
        "tile": args.tile,
        "overlap": args.overlap,
        "tile_batch": args.tile_batch,
        "color_fix": args.color_fix,
        "consistency": args.consistency,
    }
    lpips_info = (
        {
            "backbone": str(args.lpips_backbone),
            "linear": str(args.lpips_linear),
            "version": "0.1 (AlexNet)",
            "protocol": "RGB, uint8-quantised, protocol border cropped",
        }
        if lpips is not None
        else LPIPS_SKIPPED
    )
    return {
        "preset": protocol.name,
        "protocol": asdict(protocol),
        "checkpoint": str(args.ckpt),
        "method": type(model).__name__,
        "settings": settings,
        "post_processing": post_processing_of(model),
        "lpips": lpips_info,
        **fid_results(args, restored_features, gt_features),
        "mean": mean,
        "images": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.presets:
        print(presets_table())
        return 0

    device = chosen_device(args.device)
    try:
        protocol = check_arguments(args)
        pairs = pair_files(args.gt, args.lq, args.lq_suffix)
        if args.save_images:
            check_image_targets(args.out, pairs, {"--gt": args.gt, "--lq": args.lq})
        lpips = load_lpips(args, device)
        fid_network = load_fid(args, device)
        model = load_method(args.ckpt, args, device)
        use_native_tile(model, args)
        print(postprocessing_line(model))
        results = evaluate(args, protocol, pairs, model, device, lpips, fid_network)
    except RestoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out / "results.md", markdown(results))
    if not args.no_wandb:
        run_dir = log_to_wandb(results, args.out)
        print(f"W&B run: {run_dir}")
    mean = results["mean"]
    lpips_text = f", LPIPS {mean['lpips']:.4f}" if "lpips" in mean else ""
    fid_text = f", FID {results['fid']:.4f}" if not isinstance(results["fid"], str) else ""
    scores = f"PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.4f}{lpips_text}{fid_text}"
    print(f"{protocol.name}: {len(pairs)} images, {scores} -> {args.out / 'results.json'}")
    if "fid_warning" in results:
        print(f"warning: {results['fid_warning']}", file=sys.stderr)
    return 0
