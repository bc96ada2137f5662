"""Recipes and batch scripts travel with the package: `ir-lightning recipes`, `-c NAME`, `--version`, the
demo's missing extra, and (slow) a wheel installed outside the checkout running `recipes`, `sweep --help`
and a two-step demo."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ir_lightning import cli, packaged
from ir_lightning.commands import demo, sweep

REPO = Path(__file__).resolve().parents[1]


def test_the_installed_recipes_are_the_checkouts_recipes_folder():
    on_disk = sorted(
        p.relative_to(REPO / "recipes").with_suffix("").as_posix() for p in (REPO / "recipes").rglob("*.yaml")
    )
    assert packaged.recipe_names() == [n for n in on_disk if n != "base"] and "demo/sr3_x4_cpu" in on_disk
    assert packaged.recipe_path("base") == packaged.BASE_RECIPE and "sr3_x4" in on_disk  # read first, never run
    assert (packaged.SLURM / "train.sbatch").read_bytes() == (REPO / "slurm/train.sbatch").read_bytes()
    assert sweep.ARRAY_SCRIPT.is_file() and demo.RECIPE.is_file() and demo.OVERLAY.is_file()


def test_a_config_names_an_installed_recipe_unless_such_a_file_exists_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sr3 = str(REPO / "ir_lightning/recipes/sr3_x4.yaml")
    overlay = str(REPO / "ir_lightning/recipes/demo/sr3_x4_cpu.yaml")
    argv = [
        "fit",
        "-c",
        "sr3_x4",
        "--config",
        "recipes/sr3_x4.yaml",
        "--config=demo/sr3_x4_cpu",
        "-c",
        "nope",
        "-c",
        "../recipes/sr3_x4",
        "--model.init_args.scale=4",
    ]
    assert packaged.resolve_configs(argv) == [
        "fit",
        "-c",
        sr3,
        "--config",
        sr3,
        f"--config={overlay}",
        "-c",
        "nope",
        "-c",
        "../recipes/sr3_x4",
        "--model.init_args.scale=4",
    ]
    assert packaged.resolve_configs(["fit", "-c=sr3_x4", "-cdemo/sr3_x4_cpu", "--ckpt_path=last"]) == [
        "fit",
        f"-c={sr3}",
        f"-c{overlay}",
        "--ckpt_path=last",
    ]  # argparse's other spellings of -c
    (tmp_path / "elsewhere.yaml").write_text("trainer: {}\n")
    assert packaged.recipe_path(str(tmp_path / "elsewhere")) is None  # an absolute name is no installed recipe
    (tmp_path / "sr3_x4").write_text("trainer: {}\n")  # a file of that name here wins
    assert packaged.resolve_configs(["-c", "sr3_x4"]) == ["-c", "sr3_x4"]


def test_recipes_lists_every_recipe_with_its_summary_and_prints_a_path(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(packaged.recipe_names())} recipes in ")
    first_comment = (REPO / "recipes/sr3_x4.yaml").read_text().splitlines()[0].lstrip("# ").strip()
    assert any(line.split()[0] == "sr3_x4" and line.endswith(first_comment) for line in out.splitlines()[1:])
    assert cli.main(["recipes", "--path", "sr3_x4"]) == 0
    assert Path(capsys.readouterr().out.strip()).read_bytes() == (REPO / "recipes/sr3_x4.yaml").read_bytes()
    with pytest.raises(SystemExit):
        cli.main(["recipes", "--path", "nope"])
    assert "no installed recipe 'nope'; the recipes are: da_deblur" in capsys.readouterr().err


def test_version_is_the_distributions(capsys):
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"ir-lightning {setup['metadata']['version']}\n"


def test_print_config_of_a_recipe_given_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli.main(["fit", "-c", "sr3_x4", "-c", "demo/sr3_x4_cpu", "--print_config"])
    assert done.value.code == 0
    assert "class_path: ir_lightning.methods.SR3" in capsys.readouterr().out


def test_the_demo_without_scikit_image_says_which_extra_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(SystemExit, match=r"pip install 'ir-lightning\[demo\]'"):
        demo.photo_png("astronaut")


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_finds_its_recipes_and_scripts(tmp_path):
    dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, REPO], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("ir_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ir_lightning/recipes/sr3_x4.yaml" in names and "ir_lightning/slurm/array.sbatch" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    # the test venv's editable finder stays behind the installed copy: PYTHONPATH comes first on sys.path
    env = dict(os.environ, PYTHONPATH=str(target), WANDB_MODE="offline")

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ir_lightning", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert f"recipes in {target / 'ir_lightning' / 'recipes'}:" in run("recipes")
    help_text = "".join(run("sweep", "--help").split())  # argparse wraps the long default path
    assert str(target / "ir_lightning/slurm/array.sbatch") in help_text
    # the demo's photos come from the installed package; its short training is the installed recipes by name,
    # one step without validation (the demo's own validation of SR3 sampling costs a minute and tests nothing here)
    assert "nothing restored" in run("demo", "--no-train", "--no-eval", "--out", "demo_out")
    shards = work / "demo_out" / "shards"
    run(
        "fit",
        "-c",
        "sr3_x4.yaml",
        "-c",
        "demo/sr3_x4_cpu.yaml",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        f"--data.init_args.train_shards={shards}/train-{{000000..000004}}.tar",
        f"--data.init_args.val_shards={shards}/val-000000.tar",
    )
    assert (work / "runs/sr3_x4_demo/checkpoints/last.ckpt").is_file()


@pytest.mark.parametrize(
    "words",
    [
        ["--version"],
        ["recipes"],
        ["sweep", "--help"],
        ["shards", "--help"],
        ["restore", "--help"],
        ["evaluate", "--help"],
        ["export", "--help"],
        ["import", "--help"],
        ["demo", "--help"],
    ],
)
def test_commands_that_need_no_lightning_do_not_import_it(words):
    """The entry point dispatches these before anything imports Lightning (or torch), so they start at once: a
    command imports torch, the methods and the networks once its arguments are parsed."""
    code = (
        "import sys\nfrom ir_lightning.entry import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('lightning', 'torch', 'jsonargparse') if m in sys.modules)\n"
        "print('heavy:', heavy, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, *words], capture_output=True, text=True, timeout=60, check=True)
    assert "heavy: []" in done.stderr, done.stderr[-2000:]
