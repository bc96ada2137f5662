"""Benchmark: `ir-lightning restore`'s own memory and its throughput, 512^2 to 8192^2 inputs.

Each size, in each of `--repeats` passes over the sizes (default 2), runs in a fresh subprocess that does
what `ir-lightning restore` does, with the command's own functions (`ir_lightning.inference.loading.load_method` and
`restore_file`: read the PNG, restore it in tiles, write the output band by band):

1. load the checkpoint and restore a small warm-up image (`--warmup-size`, tiled like the others), so that
   torch's threads, kernels and first-call buffers exist;
2. release what Python and glibc hold free (`gc.collect`, `malloc_trim`), read the resident set size (RSS):
   the baseline, and reset the kernel's peak RSS mark (`/proc/self/clear_refs`, "5");
3. restore the image once: its seconds, and the peak RSS (`VmHWM`) minus the baseline, which is the
   restore's own peak: the decoded image, the float input, the tiles, the network's activations, the
   output band and the PNG encoder's rows; then, the same way, the peak and the memory still held after
   decoding the input alone (`ir_lightning.io.images.read_image`), to see which part of the restore the
   peak belongs to;
4. for sizes up to `--tracemalloc-max` (default 2048; 0: never), restore it again under `tracemalloc`,
   whose peak counts the allocations that go through Python's allocator (Python objects and numpy
   arrays) and not torch's tensors nor Pillow's image buffers: a check of what it can and cannot see,
   not the restore's memory (its seconds are not used).

The default checkpoint is a Denoising-as-Adaptation restorer (a residual U-Net, width 16, depth 3, random
weights: speed and memory do not depend on training), one network pass per tile, output the size of the
input. The shipped SR3 x4 (`--ckpt ir_lightning/assets/sr3_x4.ckpt --extra --sampler ddim
--steps 1`) would make a 32768^2 output from an 8192^2 input and take hours on a CPU; it is not the default.
The input is one synthetic photo-like image (smooth random colours plus fine noise, PNG) per size.

    python bench/restore_throughput.py [--sizes 512 1024 2048 4096 8192] [--ckpt CKPT] [--tile 256 ...]

About 4 minutes on 2 idle cores, two passes over the sizes (the 8192^2 image dominates; `--repeats 1`
halves it, `--sizes 512 1024 2048 4096` takes about a minute a pass). It prints a markdown table and asserts nothing. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timing import Spread, load_after_line, machine_facts, ratios, to_stderr  # bench/ is on sys.path as a script

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def photo_like(size: int, seed: int = 0) -> np.ndarray:
    """size x size x 3 uint8: bilinearly up-sampled coarse random colours plus a little pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, size // 32), max(2, size // 32), generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.randn(smooth.shape, generator=generator)
    noisy = smooth.add_(noise, alpha=0.05).clamp_(0, 1)
    return noisy[0].permute(1, 2, 0).mul_(255).round_().to(torch.uint8).numpy()


# --- the child: one size in a fresh process ----------------------------------------------------------
def proc_status(field: str) -> int:
    """A `Vm...` field of /proc/self/status in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def settle() -> None:
    """Give back what Python and glibc hold free, so that the baseline RSS is what is in use."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def child(args: argparse.Namespace) -> dict[str, float]:
    """Steps 1-4 of the module's docstring for `args.image`; the figures as a dict."""
    import time
    import tracemalloc

    from ir_lightning.commands.restore import load_method, parser, restore_file
    from ir_lightning.io.images import read_image

    restore_args = parser().parse_args(
        [
            "--ckpt",
            str(args.ckpt),
            "--input",
            str(args.image),
            "--output",
            str(args.out),
            "--device",
            "cpu",
            "--tile",
            str(args.tile),
            "--overlap",
            str(args.overlap),
            "--tile-batch",
            str(args.tile_batch),
            *args.extra,
        ]
    )
    device = torch.device("cpu")
    model = load_method(restore_args.ckpt, restore_args, device)
    restore_file(model, args.warmup_image, args.out / "warmup.png", restore_args, device)
    startup_peak = proc_status("VmHWM")
    settle()
    baseline = proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    restore_file(model, args.image, args.out / "restored.png", restore_args, device)
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM")
    figures = {"seconds": seconds, "baseline": baseline, "peak": peak, "startup_peak": startup_peak}
    settle()
    decode_base = proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    decoded = read_image(args.image)  # the decoding alone: is it the restore's peak?
    figures["decode_peak"] = proc_status("VmHWM") - decode_base
    figures["decode_held"] = proc_status("VmRSS") - decode_base
    del decoded
    if args.tracemalloc:  # the parent passes it for sizes up to --tracemalloc-max
        settle()
        tracemalloc.start()
        restore_file(model, args.image, args.out / "restored_traced.png", restore_args, device)
        figures["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    with Image.open(args.out / "restored.png") as restored:
        figures["width"], figures["height"] = restored.size
    return figures


# --- the parent -------------------------------------------------------------------------------------
def restorer_checkpoint(path: Path) -> Path:
    """A checkpoint of a Denoising-as-Adaptation restorer (a `ResidualUNet`, width 16, depth 3) with random
    weights, laid out as the CLI writes one: the networks as class paths, rebuilt by its instantiator. D is
    left out of the weights, as `ir-lightning export` does (restoring never runs it)."""
    import lightning

    from ir_lightning.methods import DenoisingAsAdaptation
    from ir_lightning.nets.restorer import ResidualUNet

    networks = {
        "restorer": {"class_path": "ir_lightning.nets.restorer.ResidualUNet", "init_args": {"width": 16, "depth": 3}},
        "diffusion": {"class_path": "ir_lightning.nets.unet.UNet", "init_args": {"in_channels": 9}},
    }
    torch.manual_seed(0)
    model = DenoisingAsAdaptation(restorer=ResidualUNet(width=16, depth=3), diffusion=torch.nn.Identity())
    hparams = (
        dict(model.hparams)
        | networks
        | {
            "_class_path": "ir_lightning.methods.DenoisingAsAdaptation",
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        }
    )
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hparams,
            "exported_without": ["diffusion"],
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def input_image(tmp: Path, size: int) -> Path:
    image = tmp / f"in{size}.png"
    if not image.exists():
        Image.fromarray(photo_like(size)).save(image, compress_level=1)
    return image


def run_size(args: argparse.Namespace, tmp: Path, size: int, warmup_image: Path) -> dict[str, float]:
    """One fresh subprocess restoring the size x size input; its figures."""
    image = input_image(tmp, size)
    out = tmp / f"out{size}"
    out.mkdir(exist_ok=True)
    command = [
        sys.executable,
        __file__,
        "--child",
        "--ckpt",
        str(args.ckpt),
        "--image",
        str(image),
        "--warmup-image",
        str(warmup_image),
        "--out",
        str(out),
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
        "--tile-batch",
        str(args.tile_batch),
        *([] if size <= args.tracemalloc_max else ["--no-tracemalloc"]),
        "--extra",
        *args.extra,
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/restore_throughput.py: the {size}^2 run failed:\n{done.stderr[-3000:]}")
    for file in out.iterdir():
        file.unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="default: a random-weight Denoising-as-Adaptation restorer")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="passes over the sizes, alternating their order; medians and min - max (default 2)",
    )
    parser.add_argument("--warmup-size", type=int, default=512, help="side of the warm-up image (default 512)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--tile-batch", type=int, default=4)
    parser.add_argument(
        "--tracemalloc-max",
        type=int,
        default=2048,
        help="largest size restored a second time under tracemalloc (default 2048; 0: none)",
    )
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `restore` arguments (last)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup-image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def table(args: argparse.Namespace, rows: dict[int, list[dict[str, float]]]) -> list[str]:
    """One row per size: medians (min - max) over the passes; the ratio to the first size per pass."""

    def own(run: dict[str, float]) -> float:
        return run["peak"] - run["baseline"]

    def mib(values: Iterable[float], fmt: str = ".0f") -> str:
        spread = Spread.of(value / MIB for value in values)
        return f"{spread.median:{fmt}}" if len(spread.values) == 1 else spread.text(fmt)

    first = rows[args.sizes[0]]
    lines = [
        "| input | output | seconds | input MP/s | RSS baseline (MiB) | restore's own peak (MiB) | own peak / input pixel "
        "| own peak / first size's, per pass | decoding alone: peak / held after (MiB) | tracemalloc peak (MiB) "
        "| whole process's peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, runs in rows.items():
        seconds = Spread.of(run["seconds"] for run in runs)
        own_median = Spread.of(own(run) for run in runs).median
        traced = [run["traced_peak"] for run in runs if "traced_peak" in run]
        cells = [
            f"{size}^2",
            f"{runs[0]['width']:.0f} x {runs[0]['height']:.0f}",
            f"{seconds.median:.1f}" if len(runs) == 1 else seconds.text(".1f"),
            f"{size * size / 1e6 / seconds.median:.2f}",
            mib(run["baseline"] for run in runs),
            mib(own(run) for run in runs),
            f"{own_median / (size * size):.1f} B",
            "1x (the baseline)"
            if runs is first
            else ratios([own(r) for r in runs], [own(r) for r in first]).text(".1f", "x"),
            f"{mib(run['decode_peak'] for run in runs)} / {mib(run['decode_held'] for run in runs)}",
            mib(traced) if traced else "not run",
            mib(max(run["peak"], run["startup_peak"]) for run in runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) >= 2:
        pixels = np.array([size * size for size in rows], dtype=np.float64)
        peaks = np.array([Spread.of(own(run) for run in runs).median for runs in rows.values()], dtype=np.float64)
        slope, intercept = np.polyfit(pixels, peaks, 1)
        lines += [
            "",
            f"- least-squares line through the median own peaks: {intercept / MIB:.0f} MiB + {slope:.1f} bytes "
            f"per input pixel (largest residual {np.abs(peaks - (intercept + slope * pixels)).max() / MIB:.0f} MiB)",
        ]
    return lines


def main() -> None:
    args = build_parser().parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    header = [
        "## `ir-lightning restore` memory and throughput (bench/restore_throughput.py)",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        *machine_facts(),
    ]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        label = (
            args.ckpt.name
            if args.ckpt
            else "a random-weight DenoisingAsAdaptation restorer (residual U-Net, width 16, depth 3)"
        )
        args.ckpt = args.ckpt or restorer_checkpoint(tmp / "restorer.ckpt")
        header.append(
            f"- restore: {' '.join([label, *args.extra])}, tile {args.tile}, overlap {args.overlap}, {args.tile_batch} tiles per "
            f"call; warm-up image {args.warmup_size}^2; one fresh process per size and pass, {args.repeats} passes "
            "over the sizes (the order reversed every other pass)"
        )
        print("\n".join(header), flush=True)
        warmup_image = tmp / "warmup.png"
        Image.fromarray(photo_like(args.warmup_size, seed=1)).save(warmup_image)
        rows: dict[int, list[dict[str, float]]] = {size: [] for size in args.sizes}
        for repeat in range(args.repeats):
            for size in args.sizes[::-1] if repeat % 2 else args.sizes:
                to_stderr(f"pass {repeat + 1} of {args.repeats}: {size}^2 ...")
                rows[size].append(run_size(args, tmp, size, warmup_image))
    print("\n".join(["", *table(args, rows), "", load_after_line()]))


if __name__ == "__main__":
    main()
