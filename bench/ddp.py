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

The setups run interleaved: inside a launch every setup's model and optimizer exist at once and
one round is one step of each (in reverse order every other round; before every step the ranks
meet at a barrier, untimed, so that one setup's imbalance does not leak into the next). The
one-process and the multi-process launches alternate `--repeats` times (1 n, n 1, 1 n, ...).
Every figure is a median over the timed steps (`--steps` per launch after `--warmup`; DDP
re-buckets the gradients in the order they became ready after the first step) with its min - max;
a step of several processes lasts as long as its slowest rank. Pairs: DDP against independent
processes, step by step (the same round); the scaling ratios, launch by launch (the medians of
one-process and multi-process launches next to each other). A verdict is given only when every
pair agrees, else "no clear difference" (bench/timing.py). The CPU seconds a process used per wall
second of its steps (all its threads, gloo's included) show when other jobs took the cores: about
1 per thread on an idle machine, less when the process waited to be scheduled.

Run from the repository root: `python bench/ddp.py` (about 3 minutes on 2 idle cores; `--repeats 6`
for a tighter spread; `--help` for the settings). It prints markdown tables for bench/README.md,
the command line and the machine facts. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
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
from timing import (  # bench/ is on sys.path when this file runs as a script
    RoundRobin,
    Spread,
    compare,
    differences,
    load_after_line,
    machine_facts,
    ratios,
    to_stderr,
)
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from ir_lightning.methods.sr3 import SR3
from ir_lightning.nets.unet import UNet

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


class SetupRun:
    """One setup on this rank: its own module (seeded: every setup and rank starts from the same weights),
    optimizer and batches; `step()` runs one training step and records its times."""

    def __init__(self, setup: Setup, demo: DemoConfig, args: argparse.Namespace, rank: int) -> None:
        torch.set_num_threads(setup.threads)
        self.setup, self.demo = setup, demo
        module: nn.Module = TrainingLoss(build_method(demo, args.seed))
        self.timer = AllReduceTimer() if setup.timed_hook else None
        if setup.sync:
            module = DistributedDataParallel(module, bucket_cap_mb=setup.bucket_cap_mb)
            if self.timer is not None:
                module.register_comm_hook(None, self.timer.hook)
        self.module = module.train()
        self.optimizer = torch.optim.Adam(module.parameters(), **demo.adam)
        self.batches = synthetic_batches(
            min(args.warmup + args.steps, 4), args.batch_size, demo.crop_size, demo.method["scale"], args.seed + rank
        )
        self.steps: list[dict[str, float]] = []

    def step(self) -> float:
        index = len(self.steps)
        if self.timer is not None:
            self.timer.step = index
        start, cpu_start = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.module(self.batches[index % len(self.batches)])
        loss.backward()  # under DDP it returns once every bucket is reduced and copied back
        backward_end = time.perf_counter()
        if self.demo.gradient_clip_val:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.demo.gradient_clip_val)  # the recipe's clipping
        self.optimizer.step()
        end, cpu_end = time.perf_counter(), time.process_time()
        self.steps.append({"start": start, "backward_end": backward_end, "end": end, "cpu": cpu_end - cpu_start})
        return end - start

    def record(self) -> dict[str, Any]:
        return {"steps": self.steps, "buckets": self.timer.calls if self.timer is not None else []}


def train_interleaved(
    setups: list[Setup], demo: DemoConfig, args: argparse.Namespace, rank: int
) -> list[dict[str, Any]]:
    """Every setup's steps, interleaved round by round (RoundRobin), the ranks aligned by a barrier before
    each step; returns each setup's record."""
    runs = {str(index): SetupRun(setup, demo, args, rank) for index, setup in enumerate(setups)}

    def before_each(name: str) -> None:
        torch.set_num_threads(runs[name].setup.threads)
        if dist.is_initialized():
            dist.barrier()

    robin = RoundRobin(
        {name: run.step for name, run in runs.items()}, warmup=args.warmup, before_each=before_each, self_timed=True
    )
    for _ in range(args.warmup + args.steps):
        robin.run_round()
    return [run.record() for run in runs.values()]


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
        result: dict[str, Any] = {"runs": train_interleaved(setups, demo, args, rank)}
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
    """One setup's timed steps over all its launches (a step lasts as long as its slowest rank).

    `step_seconds[i]` pairs with the same index of every other setup of the same launches (the same round);
    `launch_medians[k]` is launch k's median step.
    """

    setup: Setup
    step_seconds: list[float]
    launch_medians: list[float]
    cpu_shares: list[float]  # CPU seconds of a process (all its threads) / wall seconds, per step and rank
    batch_size: int
    buckets: int | None = None
    bucket_mib: list[float] | None = None
    in_flight: list[float] | None = None  # per step and rank: union of the buckets' all-reduce intervals (s)
    in_flight_share: list[float] | None = None  # the same / the step's seconds
    summed: list[float] | None = None  # per step and rank: sum of the buckets' all-reduce durations (s)
    tails: list[float] | None = None  # per step and rank: backward after the last bucket's launch (s)

    @property
    def steps(self) -> Spread:
        return Spread.of(self.step_seconds)

    @property
    def cpu_share(self) -> float:
        return statistics.median(self.cpu_shares)

    def images_per_second(self, seconds: float) -> float:
        return self.setup.processes * self.batch_size / seconds


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlapping all-reduces counted once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def figures(setup: Setup, launches: list[list[dict[str, Any]]], warmup: int, batch_size: int) -> Figures:
    """`launches[k][r]`: this setup's record on rank r in launch k."""
    step_seconds, launch_medians, cpu_shares = [], [], []
    in_flight, shares, summed, tails, counts = [], [], [], [], []
    last_step: list[dict[str, Any]] = []
    for ranks in launches:
        timed = [run["steps"][warmup:] for run in ranks]
        seconds = [max(s["end"] - s["start"] for s in per_rank) for per_rank in zip(*timed)]
        step_seconds += seconds
        launch_medians.append(statistics.median(seconds))
        cpu_shares += [s["cpu"] / (s["end"] - s["start"]) for per_rank in timed for s in per_rank]
        if not setup.timed_hook:
            continue
        for offset, step in enumerate(range(warmup, warmup + len(seconds))):
            for rank in ranks:
                calls = [c for c in rank["buckets"] if c["step"] == step]
                intervals = [(c["start"], c["end"]) for c in calls]
                in_flight.append(union_seconds(intervals))
                shares.append(in_flight[-1] / seconds[offset])
                summed.append(sum(end - start for start, end in intervals))
                tails.append(rank["steps"][step]["backward_end"] - max(start for start, _ in intervals))
                counts.append(len(calls))
        last_step = [c for c in ranks[0]["buckets"] if c["step"] == warmup + len(seconds) - 1]
    if not setup.timed_hook:
        return Figures(setup, step_seconds, launch_medians, cpu_shares, batch_size)
    return Figures(
        setup,
        step_seconds,
        launch_medians,
        cpu_shares,
        batch_size,
        buckets=max(counts),
        bucket_mib=[c["bytes"] / MIB for c in sorted(last_step, key=lambda c: c["start"])],
        in_flight=in_flight,
        in_flight_share=shares,
        summed=summed,
        tails=tails,
    )


def scaling(run: Figures, baseline: Figures) -> Spread:
    """images/s of `run` / images/s of `baseline`, launch by launch (adjacent launches form the pairs)."""
    return Spread.of(
        run.images_per_second(r) / baseline.images_per_second(b)
        for r, b in zip(run.launch_medians, baseline.launch_medians)
    )


def versus(run: Figures, baseline: Figures) -> str:
    return "1x (the baseline)" if run is baseline else scaling(run, baseline).text(unit="x")


def throughput_table(runs: list[Figures], baseline: Figures, all_cores: Figures) -> list[str]:
    lines = [
        "| run | processes x threads | s/step, median (min - max) | CPU s / wall s per process | images/s (median step) "
        f"| vs 1 x {baseline.setup.threads}, per launch pair | vs 1 x {all_cores.setup.threads}, per launch pair |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.setup.label} | {run.setup.processes} x {run.setup.threads} | {run.steps.text('.3f')} "
            f"| {run.cpu_share:.2f} | {run.images_per_second(run.steps.median):.1f} "
            f"| {versus(run, baseline)} | {versus(run, all_cores)} |"
        )
    return lines


def all_reduce_table(runs: list[Figures]) -> list[str]:
    lines = [
        "| DDP buckets | buckets / step | bucket sizes (MiB, first launched first) | s/step, median (min - max) "
        "| CPU s / wall s | all-reduce in flight (ms/step) | share of step | sum over buckets (ms) "
        f"| backward after last launch (ms) | s/step / the {bucket_label(runs[0].setup.bucket_cap_mb)} run's, per round |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        if run is runs[0]:
            versus_first = "1x (the baseline)"
        else:
            per_round = ratios(run.step_seconds, runs[0].step_seconds)
            versus_first = f"{per_round.text(unit='x')}, {compare(per_round)}"
        assert run.in_flight is not None and run.bucket_mib is not None  # timed runs only
        assert run.in_flight_share is not None and run.summed is not None and run.tails is not None
        sizes = ", ".join(f"{size:.2f}" for size in run.bucket_mib)
        milliseconds = lambda values: Spread.of(1e3 * value for value in values).text(".1f")  # noqa: E731
        lines.append(
            f"| {bucket_label(run.setup.bucket_cap_mb)} | {run.buckets} | {sizes} | {run.steps.text('.3f')} "
            f"| {run.cpu_share:.2f} | {milliseconds(run.in_flight)} | {Spread.of(run.in_flight_share).text('.1%')} "
            f"| {milliseconds(run.summed)} | {milliseconds(run.tails)} | {versus_first} |"
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
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per launch, at least 1 (default 2)")
    parser.add_argument(
        "--steps", type=int, default=6, help="timed rounds (one step of every setup) per launch (default 6)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="launches of the 1-process and of the multi-process setups, alternating (default 3)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=demo.batch_size,
        help=f"GT crops per process and step (default {demo.batch_size}, the demo recipe's)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (default 1: one core each); the all-cores run uses threads x processes",
    )
    parser.add_argument("--processes", type=int, default=2, help="DDP processes (default 2, the cores of this machine)")
    parser.add_argument(
        "--bucket-caps",
        type=parse_cap,
        nargs="+",
        default=[parse_cap(c) for c in DEFAULT_BUCKET_CAPS],
        help="DDP bucket_cap_mb (MiB) of the timed all-reduce runs, 'default' for DDP's "
        f"(default: {' '.join(DEFAULT_BUCKET_CAPS)})",
    )
    parser.add_argument(
        "--flat-repeats", type=int, default=10, help="timed all-reduces of the flat buffer (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights (the images: seed + rank) (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    demo = load_demo_config()
    parser = build_parser(demo)
    args = parser.parse_args(argv)
    for name in ("warmup", "steps", "repeats", "batch_size", "threads", "flat_repeats"):
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
        f"{low}x{low} LQ (random); {args.repeats} launches of each kind, alternating, each {args.steps} interleaved "
        f"rounds after {args.warmup} warm-up"
    )
    print("\n".join(header), flush=True)

    single = [Setup("1 process (baseline)", 1, t), Setup(f"1 process, the {n} processes' cores as threads", 1, t * n)]
    multi = [
        Setup(f"{n} processes, DDP gloo", n, t, sync=True),
        Setup(f"{n} processes, no gradient all-reduce", n, t),
    ]
    multi += [
        Setup(f"{n} processes, DDP gloo, timed hook", n, t, sync=True, bucket_cap_mb=cap, timed_hook=True)
        for cap in args.bucket_caps
    ]
    single_launches: list[list[dict[str, Any]]] = []
    multi_launches: list[list[dict[str, Any]]] = []
    for repeat in range(args.repeats):
        kinds = [(1, single, single_launches), (n, multi, multi_launches)]
        for world_size, setups, results in kinds[::-1] if repeat % 2 else kinds:
            to_stderr(f"launch {repeat + 1} of {args.repeats}: {world_size} process(es), {len(setups)} setups ...")
            results.append(launch(world_size, setups, args))

    def setup_figures(setups: list[Setup], launches: list[list[dict[str, Any]]]) -> list[Figures]:
        return [
            figures(
                setup,
                [[ranks["runs"][index] for ranks in results] for results in launches],
                args.warmup,
                args.batch_size,
            )
            for index, setup in enumerate(setups)
        ]

    baseline, all_cores = setup_figures(single, single_launches)
    ddp, independent, *timed = setup_figures(multi, multi_launches)
    flat = [max(per_rank) for results in multi_launches for per_rank in zip(*(r["flat_all_reduce"] for r in results))]
    flat_ms = Spread.of(1e3 * value for value in flat)

    lines = ["", *throughput_table([baseline, all_cores, ddp, independent], baseline, all_cores), ""]
    lines.append(
        f"- scaling ratio ({n}-process images/s / 1-process images/s, launch by launch), {t} thread(s) per process: "
        f"{scaling(ddp, baseline).text()} (ideal {n}); against 1 process with {t * n} thread(s): "
        f"{scaling(ddp, all_cores).text()}"
    )
    gap = differences(ddp.step_seconds, independent.step_seconds)
    gap_share = Spread.of((d - i) / d for d, i in zip(ddp.step_seconds, independent.step_seconds))
    verdict = compare(ratios(ddp.step_seconds, independent.step_seconds), "DDP faster", "DDP slower")
    lines.append(
        f"- what synchronising the gradients costs, two measures of the same run: (a) DDP step - independent step, "
        f"round by round ({len(gap.values)} pairs): {Spread.of(1e3 * v for v in gap.values).text('.0f', ' ms')}, "
        f"{gap_share.text('.1%')} of the DDP step ({verdict}); (b) the time with an all-reduce in flight, timed by "
        "the hook in the DDP runs of the table below (per step and rank), as a share of the step: "
        + "; ".join(
            f"{bucket_label(run.setup.bucket_cap_mb)} {Spread.of(run.in_flight_share or [0]).text('.1%')}"
            for run in timed
        )
        + ". (b) leaves out what (a) also counts: waiting for the other rank, gloo's threads taking the cores "
        "of the backward, DDP's copies into and out of the buckets"
    )
    lines += ["", *all_reduce_table(timed), ""]
    lines.append(
        f"- one dist.all_reduce of a flat float32 buffer of {gradient_bytes / MIB:.2f} MiB (all the gradients), "
        f"nothing else running: {flat_ms.text('.1f', ' ms')} ({args.flat_repeats} per launch; "
        f"{gradient_bytes / MIB / (flat_ms.median / 1e3):.0f} MiB/s of gradients at the median); "
        f"{flat_ms.median / 1e3 / ddp.steps.median:.1%} of the median DDP step"
    )
    lines += ["", load_after_line()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
