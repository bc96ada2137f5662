"""Benchmark: the papers' official networks against the suite's own U-Nets at the same task.

For each task, the official network (the function the released weights were trained with, at the official
configuration) and the suite's own network of the same widths that the task's recipe used before (SR3's
`UNet`, RDDM's `TwoUNets` / `SharedEncoderUNet`, the SR3-style `UNet` as Denoising-as-Adaptation's D):

- parameters;
- multiply-adds of one network call on one 256 x 256 image (the task's input channels), counted by
  `torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2: convolutions, matrix products and attention, not
  normalisations or element-wise work);
- seconds of that call on this CPU (float32, eval, no_grad, `--threads` torch threads), the pair of a task
  interleaved in `--rounds` rounds after a warm-up round (bench/timing.py); the ratio official / ours is the
  median of the per-round ratios with its min - max, and a verdict only when every round agrees.

A sampler calls the network once per step (SR3 and RDDM) or once per training step (D): the per-call figures
scale with the step count, which the two networks share. DiffIR is not here: its networks were already the
official function (tests/importing/test_diffir_import.py checks them against the official code).

Run from the repository root: `python bench/official_nets.py` (about 3 minutes on 2 idle cores; `--quick`: one
task pair at 128 x 128, one round, under a minute). It prints a markdown table, the command line and the machine
facts; it asserts nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from timing import (  # bench/ is on sys.path when this file runs as a script
    compare,
    cpu_share_line,
    interleave,
    load_after_line,
    machine_facts,
    ratios,
    seconds_list,
    to_stderr,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ir_lightning.nets.guided_diffusion import GuidedDiffusionUNet
from ir_lightning.nets.rddm import SharedEncoderUNet, TwoUNets
from ir_lightning.nets.rddm_official import OfficialSharedEncoderUNet, OfficialTwoUNets
from ir_lightning.nets.sr3_official import SR3ReferenceUNet
from ir_lightning.nets.unet import UNet


@dataclass(frozen=True)
class Task:
    """One task: the official network and ours, both called `net(x, level)` on `channels` input channels."""

    name: str
    channels: int
    official: Callable[[], nn.Module]
    official_label: str
    ours: Callable[[], nn.Module]
    ours_label: str


TASKS = (
    Task(
        "SR3 16->128 (6 ch)",
        6,
        SR3ReferenceUNet,
        "SR3ReferenceUNet (config/sr_sr3_16_128.json)",
        lambda: UNet(6, 3, 64, (1, 2, 4, 8, 8), 2, (3,), 0.2, 32),
        "UNet, the same widths (64, 1-2-4-8-8, 2 blocks, attention at level 3)",
    ),
    Task(
        "RDDM two U-Nets (6 ch)",
        6,
        OfficialTwoUNets,
        "OfficialTwoUNets (share_encoder=0)",
        TwoUNets,
        "TwoUNets (64, 1-2-4-8, 2 blocks, GroupNorm 8, attention at level 3)",
    ),
    Task(
        "RDDM shared encoder (6 ch)",
        6,
        OfficialSharedEncoderUNet,
        "OfficialSharedEncoderUNet (share_encoder=1)",
        SharedEncoderUNet,
        "SharedEncoderUNet (the same widths)",
    ),
    Task(
        "DA diffusion network D (9 ch)",
        9,
        GuidedDiffusionUNet,
        "GuidedDiffusionUNet (Noise-DA options_train.json)",
        lambda: UNet(9, 3, 64, (1, 2, 4, 8), 2, (3,), 0.2, 32),
        "UNet (the recipe's D before: 64, 1-2-4-8, 2 blocks, attention at level 3)",
    ),
)


def parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def call(net: nn.Module, x: torch.Tensor) -> object:
    level = torch.full((x.shape[0],), 0.5)
    with torch.no_grad():
        return net(x, level)


def multiply_adds(net: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        call(net, x)
    return counter.get_total_flops() // 2


def measure(task: Task, size: int, rounds: int) -> list[str]:
    torch.manual_seed(0)
    nets = {"official": task.official().eval(), "ours": task.ours().eval()}
    x = torch.rand(1, task.channels, size, size)
    counts = {name: (parameters(net), multiply_adds(net, x)) for name, net in nets.items()}
    robin = interleave(
        {name: (lambda net=net: call(net, x)) for name, net in nets.items()},
        rounds,
        progress=lambda line: to_stderr(f"{task.name}: {line}"),
    )
    seconds = robin.seconds
    ratio = ratios(seconds["official"], seconds["ours"])
    rows = []
    for name, label in (("official", task.official_label), ("ours", task.ours_label)):
        params, macs = counts[name]
        rows.append(
            f"| {task.name} | {label} | {params / 1e6:.2f} M | {macs / 1e9:.1f} G | {seconds_list(seconds[name])} |"
        )
    official, ours = counts["official"], counts["ours"]
    rows.append(
        f"| {task.name} | official / ours | {official[0] / ours[0]:.2f} | {official[1] / ours[1]:.2f} | "
        f"{ratio.text()} ({compare(ratio)}) |"
    )
    to_stderr(cpu_share_line(robin, torch.get_num_threads()))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side (256)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per task (3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--quick", action="store_true", help="the first task at 128 x 128, one round")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks, size, rounds = (TASKS[:1], 128, 1) if args.quick else (TASKS, args.size, args.rounds)
    lines = [
        f"One network call on a {size} x {size} image (float32, eval, no_grad); seconds per round, "
        "ratios paired by round:",
        "",
        "| task | network | parameters | multiply-adds | seconds |",
        "|---|---|---:|---:|---|",
    ]
    for task in tasks:
        lines.extend(measure(task, size, rounds))
    command = f"python bench/official_nets.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    lines += ["", f"- command: `{command}`"]
    lines += [*machine_facts(), load_after_line()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
