"""Benchmark: images per second of the training data path, against plain decoding in one process.

Writes WebDataset shards of the demo photos (scikit-image's sample photos, each repeated under
`--repeats` keys, so there are a few hundred samples) into a temporary folder, then measures:

a. decoding in one process: read the tar members with `tarfile`, decode PNG, crop at random and
   convert to a float tensor in [0, 1] (the data module's own decode, crop and conversion
   functions, without webdataset, shuffling, batching or worker processes);
b. the training loader of `ShardDataModule` (resampled shards, decode, random crop, flips,
   shuffle buffer, batches made in the workers) with `--num-workers` workers, after warm-up.

The figure of merit is the loader's rate per worker against one process: (b / workers) / a,
target >= 0.8. a and b run interleaved, `--rounds` times after one warm-up round (a b, b a, a b,
...; each b starts a fresh loader, whose warm-up batches are not timed); the figure is taken per
round, shown as the median with its min - max, and the target is "met" or "not met" only when every
round agrees (bench/timing.py). Run from the repository root: `python bench/loader.py` (about 1.5
minutes on 2 idle cores; `--help` for the settings). It prints a markdown table for
bench/README.md, the command line and the machine facts. It asserts nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
import webdataset
from timing import (  # bench/ is on sys.path when this file runs as a script
    Spread,
    against_target,
    interleave,
    load_after_line,
    machine_facts,
    seconds_list,
    to_stderr,
)

from datamodules import ShardDataModule
from datamodules.decode import decode_image, to_unit_tensor
from datamodules.format import ShardSample
from datamodules.transforms import random_crop
from datamodules.writer import write_shards
from ir_lightning.commands.demo import TRAIN_PHOTOS, photo_png, stereo_pngs

TARGET_PER_WORKER = 0.8
"""Target: each loader worker delivers at least 80% of the one-process decode rate."""

GT_MEMBER = ".gt.png"
"""Suffix of the clean-image members the shards hold."""


@dataclass(frozen=True)
class Rate:
    """A count of images and the seconds they took."""

    images: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/loader.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--repeats", type=int, default=20, help="copies of each demo photo, under new keys (default 20)"
    )
    parser.add_argument(
        "--copies-per-shard",
        type=int,
        default=2,
        help="copies of every photo in each shard, so every shard holds the same mix of sizes (default 2)",
    )
    parser.add_argument("--crop-size", type=int, default=128, help="side of the random crop (default 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="loader batch size (default 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="loader worker processes (default 2)")
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=50,
        help="samples per worker in the shuffle buffer (default 50, the CPU recipe's)",
    )
    parser.add_argument(
        "--warmup-batches",
        type=int,
        default=4,
        help="loader batches before the clock starts: starting the workers, filling their shuffle buffers (default 4)",
    )
    parser.add_argument("--batches", type=int, default=100, help="timed loader batches per round (default 100)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds of a and b, interleaved, after one warm-up (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops and the shard order (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the shards (default: a temporary folder)")
    return parser


def demo_photos() -> list[tuple[str, bytes]]:
    """The demo's training photos as (name, PNG bytes)."""
    return [(name, photo_png(name)) for name in TRAIN_PHOTOS] + stereo_pngs()


def write_bench_shards(out: Path, repeats: int, copies_per_shard: int) -> list[Path]:
    """Shards of `repeats` copies of every photo, each shard holding `copies_per_shard` copies of each."""
    photos = demo_photos()
    samples = (
        ShardSample(key=f"{name}-{copy:04d}", files={"gt.png": data})
        for copy in range(repeats)
        for name, data in photos
    )
    stats = write_shards(samples, out, "bench", maxcount=len(photos) * copies_per_shard, progress=False)
    return stats.paths


def gt_members(path: Path) -> list[bytes]:
    """The bytes of every clean image in one shard."""
    with tarfile.open(path) as tar:
        return [tar.extractfile(member).read() for member in tar if member.name.endswith(GT_MEMBER)]


def decode_in_process(paths: list[Path], crop_size: int, seed: int) -> Rate:
    """Read, decode, crop and convert every image of `paths` in this process, on one thread."""
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a loader worker, which runs torch on one thread
    try:
        start, images = time.perf_counter(), 0
        for path in paths:
            for index, data in enumerate(gt_members(path)):
                sample = random_crop({"__key__": str(index), "gt": decode_image(data, channels=3)}, crop_size, 1, rng)
                to_unit_tensor(sample["gt"])
                images += 1
        return Rate(images, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def loader_rate(paths: list[Path], args: argparse.Namespace) -> Rate:
    """Images per second of ShardDataModule's training loader, after `warmup_batches` batches."""
    data = ShardDataModule(
        train_shards=[str(path) for path in paths],
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        steps_per_epoch=args.warmup_batches + args.batches,
        num_workers=args.num_workers,
        shuffle_buffer=args.shuffle_buffer,
        seed=args.seed,
    )
    data.setup("fit")
    try:
        start, images = 0.0, 0
        for index, batch in enumerate(data.train_dataloader()):
            if index == args.warmup_batches - 1:
                start = time.perf_counter()  # the clock starts when the last warm-up batch is in
            elif index >= args.warmup_batches:
                images += batch["gt"].shape[0]
        return Rate(images, time.perf_counter() - start)
    finally:
        data.teardown("fit")


def result_table(decode: list[Rate], loader: list[Rate], workers: int) -> list[str]:
    a = [rate.per_second for rate in decode]
    b = [rate.per_second for rate in loader]
    per_worker = Spread.of(rb / workers / ra for ra, rb in zip(a, b))  # (b / workers) / a, round by round
    verdict = against_target(per_worker, TARGET_PER_WORKER, at_least=True)
    return [
        "| measurement | images per round | seconds per round | images/s, median (min - max) | images/s, round by round |",
        "|---|---:|---:|---:|---|",
        f"| a. decode + random crop + to float, one process | {decode[0].images} "
        f"| {Spread.of(r.seconds for r in decode).text()} | {Spread.of(a).text('.1f')} | {seconds_list(a, '.1f')} |",
        f"| b. ShardDataModule training loader, {workers} workers | {loader[0].images} "
        f"| {Spread.of(r.seconds for r in loader).text()} | {Spread.of(b).text('.1f')} | {seconds_list(b, '.1f')} |",
        f"| per worker: (b / {workers}) / a per round, target >= {TARGET_PER_WORKER} | | | {per_worker.text()} "
        f"| {verdict} (every round agrees) |",
    ]


def run(args: argparse.Namespace, out: Path) -> list[str]:
    paths = write_bench_shards(out, args.repeats, args.copies_per_shard)
    megabytes = sum(path.stat().st_size for path in paths) / 2**20
    setting = (
        f"- data: {len(demo_photos())} demo photos x {args.repeats} keys in {len(paths)} shards ({megabytes:.0f} MiB); "
        f"crop {args.crop_size}, batch {args.batch_size}, shuffle buffer {args.shuffle_buffer}; "
        f"loader timed over {args.batches} batches after {args.warmup_batches} warm-up"
    )
    print(setting, flush=True)
    decode_in_process(paths[:1], args.crop_size, args.seed)  # warm-up: page cache and imports
    rates: dict[str, list[Rate]] = {"a": [], "b": []}

    def measure(name: str, rate: Callable[[], Rate]) -> Callable[[], float]:
        def case() -> float:
            rates[name].append(rate())
            return rates[name][-1].per_second

        return case

    interleave(
        {
            "a": measure("a", lambda: decode_in_process(paths, args.crop_size, args.seed)),
            "b": measure("b", lambda: loader_rate(paths, args)),
        },
        rounds=args.rounds,
        warmup=1,
        self_timed=True,
        progress=lambda line: to_stderr(line + " images/s"),
    )
    decode, loader = rates["a"][1:], rates["b"][1:]  # the first round is the warm-up
    return ["", *result_table(decode, loader, args.num_workers)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warmup_batches < 1 or args.batches < 1 or args.rounds < 1:
        parser.error("--warmup-batches, --batches and --rounds must be at least 1")
    header = ["## Training data loader (bench/loader.py)", "", f"- command: `{shlex.join(['python', *sys.argv])}`"]
    extra = f"Pillow {PIL.__version__}, webdataset {webdataset.__version__}"
    print("\n".join(header + machine_facts(extra)), flush=True)
    if args.out is not None:
        lines = run(args, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="ir-lightning-bench-") as out:
            lines = run(args, Path(out))
    print("\n".join([*lines, "", load_after_line()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
