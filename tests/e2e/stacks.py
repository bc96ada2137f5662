"""The command lines of the end-to-end tests: for each method, its recipe, CPU demo overlay and tiny test overlay
(tests/configs/<m>_tiny.yaml), then tests/e2e/configs/exact.yaml (8 optimizer steps, no logger, no validation, EMA
after every step, a checkpoint every 4 steps in ./ckpt, the rank probe writing ./ranks/rank<r>.pt), with data from
the `sr_shards` fixture: 3-step epochs, one loader worker.

DiffIR's stages chain as their recipes do: stage 2 starts from the stage-1 run's last.ckpt, the GAN stage from the
stage-2 run's (the real-SR x4 chain, the only one with a GAN stage; the GAN without its perceptual term, whose VGG19
weights are not available offline)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO
from tests.test_cli import data_args, run

EXACT = ["-c", str(REPO / "tests/e2e/configs/exact.yaml")]
LAST = "ckpt/last.ckpt"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""One torch thread a process: these networks gain nothing from two, and on a busy machine (or beside a loader
worker) two threads a process run several times slower (the demo overlays' fused Adam most of all). Under DDP on
2 cores Lightning gives each process one anyway."""


def stack(recipe: str, tiny: str, demo: str = "") -> list[str]:
    return [
        "-c",
        str(REPO / f"recipes/{recipe}.yaml"),
        "-c",
        str(REPO / f"recipes/demo/{demo or recipe}_cpu.yaml"),
        "-c",
        str(REPO / f"tests/configs/{tiny}.yaml"),
        *EXACT,
    ]


def one_stream(shards: dict[str, str]) -> list[str]:
    return [*data_args(shards), "--data.init_args.steps_per_epoch=3", "--data.init_args.num_workers=1"]


def two_streams(shards: dict[str, str]) -> list[str]:
    """Denoising as Adaptation's synthetic and real streams: the same photos, other seeds and degradations."""
    return [
        f"--data.init_args.synthetic.init_args.train_shards={shards['train']}",
        f"--data.init_args.real.init_args.train_shards={shards['train']}",
        f"--data.init_args.real.init_args.val_shards={shards['val']}",
        *(
            f"--data.init_args.{s}.init_args.{k}"
            for s in ("synthetic", "real")
            for k in ("steps_per_epoch=3", "num_workers=1")
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Method:
    """One method's command line. `previous`: the stage whose uninterrupted run's last.ckpt this one starts from
    (through the setting `previous_setting`). `steps_per_iteration`: optimizer steps per training iteration (2 for
    the GAN's manual optimisation: generator and discriminator). `trained`: the prefixes of the weights a few
    steps must move (a frozen teacher is not among them)."""

    name: str
    args: list[str]
    data: Callable[[dict[str, str]], list[str]]
    trained: tuple[str, ...]
    previous: str | None = None
    previous_setting: str = ""
    steps_per_iteration: int = 1


METHODS = {
    m.name: m
    for m in [
        Method(
            "RDDM",
            [*stack("rddm_sr_x4", "rddm_tiny"), "--model.init_args.net.init_args.dropout=0.1"],  # dropout replays too
            one_stream,
            ("net.",),
        ),
        Method("DiffIRS1", stack("diffir_s1_realsr_x4", "diffir_tiny"), one_stream, ("restorer.", "cpen_s1.")),
        Method(
            "DiffIRS2",
            [*stack("diffir_s2_realsr_x4", "diffir_tiny"), "--model.init_args.prior_steps=3"],  # both phases
            one_stream,
            ("restorer.", "cpen_s2.", "denoiser."),
            previous="DiffIRS1",
            previous_setting="stage1_ckpt",
        ),
        Method(
            "DiffIRGAN",
            [*stack("diffir_s2gan_realsr_x4", "diffir_tiny"), "--model.init_args.perceptual=null"],
            one_stream,
            ("restorer.", "cpen_s2.", "denoiser.", "discriminator."),
            previous="DiffIRS2",
            previous_setting="stage2_ckpt",
            steps_per_iteration=2,
        ),
        Method("DenoisingAsAdaptation", stack("da_denoise", "da_tiny"), two_streams, ("restorer.", "diffusion.")),
        Method(
            "DeqIR",
            [*stack("deqir_faces64", "deqir_tiny", demo="deqir"), "--model.init_args.net.init_args.dropout=0.1"],
            one_stream,
            ("net.",),
        ),
    ]
}


def fit(method: Method, cwd: Path, shards: dict[str, str], previous: Path | None, *extra: str, check: bool = True):
    """`ir-lightning fit` of `method` in `cwd`; `previous`: the directory of the previous stage's run."""
    start = [f"--model.init_args.{method.previous_setting}={previous / LAST}"] if method.previous else []
    return run(["fit", *method.args, *method.data(shards), *start, *extra], cwd, check=check, env=ONE_THREAD)
