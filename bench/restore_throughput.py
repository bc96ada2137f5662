"""Benchmark: `ir-lightning restore` throughput and peak memory for 512^2, 1024^2 and 2048^2 inputs.

Each size runs the real command in a fresh subprocess (so its peak resident memory is its own) on one
synthetic photo-like input (smooth random colours plus fine noise, PNG). The default checkpoint is a
Denoising-as-Adaptation restorer (the paper's residual U-Net, width 32; random weights: speed and memory
do not depend on training), one network pass per tile, output the size of the input. `--ckpt` takes any
checkpoint instead, e.g. the shipped SR3 x4 demo (`ir_lightning/assets/sr3_x4_demo.ckpt`, with
`--extra --sampler ddim --steps 1`), whose output is 16 times larger in pixels.
Columns: output size, seconds, input megapixels per second, peak RSS of the whole process (Python,
torch, the model, the tiles and the output bands), and the peak's ratio to the first size's.
Target (issue 8): peak memory grows less than 1.3x from 512^2 to 2048^2.

    python bench/restore_throughput.py [--ckpt CKPT] [--tile 256 --overlap 32 --tile-batch 4] [--extra ...]

It prints a markdown table and asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photo_like(size: int, seed: int = 0) -> np.ndarray:
    """size x size x 3 uint8: bilinearly up-sampled coarse random colours plus a little pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, size // 32), max(2, size // 32), generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.05 * torch.randn(smooth.shape, generator=generator)).clamp(0, 1)
    return (noisy[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# the child runs the real command, then reports its own peak resident set size (KiB on Linux)
CHILD = """import resource, sys, time
from ir_lightning.cli import main
start = time.perf_counter()
status = main(sys.argv[1:])
print("SECONDS", time.perf_counter() - start)
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(status)"""


def run(args: argparse.Namespace, image: Path, out: Path) -> tuple[float, float]:
    """Seconds of the command (loading the checkpoint, reading, restoring and writing; not Python's and
    torch's imports) and peak RSS (MiB) of one `ir-lightning restore` subprocess."""
    command = [sys.executable, "-c", CHILD, "restore", "--ckpt", str(args.ckpt), "--input", str(image),
               "--output", str(out), "--device", "cpu", "--tile", str(args.tile), "--overlap", str(args.overlap),
               "--tile-batch", str(args.tile_batch), *args.extra]  # fmt: skip
    done = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    report = dict(line.split() for line in done.stdout.splitlines() if line.startswith(("SECONDS", "PEAK_KIB")))
    return float(report["SECONDS"]), int(report["PEAK_KIB"]) / 1024


def restorer_checkpoint(path: Path) -> Path:
    """A checkpoint of a Denoising-as-Adaptation restorer with its default network and random weights."""
    import lightning

    from ir_lightning.methods import DenoisingAsAdaptation

    torch.manual_seed(0)
    model = DenoisingAsAdaptation()
    hparams = dict(model.hparams) | {"_class_path": "ir_lightning.methods.DenoisingAsAdaptation"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": lightning.__version__}, path)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="default: a random-weight Denoising-as-Adaptation restorer")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--tile-batch", type=int, default=4)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `restore` arguments (last)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.ckpt = args.ckpt or restorer_checkpoint(Path(tmp) / "restorer.ckpt")
        print(f"ir-lightning restore, {args.ckpt.name} {' '.join(args.extra)}, tile {args.tile} overlap {args.overlap} "
              f"batch {args.tile_batch}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")  # fmt: skip
        table(args, Path(tmp))


def table(args: argparse.Namespace, tmp: Path) -> None:
    print("| input | output | seconds | input MP/s | peak RSS (MiB) | peak / peak at first size |")
    print("|---:|---:|---:|---:|---:|---:|")
    first_peak = None
    for size in args.sizes:
        image = tmp / f"in{size}.png"
        Image.fromarray(photo_like(size)).save(image)
        seconds, peak = run(args, image, tmp / f"out{size}")
        with Image.open(tmp / f"out{size}" / image.name) as restored:
            width, height = restored.size
        first_peak = first_peak or peak
        print(f"| {size}^2 | {width} x {height} | {seconds:.1f} | {size * size / 1e6 / seconds:.3f} | {peak:.0f} | "
              f"{peak / first_peak:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
