"""`ir-lightning sweep`: expanding a sweep file, its checks, and what each array task runs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ir_lightning.commands.sweep import SweepError, expand_line, main, read_sweep, task_arguments


def test_double_braces_expand_to_every_combination_and_single_braces_stay():
    line = "fit --lr={{1e-4, 2e-4}} --seed={{1,2,3}} --data=train-{000000..000009}.tar"
    runs = expand_line(line)
    assert len(runs) == 6
    assert runs[0] == "fit --lr=1e-4 --seed=1 --data=train-{000000..000009}.tar"
    assert runs[-1] == "fit --lr=2e-4 --seed=3 --data=train-{000000..000009}.tar"
    assert expand_line("fit -c a.yaml") == ["fit -c a.yaml"]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "recipe.yaml").write_text("trainer: {}\n")
    path = tmp_path / "sweep.txt"
    path.write_text(text)
    return path


def test_comments_and_blank_lines_are_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = write(tmp_path, "# a comment\n\nfit -c recipe.yaml --seed_everything={{1,2}}\n  test -c recipe.yaml\n")
    assert read_sweep(sweep) == [
        "fit -c recipe.yaml --seed_everything=1",
        "fit -c recipe.yaml --seed_everything=2",
        "test -c recipe.yaml",
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("train -c recipe.yaml", r"sweep.txt:2: a run starts with one of fit, validate, test, predict"),
        ("fit -c missing.yaml", r"sweep.txt:2: config file missing.yaml does not exist"),
        ("fit -c recipe.yaml --run_dir=x", r"sweep.txt:2: leave --run_dir out"),
        ("fit -c 'recipe.yaml", r"sweep.txt:2: cannot split"),
    ],
)
def test_bad_lines_are_named_by_file_and_line(tmp_path, monkeypatch, line, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SweepError, match=message):
        read_sweep(write(tmp_path, f"# header\n{line}\n"))


def test_an_empty_sweep_is_an_error(tmp_path):
    with pytest.raises(SweepError, match="has no runs"):
        read_sweep(write(tmp_path, "# nothing\n\n"))


def test_each_task_gets_its_own_run_dir_wandb_id_and_group(tmp_path):
    tasks = tmp_path / "lr-20260101T000000.tasks"
    tasks.write_text("fit -c a.yaml --seed_everything=1\ntest -c a.yaml --ckpt_path=x.ckpt\n")
    words, env = task_arguments(tasks, 0, "812", Path("runs/sweeps"))
    assert words == [
        "fit",
        "-c",
        "a.yaml",
        "--seed_everything=1",
        "--run_dir=runs/sweeps/lr-20260101T000000/812_0",
        "--ckpt_path=auto",
    ]
    assert env == {"WANDB_RUN_ID": "812_0", "WANDB_RUN_GROUP": "sweep-812", "WANDB_RESUME": "allow"}
    words, _ = task_arguments(tasks, 1, "812", Path("runs/sweeps"))
    assert words[-1] == "--run_dir=runs/sweeps/lr-20260101T000000/812_1"  # test: its own ckpt_path is kept
    assert "--ckpt_path=x.ckpt" in words and "--ckpt_path=auto" not in words
    with pytest.raises(SweepError, match="has 2 tasks; there is no task 2"):
        task_arguments(tasks, 2, "812", Path("runs/sweeps"))


def test_dry_run_prints_the_tasks_and_the_sbatch_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = write(tmp_path, "fit -c recipe.yaml --seed_everything={{1,2,3}}\n")
    assert main([str(sweep), "--max-parallel", "2", "--sbatch=--gpus-per-node=1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"task {i}: ir-lightning fit -c recipe.yaml --seed_everything={i + 1}" for i in range(3)]
    command = shlex.split(out[3].removeprefix("would run: "))
    assert command[:5] == ["sbatch", "--parsable", "--array=0-2%2", "--job-name=sweep-<time>", "--gpus-per-node=1"]
    assert command[-2].endswith("slurm/array.sbatch") and Path(command[-2]).is_file()
    assert not (tmp_path / "logs").exists()  # a dry run writes nothing
