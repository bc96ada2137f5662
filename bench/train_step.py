"""Benchmark: seconds per SR3 training step on the CPU, and what Lightning adds to it.

The step is the one of the public SR3 re-implementation's 16->128 setting (U-Net with 64 channels,
multipliers 1,2,4,8,8, 2 residual blocks per level, attention at 16x16, dropout 0.2), batch 4 of
128x128 HR crops whose 32x32 LR images the suite makes by bicubic x4 down-sampling, Adam lr 1e-4,
and SR3's own `training_loss`. Variants (`--variants`):

- fp32 (the baseline) and bf16-mixed (`torch.autocast("cpu", dtype=torch.bfloat16)`);
- bf16-mixed with channels_last tensors, and with Adam's fused implementation (by default), or
  its foreach one, or fp32 with fused Adam (torch's CPU default is a per-tensor loop);
- the fp32 step run by a real `lightning.Trainer` (EMAWeightAveraging, `train/loss` logged by the
  suite, a CSVLogger, in-memory batches through the data module's `on_after_batch_transfer`)
  against the same step in a bare loop: overhead share = (trainer - bare) / trainer.

Every variant has its own model (the same seeded weights) and optimizer, all alive at once, and
they run interleaved: one round is one step of each (the Trainer's step first, then the bare
variants, in reverse order every other round), `--warmup` untimed rounds then `--rounds` timed
ones. Each ratio is taken per round (the pairs), against the fp32 step of the same round, and shown
as the median with its min - max over the rounds; a verdict ("helped", "hurt", "met", "not met")
is given only when every pair agrees, else "no clear difference" (bench/timing.py).

Run from the repository root: `python bench/train_step.py` (about 2.5 minutes and 13 GB on 2 idle cores;
`--rounds 10` for a tighter spread; `--help` for the settings). It prints markdown tables for
bench/README.md, the command line and the machine facts. It asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import shlex
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
from timing import (  # bench/ is on sys.path when this file runs as a script
    RoundRobin,
    Spread,
    against_target,
    compare,
    cpu_share_line,
    load_after_line,
    machine_facts,
    ratios,
    seconds_list,
    to_stderr,
)
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules import ShardDataModule
from ir_lightning.degradations import BicubicDownsample, Pipeline
from ir_lightning.methods.sr3 import SR3
from ir_lightning.nets.unet import UNet

TARGET_BF16_SPEEDUP = 2.0
"""Target: a bf16-mixed step at least twice as fast as the fp32 step of the same run."""

TARGET_OVERHEAD_SHARE = 0.10
"""Target: Lightning takes less than 10% of a trainer step."""

LEARNING_RATE = 1e-4
"""Adam learning rate of SR3 (sec. 4) and of its public re-implementation."""

EMA_DECAY = 0.999
"""EMA decay of the suite's CPU recipe (recipes/demo/sr3_x4_cpu.yaml)."""

BATCHES = 2
"""Distinct in-memory batches each variant cycles through (content does not change a step's cost)."""

TRAINER = "trainer"
"""The name of the lightning.Trainer's step among the timed cases."""

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
"""Timed unless --variants says otherwise."""

VARIANTS: dict[str, Variant] = {
    "fp32": Variant("fp32 (baseline)"),
    "bf16": Variant("bf16-mixed", bf16=True, base="fp32"),
    "bf16-cl": Variant("bf16-mixed + channels_last", bf16=True, channels_last=True, base="bf16"),
    "bf16-foreach": Variant("bf16-mixed + Adam(foreach=True)", bf16=True, adam="foreach", base="bf16"),
    "bf16-fused": Variant("bf16-mixed + Adam(fused=True)", bf16=True, adam="fused", base="bf16"),
    "fp32-fused": Variant("fp32 + Adam(fused=True)", adam="fused", base="fp32"),
}
"""Variants by command-line name; "fp32" is the baseline, `base` the variant each one is judged against."""


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


class BareLoop:
    """One variant's step without Lightning: LR by the data module, forward, backward, optimizer step.

    Holds its own model (seeded: the same weights as every other variant), optimizer and batches.
    """

    def __init__(self, args: argparse.Namespace, variant: Variant) -> None:
        self.variant = variant
        self.memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
        self.model = build_model(args).train().to(memory_format=self.memory_format)
        self.optimizer = adam_factory(variant.adam)(self.model.parameters())
        self.data = InMemoryData(hr_images(args, args.batch_size * BATCHES), args.batch_size, args.scale)
        self.batches = list(self.data.train_dataloader())
        self.steps = 0

    def step(self) -> None:
        batch = dict(self.batches[self.steps % len(self.batches)])
        self.steps += 1
        batch["gt"] = batch["gt"].contiguous(memory_format=self.memory_format)
        with torch.enable_grad():  # also when a Trainer's callback runs it
            batch = self.data.on_after_batch_transfer(batch, 0)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.variant.bf16):
                loss = self.model.training_loss(batch)
            loss.backward()
            self.optimizer.step()


class Rounds(Callback):
    """Runs one round of the bare variants after every trainer step, and times the trainer's steps.

    A trainer step's time runs from the end of the previous round's bare steps to the end of this
    training batch (`on_train_batch_end`, after the EMA update, which comes earlier in the callback
    list): the batch fetch, the hooks, the logging of the previous step and the optimizer step.
    The first trainer step (it includes the fit's setup) is not timed.
    """

    def __init__(self, robin: RoundRobin) -> None:
        self.robin = robin
        self.batch_ends: list[float] = []
        self.round_ends: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.batch_ends.append(time.perf_counter())
        self.robin.run_round()
        self.round_ends.append(time.perf_counter())

    def trainer_seconds(self) -> list[float]:
        """Seconds of trainer step r for r = 1, 2, ... (step 0 has no previous round to start from)."""
        return [end - previous for previous, end in zip(self.round_ends, self.batch_ends[1:])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/train_step.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds, at least 1 (default 1)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="timed rounds (one step of every variant each); medians and spreads over them (default 5)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(DEFAULT_VARIANTS),
        help=f"bare-loop variants to time (default: {' '.join(DEFAULT_VARIANTS)}; fp32 is always timed, the baseline)",
    )
    parser.add_argument("--no-trainer", action="store_true", help="skip the lightning.Trainer overhead measurement")
    parser.add_argument(
        "--trainer-precision",
        choices=("32-true", "bf16-mixed"),
        default="32-true",
        help="precision of the Trainer run; it is compared with the bare loop of the same precision (default 32-true)",
    )
    parser.add_argument(
        "--logger", choices=("csv", "none"), default="csv", help="logger of the Trainer run (default csv)"
    )
    parser.add_argument(
        "--log-every-n-steps",
        type=int,
        default=1,
        help="Trainer log_every_n_steps; 1 = log train/loss every step, the most logging (default 1)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="HR crops per step (default 4, the public code)")
    parser.add_argument("--size", type=int, default=128, help="HR crop side in pixels (default 128; LR = size / scale)")
    parser.add_argument("--scale", type=int, default=4, help="super-resolution factor (default 4)")
    parser.add_argument("--base-channels", type=int, default=64, help="U-Net channels at the first level (default 64)")
    parser.add_argument(
        "--channel-mults",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 8],
        help="U-Net channel multipliers (default 1 2 4 8 8)",
    )
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


def run_with_trainer(args: argparse.Namespace, robin: RoundRobin, root: str) -> list[float]:
    """Fit `warmup + rounds` steps with lightning.Trainer, one bare round after each; the trainer's seconds of
    the timed rounds (paired by index with the bare variants' `robin.seconds`)."""
    model = build_model(args)
    steps = args.warmup + args.rounds
    data = InMemoryData(hr_images(args, args.batch_size * steps), args.batch_size, args.scale)
    rounds = Rounds(robin)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=args.trainer_precision,
        max_steps=steps,
        callbacks=[EMAWeightAveraging(decay=EMA_DECAY), rounds],
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
    seconds = rounds.trainer_seconds()  # steps 1 .. steps - 1; step r pairs with round r
    return seconds[args.warmup - 1 :]


def variant_table(robin: RoundRobin) -> list[str]:
    times = robin.seconds
    lines = [
        "| variant | s/step, median (min - max) | timed steps (s), round by round | warm-up (s) "
        "| speed-up vs fp32 per round, median (min - max) | time / its base's per round, median (min - max) "
        "| vs its base |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for name in times:
        base = VARIANTS[name].base
        if base in times:
            against_base = ratios(times[name], times[base])
            base_cells = f"{against_base.text()} | {compare(against_base, 'helped', 'hurt')} vs {base}"
        else:
            base_cells = " | "
        speedup = "1x (the baseline)" if name == "fp32" else ratios(times["fp32"], times[name]).text(unit="x")
        lines.append(
            f"| {VARIANTS[name].label} | {Spread.of(times[name]).text()} | {seconds_list(times[name])} "
            f"| {seconds_list(robin.warmup_seconds[name])} | {speedup} | {base_cells} |"
        )
    return lines


def overhead_table(bare_name: str, bare: list[float], trainer: list[float], args: argparse.Namespace) -> list[str]:
    logger = "CSVLogger" if args.logger == "csv" else "no logger"
    shares = overhead_shares(bare, trainer)
    trainer_over_bare = ratios(trainer, bare)
    return [
        f"| {args.trainer_precision} step | s/step, median (min - max) | timed steps (s), round by round |",
        "|---|---:|---|",
        f"| bare loop ({bare_name}) | {Spread.of(bare).text()} | {seconds_list(bare)} |",
        f"| lightning.Trainer (EMA, {logger}, log every {args.log_every_n_steps}) "
        f"| {Spread.of(trainer).text()} | {seconds_list(trainer)} |",
        f"| trainer / bare, per round | {trainer_over_bare.text(unit='x')} "
        f"| {compare(trainer_over_bare, 'trainer faster', 'trainer slower')} |",
        f"| overhead share (trainer - bare) / trainer, per round | {shares.text('.1%')} | |",
    ]


def overhead_shares(bare: list[float], trainer: list[float]) -> Spread:
    """Per round: the share of a trainer step that Lightning adds."""
    return Spread.of((t - b) / t for t, b in zip(trainer, bare))


def target_table(times: dict[str, list[float]], shares: Spread | None) -> list[str]:
    lines = [
        "| target (same-run baseline) | measured per round, median (min - max) | verdict (every round agrees) |",
        "|---|---:|---|",
    ]
    for name in times:
        if VARIANTS[name].bf16:
            speedup = ratios(times["fp32"], times[name])
            lines.append(
                f"| {VARIANTS[name].label}: at least {TARGET_BF16_SPEEDUP:g}x the speed of fp32 "
                f"| {speedup.text(unit='x')} | {against_target(speedup, TARGET_BF16_SPEEDUP, at_least=True)} |"
            )
    if shares is not None:
        lines.append(
            f"| Lightning overhead < {TARGET_OVERHEAD_SHARE:.0%} of a trainer step | {shares.text('.1%')} "
            f"| {against_target(shares, TARGET_OVERHEAD_SHARE, at_least=False)} |"
        )
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
    if args.warmup < 1 or args.rounds < 1:
        parser.error("--warmup and --rounds must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    header = ["## SR3 training step (bench/train_step.py)", "", f"- command: `{shlex.join(['python', *sys.argv])}`"]
    header += machine_facts(f"lightning {lightning.__version__}")
    model = build_model(args)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    header.append(
        f"- step: UNet({args.base_channels} ch, mults {tuple(args.channel_mults)}, {args.num_res_blocks} res blocks, "
        f"attention at levels {tuple(args.attn_levels)}, dropout {args.dropout}; {parameters:.1f} M parameters), "
        f"batch {args.batch_size}, HR {args.size}x{args.size}, LR {args.size // args.scale}x{args.size // args.scale}, "
        f"Adam lr {LEARNING_RATE}, SR3 training_loss; {args.rounds} interleaved rounds after {args.warmup} warm-up"
    )
    print("\n".join(header), flush=True)

    names = ["fp32"] + [name for name in args.variants if name != "fp32"]
    bare_name = "fp32" if args.trainer_precision == "32-true" else "bf16"
    if not args.no_trainer and bare_name not in names:
        names.insert(1, bare_name)
    to_stderr(f"building {len(names)} models ...")
    loops = {name: BareLoop(args, VARIANTS[name]) for name in names}
    robin = RoundRobin({name: loop.step for name, loop in loops.items()}, warmup=args.warmup, progress=to_stderr)
    trainer = None
    if args.no_trainer:
        for _ in range(args.warmup + args.rounds):
            robin.run_round()
    else:
        with tempfile.TemporaryDirectory() as root:
            trainer = run_with_trainer(args, robin, root)

    shares = None
    lines = ["", *variant_table(robin)]
    if trainer is not None:
        bare = robin.seconds[bare_name]
        shares = overhead_shares(bare, trainer)
        lines += ["", *overhead_table(bare_name, bare, trainer, args)]
    lines += [
        "",
        *target_table(robin.seconds, shares),
        "",
        cpu_share_line(robin, torch.get_num_threads()) + " (the bare variants' steps)",
        load_after_line(),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
