"""`ir-lightning demo`: SR3 x4 end to end on the CPU, on the photos scikit-image ships.

1. Writes WebDataset shards of scikit-image's sample photos, holding some out for validation.
2. Trains a small SR3 briefly with the real command (`ir-lightning fit -c recipes/sr3_x4.yaml
   -c recipes/demo/sr3_x4_cpu.yaml`), to show that training works.
3. Restores the held-out photos (256x256 centre crops, LR 64x64 made by bicubic down-sampling)
   with the small checkpoint shipped in the package, which the same recipe trained for longer
   (docs/demo.md: "The demo checkpoint"); `--eval-trained` adds the model just trained.
4. Prints PSNR/SSIM (Y channel, crop 4, per image then averaged) for bicubic and SR3, and writes
   a PNG with LR | bicubic | SR3 | HR side by side.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from datamodules.format import ShardSample
from datamodules.writer import write_shards
from ir_lightning.packaged import RECIPES

if TYPE_CHECKING:
    import torch

# numpy, torch, Pillow and the suite's modules that import them are imported where they are used, once the
# arguments are parsed: `ir-lightning demo --help` starts at once.

RECIPE = RECIPES / "sr3_x4.yaml"  # installed with the package (ir_lightning/packaged.py)
OVERLAY = RECIPES / "demo" / "sr3_x4_cpu.yaml"
SHIPPED_CKPT = Path(__file__).resolve().parents[1] / "assets" / "sr3_x4_demo.ckpt"

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


def load_sr3(path: Path):
    from ir_lightning.methods.sr3 import SR3

    model = SR3.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return model.eval()


def held_out_batches(pattern: str) -> list[dict]:
    """The validation photos as the data module serves them: centre crop, LR by bicubic x4."""
    from datamodules import ShardDataModule
    from ir_lightning.degradations import BicubicDownsample, Pipeline

    dm = ShardDataModule(
        val_shards=pattern,
        val_crop_size=VAL_CROP,
        val_batch_size=1,
        num_workers=0,
        degradation=Pipeline(steps=[BicubicDownsample(scale=SCALE)]),
    )
    dm.setup("validate")
    return [dm.on_after_batch_transfer(batch, 0) for batch in dm.val_dataloader()]


def bicubic(lq: torch.Tensor) -> torch.Tensor:
    from ir_lightning.degradations.resize import bicubic_upsample

    return bicubic_upsample(lq, (lq.shape[-2] * SCALE, lq.shape[-1] * SCALE))


def evaluate(batches: list[dict], restorers: dict[str, object]) -> tuple[dict[str, list[float]], dict]:
    """PSNR/SSIM per restorer (paper protocol) and the restored images."""
    from tqdm import tqdm

    from ir_lightning.metrics.psnr_ssim import psnr_per_image, ssim_per_image

    scores, images = {}, {}
    for name, restore in restorers.items():
        start = time.perf_counter()
        outs = [restore(b["lq"]) for b in tqdm(batches, desc=f"restoring ({name})", unit="image")]
        seconds = (time.perf_counter() - start) / len(batches)
        psnr = [psnr_per_image(o, b["gt"], SCALE, True).item() for o, b in zip(outs, batches)]
        ssim = [ssim_per_image(o, b["gt"], SCALE, True).item() for o, b in zip(outs, batches)]
        scores[name] = {"psnr": psnr, "ssim": ssim, "sec": seconds}
        images[name] = outs
    return scores, images


def table(scores: dict, keys: list[str]) -> str:
    import numpy as np

    lines = [
        "PSNR / SSIM on the held-out photos (Y channel, BT.601; border crop 4; per image, then mean)",
        f"{'method':34s} " + " ".join(f"{k:>16s}" for k in keys) + f" {'mean':>16s} {'s/image':>8s}",
    ]
    for name, s in scores.items():
        cells = [f"{p:6.2f} / {q:.4f}" for p, q in zip(s["psnr"], s["ssim"])]
        mean = f"{np.mean(s['psnr']):6.2f} / {np.mean(s['ssim']):.4f}"
        lines.append(f"{name:34s} " + " ".join(f"{c:>16s}" for c in cells) + f" {mean:>16s} {s['sec']:8.2f}")
    return "\n".join(lines)


def write_comparison(path: Path, batches: list[dict], images: dict, model_name: str) -> None:
    from ir_lightning.io.atomic import atomic_write_bytes
    from ir_lightning.training.image_grid import comparison_row, png_bytes, stack_rows

    rows = [comparison_row(b["lq"][0], images[model_name][i][0], b["gt"][0]) for i, b in enumerate(batches)]
    atomic_write_bytes(path, png_bytes(stack_rows(rows)))


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
        "--eval-trained", action="store_true", help="also restore the held-out photos with the model just trained"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=SHIPPED_CKPT,
        help="SR3 checkpoint to restore with (default: the shipped one)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_float32_matmul_precision("high")
    started = time.perf_counter()
    out = args.out
    if not args.checkpoint.is_file():
        print(f"error: checkpoint {args.checkpoint} not found (see docs/demo.md: The demo checkpoint)", file=sys.stderr)
        return 2
    print(f"[1/4] Shards from scikit-image's photos -> {out / 'shards'} (held out: {', '.join(HELD_OUT_PHOTOS)})")
    patterns = build_shards(out / "shards")

    trained = None
    if not args.no_train:
        print(f"[2/4] Training SR3 x4 for {args.train_steps} steps on the CPU (the real command):")
        trained = train(patterns, out, args.train_steps)

    if args.no_eval:
        print(f"Demo finished in {time.perf_counter() - started:.0f} s (--no-eval: nothing restored)")
        return 0
    print(f"[3/4] Restoring the held-out photos (LR {VAL_CROP // SCALE}x{VAL_CROP // SCALE} -> {VAL_CROP}x{VAL_CROP})")
    batches = held_out_batches(patterns["val"])
    shipped = load_sr3(args.checkpoint)
    restorers = {
        "bicubic": bicubic,
        f"SR3 (shipped, {shipped.sampling.sampler}, {len(shipped.inference_gammas)} steps)": shipped.restore,
    }
    if trained is not None and args.eval_trained:
        restorers[f"SR3 (this run, {args.train_steps} steps)"] = load_sr3(trained).restore
    scores, images = evaluate(batches, restorers)

    print("[4/4] Results")
    print(table(scores, [b["__key__"][0] for b in batches]))
    png = out / "comparison.png"
    write_comparison(png, batches, images, list(restorers)[1])
    print(f"Side by side (LR | bicubic | SR3 | HR): {png}")
    print(f"Demo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
