"""Benchmark: is a narrow image (H x 16) slower per pixel than a square one? (issue 15, point 14)

With the shipped SR3 x4 demo checkpoint (`ir_lightning/assets/sr3_x4_demo.ckpt`, DDIM, `--steps 2` by
default), it times, in one process and alternating the cases `--repeats` times (the minimum is shown):

- one tile of 256 x 16 input pixels against one of 64 x 64 (the same area), restored whole;
- a 2000 x 16 image against a square image of about the same pixel count (179 x 179), each restored as
  `ir-lightning restore` does by default (`tiling.restore_tiled`, tile 256, overlap 32, batch 4).

Columns: case, the batches `restore` was called with (tiles x height x width), seconds, microseconds per input pixel. It prints
a markdown table and asserts nothing.

    python bench/restore_narrow.py [--steps 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ir_lightning.methods import SR3
from ir_lightning.tiling import restore_tiled

CKPT = Path(__file__).resolve().parents[1] / "ir_lightning/assets/sr3_x4_demo.ckpt"
CASES = {  # name: (height, width, tiled)
    "one tile 256 x 16": (256, 16, False),
    "one tile 64 x 64": (64, 64, False),
    "image 2000 x 16, tiled": (2000, 16, True),
    "image 179 x 179, tiled": (179, 179, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = SR3.load_from_checkpoint(CKPT, map_location="cpu", weights_only=True, sample_steps=args.steps).eval()
    calls: dict[str, list[tuple[int, ...]]] = {}
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (height, width, tiled) in CASES.items():
            seen: list[tuple[int, ...]] = []

            def restore(tiles: torch.Tensor) -> torch.Tensor:
                seen.append((tiles.shape[0], *tiles.shape[-2:]))
                return model.restore(tiles).clamp(0, 1)

            lq = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
            start = time.perf_counter()
            with torch.no_grad():
                restore_tiled(restore, lq, 256, 32, 4) if tiled else restore(lq)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            calls[name] = seen
    print(f"SR3 x4 demo, DDIM {args.steps} steps, {torch.get_num_threads()} threads, best of {args.repeats}\n")
    print("| case | network inputs | s | us / input pixel |\n| --- | --- | ---: | ---: |")
    for name, (height, width, _) in CASES.items():
        shapes = ", ".join("x".join(map(str, shape)) for shape in calls[name])
        print(f"| {name} | {shapes} | {best[name]:.2f} | {1e6 * best[name] / (height * width):.0f} |")


if __name__ == "__main__":
    main()
