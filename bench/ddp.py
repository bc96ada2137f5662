"""Benchmark: DDP throughput of the demo SR3 on the CPU, and what the gradient all-reduce costs.

The step is the one of the CPU demo recipe (`recipes/sr3_x4.yaml` overlaid with
`recipes/demo/sr3_x4_cpu.yaml`, read from the YAML files, merged as LightningCLI merges them): its
U-Net, `SR3.training_loss`, its Adam settings and the recipe's gradient clipping, on synthetic
batches of random GT and LQ images (batch 8 of 64x64 GT / 16x16 LQ per process, different on
each rank). Processes are started with `torch.multiprocessing.spawn`; more than one process
means `torch.distributed` with gloo and torch's `DistributedDataParallel`, wrapped the way
Lightning's DDP strategy wraps a LightningModule (forward = the training loss). Measured:

1. images/s of one process against `--processes` processes at the same per-process batch, each
   with `--threads` torch threads (1: one core per process), and of one process with
   `--threads x --processes` threads (the same cores used by threads instead of processes).
   A run of the same processes that skips the gradient all-reduce (each trains its own copy)
   separates what sharing the machine costs from what synchronising the gradients costs;
2. the gradient all-reduce: a DDP communication hook wraps torch's default `allreduce_hook` and
   records, for every bucket, the wall time from the hook call to the completion of its future
   (this includes waiting for the other ranks to reach the same bucket); per step: the buckets,
   the time during which at least one all-reduce was in flight, its share of the step, and the
   time `backward()` still ran after the last bucket was launched (the part not hidden behind
   the backward: that bucket's all-reduce and DDP's copy of the reduced gradients back). Each
   bucket size in `--bucket-caps` is one run ("default" = DDP's default: 25 MiB buckets with a
   1 MiB first bucket). Also timed: one `dist.all_reduce` of a flat float32 buffer as large as
   all the gradients, with nothing else running.

Every figure is the median over `--steps` timed steps after `--warmup` steps (DDP re-buckets the
gradients in the order they became ready after the first step); a step of several processes
lasts as long as its slowest rank. The CPU seconds a process used per wall second of its steps
(all its threads, gloo's included) show when other jobs took the cores: about 1 per thread on
an idle machine, less when the process waited to be scheduled.

Run from the repository root: `python bench/ddp.py` (`--help` for the settings). It prints
markdown tables for bench/README.md, the command line and the machine facts. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from ir_lightning.methods.sr3 import SR3
from ir_lightning.nets.unet import UNet
from train_step import machine_facts  # bench/ is on sys.path when this file runs as a script

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "sr3_x4.yaml"
DEMO_OVERLAY = ROOT / "recipes" / "demo" / "sr3_x4_cpu.yaml"
"""The demo configuration: the SR3 recipe with the CPU overlay on top."""

DEFAULT_BUCKET_CAPS = ("default", "25", "100")
"""DDP's default buckets; 25 MiB given explicitly (DDP then drops its 1 MiB first bucket); 100 MiB."""

MIB = 2**20


# --- the demo configuration ---------------------------------------------------------------------
def merge(base: Any, overlay: Any) -> Any:
    """Overlay one config on another as LightningCLI (jsonargparse) does for these recipes.

    Mappings merge key by key; a `class_path` that changes replaces the whole object (its old
    `init_args` no longer apply); lists and scalars are replaced whole.
    """
    if not isinstance(base, dict) or not isinstance(overlay, dict):
        return overlay
    if "class_path" in overlay and overlay["class_path"] != base.get("class_path"):
        return overlay
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = merge(base[key], value) if key in base else value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SystemExit(f"bench/ddp.py: cannot read the recipe {path}: {error}") from error
    if not isinstance(config, dict):
        raise SystemExit(f"bench/ddp.py: {path} is not a YAML mapping")
    return config


def lookup(config: dict[str, Any], dotted: str, source: str) -> Any:
    """config['a']['b'] for 'a.b', or an error naming the key and the files it was looked for in."""
    value: Any = config
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise SystemExit(f"bench/ddp.py: key '{dotted}' not found in {source}")
        value = value[key]
    return value


@dataclass(frozen=True)
class DemoConfig:
    """What the benchmark takes from the merged demo recipe."""

    net: dict[str, Any]  # UNet init_args
    method: dict[str, Any]  # SR3 init_args other than net and optimizer
    adam: dict[str, Any]  # torch.optim.Adam init_args
    gradient_clip_val: float | None
    crop_size: int
    batch_size: int


def load_demo_config(recipe: Path = RECIPE, overlay: Path = DEMO_OVERLAY) -> DemoConfig:
    config = merge(read_yaml(recipe), read_yaml(overlay))
    source = f"{recipe} + {overlay}"
    net = lookup(config, "model.init_args.net", source)
    optimizer = lookup(config, "model.init_args.optimizer", source)
    expected_classes = (("net", net, f"{UNet.__module__}.UNet"), ("optimizer", optimizer, "torch.optim.Adam"))
    for name, entry, expected in expected_classes:
        if entry.get("class_path") != expected:
            raise SystemExit(
                f"bench/ddp.py: model.init_args.{name}.class_path in {source} is {entry.get('class_path')!r}; "
                f"this benchmark builds {expected}"
            )
    method = {k: v for k, v in lookup(config, "model.init_args", source).items() if k not in ("net", "optimizer")}
    return DemoConfig(
        net=dict(net.get("init_args", {})),
        method=method,
        adam=dict(optimizer.get("init_args", {})),
        gradient_clip_val=config.get("trainer", {}).get("gradient_clip_val"),
        crop_size=int(lookup(config, "data.init_args.crop_size", source)),
        batch_size=int(lookup(config, "data.init_args.batch_size", source)),
    )


def build_method(demo: DemoConfig, seed: int) -> SR3:
    """The demo SR3 with seeded weights (every rank builds the same ones)."""
    torch.manual_seed(seed)
    return SR3(net=UNet(**demo.net), **demo.method)


class TrainingLoss(nn.Module):
    """Makes the method's training loss the module's forward, as Lightning's DDP strategy does.

    DDP prepares the gradient reduction in `forward`; Lightning routes a DDP-wrapped module's
    forward to `training_step`, which for the suite's methods is `training_loss` plus logging.
    """

    def __init__(self, method: SR3) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.method.training_loss(batch)


def synthetic_batches(count: int, batch_size: int, crop_size: int, scale: int, seed: int) -> list[dict[str, Tensor]]:
    """Random GT and LQ images in [0, 1] (their content does not change the cost of a step)."""
    generator = torch.Generator().manual_seed(seed)
    low = crop_size // scale
    return [
        {
            "gt": torch.rand(batch_size, 3, crop_size, crop_size, generator=generator),
            "lq": torch.rand(batch_size, 3, low, low, generator=generator),
        }
        for _ in range(count)
    ]


# --- what a run is and what it records ----------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """One timed way of running the step.

    `sync`: wrap in DDP (False: the processes train independent copies, no gradient all-reduce).
    `bucket_cap_mb`: DDP's argument (None: its default). `timed_hook`: time every bucket's
    all-reduce with a communication hook around torch's default one.
    """

    label: str
    processes: int
    threads: int
    sync: bool = False
    bucket_cap_mb: float | None = None
    timed_hook: bool = False


class AllReduceTimer:
    """DDP communication hook: torch's default all-reduce of a bucket, timed to its completion.

    For each bucket it records the step, the bucket's index and bytes, the time of the hook call
    and the time its future completed (the callback runs in gloo's thread as soon as the
    all-reduce has finished; it needs the GIL, so the end is an upper bound by at most the wait
    for the GIL).
    """

    def __init__(self) -> None:
        self.step = -1
        self.calls: list[dict[str, float]] = []

    # no annotations on purpose: DDP compares the hook's annotation objects with dist.GradBucket and
    # Future[Tensor], and `from __future__ import annotations` would turn them into strings
    def hook(self, process_group, bucket):  # type: ignore[no-untyped-def]
        call = {
            "step": self.step,
            "index": bucket.index(),
            "bytes": bucket.buffer().numel() * bucket.buffer().element_size(),
            "start": time.perf_counter(),
        }
        self.calls.append(call)

        def done(future: torch.futures.Future[Tensor]) -> Tensor:
            call["end"] = time.perf_counter()
            return future.value()

        return allreduce_hook(process_group, bucket).then(done)


def train_steps(setup: Setup, demo: DemoConfig, args: argparse.Namespace, rank: int) -> dict[str, Any]:
    """Run one setup on this rank; returns the times of every step and of every bucket all-reduce."""
    torch.set_num_threads(setup.threads)
    module: nn.Module = TrainingLoss(build_method(demo, args.seed))
    timer = AllReduceTimer() if setup.timed_hook else None
    if setup.sync:
        module = DistributedDataParallel(module, bucket_cap_mb=setup.bucket_cap_mb)
        if timer is not None:
            module.register_comm_hook(None, timer.hook)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), **demo.adam)
    batches = synthetic_batches(
        min(args.warmup + args.steps, 4), args.batch_size, demo.crop_size, demo.method["scale"], args.seed + rank
    )
    if dist.is_initialized():
        dist.barrier()
    steps = []
    for step in range(args.warmup + args.steps):
        if timer is not None:
            timer.step = step
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = module(batches[step % len(batches)])
        loss.backward()  # under DDP it returns once every bucket is reduced and copied back
        backward_end = time.perf_counter()
        if demo.gradient_clip_val:
            nn.utils.clip_grad_norm_(module.parameters(), demo.gradient_clip_val)  # the recipe's clipping
        optimizer.step()
        end, cpu_end = time.perf_counter(), time.process_time()
        steps.append({"start": start, "backward_end": backward_end, "end": end, "cpu": cpu_end - cpu_start})
    return {"steps": steps, "buckets": timer.calls if timer is not None else []}


def time_flat_all_reduce(numel: int, repeats: int) -> list[float]:
    """Seconds of `dist.all_reduce` on a float32 buffer of `numel` elements, ranks aligned by a barrier."""
    buffer = torch.zeros(numel)
    seconds = []
    for _ in range(repeats + 2):  # two untimed: the first ones set up gloo's buffers
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        seconds.append(time.perf_counter() - start)
    return seconds[2:]


def worker(rank: int, world_size: int, setups: list[Setup], args: argparse.Namespace, port: int, out: str) -> None:
    """One process: join the group (more than one process), run the setups, write rank<r>.json."""
    demo = load_demo_config()
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result: dict[str, Any] = {"runs": [train_steps(setup, demo, args, rank) for setup in setups]}
        if world_size > 1:
            numel = sum(p.numel() for p in build_method(demo, args.seed).parameters() if p.requires_grad)
            result["flat_all_reduce"] = time_flat_all_reduce(numel, args.flat_repeats)
    finally:
        if world_size > 1:
            dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(world_size: int, setups: list[Setup], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Spawn `world_size` processes running `setups` in order; returns each rank's records."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world_size, setups, args, free_port(), out), nprocs=world_size, join=True)
        return [json.loads(Path(out, f"rank{rank}.json").read_text(encoding="utf-8")) for rank in range(world_size)]


# --- figures ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figures:
    """One setup's figures over the timed steps (medians; a step lasts as long as its slowest rank)."""

    setup: Setup
    step_seconds: list[float]
    cpu_share: float  # CPU seconds of a process (all its threads) / wall seconds, median over steps and ranks
    batch_size: int
    buckets: int | None = None
    bucket_mib: list[float] | None = None
    in_flight_ms: float | None = None  # union of the buckets' all-reduce intervals
    summed_ms: float | None = None  # sum of the buckets' all-reduce durations
    tail_ms: float | None = None  # backward after the last bucket's launch

    @property
    def median(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def images_per_second(self) -> float:
        return self.setup.processes * self.batch_size / self.median


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlapping all-reduces counted once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def figures(setup: Setup, ranks: list[dict[str, Any]], warmup: int, batch_size: int) -> Figures:
    timed = [run["steps"][warmup:] for run in ranks]
    step_seconds = [max(s["end"] - s["start"] for s in per_rank) for per_rank in zip(*timed)]
    cpu_share = statistics.median(s["cpu"] / (s["end"] - s["start"]) for per_rank in timed for s in per_rank)
    if not setup.timed_hook:
        return Figures(setup, step_seconds, cpu_share, batch_size)
    in_flight, summed, tails, counts = [], [], [], []
    for step in range(warmup, warmup + len(step_seconds)):
        for rank in ranks:
            calls = [c for c in rank["buckets"] if c["step"] == step]
            intervals = [(c["start"], c["end"]) for c in calls]
            in_flight.append(union_seconds(intervals))
            summed.append(sum(end - start for start, end in intervals))
            tails.append(rank["steps"][step]["backward_end"] - max(start for start, _ in intervals))
            counts.append(len(calls))
    last_step = [c for c in ranks[0]["buckets"] if c["step"] == warmup + len(step_seconds) - 1]
    return Figures(
        setup,
        step_seconds,
        cpu_share,
        batch_size,
        buckets=max(counts),
        bucket_mib=[c["bytes"] / MIB for c in sorted(last_step, key=lambda c: c["start"])],
        in_flight_ms=1e3 * statistics.median(in_flight),
        summed_ms=1e3 * statistics.median(summed),
        tail_ms=1e3 * statistics.median(tails),
    )


def throughput_table(runs: list[Figures], baseline: Figures, all_cores: Figures) -> list[str]:
    lines = [
        "| run | processes x threads | s/step (median) | fastest - slowest | CPU s / wall s per process | images/s "
        f"| vs 1 x {baseline.setup.threads} | vs 1 x {all_cores.setup.threads} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.setup.label} | {run.setup.processes} x {run.setup.threads} | {run.median:.3f} "
            f"| {min(run.step_seconds):.3f} - {max(run.step_seconds):.3f} | {run.cpu_share:.2f} "
            f"| {run.images_per_second:.1f} "
            f"| {run.images_per_second / baseline.images_per_second:.2f}x "
            f"| {run.images_per_second / all_cores.images_per_second:.2f}x |"
        )
    return lines


def all_reduce_table(runs: list[Figures]) -> list[str]:
    lines = [
        "| DDP buckets | buckets / step | bucket sizes (MiB, first launched first) | s/step (median) | CPU s / wall s "
        "| all-reduce in flight (ms/step) | share of step | sum over buckets (ms) | backward after last launch (ms) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        assert run.in_flight_ms is not None and run.bucket_mib is not None  # timed runs only
        sizes = ", ".join(f"{size:.2f}" for size in run.bucket_mib)
        lines.append(
            f"| {bucket_label(run.setup.bucket_cap_mb)} | {run.buckets} | {sizes} | {run.median:.3f} "
            f"| {run.cpu_share:.2f} "
            f"| {run.in_flight_ms:.1f} | {run.in_flight_ms / 1e3 / run.median:.1%} | {run.summed_ms:.1f} "
            f"| {run.tail_ms:.1f} |"
        )
    return lines


def bucket_label(cap: float | None) -> str:
    return "default (25 MiB, first bucket 1 MiB)" if cap is None else f"bucket_cap_mb={cap:g} (first bucket too)"


def parse_cap(text: str) -> float | None:
    if text == "default":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bucket cap {text!r} is neither 'default' nor a number of MiB") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"bucket cap {text!r} must be positive")
    return value


def build_parser(demo: DemoConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/ddp.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run, at least 1 (default 2)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run; medians are reported (default 8)")
    parser.add_argument(
        "--batch-size", type=int, default=demo.batch_size,
        help=f"GT crops per process and step (default {demo.batch_size}, the demo recipe's)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per process (default 1: one core each); the all-cores run uses threads x processes",
    )  # fmt: skip
    parser.add_argument("--processes", type=int, default=2, help="DDP processes (default 2, the cores of this machine)")
    parser.add_argument(
        "--bucket-caps", type=parse_cap, nargs="+", default=[parse_cap(c) for c in DEFAULT_BUCKET_CAPS],
        help="DDP bucket_cap_mb (MiB) of the timed all-reduce runs, 'default' for DDP's "
        f"(default: {' '.join(DEFAULT_BUCKET_CAPS)})",
    )  # fmt: skip
    parser.add_argument(
        "--flat-repeats", type=int, default=10, help="timed all-reduces of the flat buffer (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights (the images: seed + rank) (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    demo = load_demo_config()
    parser = build_parser(demo)
    args = parser.parse_args(argv)
    for name in ("warmup", "steps", "batch_size", "threads", "flat_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.processes < 2:
        parser.error(f"--processes must be at least 2 to compare with one process, got {args.processes}")

    method = build_method(demo, args.seed)
    parameters = [p for p in method.parameters() if p.requires_grad]
    gradient_bytes = sum(p.numel() * p.element_size() for p in parameters)
    del method
    n, t = args.processes, args.threads
    low = demo.crop_size // demo.method["scale"]
    header = ["## DDP on the CPU (bench/ddp.py)", "", f"- command: `{shlex.join(['python', *sys.argv])}`"]
    header += machine_facts()
    header.append(
        f"- step: demo SR3 ({RECIPE.relative_to(ROOT)} + {DEMO_OVERLAY.relative_to(ROOT)}): UNet {demo.net}, "
        f"{sum(p.numel() for p in parameters) / 1e6:.2f} M parameters in {len(parameters)} tensors, "
        f"gradients {gradient_bytes / MIB:.2f} MiB float32; Adam {demo.adam}, gradient clipping "
        f"{demo.gradient_clip_val}; batch {args.batch_size} per process of {demo.crop_size}x{demo.crop_size} GT / "
        f"{low}x{low} LQ (random); median of {args.steps} steps after {args.warmup} warm-up"
    )
    print("\n".join(header), flush=True)

    single = [Setup("1 process (baseline)", 1, t), Setup(f"1 process, the {n} processes' cores as threads", 1, t * n)]
    multi = [
        Setup(f"{n} processes, DDP gloo", n, t, sync=True),
        Setup(f"{n} processes, no gradient all-reduce", n, t),
    ]
    multi += [Setup(f"{n} processes, DDP gloo, timed hook", n, t, sync=True, bucket_cap_mb=cap, timed_hook=True)
              for cap in args.bucket_caps]  # fmt: skip
    print(f"timing 1 process ({len(single)} runs) ...", file=sys.stderr, flush=True)
    single_ranks = launch(1, single, args)
    print(f"timing {n} processes ({len(multi)} runs) ...", file=sys.stderr, flush=True)
    multi_ranks = launch(n, multi, args)

    runs = [
        figures(setup, [ranks["runs"][index] for ranks in results], args.warmup, args.batch_size)
        for setups, results in ((single, single_ranks), (multi, multi_ranks))
        for index, setup in enumerate(setups)
    ]
    baseline, all_cores, ddp, independent = runs[:4]
    timed = runs[4:]
    flat = [max(per_rank) for per_rank in zip(*(ranks["flat_all_reduce"] for ranks in multi_ranks))]
    flat_ms = 1e3 * statistics.median(flat)

    lines = ["", *throughput_table(runs[:4], baseline, all_cores), ""]
    lines.append(
        f"- scaling ratio ({n}-process images/s / 1-process images/s), {t} thread(s) per process: "
        f"{ddp.images_per_second / baseline.images_per_second:.2f} (ideal {n}); "
        f"against 1 process with {t * n} thread(s): {ddp.images_per_second / all_cores.images_per_second:.2f}"
    )
    lines.append(
        f"- DDP step - independent step: {1e3 * (ddp.median - independent.median):.0f} ms "
        f"({(ddp.median - independent.median) / ddp.median:.1%} of the DDP step): what synchronising the gradients adds"
    )
    lines += ["", *all_reduce_table(timed), ""]
    lines.append(
        f"- one dist.all_reduce of a flat float32 buffer of {gradient_bytes / MIB:.2f} MiB (all the gradients), "
        f"nothing else running: {flat_ms:.1f} ms (median of {args.flat_repeats}; "
        f"{gradient_bytes / MIB / (flat_ms / 1e3):.0f} MiB/s of gradients); "
        f"{flat_ms / 1e3 / ddp.median:.1%} of the DDP step"
    )
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    lines += ["", f"- load average after the runs: {load} (1/5/15 min)"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
