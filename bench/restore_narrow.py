"""Benchmark: is a narrow image (H x 16) slower per pixel than a square one? (issue 15, point 14)

With the shipped SR3 x4 checkpoint (`ir_lightning/assets/sr3_x4.ckpt`, DDIM, `--steps 2` by
default), it times, in one process, the four cases interleaved (one round runs each once, in reverse
order every other round; one warm-up round, then `--rounds` timed ones):

- one tile of 256 x 16 input pixels against one of 64 x 64 (the same area), restored whole;
- a 2000 x 16 image against a square image of about the same pixel count (179 x 179), each restored as
  `ir-lightning restore` does by default (`tiling.restore_tiled`, tile 256, overlap 32, batch 4).

Columns: case, the batches `restore` was called with (tiles x height x width), seconds and microseconds per
input pixel (median, min - max over the rounds), and, for the narrow case of each pair, its time per pixel
over the square case's in the same round (median, min - max) with a verdict only when every round agrees
(bench/timing.py). It prints a markdown table and asserts nothing.

    python bench/restore_narrow.py [--steps 2] [--rounds 5]     # about 2 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from timing import Spread, compare, cpu_share_line, interleave, load_after_line, machine_facts, ratios, to_stderr

from ir_lightning.inference.tiling import restore_tiled
from ir_lightning.methods import SR3

CKPT = Path(__file__).resolve().parents[1] / "ir_lightning/assets/sr3_x4.ckpt"
CASES = {  # name: (height, width, tiled)
    "one tile 256 x 16": (256, 16, False),
    "one tile 64 x 64": (64, 64, False),
    "image 2000 x 16, tiled": (2000, 16, True),
    "image 179 x 179, tiled": (179, 179, True),
}
PAIRS = {"one tile 256 x 16": "one tile 64 x 64", "image 2000 x 16, tiled": "image 179 x 179, tiled"}
"""Narrow case: its square counterpart."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (default 5)")
    args = parser.parse_args()
    header = [
        "## Narrow against square inputs (bench/restore_narrow.py)",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        *machine_facts(),
    ]
    print("\n".join(header), flush=True)
    model = SR3.load_from_checkpoint(CKPT, map_location="cpu", weights_only=True).eval()
    model.sampling = model.sampling.replaced(steps=args.steps)
    calls: dict[str, list[tuple[int, ...]]] = {}

    def case(name: str) -> None:
        height, width, tiled = CASES[name]
        seen: list[tuple[int, ...]] = []

        def restore(tiles: torch.Tensor) -> torch.Tensor:
            seen.append((tiles.shape[0], *tiles.shape[-2:]))
            return model.restore(tiles).clamp(0, 1)

        lq = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            restore_tiled(restore, lq, 256, 32, 4) if tiled else restore(lq)
        calls[name] = seen

    robin = interleave(
        {name: (lambda name=name: case(name)) for name in CASES}, rounds=args.rounds, warmup=1, progress=to_stderr
    )
    per_pixel = {name: [1e6 * s / (h * w) for s in robin.seconds[name]] for name, (h, w, _) in CASES.items()}
    print(
        f"- SR3 x4 demo ({CKPT.name}), DDIM {args.steps} steps, {torch.get_num_threads()} threads; "
        f"{args.rounds} interleaved rounds after 1 warm-up\n"
    )
    print(
        "| case | network inputs | s, median (min - max) | us / input pixel, median (min - max) "
        "| per pixel / the square case's, per round | verdict |\n|---|---|---:|---:|---:|---|"
    )
    for name in CASES:
        shapes = ", ".join("x".join(map(str, shape)) for shape in calls[name])
        against = verdict = ""
        if name in PAIRS:
            per_round = ratios(per_pixel[name], per_pixel[PAIRS[name]])
            against = per_round.text(unit="x")
            verdict = compare(per_round, "narrow faster", "narrow slower")
        print(
            f"| {name} | {shapes} | {Spread.of(robin.seconds[name]).text()} "
            f"| {Spread.of(per_pixel[name]).text('.0f')} | {against} | {verdict} |"
        )
    print("\n" + cpu_share_line(robin, torch.get_num_threads()) + "\n" + load_after_line())


if __name__ == "__main__":
    main()
