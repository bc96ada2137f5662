"""`ir-lightning demo`: the suite end to end on the CPU, on the photos scikit-image ships.

1. Writes WebDataset shards of scikit-image's sample photos, holding some out for validation.
2. Trains a small SR3 briefly with the real command (`ir-lightning fit -c recipes/sr3_x4.yaml
   -c recipes/demo/sr3_x4_cpu.yaml`), to show that training works.
3. Restores the held-out photos (256x256 centre crops) with every model the package ships (`ir_lightning.shipped`,
   docs/models.md), each loaded as `ir-lightning restore` loads it, with its own settings: the x4 super-resolution
   models from a bicubic x4 down-scaling (64x64), the denoiser from the photos with camera noise (the DA recipe's
   validation noise, the same draws every run). `--eval-trained` adds the SR3 just trained.
4. Prints a table per task, PSNR / SSIM (Y channel, BT.601; border 4 for x4 SR, 0 for denoising; per image, then
   mean), colour error, seconds per image and the PSNR gain over the task's trivial baseline (bicubic; the noisy
   input; for DeqIR also A^+ y of its own operator), writes it to results.md and results.json, and one labelled
   comparison image, comparison.png (a block per task: input | baselines | models | ground truth, a row a photo).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.format import ShardSample
from datamodules.writer import write_shards
from ir_lightning.packaged import RECIPES
from ir_lightning.shipped import ASSETS, SHIPPED, ShippedModel

if TYPE_CHECKING:
    import torch

# numpy, torch, Pillow and the suite's modules that import them are imported where they are used, once the
# arguments are parsed: `ir-lightning demo --help` starts at once.

RECIPE = RECIPES / "sr3_x4.yaml"  # installed with the package (ir_lightning/packaged.py)
OVERLAY = RECIPES / "demo" / "sr3_x4_cpu.yaml"
MODELS_DOC = "docs/models.md"
"""Where the shipped models, their training commands and their files are described (named in errors)."""

# scikit-image's bundled photos (no download). Held out: never in a training shard.
TRAIN_PHOTOS = (
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "coins",
    "brick",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "clock",
    "cell",
    "colorwheel",
    "logo",
)
HELD_OUT_PHOTOS = ("astronaut", "coffee", "chelsea")
SCALE = 4
VAL_CROP = 256

CAMERA_NOISE = {"photons": (15.0, 150.0), "read_noise": (2.0, 10.0), "correlation": (0.7, 1.2)}
"""The camera noise of the denoising task: recipes/demo/da_denoise_cpu.yaml's validation degradation (data.real),
quantised to 8 bits."""
CAMERA_NOISE_SEED = 1
"""The seed of that recipe's data.real: the data module draws each photo's noise from (seed, the photo's key), so
every run restores the same noisy photos, the ones the DA run validated on."""
BLOCK_GAP = 16
"""White pixels between the comparison image's blocks (one a task)."""


@dataclass(frozen=True)
class Task:
    """What a shipped model's `task` (ir_lightning.shipped) restores: how the input is made, the trivial baseline it
    is judged against (`baseline`, a row of the table), the metric's border crop, and the comparison's column
    titles of the input (None: the baseline is the input itself) and of the ground truth."""

    heading: str
    baseline: str
    crop_border: int
    input_title: str | None
    clean_title: str


TASKS = {
    "sr_x4": Task("x4 super-resolution (LR: bicubic x4 down-scaling)", "bicubic", SCALE, "LR (nearest)", "HR"),
    "camera_noise": Task(
        "camera noise (signal-dependent, correlated, quantised: the DA recipe's validation noise)",
        "noisy input",
        0,
        None,
        "clean",
    ),
}


@dataclass
class Row:
    """One line of a task's table: a baseline or a model, its restorations of the photos and their scores."""

    name: str
    kind: str  # "baseline" or "model"
    images: list[Any]
    seconds_per_image: float
    details: dict[str, Any] = field(default_factory=dict)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    color_error: list[float] = field(default_factory=list)
    compared_with: str | None = None  # a second baseline row of its own (DeqIR: A^+ y)


def skimage_data():
    """`skimage.data`, the demo's photos; without scikit-image, an error that says which extra installs it."""
    try:
        import skimage.data
    except ModuleNotFoundError as error:
        raise SystemExit(
            "error: the demo's photos come from scikit-image, which is not installed: "
            "pip install 'ir-lightning[demo]' (or pip install scikit-image)"
        ) from error
    return skimage.data


def photo_png(name: str) -> bytes:
    """One scikit-image photo as RGB PNG bytes (grey replicated, alpha dropped)."""
    import numpy as np
    from PIL import Image

    array = np.asarray(getattr(skimage_data(), name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(array[..., :3].astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def stereo_pngs() -> list[tuple[str, bytes]]:
    from PIL import Image

    left, right, _ = skimage_data().stereo_motorcycle()
    out = []
    for key, array in (("motorcycle_left", left), ("motorcycle_right", right)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append((key, buffer.getvalue()))
    return out


def build_shards(out: Path) -> dict[str, str]:
    """Training and validation shards of the demo photos; returns their patterns."""
    train = [(n, photo_png(n)) for n in TRAIN_PHOTOS] + stereo_pngs()
    val = [(n, photo_png(n)) for n in HELD_OUT_PHOTOS]
    patterns = {}
    for split, items in (("train", train), ("val", val)):
        samples = (ShardSample(key=k, files={"gt.png": data}) for k, data in items)
        stats = write_shards(samples, out, split, maxcount=4, progress=True, total=len(items))
        patterns[split] = stats.pattern
        print(f"  {split}: {stats.samples} photos in {stats.shards} shard(s): {stats.pattern}")
    return patterns


def train(patterns: dict[str, str], out: Path, steps: int) -> Path:
    """Runs the real training command in `out` (its run lands in out/runs/sr3_x4_demo); returns its last checkpoint."""
    cmd = [
        sys.executable,
        "-m",
        "ir_lightning",
        "fit",
        "-c",
        str(RECIPE),
        "-c",
        str(OVERLAY),
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        f"--data.init_args.train_shards={Path(patterns['train']).resolve()}",
        f"--data.init_args.val_shards={Path(patterns['val']).resolve()}",
    ]
    print("  $ " + " ".join(cmd[2:]).replace(str(RECIPES) + "/", ""), flush=True)  # installed recipes by name
    subprocess.run(cmd, check=True, cwd=out)
    return out / "runs" / "sr3_x4_demo" / "checkpoints" / "last.ckpt"


# --- the held-out photos, degraded per task ---------------------------------------------------------------------
def degradation(task: str):
    """The degradation that makes a task's input from a clean photo (clamped and quantised to 8 bits)."""
    from ir_lightning.degradations import BicubicDownsample, CameraNoise, Pipeline

    if task == "sr_x4":
        return Pipeline(steps=[BicubicDownsample(scale=SCALE)])
    return Pipeline(steps=[CameraNoise(**CAMERA_NOISE)], quantize=True)


def held_out_batches(pattern: str, task: str = "sr_x4") -> list[dict]:
    """The validation photos as the data module serves them, one a batch: a `VAL_CROP` centre crop `gt` and the
    task's input `lq` (a bicubic x4 down-scaling; camera noise drawn from `CAMERA_NOISE_SEED` and the photo's key)."""
    from datamodules import ShardDataModule

    dm = ShardDataModule(
        val_shards=pattern,
        val_crop_size=VAL_CROP,
        val_batch_size=1,
        num_workers=0,
        degradation=degradation(task),
        seed=CAMERA_NOISE_SEED,
    )
    dm.setup("validate")
    return [dm.on_after_batch_transfer(batch, 0) for batch in dm.val_dataloader()]


def bicubic(lq: torch.Tensor) -> torch.Tensor:
    from ir_lightning.degradations.resize import bicubic_upsample

    return bicubic_upsample(lq, (lq.shape[-2] * SCALE, lq.shape[-1] * SCALE)).clamp(0, 1)


# --- restoring and scoring --------------------------------------------------------------------------------------
def restored_by(name: str, restore: Callable, batches: list[dict]) -> tuple[list[Any], float]:
    """`restore` of each photo's input, with a progress bar, and the seconds it took per photo."""
    from tqdm import tqdm

    start = time.perf_counter()
    outs = [restore(b["lq"]) for b in tqdm(batches, desc=f"  restoring ({name})", unit="image")]
    return outs, (time.perf_counter() - start) / len(batches)


def checkpoint_of(model: ShippedModel, assets: Path) -> Path:
    return assets / model.path.name


def load_shipped(path: Path):
    """A shipped checkpoint as `ir-lightning restore` loads it: weights only, its own settings, on the CPU."""
    import ir_lightning

    return ir_lightning.load(path, device="cpu")


def operator_baseline(module: Any, batches: list[dict]) -> Row | None:
    """A^+ y of a method's own operator (DeqIR's; None for a method without one), the baseline its chain meets."""
    if not hasattr(module, "operator_for"):
        return None
    start = time.perf_counter()
    outs = []
    for b in batches:
        size = module.image_size(b["lq"])
        outs.append(module.operator_for(size).pinv(b["lq"].float()).clamp(0, 1))
    seconds = (time.perf_counter() - start) / len(batches)
    return Row(f"A^+ y ({module.operator_name})", "baseline", outs, seconds, {"operator": module.operator_name})


def model_rows(task: str, models: list[ShippedModel], assets: Path, batches: list[dict]) -> list[Row]:
    """Each shipped model of `task` restoring the photos (and a baseline of its own where it has one)."""
    rows = []
    for model in models:
        path = checkpoint_of(model, assets)
        start = time.perf_counter()
        loaded = load_shipped(path)
        load_seconds = time.perf_counter() - start
        info = loaded.info()
        own = operator_baseline(loaded.module, batches)
        if own is not None:
            rows.append(own)
        outs, seconds = restored_by(model.title, loaded.restore, batches)
        details = {
            "shipped": model.name,
            "checkpoint": str(path),
            "load_seconds": load_seconds,
            "sampling": info.get("sampling"),
            "operator": info.get("operator"),
            "post_processing": info.get("post_processing"),
            "global_step": info.get("global_step"),
        }
        rows.append(Row(model.title, "model", outs, seconds, details, compared_with=own.name if own else None))
        print(
            f"  {model.title}: {len(batches)} photos in {seconds * len(batches):.1f} s "
            f"({seconds:.2f} s/image; loaded in {load_seconds:.1f} s)",
            flush=True,
        )
    return rows


def score(row: Row, batches: list[dict], crop_border: int) -> None:
    """The row's PSNR, SSIM (Y) and colour error (RGB) per photo (ir_lightning.metrics.psnr_ssim's protocol)."""
    from ir_lightning.metrics.psnr_ssim import color_error_per_image, psnr_per_image, ssim_per_image

    for out, b in zip(row.images, batches):
        row.psnr.append(psnr_per_image(out, b["gt"], crop_border, True).item())
        row.ssim.append(ssim_per_image(out, b["gt"], crop_border, True).item())
        row.color_error.append(color_error_per_image(out, b["gt"], crop_border).item())


def evaluate(batches: list[dict], restorers: dict[str, Callable]) -> tuple[dict[str, dict], dict[str, list]]:
    """PSNR/SSIM (x4 SR protocol) and seconds per image of each restorer, and the restored images (the
    restorer-by-restorer table of bench/rddm_steps.py, printed by `table`)."""
    scores, images = {}, {}
    for name, restore in restorers.items():
        row = Row(name, "model", *restored_by(name, restore, batches))
        score(row, batches, SCALE)
        scores[name] = {"psnr": row.psnr, "ssim": row.ssim, "sec": row.seconds_per_image}
        images[name] = row.images
    return scores, images


def table(scores: dict[str, dict], keys: list[str]) -> str:
    """`evaluate`'s scores as text: PSNR / SSIM per photo and their means, seconds per image."""
    lines = [
        "PSNR / SSIM on the held-out photos (Y channel, BT.601; border crop 4; per image, then mean)",
        f"{'method':34s} " + " ".join(f"{k:>16s}" for k in keys) + f" {'mean':>16s} {'s/image':>8s}",
    ]
    for name, s in scores.items():
        cells = [f"{p:6.2f} / {q:.4f}" for p, q in zip(s["psnr"], s["ssim"])]
        means = f"{mean(s['psnr']):6.2f} / {mean(s['ssim']):.4f}"
        lines.append(f"{name:34s} " + " ".join(f"{c:>16s}" for c in cells) + f" {means:>16s} {s['sec']:8.2f}")
    return "\n".join(lines)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def task_results(task: str, rows: list[Row], keys: list[str]) -> dict[str, Any]:
    """A task's table as data (results.json): per row the per-photo and mean scores and the PSNR gain over the
    task's baseline (and over the row's own second baseline, where it has one)."""
    spec = TASKS[task]
    by_name = {row.name: row for row in rows}
    base = mean(by_name[spec.baseline].psnr)
    entries = []
    for row in rows:
        entry = {
            "name": row.name,
            "kind": row.kind,
            "psnr": dict(zip(keys, row.psnr)),
            "ssim": dict(zip(keys, row.ssim)),
            "color_error": dict(zip(keys, row.color_error)),
            "psnr_mean": mean(row.psnr),
            "ssim_mean": mean(row.ssim),
            "color_error_mean": mean(row.color_error),
            "seconds_per_image": row.seconds_per_image,
            "vs_baseline_db": mean(row.psnr) - base,
            **row.details,
        }
        if row.compared_with is not None:
            entry["compared_with"] = row.compared_with
            entry["vs_compared_db"] = mean(row.psnr) - mean(by_name[row.compared_with].psnr)
        entries.append(entry)
    protocol = {"y_channel": True, "crop_border": spec.crop_border, "color_error": "RGB, 8x8 boxes, 8-bit levels"}
    return {"heading": spec.heading, "baseline": spec.baseline, "protocol": protocol, "photos": keys, "rows": entries}


def markdown_table(result: dict[str, Any]) -> str:
    """A task's table in Markdown, padded so that it also reads as plain text."""
    keys = result["photos"]
    header = ["method", *keys, "PSNR", "SSIM", "colour error", "s/image", "vs baseline"]
    lines = []
    for r in result["rows"]:
        per_photo = [f"{r['psnr'][k]:.2f}" for k in keys]
        means = [f"{r['psnr_mean']:.2f}", f"{r['ssim_mean']:.4f}", f"{r['color_error_mean']:.2f}"]
        lines.append([r["name"], *per_photo, *means, f"{r['seconds_per_image']:.2f}", f"{r['vs_baseline_db']:+.2f}"])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]

    def joined(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([joined(header), rule, *(joined(cells) for cells in lines)])


def report(results: dict[str, Any]) -> str:
    """results.md: a table per task, its protocol, and the rows compared with a baseline of their own."""
    parts = [f"# The shipped models on the held-out photos ({', '.join(results['photos'])})", ""]
    for result in results["tasks"].values():
        protocol = result["protocol"]
        parts += [
            f"## {result['heading']}",
            "",
            f"PSNR (dB) per photo and mean, SSIM: Y channel (BT.601), border {protocol['crop_border']}, per image then"
            f" mean; colour error: {protocol['color_error']}; vs baseline: PSNR minus {result['baseline']}'s (dB).",
            "",
            markdown_table(result),
            "",
        ]
        for r in result["rows"]:
            if "compared_with" in r:
                parts += [f"{r['name']} vs {r['compared_with']}: {r['vs_compared_db']:+.2f} dB", ""]
    return "\n".join(parts)


def comparison_block(task: str, rows: list[Row], batches: list[dict]):
    """A task's block of the comparison image: input | each row | ground truth, a line a photo, titled."""
    import torch.nn.functional as F

    from ir_lightning.training.image_grid import titled_grid

    spec = TASKS[task]
    size = tuple(batches[0]["gt"].shape[-2:])
    titles = ([spec.input_title] if spec.input_title else []) + [r.name for r in rows] + [spec.clean_title]
    lines = []
    for i, b in enumerate(batches):
        shown = [F.interpolate(b["lq"].float(), size=size, mode="nearest")[0]] if spec.input_title else []
        lines.append([*shown, *(r.images[i][0] for r in rows), b["gt"][0]])
    keys = ", ".join(b["__key__"][0] for b in batches)
    return titled_grid(lines, titles, heading=f"{spec.heading}; rows: {keys}")


def write_outputs(out: Path, results: dict[str, Any], blocks: list) -> None:
    from ir_lightning.io.atomic import atomic_write_bytes
    from ir_lightning.training.image_grid import png_bytes, stack_rows

    atomic_write_bytes(out / "results.md", report(results).encode())
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(out / "comparison.png", png_bytes(stack_rows(blocks, gap=BLOCK_GAP)))


def evaluate_shipped(
    pattern: str, models: list[ShippedModel], assets: Path, out: Path, trained: Path | None = None, every: int = 1
) -> dict[str, Any]:
    """Step 3 and 4: every chosen model (and `trained`, an SR3 x4 checkpoint) restores the held-out photos of its
    task; prints and writes the tables (results.md, results.json) and the comparison image; returns the results."""
    results: dict[str, Any] = {"photos": list(HELD_OUT_PHOTOS), "crop": VAL_CROP, "tasks": {}}
    blocks = []
    for task, spec in TASKS.items():
        chosen = [m for m in models if m.task == task]
        if not chosen and not (task == "sr_x4" and trained is not None):
            continue
        batches = held_out_batches(pattern, task)[::every]
        size = tuple(batches[0]["lq"].shape[-2:])
        print(f"  {spec.heading}: {size[0]}x{size[1]} -> {VAL_CROP}x{VAL_CROP}", flush=True)
        baseline = bicubic if task == "sr_x4" else (lambda lq: lq)
        rows = [Row(spec.baseline, "baseline", *restored_by(spec.baseline, baseline, batches))]
        found = model_rows(task, chosen, assets, batches)
        rows += [r for r in found if r.kind == "baseline"] + [r for r in found if r.kind == "model"]
        if task == "sr_x4" and trained is not None:
            outs, seconds = restored_by("SR3, this run", load_shipped(trained).restore, batches)
            rows.append(Row("SR3 (this run)", "model", outs, seconds, {"checkpoint": str(trained)}))
        for row in rows:
            score(row, batches, spec.crop_border)
        keys = [b["__key__"][0] for b in batches]
        results["photos"] = keys
        results["tasks"][task] = task_results(task, rows, keys)
        blocks.append(comparison_block(task, rows, batches))
    write_outputs(out, results, blocks)
    return results


# --- the command --------------------------------------------------------------------------------------------------
def model_names(text: str) -> list[ShippedModel]:
    """`--models`: shipped model names, comma-separated."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = {m.name: m for m in SHIPPED}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"no shipped model {', '.join(unknown) or repr(text)}; shipped: {', '.join(known)}"
        )
    return [known[name] for name in names]


def missing_checkpoints(models: list[ShippedModel], assets: Path) -> list[str]:
    """One line per chosen model whose checkpoint is not in `assets`."""
    return [f"{checkpoint_of(m, assets)} ({m.title})" for m in models if not checkpoint_of(m, assets).is_file()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ir-lightning demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--train-steps", type=int, default=200, help="steps of the short training run (default 200)")
    parser.add_argument("--no-train", action="store_true", help="skip the short training run")
    parser.add_argument("--no-eval", action="store_true", help="skip restoring and scoring the held-out photos")
    parser.add_argument(
        "--eval-trained", action="store_true", help="also restore the held-out photos with the SR3 just trained"
    )
    parser.add_argument(
        "--assets",
        type=Path,
        default=ASSETS,
        help="folder holding the shipped checkpoints, <name>.ckpt (default: the package's)",
    )
    parser.add_argument(
        "--photos",
        metavar="PATTERN",
        help="restore the photos of these shards instead of the held-out ones (e.g. 'shards/photos/test-*.tar' of "
        "ir-lightning photos: photos no shipped model trained on; 256 x 256 centre crops)",
    )
    parser.add_argument("--every", type=int, default=1, metavar="K", help="with --photos: every K-th photo only")
    parser.add_argument(
        "--models",
        type=model_names,
        default=list(SHIPPED),
        metavar="NAME,...",
        help=f"shipped models to restore with (default: all: {','.join(m.name for m in SHIPPED)})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    out = args.out
    missing = [] if args.no_eval else missing_checkpoints(args.models, args.assets)
    if missing:
        print(
            f"error: {len(missing)} shipped checkpoint(s) not found:\n  " + "\n  ".join(missing) + f"\n{MODELS_DOC} "
            "lists the shipped models and how each is made; --assets DIR reads them from another folder, --models "
            "NAME,... restores with some of them",
            file=sys.stderr,
        )
        return 2
    import torch

    torch.set_float32_matmul_precision("high")
    print(f"[1/4] Shards from scikit-image's photos -> {out / 'shards'} (held out: {', '.join(HELD_OUT_PHOTOS)})")
    patterns = build_shards(out / "shards")
    times = {"shards": time.perf_counter() - started}

    trained = None
    if not args.no_train:
        print(f"[2/4] Training SR3 x4 for {args.train_steps} steps on the CPU (the real command):")
        start = time.perf_counter()
        trained = train(patterns, out, args.train_steps)
        times["training"] = time.perf_counter() - start

    if args.no_eval:
        print(f"Demo finished in {time.perf_counter() - started:.0f} s (--no-eval: nothing restored)")
        return 0
    names = ", ".join(m.title for m in args.models)
    which = f"the photos of {args.photos}" if args.photos else "the held-out photos"
    print(f"[3/4] Restoring {which} ({VAL_CROP}x{VAL_CROP} centre crops) with {names} ({args.assets})")
    start = time.perf_counter()
    pattern = args.photos or patterns["val"]
    results = evaluate_shipped(
        pattern, args.models, args.assets, out, trained if args.eval_trained else None, args.every
    )
    times["restoring"] = time.perf_counter() - start

    print("[4/4] Results")
    for result in results["tasks"].values():
        print(f"{result['heading']} (vs baseline: PSNR minus {result['baseline']}'s, dB)")
        print(markdown_table(result))
    print(f"Tables: {out / 'results.md'}, {out / 'results.json'}; side by side, titled: {out / 'comparison.png'}")
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items())
    print(f"Demo finished in {time.perf_counter() - started:.0f} s ({parts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
