"""Every recipe in recipes/ (found by glob: a new recipe is tested without a list to edit) parses and validates
with the suite's CLI, given by its installed name; every CPU overlay parses on top of the recipe its first
line names. Parsing checks every key and type against the classes' signatures without building networks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ir_lightning import cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BASES = sorted(p.stem for p in RECIPES.glob("*.yaml"))
OVERLAYS = sorted(p.stem for p in (RECIPES / "demo").glob("*.yaml"))


def print_config(capsys, *configs: str) -> dict:
    """The config `fit -c ... --print_config` prints (exit 0), as a dict."""
    arguments = [word for config in configs for word in ("-c", config)]
    with pytest.raises(SystemExit) as done:
        cli.main(["fit", *arguments, "--print_config"])
    assert done.value.code == 0, capsys.readouterr().err[-2000:]
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", BASES)
def test_every_recipe_parses_by_its_installed_name(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the name must reach the installed recipe
    written = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    printed = print_config(capsys, name)
    assert printed["model"]["class_path"] == written["model"]["class_path"]
    assert printed["data"]["class_path"] == written["data"]["class_path"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_cpu_overlay_parses_on_the_recipe_it_names(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first_line = (RECIPES / "demo" / f"{name}.yaml").read_text().splitlines()[0]
    base = re.fullmatch(r"# CPU overlay for recipes/(\w+)\.yaml: .*", first_line)
    assert base is not None, f"demo/{name}.yaml: the first line must name its recipe, got {first_line!r}"
    assert base.group(1) in BASES
    printed = print_config(capsys, base.group(1), f"demo/{name}")
    overlay = yaml.safe_load((RECIPES / "demo" / f"{name}.yaml").read_text())
    scalars = {key: value for key, value in overlay.get("trainer", {}).items() if isinstance(value, (int, float, str))}
    assert scalars and all(printed["trainer"][key] == value for key, value in scalars.items()), scalars


def test_recipes_live_where_the_tests_and_the_package_data_look():
    """Recipes at the top or in demo/ only: setup.cfg's package_data and the globs above cover those two."""
    assert {path.parent for path in RECIPES.rglob("*.yaml")} == {RECIPES, RECIPES / "demo"}
