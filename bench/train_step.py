"""Benchmark: seconds per SR3 training step on the CPU, and what Lightning adds to it.

The step is the one of the public SR3 re-implementation's 16->128 setting (U-Net with 64 channels,
multipliers 1,2,4,8,8, 2 residual blocks per level, attention at 16x16, dropout 0.2), batch 4 of
128x128 HR crops whose 32x32 LR images the suite makes by bicubic x4 down-sampling, Adam lr 1e-4,
and SR3's own `training_loss`. Every variant is timed as the median of `--steps` steps after
`--warmup` steps, and compared with the fp32 step measured in the same run:

- fp32 (baseline) and bf16-mixed (`torch.autocast("cpu", dtype=torch.bfloat16)`);
- bf16-mixed with channels_last tensors, and with Adam's fused implementation (by default), or
  its foreach one, or fp32 with fused Adam (`--variants`; torch's CPU default is a per-tensor loop);
- the fp32 step run by a real `lightning.Trainer` (EMAWeightAveraging, `train/loss` logged by the
  suite, a CSVLogger, in-memory batches through the data module's `on_after_batch_transfer`)
  against the same step in a bare loop: overhead share = (trainer - bare) / trainer.

Run from the repository root: `python bench/train_step.py` (`--help` for the settings). It prints
markdown tables for bench/README.md, the command line and the machine facts. It asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules import ShardDataModule
from ir_lightning.degradations import BicubicDownsample, Pipeline
from ir_lightning.methods.sr3 import SR3
from ir_lightning.nets.unet import UNet

REFERENCE_FP32_SECONDS = 11.5
"""Public SR3 re-implementation, this setting: 11.5 s per fp32 step on a 2-core machine."""

TARGET_BF16_SECONDS = REFERENCE_FP32_SECONDS / 2
"""Target for bf16-mixed: twice as fast as the reference fp32 step."""

TARGET_OVERHEAD_SHARE = 0.10
"""Target: Lightning takes less than 10% of a trainer step."""

LEARNING_RATE = 1e-4
"""Adam learning rate of SR3 (sec. 4) and of its public re-implementation."""

EMA_DECAY = 0.999
"""EMA decay of the suite's CPU recipe (recipes/demo/sr3_x4_cpu.yaml)."""

AdamImpl = Literal["for-loop", "foreach", "fused"]


@dataclass(frozen=True)
class Variant:
    """One way to run the same training step."""

    label: str
    bf16: bool = False
    channels_last: bool = False
    adam: AdamImpl = "for-loop"
    base: str | None = None  # the variant this one changes one thing of


DEFAULT_VARIANTS = ("fp32", "bf16", "bf16-cl", "bf16-fused")
"""Timed unless --variants says otherwise (the others are left out to keep the run under 6 minutes)."""

VARIANTS: dict[str, Variant] = {
    "fp32": Variant("fp32 (baseline)"),
    "bf16": Variant("bf16-mixed", bf16=True, base="fp32"),
    "bf16-cl": Variant("bf16-mixed + channels_last", bf16=True, channels_last=True, base="bf16"),
    "bf16-foreach": Variant("bf16-mixed + Adam(foreach=True)", bf16=True, adam="foreach", base="bf16"),
    "bf16-fused": Variant("bf16-mixed + Adam(fused=True)", bf16=True, adam="fused", base="bf16"),
    "fp32-fused": Variant("fp32 + Adam(fused=True)", adam="fused", base="fp32"),
}
"""Variants by command-line name; "fp32" is the baseline, `base` the variant each one is judged against."""


@dataclass(frozen=True)
class Timing:
    """Seconds of each warm-up step and of each timed step of one variant."""

    warmup: list[float]
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def low(self) -> float:
        return min(self.seconds)

    @property
    def high(self) -> float:
        return max(self.seconds)


class InMemoryData(ShardDataModule):
    """The suite's data module with its shard reader replaced by HR crops held in memory.

    Batches still pass through `ShardDataModule.on_after_batch_transfer`, which makes the LR image
    with the degradation pipeline (bicubic x`scale`, quantized to 8 bits), as in training.
    """

    def __init__(self, images: Tensor, batch_size: int, scale: int) -> None:
        degradation = Pipeline(steps=[BicubicDownsample(scale=scale)])
        super().__init__(crop_size=images.shape[-1], batch_size=batch_size, num_workers=0, degradation=degradation)
        self.images = images

    def setup(self, stage: str) -> None:
        """Nothing to expand: there are no shards."""

    def samples(self) -> list[dict[str, Any]]:
        return [{"gt": image, "__key__": f"img{index:05d}"} for index, image in enumerate(self.images)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.samples(), batch_size=self.batch_size, shuffle=False)


class StepTimer(Callback):
    """Records the wall time at the end of every training batch (intervals = whole trainer steps)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/train_step.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant, at least 1 (default 1)")
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per variant; the median is reported (default 3)"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS),
        help=f"bare-loop variants to time (default: {' '.join(DEFAULT_VARIANTS)}; fp32 is always timed, the baseline)",
    )  # fmt: skip
    parser.add_argument("--no-trainer", action="store_true", help="skip the lightning.Trainer overhead measurement")
    parser.add_argument(
        "--trainer-precision", choices=("32-true", "bf16-mixed"), default="32-true",
        help="precision of the Trainer run; it is compared with the bare loop of the same precision (default 32-true)",
    )  # fmt: skip
    parser.add_argument(
        "--logger", choices=("csv", "none"), default="csv", help="logger of the Trainer run (default csv)"
    )
    parser.add_argument(
        "--log-every-n-steps", type=int, default=1,
        help="Trainer log_every_n_steps; 1 = log train/loss every step, the most logging (default 1)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=4, help="HR crops per step (default 4, the public code)")
    parser.add_argument("--size", type=int, default=128, help="HR crop side in pixels (default 128; LR = size / scale)")
    parser.add_argument("--scale", type=int, default=4, help="super-resolution factor (default 4)")
    parser.add_argument("--base-channels", type=int, default=64, help="U-Net channels at the first level (default 64)")
    parser.add_argument(
        "--channel-mults", type=int, nargs="+", default=[1, 2, 4, 8, 8],
        help="U-Net channel multipliers (default 1 2 4 8 8)",
    )  # fmt: skip
    parser.add_argument("--num-res-blocks", type=int, default=2, help="residual blocks per level (default 2)")
    parser.add_argument(
        "--attn-levels", type=int, nargs="*", default=[3], help="levels with self-attention (default 3: 16x16 at 128)"
    )
    parser.add_argument("--dropout", type=float, default=0.2, help="dropout in the residual blocks (default 0.2)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the images (default 0)")
    return parser


def build_model(args: argparse.Namespace) -> SR3:
    """SR3 with the public re-implementation's U-Net (same weights for every variant: reseeded)."""
    torch.manual_seed(args.seed)
    net = UNet(
        base_channels=args.base_channels,
        channel_mults=tuple(args.channel_mults),
        num_res_blocks=args.num_res_blocks,
        attn_levels=tuple(args.attn_levels),
        dropout=args.dropout,
    )
    return SR3(net=net, scale=args.scale, optimizer=adam_factory("for-loop"))


def adam_factory(impl: AdamImpl) -> Callable[[Any], torch.optim.Optimizer]:
    """Adam lr 1e-4 with the chosen implementation (for-loop is torch's default on the CPU)."""
    options = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    return lambda params: torch.optim.Adam(params, lr=LEARNING_RATE, **options)


def hr_images(args: argparse.Namespace, count: int) -> Tensor:
    """`count` HR crops in [0, 1] (content does not change the cost of a step)."""
    generator = torch.Generator().manual_seed(args.seed)
    return torch.rand(count, 3, args.size, args.size, generator=generator)


def time_bare_loop(args: argparse.Namespace, variant: Variant) -> Timing:
    """The step without Lightning: LR by the data module, forward, backward, optimizer step."""
    model = build_model(args).train()
    data = InMemoryData(hr_images(args, args.batch_size * (args.warmup + args.steps)), args.batch_size, args.scale)
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = adam_factory(variant.adam)(model.parameters())
    seconds: list[float] = []
    for batch in data.train_dataloader():
        start = time.perf_counter()
        batch["gt"] = batch["gt"].contiguous(memory_format=memory_format)
        batch = data.on_after_batch_transfer(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
            loss = model.training_loss(batch)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return Timing(seconds[: args.warmup], seconds[args.warmup :])


def time_trainer(args: argparse.Namespace, root: str) -> Timing:
    """The fp32 (or bf16-mixed) step run by lightning.Trainer with the suite's callbacks and logging."""
    model = build_model(args)
    steps = args.warmup + args.steps
    data = InMemoryData(hr_images(args, args.batch_size * steps), args.batch_size, args.scale)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=args.trainer_precision,
        max_steps=steps,
        callbacks=[EMAWeightAveraging(decay=EMA_DECAY), timer],
        logger=CSVLogger(root, name="train_step") if args.logger == "csv" else False,
        log_every_n_steps=args.log_every_n_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=data)
    # the end of the first warm-up step starts the clock: its own duration includes the fit's setup
    intervals = [later - earlier for earlier, later in zip(timer.ends, timer.ends[1:])]
    return Timing(intervals[: args.warmup - 1], intervals[args.warmup - 1 :])


def machine_line() -> str:
    """The CPU, the cores this process may use and the load average (other jobs on the machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"- machine: {cpu_model()}, {cores} usable cores ({os.cpu_count()} online), load average {load} (1/5/15 min)"


def machine_facts() -> list[str]:
    return [
        machine_line(),
        f"- software: Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads, CPU capability {torch.backends.cpu.get_cpu_capability()}), "
        f"lightning {lightning.__version__}",
    ]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def effect(timing: Timing, reference: Timing) -> str:
    """'helped' if the median beats the reference's fastest step, 'hurt' if it is slower than its slowest."""
    change = timing.median / reference.median - 1
    if timing.median < reference.low:
        verdict = "helped"
    elif timing.median > reference.high:
        verdict = "hurt"
    else:
        verdict = "no clear change"
    return f"{verdict} ({change:+.0%})"


def seconds_list(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values) or "-"


def variant_table(timings: dict[str, Timing]) -> list[str]:
    baseline = timings["fp32"]
    lines = [
        "| variant | s/step (median) | timed steps (s) | warm-up (s) | speed-up vs fp32 "
        f"| / reference {REFERENCE_FP32_SECONDS} s | vs its base |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, timing in timings.items():
        base = VARIANTS[name].base
        versus_base = f"{effect(timing, timings[base])} vs {base}" if base in timings else ""
        lines.append(
            f"| {VARIANTS[name].label} | {timing.median:.2f} | {seconds_list(timing.seconds)} "
            f"| {seconds_list(timing.warmup)} | {baseline.median / timing.median:.2f}x "
            f"| {timing.median / REFERENCE_FP32_SECONDS:.2f} | {versus_base} |"
        )
    return lines


def overhead_table(bare: Timing, trainer: Timing, args: argparse.Namespace) -> list[str]:
    share = overhead_share(bare, trainer)
    logger = "CSVLogger" if args.logger == "csv" else "no logger"
    return [
        f"| {args.trainer_precision} step | s/step (median) | timed steps (s) |",
        "|---|---:|---:|",
        f"| bare loop | {bare.median:.2f} | {seconds_list(bare.seconds)} |",
        f"| lightning.Trainer (EMA, {logger}, log every {args.log_every_n_steps}) "
        f"| {trainer.median:.2f} | {seconds_list(trainer.seconds)} |",
        f"| overhead share (trainer - bare) / trainer | {share:.1%} | |",
    ]


def overhead_share(bare: Timing, trainer: Timing) -> float:
    return (trainer.median - bare.median) / trainer.median  # share of a trainer step that Lightning adds


def target_table(timings: dict[str, Timing], share: float | None) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    lines = ["| target | measured | |", "|---|---:|---|"]
    fp32 = timings["fp32"].median
    fp32_met = verdict(fp32 <= REFERENCE_FP32_SECONDS)
    lines.append(f"| fp32 <= {REFERENCE_FP32_SECONDS} s/step | {fp32:.2f} s | {fp32_met} |")
    bf16_names = [name for name in timings if name.startswith("bf16")]
    if bf16_names:
        best = min(bf16_names, key=lambda name: timings[name].median)
        seconds = timings[best].median
        lines.append(
            f"| bf16-mixed <= {TARGET_BF16_SECONDS} s/step | {seconds:.2f} s ({VARIANTS[best].label}) "
            f"| {verdict(seconds <= TARGET_BF16_SECONDS)} |"
        )
    if share is not None:
        share_met = verdict(share < TARGET_OVERHEAD_SHARE)
        lines.append(f"| Lightning overhead < {TARGET_OVERHEAD_SHARE:.0%} | {share:.1%} | {share_met} |")
    return lines


def quiet_lightning() -> None:
    """Keep Lightning's banner lines, its few-workers hint and a torch deprecation notice out of the output."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    # lightning 2.6.6 calls torch's deprecated LeafSpec (torch >= 2.10 warns; harmless)
    warnings.filterwarnings("ignore", category=FutureWarning, module="lightning.pytorch.utilities._pytree")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    header = ["## SR3 training step (bench/train_step.py)", "", f"- command: `{shlex.join(['python', *sys.argv])}`"]
    header += machine_facts()
    model = build_model(args)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    header.append(
        f"- step: UNet({args.base_channels} ch, mults {tuple(args.channel_mults)}, {args.num_res_blocks} res blocks, "
        f"attention at levels {tuple(args.attn_levels)}, dropout {args.dropout}; {parameters:.1f} M parameters), "
        f"batch {args.batch_size}, HR {args.size}x{args.size}, LR {args.size // args.scale}x{args.size // args.scale}, "
        f"Adam lr {LEARNING_RATE}, SR3 training_loss; median of {args.steps} steps after {args.warmup} warm-up"
    )
    header.append(f"- reference: public re-implementation: {REFERENCE_FP32_SECONDS} s/step fp32 on a 2-core machine")
    print("\n".join(header), flush=True)

    names = ["fp32"] + [name for name in args.variants if name != "fp32"]
    if not args.no_trainer and args.trainer_precision == "bf16-mixed" and "bf16" not in names:
        names.insert(1, "bf16")
    timings: dict[str, Timing] = {}
    for name in names:
        print(f"timing {VARIANTS[name].label} ...", file=sys.stderr, flush=True)
        timings[name] = time_bare_loop(args, VARIANTS[name])

    share = None
    lines = ["", *variant_table(timings)]
    if not args.no_trainer:
        print("timing lightning.Trainer ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as root:
            trainer = time_trainer(args, root)
        bare = timings["fp32" if args.trainer_precision == "32-true" else "bf16"]
        share = overhead_share(bare, trainer)
        lines += ["", *overhead_table(bare, trainer, args)]
    lines += ["", *target_table(timings, share)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
