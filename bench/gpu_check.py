"""GPU smoke check: the suite's training, DDP, restoring and sampling paths on one CUDA device, in one command.

Five sections, each guarded (a failure is reported and the others run), each figure with the device's name:

1. Every recipe (paper size; with --tiny the recipes that have a CPU overlay, with their tiny test overlays) trains
   a few steps in bf16-mixed (32-true on the CPU, where bf16 autocast is slower, as the demo overlays say): the
   method, data module and trainer are built by the suite's CLI (`IRLightningCLI(run=False)`, as
   tests/test_recipes.py does) and `trainer.fit` runs `warm-up + timed` steps on synthetic shards of the recipe's
   crop size and scale, without validation, logger or checkpoints (the EMA and the other suite callbacks stay). A
   callback times the timed steps as one window, from the device sync that ends the last warm-up step to the one
   that ends the last timed step, so each step holds the batch fetch, its transfer and the on-device degradation,
   forward, backward, the optimizer step and the EMA update (a real fit's step, run by Lightning's loop, manual
   optimization included). Reported: loss finite, steps/s, peak memory (`torch.cuda.max_memory_allocated`; on the
   CPU the process's peak resident set, reset at the start), and the host-device syncs per step: the warnings of
   `torch.cuda.set_sync_debug_mode("warn")` within the window (every synchronizing op torch instruments: `.item()`,
   `bool(tensor)`, blocking copies, `nonzero`; no syncs on the CPU), with the Python lines that caused them. The
   training-free recipes (`max_steps: 0`: DeqIR with an imported 256 px prior) have no training step: section 4
   times their prior.
2. `ir-lightning fit` (as `python -m ir_lightning fit`) in a subprocess with `--trainer.strategy=ddp
   --trainer.devices=1 --trainer.max_steps=3` on sr3_x4 with its CPU and tiny overlays, on shards written here:
   one DDP process with NCCL (gloo on the CPU). Success: exit 0 and last.ckpt.
3. `ir-lightning restore` and `ir-lightning evaluate --preset set5_x4` with that checkpoint on a few images, on
   the device (`--device cuda`, or cpu): exit 0, seconds per image (the command's loop, tqdm's mean, and the whole
   command with its start and model load, divided by the images).
4. DeqIR's parallel solver against the sequential chain at T = 25, 50, 100 (5, 10 with --tiny): DDNM's chain
   (x4 average-pooling SR, eta 0, the x0 split) on OpenAI's ADM 256 x 256 unconditional U-Net (552.8 M parameters;
   with --tiny a small GuidedDiffusionUNet at 32 px) with random weights, float32 (the recipe's precision). Cases:
   `sequential` (T calls of one image), `anderson` with tolerance 1e-300 and max_iter 15 (fixed work), and
   `anderson` to DeqIR's tolerance 1e-3 (max_iter 15), each call of at most `chunk_size` images (set from the free
   memory and one measured call). Paired rounds (bench/timing.py): each round runs the three cases, ratios to
   the sequential time of the same round, a verdict only when every round agrees. Random weights: the rounds to the
   tolerance say nothing about a trained prior; the work of a fixed iteration count does not depend on the weights.
5. SR3's training step at the public re-implementation's size (`recipes/sr3_16_128_faces.yaml`: SR3ReferenceUNet,
   97.8 M parameters, batch 4 of 128 px, LR by the data module's bicubic x8, fused Adam), built through the CLI, in
   bf16 autocast against float32 (two copies of the same weights, each with its own optimizer), paired rounds
   after a warm-up round; ratio and verdict.

    python bench/gpu_check.py --out gpu_check_out            # the GPU check, at most --budget-s seconds (420)
    python bench/gpu_check.py --cpu --tiny --out /tmp/check   # the same code on the CPU with tiny sizes (~1 min)

Writes `<out>/gpu_check.json` and `<out>/gpu_check.md` after every section (a run cut short keeps what it
measured); scratch files (shards, runs, checkpoints) go to a temporary folder that is removed at the end. It
prints the markdown and exits 1 when a section failed (0 when every section is ok, or only cut short by the budget).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import inspect
import io
import json
import logging
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from timing import RoundRobin, Spread, compare, cpu_model, ratios, to_stderr  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package from this tree, installed or not
    sys.path.insert(1, str(ROOT))

RECIPES = ROOT / "recipes"
TINY_OVERLAYS = ROOT / "tests" / "configs"
TITLES = {
    1: "every recipe trains a few steps",
    2: "1-GPU DDP through the real CLI",
    3: "restore and evaluate on the device",
    4: "DeqIR: parallel solver against the sequential chain",
    5: "SR3 16->128 training step: bf16-mixed against fp32",
}
SHARES = {1: 0.40, 2: 0.07, 3: 0.07, 4: 0.34, 5: 0.12}
"""Each section's share of the budget left when it starts (over the sections still to run)."""

SYNC_MESSAGE = "synchroniz"  # torch's sync-debug warning: "called a synchronizing CUDA operation"
ADM_TINY = dict(
    in_channels=3,
    out_channels=6,
    base_channels=16,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_ds=(2,),
    dropout=0.0,
    num_head_channels=8,
    norm_groups=8,
    level_input="sqrt_gamma",
)
SR3_TINY_NET = {"inner_channel": 16, "channel_mults": [1, 2], "res_blocks": 1, "norm_groups": 8, "image_size": 32}
DDP_STACK = ("recipes/sr3_x4.yaml", "recipes/demo/sr3_x4_cpu.yaml", "tests/configs/sr3_tiny.yaml")
DEQIR_SOLVER = dict(memory=5, regularisation=1e-3, mixing=1.0, max_iter=15)
"""DeqIR's Anderson settings (inversion.DEQIR_SAMPLING_SOLVER), with the suite's solver."""
DEQIR_TOLERANCE = 1e-3
FIXED_WORK_TOLERANCE = 1e-300
"""A tolerance no residual reaches: the solver runs max_iter iterations (or stops at T, when every state is exact)."""


# --- settings and the budget ------------------------------------------------------------------------
@dataclass
class Settings:
    """What one run measures, from the command line; --tiny changes the sizes and counts, never the code path."""

    cpu: bool
    tiny: bool
    sections: list[int]
    out: Path
    budget_s: float
    warmup_steps: int
    steps: int
    rounds: int
    sr3_rounds: int
    deq_steps: list[int]
    chunk_size: int | None
    threads: int | None
    recipes: list[str] | None
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        self.device = torch.device("cpu" if self.cpu or not torch.cuda.is_available() else "cuda")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Budget:
    """The run's seconds: each section gets its share of what is left when it starts."""

    total: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)

    def section_deadline(self, section: int, remaining: list[int]) -> float:
        share = SHARES[section] / sum(SHARES[s] for s in remaining)
        return time.perf_counter() + max(0.0, self.left()) * share

    def end(self) -> float:
        return self.start + self.total


run_deadline = [math.inf]
"""The whole run's end (a training step never runs past it: the probe stops the fit)."""


# --- the device -----------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_model()}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak: the CUDA allocator's, or the kernel's peak resident set (Linux /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_gib(device: torch.device) -> float:
    """Peak memory since `reset_peak`: CUDA max_memory_allocated, or VmHWM (the process's peak resident set)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_kind(device: torch.device) -> str:
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak resident set of the process (VmHWM)"


def free_memory(device: torch.device) -> int:
    """Bytes the device can still give: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 * 2**30


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class SyncCounter:
    """Counts the host-device syncs torch reports (`set_sync_debug_mode("warn")`) between `open` and `close`, and
    the Python lines that caused them. On the CPU there is nothing to count (0)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.count, self.sites = device, 0, Counter()
        self._catcher: Any = None
        self._records: list[warnings.WarningMessage] = []

    def open(self) -> None:
        if self.device.type != "cuda":
            return
        self._catcher = warnings.catch_warnings(record=True)
        self._records = self._catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def close(self) -> None:
        if self._catcher is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        syncs = [w for w in self._records if SYNC_MESSAGE in str(w.message)]
        self.count += len(syncs)
        self.sites.update(f"{_short(w.filename)}:{w.lineno}" for w in syncs)


def _short(filename: str) -> str:
    """A path from the package or site-packages on, to keep the report readable."""
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --- the report -----------------------------------------------------------------------------------
class Report:
    """The JSON and markdown, rewritten after every section (and every recipe of section 1)."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.data: dict[str, Any] = {
            "command": "python bench/gpu_check.py " + shlex.join(argv),
            "date": datetime.now().isoformat(timespec="seconds"),
            "device": device_name(settings.device),
            "device_type": settings.device.type,
            "tiny": settings.tiny,
            "budget_s": settings.budget_s,
            "software": software(settings.device),
            "sections": {},
        }
        self.markdown: dict[int, list[str]] = {}

    def section(self, number: int) -> dict[str, Any]:
        return self.data["sections"].setdefault(
            str(number), {"title": TITLES[number], "device": self.data["device"], "status": "running"}
        )

    def write(self) -> None:
        out = self.settings.out
        out.mkdir(parents=True, exist_ok=True)
        _atomic(out / "gpu_check.json", json.dumps(self.data, indent=2, default=_json_default) + "\n")
        _atomic(out / "gpu_check.md", self.render())

    def render(self) -> str:
        d = self.data
        lines = [
            f"# GPU check ({'tiny sizes' if d['tiny'] else 'paper sizes'}) on {d['device']}",
            "",
            f"- command: `{d['command']}`",
            f"- date: {d['date']}; budget {d['budget_s']:.0f} s; total {d.get('total_s', float('nan')):.0f} s",
            f"- software: {d['software']}",
        ]
        for number in sorted(self.markdown):
            lines += ["", *self.markdown[number]]
        return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def software(device: torch.device) -> str:
    import lightning

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}", f"lightning {lightning.__version__}"]
    if device.type == "cuda":
        parts.append(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
        with (
            warnings.catch_warnings()
        ):  # newer torch versions deprecate the allow_tf32 flags in favour of fp32_precision
            warnings.simplefilter("ignore")
            conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        parts.append(f"TF32 (torch's defaults): convolutions {conv}, matmul {matmul}")
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        parts.append(f"{total:.1f} GiB device memory")
    else:
        parts.append(f"{torch.get_num_threads()} torch threads")
    return ", ".join(parts)


def error_text(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message[:400]}"


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:{spec}}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# --- synthetic data ---------------------------------------------------------------------------------
def smooth_image(side: int, generator: torch.Generator) -> torch.Tensor:
    """A smooth random RGB image, 3 x side x side in [0, 1] (coarse noise, bicubic up, a little fine noise)."""
    coarse = torch.rand(1, 3, max(2, side // 16), max(2, side // 16), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[0]
    return (image + 0.05 * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def png_bytes(image: torch.Tensor) -> bytes:
    from PIL import Image

    array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image))


class ShardCache:
    """Synthetic shards by (GT side, scale, with LQ): every sample holds `gt.png` and, for paired and LQ-only streams,
    an `lq.png` of side / scale (a stream that degrades on the device makes its own)."""

    SAMPLES = 8

    def __init__(self, folder: Path) -> None:
        self.folder, self.patterns = folder, {}

    def pattern(self, side: int, scale: int, with_lq: bool = True) -> str:
        key = (side, scale, with_lq)
        if key not in self.patterns:
            from datamodules.format import ShardSample
            from datamodules.writer import write_shards

            generator = torch.Generator().manual_seed(side * 10 + scale)
            samples = []
            for index in range(self.SAMPLES):
                gt = smooth_image(side, generator)
                lq = torch.nn.functional.interpolate(gt[None], scale_factor=1 / scale, mode="area")[0]
                files = {"gt.png": png_bytes(gt)} | ({"lq.png": png_bytes(lq)} if with_lq else {})
                samples.append(ShardSample(key=f"s{index}", files=files))
            prefix = f"gt{side}_x{scale}" + ("" if with_lq else "_gt_only")
            stats = write_shards(samples, self.folder, prefix, progress=False)
            self.patterns[key] = stats.pattern
        return self.patterns[key]


# --- recipes: reading them ------------------------------------------------------------------------
def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base` as the CLI reads -c files: dicts merge, a new class_path replaces its entry, lists replace."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        same_class = not (isinstance(old, dict) and isinstance(value, dict) and "class_path" in value) or (
            old.get("class_path") == value.get("class_path")
        )
        merged[key] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) and same_class else value
    return merged


def read_stack(paths: list[Path]) -> dict[str, Any]:
    from ir_lightning.packaged import BASE_RECIPE

    config: dict[str, Any] = {}
    for path in [BASE_RECIPE, *paths]:
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    return config


def recipe_stacks(tiny: bool) -> list[tuple[str, list[Path]]]:
    """(name, config files) of every recipe; with `tiny`, the recipes that have a CPU overlay, each with it and its
    family's tiny test overlay (tests/configs/<family>_tiny.yaml) where there is one."""
    if not tiny:
        return [(p.stem, [p]) for p in sorted(RECIPES.glob("*.yaml")) if p.name != "base.yaml"]
    stacks = []
    for overlay in sorted((RECIPES / "demo").glob("*.yaml")):
        match = re.fullmatch(r"# CPU overlay for recipes/(\w+)\.yaml: .*", overlay.read_text().splitlines()[0])
        if match is None:
            continue
        name = match.group(1)
        tiny_overlay = TINY_OVERLAYS / f"{name.split('_')[0]}_tiny.yaml"
        stacks.append((name, [RECIPES / f"{name}.yaml", overlay, *([tiny_overlay] if tiny_overlay.exists() else [])]))
    return stacks


def data_streams(config: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(CLI prefix, init_args with the data module's defaults filled in, whether the stream sets val_shards) of each
    shard stream of the data module (AdaptationDataModule: its synthetic and real streams)."""
    from datamodules import ShardDataModule

    defaults = {
        name: p.default
        for name, p in inspect.signature(ShardDataModule.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    init_args = config["data"].get("init_args") or {}
    nested = [key for key in ("synthetic", "real") if isinstance(init_args.get(key), dict)]
    streams = [(f"data.init_args.{k}", init_args[k].get("init_args") or {}) for k in nested] or [("data", init_args)]
    return [(f"{prefix}.init_args", defaults | given, "val_shards" in given) for prefix, given in streams]


def first_progressive_patch(config: dict[str, Any]) -> tuple[int, int] | None:
    """The first (crop, batch) of a ProgressivePatches callback, which replace data.crop_size and data.batch_size in
    the first epochs, or None."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for entry in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("ProgressivePatches"):
            return int(entry["init_args"]["crop_sizes"][0]), int(entry["init_args"]["batch_sizes"][0])
    return None


@contextlib.contextmanager
def quiet_argv() -> Iterator[None]:
    """LightningCLI reads sys.argv beside `args`: give it the program's name only."""
    saved = sys.argv
    sys.argv = ["ir-lightning"]
    try:
        yield
    finally:
        sys.argv = saved


def build_cli(configs: list[Path], flags: list[str]) -> Any:
    """The suite's CLI, built without running a subcommand (the method, the data module and the trainer)."""
    from ir_lightning.cli import IRLightningCLI
    from ir_lightning.packaged import resolve_configs

    words = [word for path in configs for word in ("-c", str(path))]
    with quiet_argv():
        return IRLightningCLI(args=[*resolve_configs(words), *flags], run=False)


QUIET_TRAINER = [
    "--trainer.limit_val_batches=0",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--checkpoint=null",
    "--image_grid=null",
    "--wandb_summaries=null",
    "--lr_monitor=null",
]
"""No validation, logger, checkpoints or image logging: the step alone (the EMA and throughput callbacks stay)."""


# --- section 1: every recipe trains -----------------------------------------------------------------
def make_probe(device: torch.device, warmup: int, timed: int, deadline: float) -> Any:
    """A Lightning callback that times the timed steps as one window between two device syncs, counts the syncs in
    it, keeps the losses and stops the fit past `deadline` (Lightning is imported here, late)."""
    from lightning.pytorch.callbacks import Callback

    class Probe(Callback):
        def __init__(self) -> None:
            self.losses: list[torch.Tensor] = []
            self.steps = 0
            self.window: list[float] = []
            self.host_in_step = 0.0
            self.syncs = SyncCounter(device)
            self._batch_start = 0.0
            self.timed_done = 0
            self.stopped_early = False

        def on_train_start(self, trainer, pl_module) -> None:
            reset_peak(device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._batch_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.perf_counter()
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor):
                self.losses.append(loss.detach().float().reshape(-1)[:1])
            self.steps += 1
            if self.steps > warmup:
                self.host_in_step += now - self._batch_start
                self.timed_done += 1
            if self.steps == warmup:
                synchronize(device)
                self.window = [time.perf_counter()]
                self.syncs.open()
            elif self.steps == warmup + timed:
                self.close()
            if time.perf_counter() > deadline and self.steps < warmup + timed:
                trainer.should_stop, self.stopped_early = True, True

        def close(self) -> None:
            if len(self.window) == 1:
                self.syncs.close()
                synchronize(device)
                self.window.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            self.close()

        def on_exception(self, trainer, pl_module, exception) -> None:
            self.syncs.close()

    return Probe()


@dataclass
class RecipeRun:
    """Section 1's context: the settings, the scratch folder, shards, and the stage checkpoints DiffIR needs."""

    settings: Settings
    work: Path
    shards: ShardCache
    stage_checkpoints: dict[str, Path] = field(default_factory=dict)
    vgg19: Path | None = None

    def vgg19_file(self) -> Path:
        """A VGG19 features file with torchvision's layout (random weights) for recipes with a perceptual loss."""
        if self.vgg19 is None:
            from ir_lightning.losses import vgg19_features_stack

            self.vgg19 = self.work / "vgg19-features.pth"
            torch.save(vgg19_features_stack().state_dict(), self.vgg19)
        return self.vgg19


def recipe_flags(run: RecipeRun, name: str, config: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The command-line overrides of one recipe's run, and what the row says about its data."""
    s = run.settings
    flags = [
        f"--run_dir={run.work / 'runs' / name}",
        f"--trainer.accelerator={'gpu' if s.cuda else 'cpu'}",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        f"--trainer.precision={'bf16-mixed' if s.cuda else '32-true'}",
        f"--trainer.max_steps={s.warmup_steps + s.steps}",
        *QUIET_TRAINER,
    ]
    patch = first_progressive_patch(config)
    facts: dict[str, Any] = {}
    for prefix, args, validates in data_streams(config):
        scale = int(args.get("scale") or 1)
        crop, batch = patch or (int(args["crop_size"]), int(args["batch_size"]))
        side = max(int(args["crop_size"]), crop)
        side += -side % scale
        with_lq = args.get("degradation") is None or not args.get("require_gt", True)
        pattern = run.shards.pattern(side, scale, with_lq)
        flags.append(f"--{prefix}.train_shards={pattern}")
        if validates:  # a path the recipe asks the user for, read when the data module is set up
            flags.append(f"--{prefix}.val_shards={pattern}")
        buffer = min(int(args.get("shuffle_buffer") or 0), 2 * batch)
        flags.append(f"--{prefix}.shuffle_buffer={buffer}")  # the first batch waits for the buffer to fill
        facts.setdefault("batch", []).append(batch)
        facts.setdefault("crop", []).append(crop)
    model_args = config["model"].get("init_args") or {}
    perceptual = (model_args.get("perceptual") or {}).get("init_args") or {}
    if "weights" in perceptual:
        flags.append(f"--model.init_args.perceptual.init_args.weights={run.vgg19_file()}")
    for key, source in (("stage1_ckpt", _stage_source(name, 1)), ("stage2_ckpt", _stage_source(name, 2))):
        if model_args.get(key):
            if source not in run.stage_checkpoints:
                raise RuntimeError(
                    f"needs {source}'s checkpoint for model.init_args.{key} (that run failed or was left out)"
                )
            flags.append(f"--model.init_args.{key}={run.stage_checkpoints[source]}")
    return flags, facts


def _stage_source(name: str, stage: int) -> str:
    """The recipe whose checkpoint a DiffIR stage reads: diffir_s2_x -> diffir_s1_x, diffir_s2gan_x -> diffir_s2_x."""
    if stage == 1:
        return re.sub(r"^diffir_s2(gan)?_", "diffir_s1_", name)
    return re.sub(r"^diffir_s2gan_", "diffir_s2_", name)


def train_recipe(run: RecipeRun, name: str, configs: list[Path], deadline: float) -> dict[str, Any]:
    s = run.settings
    config = read_stack(configs)
    row: dict[str, Any] = {
        "recipe": name,
        "configs": [str(p.relative_to(ROOT)) for p in configs],
        "device": device_name(s.device),
        "recipe_precision": (config.get("trainer") or {}).get("precision"),
        "precision": "bf16-mixed" if s.cuda else "32-true",
    }
    if (config.get("trainer") or {}).get("max_steps") == 0:
        return row | {"status": "training-free", "note": "max_steps 0: no training step (section 4 times its prior)"}
    flags, facts = recipe_flags(run, name, config)
    row |= {"batch": facts.get("batch"), "crop": facts.get("crop")}
    start = time.perf_counter()
    cli = build_cli(configs, flags)
    row["build_s"] = time.perf_counter() - start
    model, trainer = cli.model, cli.trainer
    row["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    probe = make_probe(s.device, s.warmup_steps, s.steps, min(deadline, run_deadline[0]))
    trainer.callbacks.append(probe)
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=cli.datamodule)
        row["fit_s"] = time.perf_counter() - start
        if name.startswith(("diffir_s1_", "diffir_s2_")):  # a later DiffIR stage starts from it
            path = run.work / "stages" / f"{name}.ckpt"
            trainer.save_checkpoint(path)
            run.stage_checkpoints[name] = path
        row |= probe_figures(probe, s, model)
    finally:
        probe.syncs.close()
        del cli, model, trainer, probe
        release(s.device)
    return row


def probe_figures(probe: Any, s: Settings, model: Any) -> dict[str, Any]:
    losses = torch.cat(probe.losses).cpu() if probe.losses else torch.empty(0)
    nonfinite = int(model.nonfinite_steps.get("total", 0))
    timed = probe.timed_done
    figures: dict[str, Any] = {
        "loss_first": float(losses[0]) if len(losses) else None,
        "loss_last": float(losses[-1]) if len(losses) else None,
        "loss_finite": bool(len(losses)) and bool(torch.isfinite(losses).all()) and nonfinite == 0,
        "nonfinite_steps": nonfinite,
        "timed_steps": timed,
        "peak_memory_gib": peak_gib(s.device),
        "peak_memory_kind": peak_kind(s.device),
        "stopped_early": probe.stopped_early,
    }
    if len(probe.window) == 2 and timed:
        seconds = probe.window[1] - probe.window[0]
        figures |= {
            "steps_per_s": timed / seconds,
            "s_per_step": seconds / timed,
            "host_share_in_step_hooks": probe.host_in_step / seconds,
            "syncs_per_step": probe.syncs.count / timed,
            "sync_sites": dict(probe.syncs.sites.most_common(8)),
        }
    figures["status"] = "ok" if figures["loss_finite"] and "steps_per_s" in figures else "failed"
    if figures["status"] == "failed":
        figures["error"] = "non-finite loss" if not figures["loss_finite"] else "no timed step (budget)"
    return figures


def section_train(s: Settings, report: Report, work: Path, deadline: float) -> None:
    sec = report.section(1)
    sec["method"] = (
        "IRLightningCLI(run=False) builds each recipe; trainer.fit runs warm-up + timed steps on synthetic shards "
        "(no validation, logger or checkpoints); the timed steps are one window between device syncs (batch fetch, "
        "transfer, on-device degradation, forward, backward, optimizer, EMA); syncs: torch.cuda.set_sync_debug_mode"
        "('warn') warnings in the window"
    )
    sec |= {"precision": "bf16-mixed" if s.cuda else "32-true (bf16 autocast is slower on most CPUs)"}
    sec |= {"warmup_steps": s.warmup_steps, "timed_steps": s.steps, "rows": []}
    run = RecipeRun(s, work, ShardCache(work / "shards"))
    stacks = [(name, configs) for name, configs in recipe_stacks(s.tiny) if s.recipes is None or name in s.recipes]
    if s.recipes is not None and len(stacks) != len(s.recipes):
        sec["unknown_recipes"] = sorted(set(s.recipes) - {name for name, _ in stacks})
    for name, configs in stacks:
        if time.perf_counter() > deadline:
            sec["rows"].append({"recipe": name, "status": "skipped", "note": "budget", "device": sec["device"]})
            continue
        to_stderr(f"[1] {name}")
        try:
            row = train_recipe(run, name, configs, deadline)
        except Exception as error:  # noqa: BLE001 - one recipe's failure is reported, the others run
            row = {"recipe": name, "status": "failed", "error": error_text(error), "device": sec["device"]}
            row["traceback"] = traceback.format_exc(limit=-6)
        release(s.device)  # after the except block: the traceback held the failed run's tensors
        sec["rows"].append(row)
        report.markdown[1] = train_table(sec)
        report.write()
    sec["status"] = section_status([row["status"] for row in sec["rows"]])
    report.markdown[1] = train_table(sec)


def section_status(statuses: list[str]) -> str:
    """ok: every row ok (or training-free); failed: any failed (or none ran); partial: the budget left some out."""
    if not statuses or "failed" in statuses:
        return "failed"
    return "ok" if all(st in ("ok", "training-free") for st in statuses) else "partial"


def train_table(sec: dict[str, Any]) -> list[str]:
    lines = [
        f"## 1. {sec['title']} ({sec['precision']}; {sec['warmup_steps']} warm-up + {sec['timed_steps']} timed steps)",
        "",
        f"Method: {sec['method']}.",
        "",
        "| recipe | status | device | params (M) | batch | crop | loss first / last | steps/s | s/step "
        "| peak memory (GiB) | syncs/step | build s | note |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in sec["rows"]:
        loss = f"{fmt(r.get('loss_first'), '.4f')} / {fmt(r.get('loss_last'), '.4f')}" if "loss_first" in r else "-"
        note = r.get("error") or r.get("note") or ""
        if r.get("sync_sites"):
            note = (note + " " if note else "") + "syncs at " + ", ".join(list(r["sync_sites"])[:3])
        lines.append(
            f"| {r['recipe']} | {r['status']} | {r['device']} | {fmt(r.get('parameters_m'), '.1f')} "
            f"| {fmt(r.get('batch'))} | {fmt(r.get('crop'))} | {loss} | {fmt(r.get('steps_per_s'))} "
            f"| {fmt(r.get('s_per_step'), '.3f')} | {fmt(r.get('peak_memory_gib'))} | {fmt(r.get('syncs_per_step'), '.1f')} "
            f"| {fmt(r.get('build_s'), '.1f')} | {note.replace('|', '/')} |"
        )
    if sec["rows"]:
        lines += ["", f"Peak memory: {sec['rows'][0].get('peak_memory_kind') or peak_kind_of(sec)}."]
    return lines


def peak_kind_of(sec: dict[str, Any]) -> str:
    return next((r["peak_memory_kind"] for r in sec["rows"] if "peak_memory_kind" in r), "-")


# --- sections 2 and 3: the real command line --------------------------------------------------------
def command_env() -> dict[str, str]:
    """W&B offline (nothing is uploaded), tqdm's mean rate (smoothing 0), the package from this tree."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", TQDM_SMOOTHING="0", PYTHONPATH=path)


MIN_COMMAND_S = 120.0
"""A command may run past its section's share up to this long (imports, CUDA and NCCL start-up), within the run."""


def command_timeout(deadline: float) -> float:
    now = time.perf_counter()
    return min(run_deadline[0] - now, max(deadline - now, MIN_COMMAND_S))


def run_command(words: list[str], cwd: Path, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "ir_lightning", *words]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=cwd, env=command_env(), capture_output=True, text=True, timeout=max(1.0, timeout)
        )
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        rc, stdout, stderr = 124, _text(expired.stdout), _text(expired.stderr) + f"\n(timed out after {timeout:.0f} s)"
    return {
        "command": "python -m ir_lightning " + shlex.join(words),
        "rc": rc,
        "wall_s": time.perf_counter() - start,
        "stdout_tail": stdout[-1500:],
        "stderr_tail": stderr[-3000:],
    }


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


@dataclass
class DdpRun:
    """The checkpoint of section 2's fit, which section 3 restores with (made by section 3 when 2 did not run)."""

    work: Path
    result: dict[str, Any] | None = None

    @property
    def checkpoint(self) -> Path:
        return self.work / "ddp_run" / "checkpoints" / "last.ckpt"


def ddp_fit(s: Settings, ddp: DdpRun, timeout: float) -> dict[str, Any]:
    shards = ShardCache(ddp.work / "ddp_shards").pattern(64, 4)  # sr3_x4: paired validation LQ at GT / 4
    words = ["fit"]
    for config in DDP_STACK:
        words += ["-c", str(ROOT / config)]
    words += [
        f"--trainer.accelerator={'gpu' if s.cuda else 'cpu'}",
        "--trainer.strategy=ddp",
        "--trainer.devices=1",
        "--trainer.max_steps=3",
        f"--data.init_args.train_shards={shards}",
        f"--data.init_args.val_shards={shards}",
        f"--run_dir={ddp.work / 'ddp_run'}",
    ]
    if s.cuda:
        words.append("--trainer.precision=bf16-mixed")
    result = run_command(words, ddp.work, timeout)
    backend = re.search(r"distributed_backend=(\w+)", result["stdout_tail"] + result["stderr_tail"])
    result |= {"backend": backend.group(1) if backend else None, "checkpoint_written": ddp.checkpoint.is_file()}
    ok = result["rc"] == 0 and result["checkpoint_written"]
    result["status"] = "ok" if ok else "failed"
    ddp.result = result
    return result


def section_ddp(s: Settings, report: Report, ddp: DdpRun, deadline: float) -> None:
    sec = report.section(2)
    result = ddp_fit(s, ddp, command_timeout(deadline))
    sec |= {"expected_backend": "nccl" if s.cuda else "gloo", **result}
    sec["status"] = result["status"]
    if sec["status"] == "ok" and result["backend"] not in (None, sec["expected_backend"]):
        sec["status"], sec["error"] = "failed", f"backend {result['backend']}, expected {sec['expected_backend']}"
    report.markdown[2] = [
        f"## 2. {sec['title']}",
        "",
        f"`{result['command']}`",
        "",
        "| status | device | exit | backend | last.ckpt | seconds |",
        "|---|---|---:|---|---|---:|",
        f"| {sec['status']} | {sec['device']} | {result['rc']} | {fmt(result['backend'])} "
        f"| {'written' if result['checkpoint_written'] else 'missing'} | {result['wall_s']:.1f} |",
    ]


TQDM_RATE = re.compile(r"(\d+)/(\d+) \[[^\]]*?,\s*([\d.]+)(s/image|image/s)[,\]]")


def loop_seconds_per_image(stderr: str) -> float | None:
    """The command loop's mean seconds per image from tqdm's last bar (TQDM_SMOOTHING=0: images / elapsed)."""
    found = TQDM_RATE.findall(stderr)
    if not found:
        return None
    _, _, rate, unit = found[-1]
    rate = float(rate)
    return rate if unit == "s/image" else (1.0 / rate if rate > 0 else None)


def section_restore(s: Settings, report: Report, ddp: DdpRun, deadline: float) -> None:
    sec = report.section(3)
    if not ddp.checkpoint.is_file():
        to_stderr("[3] no checkpoint from section 2: running its fit first")
        sec["checkpoint_made_here"] = ddp_fit(s, ddp, command_timeout(deadline))["status"]
    images, lq_side = (3, 16) if s.tiny else (4, 64)
    generator = torch.Generator().manual_seed(1)
    scale = 4
    for index in range(images):
        gt = smooth_image(lq_side * scale, generator)
        write_png(ddp.work / "eval_gt" / f"img{index}.png", gt)
        lq = torch.nn.functional.interpolate(gt[None], scale_factor=1 / scale, mode="area")[0]
        write_png(ddp.work / "restore_in" / f"img{index}.png", lq)
    device = "cuda" if s.cuda else "cpu"
    commands = {
        "restore": [
            "restore",
            f"--ckpt={ddp.checkpoint}",
            f"--input={ddp.work / 'restore_in'}",
            f"--output={ddp.work / 'restore_out'}",
            f"--device={device}",
        ],
        "evaluate": [
            "evaluate",
            f"--ckpt={ddp.checkpoint}",
            "--preset=set5_x4",
            f"--gt={ddp.work / 'eval_gt'}",
            f"--out={ddp.work / 'eval_out'}",
            f"--device={device}",
            "--no-wandb",
        ],
    }
    sec |= {"images": images, "lq_side": lq_side, "scale": scale, "rows": []}
    for name, words in commands.items():
        result = run_command(words, ddp.work, command_timeout(deadline))
        result |= {"name": name, "device": sec["device"], "images": images}
        result["loop_s_per_image"] = loop_seconds_per_image(result["stderr_tail"])
        result["command_s_per_image"] = result["wall_s"] / images
        if name == "restore":
            written = len(list((ddp.work / "restore_out").glob("*.png")))
            result["outputs"] = written
            result["status"] = "ok" if result["rc"] == 0 and written == images else "failed"
        else:
            results = ddp.work / "eval_out" / "results.json"
            psnr = json.loads(results.read_text())["mean"].get("psnr") if results.is_file() else None
            result["mean_psnr"] = psnr
            result["status"] = "ok" if result["rc"] == 0 and psnr is not None else "failed"
        sec["rows"].append(result)
    sec["status"] = "ok" if all(r["status"] == "ok" for r in sec["rows"]) else "failed"
    lines = [
        f"## 3. {sec['title']} (section 2's checkpoint: SR3 x4, tiny net, 2 sampling steps; {images} images, "
        f"LQ {lq_side} px -> {lq_side * scale} px)",
        "",
        "| command | status | device | exit | s/image in the loop (tqdm mean) | s/image, whole command | seconds | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in sec["rows"]:
        note = f"mean PSNR {fmt(r.get('mean_psnr'))} dB (random-ish net)" if r["name"] == "evaluate" else ""
        lines.append(
            f"| `{r['name']}` | {r['status']} | {r['device']} | {r['rc']} | {fmt(r['loop_s_per_image'], '.3f')} "
            f"| {r['command_s_per_image']:.2f} | {r['wall_s']:.1f} | {note} |"
        )
    report.markdown[3] = lines


# --- section 4: DeqIR's parallel solver --------------------------------------------------------------
def adm_prior(s: Settings) -> tuple[torch.nn.Module, int]:
    """The ADM U-Net with random weights on the device (PyTorch's default initialisation; ADM's zero-initialised
    layers redrawn the same way, so that eps is not identically 0), and its image side."""
    from ir_lightning.nets.guided_diffusion import ADM_256_UNCOND, GuidedDiffusionUNet

    torch.manual_seed(0)
    with torch.device(s.device):
        net = GuidedDiffusionUNet(**(ADM_TINY if s.tiny else ADM_256_UNCOND), init="adm")
    for module in net.zero_initialised():
        module.reset_parameters()
    return net.eval().requires_grad_(False), 32 if s.tiny else 256


CPU_BYTES_PER_IMAGE_256 = 0.65 * 2**30
"""ADM 256's activations per image in a float32 call, measured on the CPU (recipes/deqir_imagenet256_sr4.yaml)."""


def per_image_bytes(net: torch.nn.Module, side: int, device: torch.device) -> int:
    """Activation bytes one more image adds to a no-grad call: on CUDA the peak of a call of 2 images against 1; on
    the CPU the recipe's figure for ADM 256, scaled by the area (an upper bound for the tiny net)."""
    if device.type != "cuda":
        return int(CPU_BYTES_PER_IMAGE_256 * (side / 256) ** 2)
    peaks = []
    for batch in (1, 2):
        x = torch.randn(batch, 3, side, side, device=device)
        release(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            net(x, torch.full((batch,), 500.0, device=device))
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    return max(1, peaks[1] - peaks[0])


def deq_chain(net: torch.nn.Module, side: int, n_steps: int, device: torch.device) -> tuple[Any, torch.Tensor]:
    """DDNM's chain (x4 average pooling, eta 0) on the prior, and x_T."""
    from ir_lightning.diffusion.deq import ddnm_chain
    from ir_lightning.diffusion.operators import make_operator
    from ir_lightning.diffusion.schedules import respaced_timesteps
    from ir_lightning.methods.settings import NoiseSchedule

    generator = torch.Generator().manual_seed(n_steps)
    clean = (smooth_image(side, generator)[None] * 2 - 1).to(device)
    operator = make_operator("sr4", (side, side))
    alpha_bars = NoiseSchedule(kind="linear", n_steps=1000, linear_start=1e-4, linear_end=0.02).gammas()

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x, t.to(x.dtype))[:, :3]  # TimestepPrior: the integer step as ADM's level, eps = the first 3

    chain = ddnm_chain(eps_model, operator, operator.forward(clean), alpha_bars, respaced_timesteps(1000, n_steps))
    x_T = torch.randn(clean.shape, generator=generator).to(device)
    return chain, x_T


def section_deq(s: Settings, report: Report, deadline: float) -> None:
    sec = report.section(4)
    net, side = adm_prior(s)
    sec |= {
        "prior": "GuidedDiffusionUNet " + ("(tiny)" if s.tiny else "ADM 256x256 uncond"),
        "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "image_side": side,
        "precision": "float32",
        "chain": "DDNM, x4 average pooling (sr4), eta 0, x0 split, respaced timesteps, batch 1",
        "rows": [],
    }
    one_image = per_image_bytes(net, side, s.device)
    sec["activation_mib_per_image"] = one_image / 2**20
    sec["activation_source"] = "measured" if s.cuda else "estimated from the recipe's CPU figure for ADM 256, by area"
    call_s = call_seconds(net, side, s.device)  # also the warm-up: the first calls are not timed
    sec["call_s"] = {str(batch): seconds for batch, seconds in call_s.items()}
    section_start, total = time.perf_counter(), sum(s.deq_steps)
    for n_steps in s.deq_steps:  # each T gets time in proportion to T (and what the shorter ones left)
        t_deadline = section_start + (deadline - section_start) * sum(t for t in s.deq_steps if t <= n_steps) / total
        chunk = s.chunk_size or max(1, min(n_steps, int(0.5 * free_memory(s.device) / one_image)))
        first = predicted_round(n_steps, call_s)
        robin, facts = time_solvers(s, net, side, n_steps, chunk, t_deadline, first)
        if robin.rounds_done:
            sec["rows"] += deq_rows(robin, facts, n_steps, chunk, sec["device"])
        else:
            note = f"budget: a round would take about {first:.0f} s"
            sec["rows"].append(
                {"T": n_steps, "case": "all", "status": "skipped", "note": note, "device": sec["device"]}
            )
        report.markdown[4] = deq_table(sec)
        report.write()
        release(s.device)
    measured = [r for r in sec["rows"] if r["status"] != "skipped"]
    sec["status"] = section_status([r["status"] for r in sec["rows"]]) if measured else "failed"
    report.markdown[4] = deq_table(sec)


def call_seconds(net: torch.nn.Module, side: int, device: torch.device, batch: int = 4) -> dict[int, float]:
    """Seconds of one no-grad call of 1 and of `batch` images (after an untimed call of each)."""
    seconds = {}
    with torch.no_grad():
        for size in (1, batch):
            x, level = torch.randn(size, 3, side, side, device=device), torch.full((size,), 500.0, device=device)
            net(x, level)
            synchronize(device)
            start = time.perf_counter()
            net(x, level)
            synchronize(device)
            seconds[size] = time.perf_counter() - start
    return seconds


def predicted_round(n_steps: int, call_s: dict[int, float]) -> float:
    """About the seconds of one round: T calls of one image, then twice the images Anderson's max_iter iterations
    evaluate (iteration i: T - i + 1 states) at the batched cost per image."""
    batch = max(call_s)
    images = sum(n_steps - i for i in range(min(DEQIR_SOLVER["max_iter"], n_steps)))
    return n_steps * call_s[1] + 2 * images * call_s[batch] / batch


def time_solvers(
    s: Settings, net: torch.nn.Module, side: int, n_steps: int, chunk: int, deadline: float, first: float
) -> tuple[RoundRobin, dict[str, dict[str, Any]]]:
    """Paired rounds of the sequential chain and the two Anderson runs at one T; a round starts only if a round of
    the measured length (the first: `first` seconds, predicted) ends before `deadline`."""
    from ir_lightning.diffusion.deq import SolverSettings, run_chain

    chain, x_T = deq_chain(net, side, n_steps, s.device)
    solvers = {
        "sequential": SolverSettings("sequential"),
        "anderson, 15 iterations": SolverSettings(
            "anderson", tolerance=FIXED_WORK_TOLERANCE, chunk_size=chunk, **DEQIR_SOLVER
        ),
        f"anderson to {DEQIR_TOLERANCE:g}": SolverSettings(
            "anderson", tolerance=DEQIR_TOLERANCE, chunk_size=chunk, **DEQIR_SOLVER
        ),
    }
    facts: dict[str, dict[str, Any]] = {name: {} for name in solvers}

    def case(name: str) -> Callable[[], None]:
        def run() -> None:
            reset_peak(s.device)
            x0, result = run_chain(chain, x_T, solvers[name])
            synchronize(s.device)
            facts[name] |= {
                "peak_memory_gib": peak_gib(s.device),
                "finite": bool(torch.isfinite(x0).all()),
                "iterations": result.iterations if result else n_steps,
                "stopped_by": result.stopped_by if result else "sequential",
                "network_images": result.network_images if result else n_steps,
                "last_residual": result.residuals[-1] if result else None,
            }

        return run

    robin = RoundRobin({name: case(name) for name in solvers}, warmup=0)
    while robin.rounds_done < s.rounds:
        measured = sum(sum(v) for v in robin.seconds.values()) / robin.rounds_done if robin.rounds_done else first
        if time.perf_counter() + measured > deadline:
            break
        to_stderr(f"[4] T={n_steps} round {robin.rounds_done + 1} (about {measured:.0f} s)")
        robin.run_round()
    return robin, facts


def deq_rows(robin: RoundRobin, facts: dict[str, dict[str, Any]], n_steps: int, chunk: int, device: str) -> list[dict]:
    base = robin.seconds["sequential"]
    rows = []
    for name, seconds in robin.seconds.items():
        spread = Spread.of(seconds)
        row = {"T": n_steps, "case": name, "device": device, "chunk_size": chunk, "rounds": len(seconds)}
        row |= {"seconds": seconds, "s_median": spread.median, "s_min": spread.low, "s_max": spread.high}
        row |= facts[name]
        row["status"] = "ok" if row["finite"] else "failed"
        if name != "sequential":
            ratio = ratios(seconds, base)
            row |= {"ratios": list(ratio.values), "ratio_to_sequential": ratio.median}
            row["verdict"] = compare(ratio, faster="parallel faster", slower="parallel slower")
        rows.append(row)
    return rows


def deq_table(sec: dict[str, Any]) -> list[str]:
    lines = [
        f"## 4. {sec['title']} ({sec['prior']}, {sec['parameters_m']:.1f} M parameters, random weights, "
        f"{sec['image_side']} px, {sec['precision']})",
        "",
        f"Chain: {sec['chain']}. Anderson: memory 5, regularisation 1e-3, mixing 1, max_iter 15 (DeqIR's). "
        f"Activations {sec['activation_mib_per_image']:.0f} MiB per image in a call ({sec['activation_source']}); "
        "chunk: images per network call, at most half the free memory.",
        "",
        "| T | case | device | rounds | s, median (min - max) | time / sequential per round, median (min - max) "
        "| verdict | iterations | stopped by | network images | chunk | peak memory (GiB) |",
        "|---:|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in sec["rows"]:
        if r["status"] == "skipped":
            lines.append(f"| {r['T']} | all | {r['device']} | 0 | - | - | {r['note']} | | | | | |")
            continue
        ratio = Spread.of(r["ratios"]).text(unit="x") if "ratios" in r else "1x (the baseline)"
        lines.append(
            f"| {r['T']} | {r['case']} | {r['device']} | {r['rounds']} "
            f"| {r['s_median']:.3f} ({r['s_min']:.3f} - {r['s_max']:.3f}) | {ratio} | {r.get('verdict', '')} "
            f"| {r['iterations']} | {r['stopped_by']} | {r['network_images']} | {r['chunk_size']} "
            f"| {fmt(r['peak_memory_gib'])} |"
        )
    return lines


# --- section 5: SR3's step, bf16 against fp32 -------------------------------------------------------
def section_sr3(s: Settings, report: Report, deadline: float) -> None:
    sec = report.section(5)
    flags = [f"--trainer.accelerator={'gpu' if s.cuda else 'cpu'}", "--trainer.devices=1", *QUIET_TRAINER]
    if s.tiny:
        flags += [f"--model.init_args.net.init_args.{k}={json.dumps(v)}" for k, v in SR3_TINY_NET.items()]
        flags += ["--data.init_args.crop_size=32", "--data.init_args.batch_size=2"]
    cli = build_cli([RECIPES / "sr3_16_128_faces.yaml"], flags)
    data = cli.datamodule
    variants = {"fp32": cli.model.to(s.device).train()}
    variants["bf16-mixed"] = copy.deepcopy(variants["fp32"])
    optimizers = {name: model.configure_optimizers() for name, model in variants.items()}
    batch_size, crop = data.batch_size, data.crop_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, crop, crop, generator=generator).to(s.device)
    losses: dict[str, list[float]] = {name: [] for name in variants}

    def step(name: str) -> Callable[[], None]:
        model, optimizer = variants[name], optimizers[name]

        def run() -> None:
            batch = data.on_after_batch_transfer({"gt": images, "__key__": [f"k{i}" for i in range(batch_size)]}, 0)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=name == "bf16-mixed"):
                loss = model.training_loss(batch)
            loss.backward()
            optimizer.step()
            synchronize(s.device)
            losses[name].append(float(loss.detach()))

        return run

    robin = RoundRobin({name: step(name) for name in variants}, warmup=1)
    robin.run_round()
    while robin.rounds_done < 1 + s.sr3_rounds:
        per_round = sum(sum(v) for v in robin.seconds.values()) / max(1, robin.rounds_done - 1)
        if robin.rounds_done > 1 and time.perf_counter() + per_round > deadline:
            break
        robin.run_round()
    fp32, bf16 = robin.seconds["fp32"], robin.seconds["bf16-mixed"]
    ratio = ratios(bf16, fp32)
    sec |= {
        "network": type(variants["fp32"].net).__name__,
        "parameters_m": sum(p.numel() for p in variants["fp32"].net.parameters()) / 1e6,
        "batch": batch_size,
        "crop": crop,
        "rounds": len(fp32),
        "fp32_s": fp32,
        "bf16_s": bf16,
        "fp32_median_s": Spread.of(fp32).median,
        "bf16_median_s": Spread.of(bf16).median,
        "bf16_over_fp32": ratio.median,
        "ratio_min": ratio.low,
        "ratio_max": ratio.high,
        "speedup_median": Spread.of([f / b for f, b in zip(fp32, bf16)]).median,
        "verdict": compare(ratio, faster="bf16-mixed faster", slower="bf16-mixed slower"),
        "losses_finite": all(math.isfinite(v) for values in losses.values() for v in values),
    }
    sec["status"] = "ok" if sec["losses_finite"] else "failed"
    report.markdown[5] = [
        f"## 5. {sec['title']} ({sec['network']}, {sec['parameters_m']:.1f} M parameters, batch {batch_size} of "
        f"{crop} px, LR by the recipe's bicubic x8; {sec['rounds']} paired rounds after 1 warm-up round)",
        "",
        "| case | device | s/step, median (min - max) | bf16 / fp32 per round, median (min - max) | verdict |",
        "|---|---|---:|---:|---|",
        f"| fp32 (baseline) | {sec['device']} | {Spread.of(fp32).text('.3f')} | 1x | |",
        f"| bf16-mixed | {sec['device']} | {Spread.of(bf16).text('.3f')} | {ratio.text(unit='x')} | {sec['verdict']} |",
        "",
        f"Speed-up fp32 / bf16, median of the rounds: {sec['speedup_median']:.2f}x.",
    ]


# --- the run ----------------------------------------------------------------------------------------
def run_section(number: int, action: Callable[[float], None], report: Report, budget: Budget, left: list[int]) -> None:
    sec = report.section(number)
    if budget.left() <= 0:
        sec |= {"status": "skipped", "note": "budget"}
        report.markdown[number] = [f"## {number}. {TITLES[number]}", "", "Skipped: the budget was spent."]
        return
    deadline = budget.section_deadline(number, left)
    start = time.perf_counter()
    to_stderr(f"section {number}: {TITLES[number]} ({deadline - start:.0f} s of {budget.left():.0f} s left)")
    try:
        action(deadline)
    except Exception as error:  # noqa: BLE001 - one section's failure is reported, the others run
        sec |= {"status": "failed", "error": error_text(error), "traceback": traceback.format_exc(limit=-8)}
        report.markdown[number] = [f"## {number}. {TITLES[number]}", "", f"Failed: {error_text(error)}"]
    sec["seconds"] = time.perf_counter() - start
    release(report.settings.device)


def parse_args(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(
        prog="python bench/gpu_check.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    p.add_argument("--tiny", action="store_true", help="tiny sizes everywhere (the CPU smoke test)")
    p.add_argument("--sections", default="1,2,3,4,5", help="comma-separated sections to run (default all: 1,2,3,4,5)")
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="folder for gpu_check.json and .md")
    p.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole run (default 420)")
    p.add_argument("--steps", type=int, help="timed training steps per recipe (default 5; 2 with --tiny)")
    p.add_argument(
        "--warmup-steps", type=int, help="untimed training steps per recipe first (default 2; 1 with --tiny)"
    )
    p.add_argument("--rounds", type=int, help="paired rounds of sections 4 and 5 (default 3 and 5; 3 with --tiny)")
    p.add_argument("--deq-steps", help="DeqIR chain lengths T, comma-separated (default 25,50,100; 5,10 with --tiny)")
    p.add_argument("--chunk-size", type=int, help="DeqIR: images per network call (default: from the free memory)")
    p.add_argument("--recipes", help="section 1: only these recipes, comma-separated names (default: every one)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads here and in the commands (default: torch's; 1 with --cpu --tiny, where more threads gain "
        "nothing and wait on each other when other jobs share the cores)",
    )
    a = p.parse_args(argv)
    sections = sorted({int(x) for x in a.sections.split(",") if x.strip()})
    if not sections or not set(sections) <= set(TITLES):
        p.error(f"--sections takes numbers among {sorted(TITLES)}, got {a.sections!r}")
    deq_steps = [int(x) for x in a.deq_steps.split(",")] if a.deq_steps else ([5, 10] if a.tiny else [25, 50, 100])
    return Settings(
        cpu=a.cpu,
        tiny=a.tiny,
        sections=sections,
        out=a.out,
        budget_s=a.budget_s,
        warmup_steps=a.warmup_steps or (1 if a.tiny else 2),
        steps=a.steps or (2 if a.tiny else 5),
        rounds=a.rounds or 3,
        sr3_rounds=a.rounds or (3 if a.tiny else 5),
        deq_steps=deq_steps,
        chunk_size=a.chunk_size,
        threads=a.threads or (1 if a.cpu and a.tiny else None),
        recipes=[name.strip() for name in a.recipes.split(",")] if a.recipes else None,
    )


def quiet() -> None:
    """Lightning's info lines and its warnings about the short runs would bury the progress lines."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    noise = r"num_workers|does not have many workers|log_every_n_steps|worker processes in total|srun|LeafSpec"
    warnings.filterwarnings("ignore", message=f".*({noise}).*")
    warnings.filterwarnings("ignore", message="training ignores the shards' lq")  # warned by each loader worker


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    s = parse_args(argv)
    quiet()
    os.environ.setdefault("WANDB_MODE", "offline")
    if s.threads:
        torch.set_num_threads(s.threads)
        os.environ["OMP_NUM_THREADS"] = str(s.threads)  # the commands' subprocesses
    budget = Budget(s.budget_s)
    run_deadline[0] = budget.end()
    report = Report(s, argv)
    to_stderr(f"GPU check on {report.data['device']}, sections {s.sections}, budget {s.budget_s:.0f} s")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        work = Path(scratch)
        ddp = DdpRun(work)
        actions: dict[int, Callable[[float], None]] = {
            1: lambda deadline: section_train(s, report, work, deadline),
            2: lambda deadline: section_ddp(s, report, ddp, deadline),
            3: lambda deadline: section_restore(s, report, ddp, deadline),
            4: lambda deadline: section_deq(s, report, deadline),
            5: lambda deadline: section_sr3(s, report, deadline),
        }
        for index, number in enumerate(s.sections):
            run_section(number, actions[number], report, budget, s.sections[index:])
            report.data["total_s"] = time.perf_counter() - budget.start
            report.write()
    print(report.render())
    statuses = {n: report.section(n)["status"] for n in s.sections}
    not_ok = {n: status for n, status in statuses.items() if status != "ok"}
    to_stderr(f"done in {report.data['total_s']:.0f} s; {f'sections not ok: {not_ok}' if not_ok else 'all ok'}")
    return 1 if "failed" in statuses.values() else 0


if __name__ == "__main__":
    raise SystemExit(main())
