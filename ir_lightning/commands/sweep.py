"""`ir-lightning sweep`: a file of runs -> one SLURM array job, one array task per run.

A sweep file holds one run per line: the `ir-lightning` arguments after the program name,
quoted as in a shell (blank lines and lines starting with `#` are skipped):

    fit -c recipes/sr3_x4.yaml --seed_everything={{1,2,3}}
    fit -c recipes/sr3_x4.yaml --model.init_args.optimizer.init_args.lr={{1e-4,2e-4}}
    test -c recipes/sr3_x4.yaml --ckpt_path={{runs/a/last.ckpt,runs/b/last.ckpt}} --data.init_args.test_shards=...

`{{a,b,c}}` makes one run per alternative (several on one line: every combination). Single
braces are left alone: they are shard patterns (`train-{000000..000009}.tar`).

    ir-lightning sweep FILE                 expand and check, print the runs and the sbatch command
    ir-lightning sweep FILE --submit        ... then submit; prints the array job id
    ir-lightning sweep run TASKS [--task N] run one line (array.sbatch calls this in each task)

Each task gets the run directory `<sweep root>/<tasks name>/<array job>_<task>` (tasks never
resume each other's checkpoints), the W&B run id `<array job>_<task>` and the W&B group
`sweep-<array job>`; `fit` tasks run with `--ckpt_path auto`, so a requeued task resumes itself
and continues its own W&B run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ir_lightning.io.atomic import atomic_write_text
from ir_lightning.packaged import SLURM

SUBCOMMANDS = ("fit", "validate", "test", "predict")
ALTERNATIVES = re.compile(r"\{\{(.*?)\}\}")
ARRAY_SCRIPT = SLURM / "array.sbatch"  # installed with the package (ir_lightning/packaged.py)


DEFAULT_ROOT = "runs/sweeps"


def environment() -> dict[str, str | None]:
    """What `sweep` takes from the environment, read here and nowhere else in the command: `SWEEP_ROOT` (the
    default of --root), `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_JOB_ID` (which task of which array job runs).

    Unavoidable for a command that SLURM starts: an array task learns its index and job only from SLURM's
    environment, and slurm/array.sbatch passes SWEEP_ROOT from the submitting `sweep --submit` to its tasks the
    same way. Like `ir_lightning.cli`, this is a front-end; what it reads goes on as arguments."""
    return {name: os.environ.get(name) for name in ("SWEEP_ROOT", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_JOB_ID")}


class SweepError(ValueError):
    """A sweep file that cannot become an array job; the message names the file and line."""


def expand_line(line: str) -> list[str]:
    """Every combination of the line's `{{a,b}}` alternatives, in order (the line itself if none)."""
    parts = ALTERNATIVES.split(line)  # literal, choices, literal, choices, ..., literal
    literals, choices = parts[0::2], [[c.strip() for c in group.split(",")] for group in parts[1::2]]
    runs = []
    for combination in itertools.product(*choices):
        pieces = [literals[0]]
        for value, literal in zip(combination, literals[1:]):
            pieces += [value, literal]
        runs.append("".join(pieces))
    return runs


def read_sweep(path: Path) -> list[str]:
    """The runs of a sweep file, expanded and checked: a known subcommand, existing config files."""
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    runs = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for run in expand_line(line):
            _check_run(run, path, number)
            runs.append(run)
    if not runs:
        raise SweepError(f"sweep file {path} has no runs (every line is blank or a # comment)")
    return runs


def _check_run(run: str, path: Path, number: int) -> None:
    where = f"{path}:{number}"
    try:
        words = shlex.split(run)
    except ValueError as error:
        raise SweepError(f"{where}: cannot split {run!r} like a shell: {error}") from error
    if not words or words[0] not in SUBCOMMANDS:
        raise SweepError(f"{where}: a run starts with one of {', '.join(SUBCOMMANDS)}, got {run!r}")
    for option, value in zip(words, words[1:]):
        if option in ("-c", "--config") and not Path(value).is_file():
            raise SweepError(f"{where}: config file {value} does not exist (paths are relative to {Path.cwd()})")
    if any(w.startswith("--run_dir") for w in words):
        raise SweepError(f"{where}: leave --run_dir out; every task gets its own")


def write_tasks(runs: list[str], sweep: Path, root: Path) -> Path:
    """Freeze the expanded runs (a queued array must not change if the sweep file is edited)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    tasks = root / f"{sweep.stem}-{stamp}.tasks"
    atomic_write_text(tasks, "".join(f"{run}\n" for run in runs))
    return tasks


def sbatch_command(tasks: Path, count: int, max_parallel: int | None, script: Path, extra: list[str]) -> list[str]:
    limit = f"%{max_parallel}" if max_parallel else ""
    return [
        "sbatch",
        "--parsable",
        f"--array=0-{count - 1}{limit}",
        f"--job-name={tasks.stem}",
        *extra,
        str(script),
        str(tasks),
    ]


def task_arguments(tasks: Path, index: int, array_job: str, root: Path) -> tuple[list[str], dict[str, str]]:
    """The CLI arguments and environment of task `index` of array job `array_job`."""
    lines = [line for line in tasks.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not 0 <= index < len(lines):
        raise SweepError(f"{tasks} has {len(lines)} tasks; there is no task {index}")
    words = shlex.split(lines[index])
    name = f"{array_job}_{index}"
    words.append(f"--run_dir={root / tasks.stem / name}")
    if words[0] == "fit" and not any(w.startswith("--ckpt_path") for w in words):
        words.append("--ckpt_path=auto")
    env = {"WANDB_RUN_ID": name, "WANDB_RUN_GROUP": f"sweep-{array_job}", "WANDB_RESUME": "allow"}
    return words, env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = environment()
    if argv[:1] == ["run"]:
        return _run_task(argv[1:], env)
    parser = argparse.ArgumentParser(
        prog="ir-lightning sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path, help="the sweep file (one run per line)")
    parser.add_argument("--submit", action="store_true", help="submit the array job (default: only print it)")
    parser.add_argument("--max-parallel", type=int, default=None, help="at most this many tasks at once (%%N)")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(env["SWEEP_ROOT"] or DEFAULT_ROOT),
        help="where the tasks file and the run directories go (default: $SWEEP_ROOT or runs/sweeps)",
    )
    parser.add_argument(
        "--script",
        type=Path,
        default=ARRAY_SCRIPT,
        help=f"the array batch script (default: {ARRAY_SCRIPT}, installed with the package)",
    )
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="an extra sbatch option, e.g. --sbatch=--gpus-per-node=4 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        runs = read_sweep(args.file)
    except SweepError as error:
        parser.exit(2, f"ir-lightning sweep: {error}\n")
    if not args.script.is_file():
        parser.exit(2, f"ir-lightning sweep: batch script {args.script} not found (give --script)\n")
    for index, run in enumerate(runs):
        print(f"task {index}: ir-lightning {run}")
    if not args.submit:
        tasks = args.root / f"{args.file.stem}-<time>.tasks"
        print("would run: " + shlex.join(sbatch_command(tasks, len(runs), args.max_parallel, args.script, args.sbatch)))
        return 0
    tasks = write_tasks(runs, args.file, args.root)
    Path("logs").mkdir(exist_ok=True)  # the scripts' --output folder: SLURM does not create it
    command = sbatch_command(tasks, len(runs), args.max_parallel, args.script, args.sbatch)
    child_env = dict(os.environ, IR_LIGHTNING_PYTHON=sys.executable, SWEEP_ROOT=str(args.root))  # sbatch's, passed on
    result = subprocess.run(command, capture_output=True, text=True, env=child_env)
    if result.returncode != 0:
        parser.exit(1, f"ir-lightning sweep: {shlex.join(command)} failed:\n{result.stderr}")
    job = result.stdout.strip().split(";")[0]
    print(f"submitted array job {job}: {len(runs)} tasks from {tasks}; logs in logs/{tasks.stem}-{job}_<task>.out")
    print(job)
    return 0


def _run_task(argv: list[str], env: dict[str, str | None]) -> int:
    parser = argparse.ArgumentParser(prog="ir-lightning sweep run", description="Run one task of a tasks file.")
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--task", type=int, default=None, help="default: $SLURM_ARRAY_TASK_ID")
    parser.add_argument("--root", type=Path, default=Path(env["SWEEP_ROOT"] or DEFAULT_ROOT))
    args = parser.parse_args(argv)
    index = args.task if args.task is not None else int(env["SLURM_ARRAY_TASK_ID"] or "-1")
    array_job = env["SLURM_ARRAY_JOB_ID"] or "local"
    try:
        words, run_env = task_arguments(args.tasks, index, array_job, args.root)
    except SweepError as error:
        parser.exit(2, f"ir-lightning sweep run: {error}\n")
    os.environ.update(run_env)  # the W&B run id and group, for the run below (W&B reads them from the environment)
    from ir_lightning.cli import main as cli_main

    print(f"task {array_job}_{index}: ir-lightning {shlex.join(words)}", flush=True)
    return cli_main(words)
