"""Benchmark: what one x4 super-resolution (LQ 64 x 64 -> 256 x 256) costs with DiffIR, SR3 and RDDM.

DiffIR's claim to efficiency is that its diffusion runs on a 256-d prior vector (the IPR) for 4
steps, so the large network, the DIRformer, runs once; SR3 and RDDM run their U-Net once per
sampling step at the output's full size. This script measures, for one 256 x 256 output image:

1. DiffIR stage 2 (`DiffIRS2.restore`) with the real-SR x4 networks of
   recipes/diffir_s2_realsr_x4.yaml (DIRformer dim 64, blocks 13,1,1,1, 13 refinement blocks;
   CPEN_S2 with 9 residual blocks; the IPR denoiser; 4 prior steps);
2. SR3 (`SR3.restore`) with DDIM, 50 steps, and a U-Net of about DiffIR's size (`COMPARABLE_UNET`);
3. RDDM (`RDDM.restore`), 5 steps, the same U-Net with two output heads (`TwoHeadUNet`).

For each: parameters of the networks that restoration runs; multiply-adds of the whole
restoration, counted by `torch.utils.flop_counter.FlopCounterMode` (FLOPs = 2 x MACs of
convolutions, matrix products and attention, not of normalisations, activations or other
element-wise work): DiffIR's whole restoration under the counter; for SR3 and RDDM one network call
under the counter times the calls the sampler makes (a forward hook counts them and checks that
every call has the same input shapes, so the product is the whole sampler's count); the number of
network calls; seconds on this CPU, never under the counter. The three restorations run
interleaved, `--rounds` rounds of DiffIR, RDDM, SR3 (reversed every other round) after a warm-up
(one DiffIR restoration and one call of each U-Net); each round gives the ratios to DiffIR's seconds
of the same round, shown as the median with its min - max (bench/timing.py).

For reference, without timing: SR3 with the U-Net of recipes/sr3_x4.yaml (the paper's 64 -> 256
setting), RDDM with the two U-Nets of recipes/rddm_sr_x4.yaml, and DiffIR on a 256 x 256 LQ
(-> 1024 x 1024), counted as one call of each network on the `meta` device (no memory, no
arithmetic) times the number of calls the sampler makes.

All in float32, eval mode, under `torch.no_grad`, on 2 torch threads, with seeded weights and
inputs (the cost does not depend on the weights: untrained networks do the same arithmetic).

Run from the repository root: `python bench/diffir_cost.py` (about 3 minutes on 2 idle cores, most
of it SR3's 50 steps, twice; `--rounds 4` for a tighter spread; `--quick`: under a minute, 2 steps
of SR3 and of RDDM, one round). It prints markdown
tables for bench/README.md, the command line and the machine facts. It asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from timing import (  # bench/ is on sys.path when this file runs as a script
    Spread,
    cpu_share_line,
    interleave,
    load_after_line,
    machine_facts,
    ratios,
    seconds_list,
    to_stderr,
)
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ir_lightning.methods import RDDM, SR3, DiffIRS2, Sampling
from ir_lightning.nets.diffir import IPR_DIM
from ir_lightning.nets.rddm import TwoHeadUNet
from ir_lightning.nets.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
DIFFIR_RECIPE = ROOT / "recipes" / "diffir_s2_realsr_x4.yaml"
SR3_RECIPE = ROOT / "recipes" / "sr3_x4.yaml"
RDDM_RECIPE = ROOT / "recipes" / "rddm_sr_x4.yaml"

SCALE = 4
LQ_SIZE = 64
"""x4 super-resolution of a 64 x 64 LQ image: one 256 x 256 output, SR3's 64 -> 256 setting."""

COMPARABLE_UNET: dict[str, Any] = dict(base_channels=64, channel_mults=(1, 2, 4, 4), num_res_blocks=2, attn_levels=(3,))
"""The U-Net of about DiffIR's size: 26.6 M parameters against DiffIR's 25.0 M at inference.

The suite's generic U-Net (64 channels, multipliers 1,2,4,8, 2 residual blocks a level) has
64.4 M; capping the deepest level at 4 x 64 channels instead of 8 x 64 brings it to 26.6 M and
keeps its depth, its residual blocks and its width at full resolution. Attention at level 3 (32 x 32 for a 256 x 256
image) and at the bottleneck. SR3 uses it with GroupNorm 32 (the paper's), RDDM with GroupNorm 8
(its official code's) and two output heads; the group count changes neither parameters nor MACs.
"""

PAPER_DIFFIR_TMACS = 0.74
PAPER_LDM_TMACS = 37.25
"""The DiffIR paper's real-world SR comparison: 0.74 T multiply-adds for DiffIR against 37.25 T for LDM."""

aten = torch.ops.aten


# --- counting -------------------------------------------------------------------------------------
def attention_flops(
    query: Sequence[int], key: Sequence[int], value: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of softmax(Q K^T) V: two batched products, (L_q x d) (d x L_k) and (L_q x L_k) (L_k x d_v).

    On the CPU `F.scaled_dot_product_attention` runs `_scaled_dot_product_flash_attention_for_cpu`,
    which FlopCounterMode does not know (it would count 0 for the U-Nets' self-attention); on the
    meta device it decomposes into two `bmm`s, which it counts as this formula does.
    """
    *batch, length_q, depth = query
    length_k, depth_v = key[-2], value[-1]
    return 2 * int(torch.Size(batch).numel()) * length_q * length_k * (depth + depth_v)


@dataclass
class Count:
    """Multiply-adds of one run, split by the outermost network that made them, and calls per network."""

    macs: int
    macs_by_network: dict[str, int]
    calls: dict[str, int] = field(default_factory=dict)


@contextmanager
def counting(networks: dict[str, nn.Module]) -> Iterator[Count]:
    """Count the MACs (FLOPs / 2) of everything run inside the block, and the calls of `networks`."""
    count = Count(0, {}, {name: 0 for name in networks})

    def called(name: str) -> Callable[..., None]:
        return lambda _module, _args: count.calls.update({name: count.calls[name] + 1})

    hooks = [net.register_forward_pre_hook(called(name)) for name, net in networks.items()]
    cpu_attention = {aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention)
    try:
        with counter:
            yield count
    finally:
        for hook in hooks:
            hook.remove()
    flops = counter.get_flop_counts()
    count.macs = counter.get_total_flops() // 2
    labels = {type(net).__name__: name for name, net in networks.items()}  # the counter names a network by its class
    outermost = {name: ops for name, ops in flops.items() if name != "Global" and "." not in name}
    count.macs_by_network = {labels.get(name, name): sum(ops.values()) // 2 for name, ops in outermost.items()}


def meta_call_macs(build: Callable[[], nn.Module], *inputs: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, MACs of one call) of a network built and run on the meta device: no memory, no arithmetic.
    `inputs` are the shapes of the tensor arguments."""
    with torch.device("meta"), torch.no_grad():
        net = build()
        with counting({}) as count:
            net(*(torch.empty(shape) for shape in inputs))
    return n_parameters(net), count.macs


def n_parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


# --- calls ----------------------------------------------------------------------------------------
class CallCounter:
    """Counts the calls of a network and the input shapes of each (a forward pre-hook; costs nothing that
    shows in seconds)."""

    def __init__(self, net: nn.Module) -> None:
        self.shapes: list[tuple[tuple[int, ...], ...]] = []
        self.handle = net.register_forward_pre_hook(self.called)

    def called(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.shapes.append(tuple(tuple(a.shape) for a in args if isinstance(a, Tensor)))

    def calls_since(self, start: int) -> list[tuple[tuple[int, ...], ...]]:
        return self.shapes[start:]


# --- the recipes ------------------------------------------------------------------------------------
def recipe_entry(recipe: Path, dotted: str) -> Any:
    """recipe['a']['b'] for 'a.b', or an error naming the key and the file."""
    try:
        value: Any = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except OSError as error:
        raise SystemExit(f"bench/diffir_cost.py: cannot read the recipe {recipe}: {error}") from error
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise SystemExit(f"bench/diffir_cost.py: key '{dotted}' not found in {recipe}")
        value = value[key]
    return value


def recipe_object(recipe: Path, dotted: str) -> tuple[type, dict[str, Any]]:
    """The class and init_args of the `class_path`/`init_args` entry `dotted` (e.g. model.init_args.net)."""
    value = recipe_entry(recipe, dotted)
    if not isinstance(value, dict) or "class_path" not in value:
        raise SystemExit(f"bench/diffir_cost.py: '{dotted}' in {recipe} has no class_path")
    module_name, _, class_name = value["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name), dict(value.get("init_args", {}))


def recipe_net(recipe: Path, dotted: str) -> Callable[[], nn.Module]:
    """A builder of the network a recipe gives at `dotted` (its class_path with its init_args)."""
    cls, init_args = recipe_object(recipe, dotted)
    return lambda: cls(**init_args)


def build_diffir(seed: int) -> DiffIRS2:
    """DiffIR stage 2 with the real-SR x4 networks of the recipe (CPEN_S1, the training-time teacher,
    with them: the module needs one, restoration never calls it)."""
    torch.manual_seed(seed)
    names = ("restorer", "cpen_s1", "cpen_s2", "denoiser")
    nets = {name: recipe_net(DIFFIR_RECIPE, f"model.init_args.{name}")() for name in names}
    prior_schedule = recipe_entry(DIFFIR_RECIPE, "model.init_args.prior_schedule")
    return DiffIRS2(**nets, prior_schedule=prior_schedule, scale=SCALE).eval()


def comparable_unet(**overrides: Any) -> dict[str, Any]:
    return {**COMPARABLE_UNET, "in_channels": 6, "dropout": 0.0, **overrides}


# --- the measurements --------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    network: str
    params: int
    calls: str
    macs: int
    seconds: list[float] | None = None  # the whole restoration, round by round (None: not timed)
    n_calls: int = 0  # network calls of one restoration (samplers)


@dataclass
class Method:
    """One restoration to count and time: `restore()` returns the restored image."""

    row: Row
    restore: Callable[[], Tensor]
    counter: CallCounter | None = None  # samplers: the U-Net's calls


def diffir_method(lq: Tensor, args: argparse.Namespace) -> tuple[Method, Count, DiffIRS2]:
    """DiffIR stage 2, its MACs counted over one whole restoration (after one warm-up restoration)."""
    model = build_diffir(args.seed)
    networks = {"DIRformer": model.restorer, "CPEN_S2": model.cpen_s2, "IPR denoiser": model.denoiser}

    def restore() -> Tensor:
        return model.restore(lq)

    restore()  # warm-up
    with counting(networks) as count:
        out = restore()
    check_output(out, "DiffIR")
    calls = ", ".join(f"{name} x{n}" for name, n in count.calls.items())
    row = Row(
        f"DiffIR S2 ({model.gammas.numel()} prior steps)",
        "DIRformer + CPEN_S2 + IPR denoiser",
        n_parameters(*networks.values()),
        calls,
        count.macs,
    )
    return Method(row, restore), count, model


def sampler_method(
    label: str, network: str, net: nn.Module, restore: Callable[[], Tensor], one_call: Callable[[], Tensor]
) -> Method:
    """A sampler whose every step calls `net` once: one call counted (after one warm-up call); the calls of
    the whole sampler are counted by a hook when it runs (`finish_sampler` multiplies)."""
    one_call()  # warm-up
    with counting({"U-Net": net}) as count:
        one_call()
    row = Row(label, network, n_parameters(net), "", count.macs)  # per call until finish_sampler
    return Method(row, restore, CallCounter(net))


def finish_sampler(method: Method, call_shape: tuple[tuple[int, ...], ...], rounds: int) -> None:
    """The sampler's calls per restoration (from its hook) and its MACs = calls x one call's MACs, after
    checking that every call had the shapes of the counted one."""
    assert method.counter is not None
    shapes = method.counter.shapes
    if len(shapes) % rounds or any(shape != call_shape for shape in shapes):
        raise SystemExit(
            f"bench/diffir_cost.py: {method.row.label}: {len(shapes)} calls in {rounds} restorations, "
            f"shapes {sorted(set(shapes))}; expected the same number each time, all {call_shape}"
        )
    method.row.n_calls = len(shapes) // rounds
    method.row.calls = f"U-Net x{method.row.n_calls}"
    method.row.macs *= method.row.n_calls
    method.counter.handle.remove()


def check_output(out: Tensor, label: str) -> None:
    expected = (1, 3, LQ_SIZE * SCALE, LQ_SIZE * SCALE)
    if tuple(out.shape) != expected or not bool(torch.isfinite(out).all()):
        raise SystemExit(
            f"bench/diffir_cost.py: {label} restored a {tuple(out.shape)} image (finite: "
            f"{bool(torch.isfinite(out).all())}); expected a finite {expected}"
        )


def describe_unet(recipe: Path) -> str:
    cls, init_args = recipe_object(recipe, "model.init_args.net")
    return (
        f"{cls.__name__} of {recipe.name} ({init_args['base_channels']} ch, "
        f"x{','.join(map(str, init_args['channel_mults']))}, {init_args['num_res_blocks']} res)"
    )


def reference_rows(sr3_steps: int, rddm_steps: int, prior_steps: int) -> list[Row]:
    """Counted on the meta device: one call of each network times the calls the sampler makes."""
    size = LQ_SIZE * SCALE
    rows = []
    for label, recipe, steps in (
        (f"SR3 DDIM {sr3_steps}, recipe net", SR3_RECIPE, sr3_steps),
        (f"RDDM {rddm_steps} steps, recipe net", RDDM_RECIPE, rddm_steps),
    ):
        params, macs = meta_call_macs(recipe_net(recipe, "model.init_args.net"), (1, 6, size, size), (1,))
        rows.append(Row(label, describe_unet(recipe), params, f"net x{steps}", macs * steps))
    big = 4 * LQ_SIZE  # an LQ 4 times larger a side: 1024 x 1024 out
    restorer = meta_call_macs(recipe_net(DIFFIR_RECIPE, "model.init_args.restorer"), (1, 3, big, big), (1, IPR_DIM))
    cpen_s2 = meta_call_macs(recipe_net(DIFFIR_RECIPE, "model.init_args.cpen_s2"), (1, 3, big, big))
    denoiser = meta_call_macs(recipe_net(DIFFIR_RECIPE, "model.init_args.denoiser"), (1, IPR_DIM), (1,), (1, IPR_DIM))
    rows.append(
        Row(
            f"DiffIR S2, LQ {big} x {big} -> {big * SCALE} x {big * SCALE}",
            "DIRformer + CPEN_S2 + IPR denoiser",
            restorer[0] + cpen_s2[0] + denoiser[0],
            f"DIRformer x1, CPEN_S2 x1, IPR denoiser x{prior_steps}",
            restorer[1] + cpen_s2[1] + prior_steps * denoiser[1],
        )
    )
    return rows


# --- the report ------------------------------------------------------------------------------------------
def giga(macs: int) -> str:
    return f"{macs / 1e9:,.1f}" if macs >= 1e8 else f"{macs / 1e9:.4f}"


def table(rows: list[Row], baseline: Row) -> list[str]:
    lines = [
        "| method | networks | parameters | network calls | MACs (G) | MACs / DiffIR | s / image, median (min - max) "
        "| s / DiffIR's s, per round | s / network call (median) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        secs = ratio = call = ""
        if row.seconds is not None and baseline.seconds is not None:
            secs = Spread.of(row.seconds).text()
            ratio = "1x (the baseline)" if row is baseline else ratios(row.seconds, baseline.seconds).text(".1f", "x")
            call = f"{Spread.of(row.seconds).median / row.n_calls:.2f}" if row.n_calls else ""
        lines.append(
            f"| {row.label} | {row.network} | {row.params / 1e6:.1f} M | {row.calls} | {giga(row.macs)} "
            f"| {row.macs / baseline.macs:.1f}x | {secs} | {ratio} | {call} |"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="timed rounds, each one restoration of DiffIR, RDDM and SR3, interleaved (default 2)",
    )
    parser.add_argument("--sr3-steps", type=int, default=50, help="DDIM steps of SR3")
    parser.add_argument("--rddm-steps", type=int, default=5, help="sampling steps of RDDM")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the LQ image")
    parser.add_argument("--quick", action="store_true", help="smoke run: --rounds 1, 2 steps of SR3 and RDDM")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.rounds, args.sr3_steps, args.rddm_steps = 1, 2, 2
    if args.rounds < 1 or args.sr3_steps < 1 or args.rddm_steps < 1:
        raise SystemExit("bench/diffir_cost.py: --rounds, --sr3-steps and --rddm-steps must be at least 1")
    torch.set_num_threads(args.threads)
    header = [
        "## DiffIR inference cost (bench/diffir_cost.py)",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        *machine_facts("float32, eval, no_grad"),
        f"- one image: LQ {LQ_SIZE} x {LQ_SIZE} -> {LQ_SIZE * SCALE} x {LQ_SIZE * SCALE} (x{SCALE}), batch 1; "
        f"{args.rounds} interleaved rounds of DiffIR, RDDM, SR3; seconds never under the MAC counter",
    ]
    print("\n".join(header), flush=True)
    torch.manual_seed(args.seed)
    lq = torch.rand(1, 3, LQ_SIZE, LQ_SIZE, generator=torch.Generator().manual_seed(args.seed))
    size = LQ_SIZE * SCALE
    with torch.no_grad():
        diffir, diffir_count, diffir_model = diffir_method(lq, args)

        torch.manual_seed(args.seed)
        sampling = Sampling(steps=args.sr3_steps, sampler="ddim")
        sr3 = SR3(net=UNet(**comparable_unet(norm_groups=32)), scale=SCALE, sampling=sampling).eval()
        x = torch.rand(1, 6, size, size)
        level = torch.full((1,), 0.5)
        call_shape = (tuple(x.shape), tuple(level.shape))
        sr3_method = sampler_method(
            f"SR3 DDIM {args.sr3_steps}",
            "UNet, comparable width",
            sr3.net,
            lambda: sr3.restore(lq),
            lambda: sr3.net(x, level),
        )

        torch.manual_seed(args.seed)
        rddm = RDDM(
            net=TwoHeadUNet(**comparable_unet(norm_groups=8)), scale=SCALE, sampling=Sampling(steps=args.rddm_steps)
        ).eval()
        rddm_method = sampler_method(
            f"RDDM {args.rddm_steps} steps",
            "TwoHeadUNet, comparable width",
            rddm.net,
            lambda: rddm.restore(lq),
            lambda: rddm.net(x, level),
        )
        methods = {"DiffIR": diffir, "RDDM": rddm_method, "SR3": sr3_method}
        outputs: dict[str, Tensor] = {}

        def case(name: str) -> Callable[[], None]:
            return lambda: outputs.__setitem__(name, methods[name].restore())

        start = time.perf_counter()
        robin = interleave({name: case(name) for name in methods}, rounds=args.rounds, warmup=0, progress=to_stderr)
        to_stderr(f"timed rounds: {time.perf_counter() - start:.0f} s")
        for name, method in methods.items():
            check_output(outputs[name], name)
            method.row.seconds = robin.seconds[name]
        for method in (sr3_method, rddm_method):
            finish_sampler(method, call_shape, args.rounds)
        references = reference_rows(args.sr3_steps, args.rddm_steps, diffir_model.gammas.numel())

    diffir_row, sr3_row, rddm_row = diffir.row, sr3_method.row, rddm_method.row
    unet_params, unet_call = meta_call_macs(lambda: UNet(**comparable_unet()), (1, 6, size, size), (1,))
    lines = [
        "",
        *table([diffir_row, sr3_row, rddm_row], diffir_row),
        "",
        "Seconds round by round: " + "; ".join(f"{name} {seconds_list(robin.seconds[name])}" for name in methods) + ".",
        "",
        "For reference (counted, not timed):",
        "",
        *table(references, diffir_row),
        "",
    ]
    by_size = sorted(diffir_count.macs_by_network.items(), key=lambda item: -item[1])
    shares = ", ".join(f"{name} {giga(macs)} G ({macs / diffir_count.macs:.2%})" for name, macs in by_size)
    cpen_s1 = n_parameters(diffir_model.cpen_s1)
    lines += [
        f"- DiffIR's MACs by network: {shares}. Parameters at inference exclude CPEN_S1 "
        f"({cpen_s1 / 1e6:.2f} M), the stage-1 teacher that only training runs.",
        f"- Comparable U-Net: `UNet({', '.join(f'{k}={v}' for k, v in COMPARABLE_UNET.items())})`, "
        f"{unet_params / 1e6:.1f} M parameters, {giga(unet_call)} G MACs a call on the meta device; "
        f"counted on the CPU: SR3's call {giga(sr3_row.macs // sr3_row.n_calls)} G, RDDM's "
        f"{giga(rddm_row.macs // rddm_row.n_calls)} G (RDDM's second head adds 3 output channels to the last conv).",
        f"- MACs per second (median seconds): DiffIR {diffir_row.macs / 1e9 / Spread.of(diffir_row.seconds or [1]).median:.1f} G/s, "
        f"SR3's sampler {sr3_row.macs / 1e9 / Spread.of(sr3_row.seconds or [1]).median:.1f} G/s, "
        f"RDDM's {rddm_row.macs / 1e9 / Spread.of(rddm_row.seconds or [1]).median:.1f} G/s.",
    ]
    at_paper_size = references[-1]
    sr3_ratio = ratios(sr3_row.seconds or [], diffir_row.seconds or [])
    rddm_ratio = ratios(rddm_row.seconds or [], diffir_row.seconds or [])
    lines += [
        f"- Paper (real SR): DiffIR {PAPER_DIFFIR_TMACS} T MACs against LDM's {PAPER_LDM_TMACS} T "
        f"({PAPER_LDM_TMACS / PAPER_DIFFIR_TMACS:.0f}x). Our count for DiffIR: {at_paper_size.macs / 1e12:.2f} T "
        f"on a {4 * LQ_SIZE} x {4 * LQ_SIZE} LQ, {diffir_row.macs / 1e12:.3f} T on the {LQ_SIZE} x {LQ_SIZE} LQ above.",
        f"- Against DiffIR, here: SR3 DDIM {args.sr3_steps} {sr3_row.macs / diffir_row.macs:.0f}x the MACs and "
        f"{sr3_ratio.text('.1f', 'x')} the seconds; RDDM {args.rddm_steps} steps "
        f"{rddm_row.macs / diffir_row.macs:.0f}x the MACs and {rddm_ratio.text('.1f', 'x')} the seconds "
        f"(per round: median (min - max) over {args.rounds} rounds).",
        cpu_share_line(robin, torch.get_num_threads()),
        load_after_line(),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
